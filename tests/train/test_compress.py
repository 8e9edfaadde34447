"""mpisim.train.compress: every scheme on 1..5 simulated ranks and awkward lengths: replicas bit-identical,
the sum as close as the scheme allows, error feedback keeps exactly what was not sent, and the counted
messages and bytes equal each scheme's closed form."""
import math

import numpy as np
import pytest

from mpisim.comm import run_simulated
from mpisim.nn.precision import bf16_round
from mpisim.train.compress import SCHEMES, make_compressor, parse_spec, sub_layout

# a layout of matrices and vectors, as MLP.slices gives it: 3x5 W, 5 b, 5x4 W, 4 b, 4x3 W, 3 b (77 elements)
LAYOUT = [(0, "W", 0, (3, 5)), (0, "b", 15, (5,)), (2, "W", 20, (5, 4)), (2, "b", 40, (4,)),
          (4, "W", 44, (4, 3)), (4, "b", 56, (3,)), (5, "gamma", 59, (18,))]
N_LAYOUT = 77
SPECS = ["none", "fp16", "bf16", "topk:0.3", "randomk:0.3", "signsgd", "powersgd:2"]


def inputs(rank, n, seed=0):
    """Rank ``rank``'s vector: a different normal draw per rank."""
    return np.random.default_rng([seed, rank]).standard_normal(n).astype(np.float32)


def reduce_on(N, spec, n, *, calls=1, error_feedback=False, algorithm="auto", layout=None, make=inputs):
    """Run ``calls`` compressed allreduces on N simulated ranks; per rank: (result, messages, bytes)."""
    def body(t):
        c = make_compressor(spec, error_feedback=error_feedback, seed=3, layout=layout)
        t.reset_stats()
        for i in range(calls):
            g = make(t.rank, n, seed=i)
            c.allreduce(t, g, key="bucket", algorithm=algorithm, layout=layout)
        return g, t.stats.messages_sent, t.stats.bytes_sent
    return run_simulated(N, body)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("N", [1, 2, 3, 4, 5])
def test_replicas_identical_and_traffic_equals_the_closed_form(spec, N):
    lengths = [N_LAYOUT] if spec.startswith("powersgd") else [1, 3, 37, N_LAYOUT]
    for n in lengths:
        layout = LAYOUT if n == N_LAYOUT else None
        out = reduce_on(N, spec, n, layout=layout)
        for g, _, _ in out[1:]:
            np.testing.assert_array_equal(g, out[0][0])               # bit-identical replicas
        assert np.isfinite(out[0][0]).all()
        c = make_compressor(spec, layout=layout)
        assert c.traffic(n, N, layout) == (sum(m for _, m, _ in out), sum(b for _, _, b in out)), (spec, N, n)


@pytest.mark.parametrize("spec, algorithm", [("topk:0.5", "ring"), ("topk:0.5", "recursive_doubling"),
                                             ("signsgd", "ring"), ("powersgd:1", "ring"), ("powersgd:1", "tree"),
                                             ("powersgd:3", "rabenseifner"), ("fp16", "ring")])
@pytest.mark.parametrize("N", [3, 4])
def test_named_algorithms_count_as_their_formula(spec, algorithm, N):
    out = reduce_on(N, spec, N_LAYOUT, algorithm=algorithm, layout=LAYOUT)
    assert make_compressor(spec).traffic(N_LAYOUT, N, LAYOUT, algorithm=algorithm) == (
        sum(m for _, m, _ in out), sum(b for _, _, b in out))


@pytest.mark.parametrize("fmt, u", [("fp16", 2.0**-11), ("bf16", 2.0**-8)])
@pytest.mark.parametrize("N", [1, 2, 3, 5])
def test_half_precision_is_the_sum_to_half_rounding(fmt, u, N):
    n = 101
    got = reduce_on(N, fmt, n)[0][0]
    xs = np.stack([inputs(r, n) for r in range(N)]).astype(np.float64)
    exact, mag = xs.sum(axis=0), np.abs(xs).sum(axis=0)
    # each of the N-1 hops and the final encoding rounds a partial sum, |partial| <= sum |x_r|
    assert (np.abs(got - exact) <= (N + 1) * u * mag + 1e-30).all()
    assert not np.array_equal(got, exact.astype(np.float32))             # it did go through 16 bits
    if fmt == "bf16":
        np.testing.assert_array_equal(got, bf16_round(got))              # every value a bfloat16
    elif N in (1, 2):
        half = (got / np.float32(N)).astype(np.float16).astype(np.float32) * np.float32(N)
        np.testing.assert_array_equal(got, half)                         # N x an fp16


def test_fp16_divides_by_the_rank_count_against_overflow():
    def big(rank, n, seed=0):
        return np.full(n, 40000.0, dtype=np.float32)                     # the sum, 160,000, is past 65,504
    got = reduce_on(4, "fp16", 9, make=big)[0][0]
    np.testing.assert_array_equal(got, np.full(9, 160000.0, dtype=np.float32))


@pytest.mark.parametrize("spec", ["topk:1", "randomk:1"])
@pytest.mark.parametrize("N", [1, 3, 5])
def test_ratio_one_is_the_exact_sum_in_rank_order(spec, N):
    n = 45
    got = reduce_on(N, spec, n)[0][0]
    want = np.zeros(n, dtype=np.float32)
    for r in range(N):                                                   # float32, rank by rank
        want += inputs(r, n)
    np.testing.assert_array_equal(got, want)


def test_topk_sends_the_largest_magnitudes_and_randomk_k_of_them():
    x = np.array([0.1, -5.0, 0.2, 3.0, -0.3, 0.05, 4.0], dtype=np.float32)
    c = make_compressor("topk:0.4")                                       # k = ceil(0.4 * 7) = 3
    assert c.k(7) == 3 and c.payload_bytes(7) == 24
    np.testing.assert_array_equal(c.decode(c.encode(x), 7), [0, -5, 0, 3, 0, 0, 4])
    assert make_compressor("topk:0.1").k(30) == 3                         # exact: not ceil(3.0000000000000004)
    assert make_compressor("topk:0.0001").k(7) == 1                       # at least one
    r = make_compressor("randomk:0.4", seed=1)
    kept = r.decode(r.encode(x, rank=2), 7)
    assert np.count_nonzero(kept) == 3 and np.isin(kept[kept != 0], x).all()
    again = make_compressor("randomk:0.4", seed=1)
    np.testing.assert_array_equal(again.decode(again.encode(x, rank=2), 7), kept)   # seeded by (seed, step, rank)
    other = [make_compressor("randomk:0.4", seed=1).decode(make_compressor("randomk:0.4", seed=1).encode(x, rank=q), 7)
             for q in range(6)]
    assert any(not np.array_equal(o, kept) for o in other)                # ranks draw different indices


def test_signsgd_majority_vote_on_a_hand_made_example():
    xs = [np.array([1.0, -2.0, 3.0, -0.5, 2.0], dtype=np.float32),
          np.array([2.0, 1.0, -1.0, -0.5, 1.0], dtype=np.float32),
          np.array([-10.0, 3.0, 1.0, 0.5, -5.0], dtype=np.float32)]
    # signs +,-,+,-,+ / +,+,-,-,+ / -,+,+,+,-: majority +,+,+,-,+ (element 0 and 4: the sum is negative,
    # the vote is not); scales mean|x|: 8.5/5, 5.5/5, 19.5/5 -> sum 6.7
    got = reduce_on(3, "signsgd", 5, make=lambda r, n, seed=0: xs[r])
    want = np.float32(8.5 / 5) + np.float32(5.5 / 5) + np.float32(19.5 / 5)
    np.testing.assert_allclose(got[0][0], np.array([1, 1, 1, -1, 1], dtype=np.float32) * want, rtol=1e-6)
    # an even split is a tie: 0
    tie = reduce_on(2, "signsgd", 2, make=lambda r, n, seed=0: np.array([1.0, -1.0], np.float32) * (1 - 2 * r))
    np.testing.assert_array_equal(tie[0][0], [0.0, 0.0])


@pytest.mark.parametrize("N", [1, 2, 3])
def test_powersgd_at_full_rank_is_the_exact_sum(N):
    layout = [(0, "W", 0, (3, 5)), (0, "b", 15, (5,)), (1, "W", 20, (6, 3)), (1, "b", 38, (3,)),
              (2, "W", 41, (3, 3))]
    n = 50
    for calls in (1, 3):                                                  # cold and warm-started Q
        got = reduce_on(N, "powersgd:3", n, layout=layout, calls=calls)[0][0]
        want = np.stack([inputs(r, n, seed=calls - 1) for r in range(N)]).astype(np.float64).sum(axis=0)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_powersgd_recovers_from_a_step_with_a_zero_gradient():
    """A zero sum makes Q zero; without a fresh draw P = M·0 would stay zero for good."""
    layout = [(0, "W", 0, (3, 4)), (1, "W", 12, (4, 3))]

    def make(rank, n, seed=0):
        return np.zeros(n, np.float32) if seed == 0 else inputs(rank, n, seed=seed)
    got = reduce_on(2, "powersgd:3", 24, layout=layout, calls=2, make=make)[0][0]
    want = inputs(0, 24, seed=1).astype(np.float64) + inputs(1, 24, seed=1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_powersgd_is_low_rank_and_loses_nothing_in_total():
    """Rank 1: each matrix of the result has rank 1, the vectors are exact, and over the ranks the new
    errors plus the result are the gradients plus the old errors (nothing lost, only delayed)."""
    n, N = N_LAYOUT, 3

    def body(t):
        c = make_compressor("powersgd:1", seed=5, layout=LAYOUT)
        rows = []
        for i in range(3):
            g = inputs(t.rank, n, seed=i)
            before = (c.residual("k") if c.residual("k") is not None else np.zeros(n, np.float32)) + g
            c.allreduce(t, g, key="k")
            rows.append((g.copy(), before, c.residual("k").copy()))
        return rows
    out = run_simulated(N, body)
    for i in range(3):
        result = out[0][i][0]
        sent_in = sum(out[r][i][1].astype(np.float64) for r in range(N))
        left = sum(out[r][i][2].astype(np.float64) for r in range(N))
        np.testing.assert_allclose(result + left, sent_in, rtol=1e-5, atol=1e-5)
        for _, name, off, shape in LAYOUT:
            block = result[off:off + math.prod(shape)].reshape(shape)
            if len(shape) == 2:
                assert np.linalg.matrix_rank(block, tol=1e-4 * np.abs(block).max()) == 1
            else:
                np.testing.assert_allclose(block, sent_in[off:off + shape[0]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["fp16", "bf16", "topk:0.2", "randomk:0.2", "signsgd"])
def test_error_feedback_keeps_exactly_what_was_not_sent(spec):
    c = make_compressor(spec, error_feedback=True, seed=2)
    n = 50
    for step in range(4):
        x = inputs(0, n, seed=step) * 10
        e = c.residual("k") if c.residual("k") is not None else np.zeros(n, np.float32)
        payload = c.encode(x, key="k")
        assert payload.dtype == np.uint8 and payload.size == c.payload_bytes(n)
        sent = c.decode(payload, n)
        np.testing.assert_allclose(sent + c.residual("k"), x + e, rtol=1e-6, atol=1e-6)
        if spec.startswith("topk"):            # what topk sends is x + e at k places: e is the rest, exactly
            np.testing.assert_array_equal(np.where(sent != 0, 0, x + e), c.residual("k"))


def test_error_feedback_sends_everything_eventually():
    """topk with feedback on a constant gradient: after S steps the sum of what was sent is S x minus a
    residual that stays bounded; without feedback the small elements are never sent."""
    x = np.linspace(0.1, 1.0, 40, dtype=np.float32)
    with_fb, without = make_compressor("topk:0.1", error_feedback=True), make_compressor("topk:0.1")
    sent_fb, sent_plain = np.zeros(40), np.zeros(40)
    for _ in range(200):
        sent_fb += with_fb.decode(with_fb.encode(x), 40)
        sent_plain += without.decode(without.encode(x), 40)
    np.testing.assert_allclose(sent_fb + with_fb.residual(), 200 * x, rtol=1e-4)
    assert (sent_fb > 0).all() and (with_fb.residual() < 12).all()
    assert (sent_plain[:36] == 0).all()


def test_error_feedback_in_the_collective_carries_the_residual():
    """topk:ratio with feedback on 2 ranks: what the sum leaves out comes back in the next call."""
    def body(t):
        c = make_compressor("topk:0.25", error_feedback=True)
        got = []
        for _ in range(4):
            g = np.arange(8, dtype=np.float32) * (t.rank + 1)
            c.allreduce(t, g, key=0)
            got.append(g.copy())
        return got, c.residual(0)
    out = run_simulated(2, body)
    total = sum(out[0][0]) + out[0][1] + out[1][1]
    np.testing.assert_allclose(total, 4 * 3 * np.arange(8), rtol=1e-6)


@pytest.mark.parametrize("spec, u", [("fp16", 2.0**-11), ("bf16", 2.0**-8), ("topk:0.3", 1e-7), ("randomk:0.3", 1e-7)])
def test_error_feedback_in_the_collective_loses_nothing_in_total(spec, u):
    """On 3 ranks, each call: the result plus the ranks' new residuals is the sum of gradients plus old
    residuals (to the rounding of the hops), and each residual is only what the rank's own encoding dropped."""
    N, n = 3, 41

    def body(t):
        c = make_compressor(spec, error_feedback=True, seed=1)
        rows = []
        for i in range(3):
            g = inputs(t.rank, n, seed=i)
            before = (c.residual(0) if c.residual(0) is not None else 0) + g
            c.allreduce(t, g, key=0)
            rows.append((g.copy(), before, c.residual(0).copy()))
        return rows
    out = run_simulated(N, body)
    for i in range(3):
        into = [out[r][i][1].astype(np.float64) for r in range(N)]
        left = sum(out[r][i][2].astype(np.float64) for r in range(N))
        bound = (N + 2) * u * sum(np.abs(x) for x in into) + 1e-6
        assert (np.abs(out[0][i][0] + left - sum(into)) <= bound).all()
        if spec in ("fp16", "bf16"):           # a rounding of the rank's own x + e, nothing more
            for r in range(N):
                assert (np.abs(out[r][i][2]) <= 2 * u * np.abs(into[r]) + 1e-7).all()


def test_point_to_point_payloads_and_their_closed_forms():
    x = inputs(0, 70)
    for spec, size in [("none", 280), ("fp16", 140), ("bf16", 140), ("topk:0.1", 56), ("randomk:0.1", 56),
                       ("signsgd", 4 * (3 + 1))]:
        c = make_compressor(spec)
        p = c.encode(x)
        assert p.dtype == np.uint8 and p.size == size == c.payload_bytes(70), spec
        assert c.decode(p, 70).dtype == np.float32
    np.testing.assert_array_equal(make_compressor("bf16").decode(make_compressor("bf16").encode(x), 70), bf16_round(x))
    with pytest.raises(ValueError, match="point-to-point"):
        make_compressor("powersgd:1", layout=LAYOUT).encode(x)
    with pytest.raises(ValueError, match="payload of 10 bytes"):
        make_compressor("fp16").decode(np.zeros(10, np.uint8), 70)
    bad = make_compressor("topk:0.1").encode(x).view(np.int32).copy()
    bad[-1] = 70                                                           # an index past the end
    with pytest.raises(ValueError, match="index"):
        make_compressor("topk:0.1").decode(bad.view(np.uint8), 70)


def test_ratio_compares_with_the_plain_allreduce():
    n, N = 100_000, 4
    assert make_compressor("fp16").ratio(n, N, algorithm="ring") == 2.0
    assert make_compressor("none").ratio(n, N, algorithm="ring") == 1.0
    assert make_compressor("topk:0.01").ratio(n, N, algorithm="ring") == pytest.approx(2 * 3 * 4 * n / (3 * 4 * 8000))
    assert make_compressor("signsgd").ratio(n, 1) == 1.0                   # one rank sends nothing either way


@pytest.mark.parametrize("spec, message", [
    ("gzip", "unknown compression scheme 'gzip'"), ("topk", "needs its parameter"),
    ("topk:0", "(0, 1]"), ("topk:1.5", "(0, 1]"), ("randomk:abc", "RATIO"), ("powersgd:0", "RANK"),
    ("powersgd:x", "RANK"), ("fp16:2", "takes no parameter"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        parse_spec(spec)


def test_powersgd_rank_above_a_matrix_side_and_feedback_with_none_are_refused():
    with pytest.raises(ValueError, match=r"smaller side of W of layer 0 \(3, 5\): use a rank of at most 3"):
        make_compressor("powersgd:4", layout=LAYOUT)
    with pytest.raises(ValueError, match="leaves nothing out"):
        make_compressor("none", error_feedback=True)
    assert make_compressor("powersgd:2", error_feedback=True, layout=LAYOUT).error_feedback   # built in
    with pytest.raises(ValueError, match="algorithm 'tree'"):
        make_compressor("topk:0.1").check_algorithm("tree")
    with pytest.raises(ValueError, match="algorithm 'mpi'|MPI's own"):
        make_compressor("powersgd:1").check_algorithm("mpi")


def test_sub_layout_is_a_bucket_of_whole_layers():
    assert sub_layout(LAYOUT, 20, 44) == [(2, "W", 0, (5, 4)), (2, "b", 20, (4,))]
    with pytest.raises(ValueError, match="straddles"):
        sub_layout(LAYOUT, 10, 44)


def test_every_scheme_is_registered_once_with_its_description():
    assert set(SCHEMES) == {"none", "fp16", "bf16", "topk", "randomk", "signsgd", "powersgd"}
    assert all(s.description and s.sends for s in SCHEMES.values())
    assert [s.name for s in SCHEMES.values() if not s.point_to_point] == ["powersgd"]


def test_powersgd_declares_its_matrix_products_to_the_virtual_clock():
    def body(t):
        make_compressor("powersgd:2", layout=LAYOUT).allreduce(t, inputs(0, N_LAYOUT), key=0)
        return t.vtime
    flops = sum(8 * a * b * 2 + 2 * a * 2 * 2 for *_, (a, b) in [s for s in LAYOUT if len(s[3]) == 2])
    assert run_simulated(1, body, network="10gbe,compute=1GFLOP/s")[0] == pytest.approx(flops / 1e9, rel=1e-6)


def test_a_sparse_payload_with_repeated_indices_is_refused():
    """Nothing from a peer is trusted: a repeated index would lose a value silently."""
    comp = make_compressor("topk:0.5")
    payload = comp.encode(np.arange(1, 5, dtype=np.float32))          # k = 2 values and their indices
    words = payload.view(np.int32).copy()
    words[3] = words[2]                                                # the second index := the first
    with pytest.raises(ValueError, match="strictly increasing"):
        comp.decode(words.view(np.uint8), 4)
