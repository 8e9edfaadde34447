"""The FedAvg strategy: sampling, averaging, update checks, DP pieces, secure aggregation, the plot."""
import math
from itertools import product

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mpisim.data import label_histogram, shard_partition
from mpisim.train.federated import (
    FIXED_POINT_BITS, ClientSampler, DifferentialPrivacy, SecureAggregation, Strategy, WeightedAverage,
    check_update, clip_update, dequantize, gaussian_noise, make_strategy, mask, num_clients_per_round,
    pair_seed, plot_partition, quantize, sample_clients, secure_sum, weighted_average)

PNG = b"\x89PNG\r\n\x1a\n"


# ---- sample_clients ---------------------------------------------------------------------------

@pytest.mark.parametrize("n, frac, m", [(100, 0.1, 10), (10, 0.01, 1), (10, 0.25, 2), (10, 0.35, 4),
                                        (5, 0.5, 2), (7, 1.0, 7), (1, 0.5, 1), (30, 0.1, 3)])
def test_clients_per_round_rounds(n, frac, m):
    """m = max(1, round(fraction * n)): at least one client, Python rounding (2.5 -> 2)."""
    assert num_clients_per_round(n, frac) == m
    assert len(sample_clients(n, frac, seed=0, round=0)) == m


def test_sample_is_sorted_distinct_int64_in_range():
    s = sample_clients(100, 0.3, seed=4, round=2)
    assert s.dtype == np.int64 and len(s) == 30
    assert np.all(np.diff(s) > 0) and s.min() >= 0 and s.max() < 100


def test_fraction_one_gives_everyone():
    np.testing.assert_array_equal(sample_clients(13, 1.0, seed=1, round=5), np.arange(13))
    np.testing.assert_array_equal(sample_clients(13, 1, seed=1, round=5), np.arange(13))


def test_same_arguments_same_sample_other_round_or_seed_differs():
    a = sample_clients(100, 0.1, seed=7, round=3)
    np.testing.assert_array_equal(a, sample_clients(100, 0.1, seed=7, round=3))
    others = [sample_clients(100, 0.1, seed=7, round=r) for r in range(4, 10)]
    assert all(not np.array_equal(a, o) for o in others)
    assert not np.array_equal(a, sample_clients(100, 0.1, seed=8, round=3))


def test_every_client_gets_sampled_eventually():
    seen = np.concatenate([sample_clients(20, 0.2, seed=0, round=r) for r in range(100)])
    assert set(seen.tolist()) == set(range(20))
    # roughly uniform: each client picked about 100 * 0.2 = 20 times
    counts = np.bincount(seen, minlength=20)
    assert counts.min() > 5 and counts.max() < 40


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_clients=0, fraction=0.5), "num_clients"),
    (dict(num_clients=True, fraction=0.5), "num_clients"),
    (dict(num_clients=2.0, fraction=0.5), "num_clients"),
    (dict(num_clients=10, fraction=0.0), "fraction"),
    (dict(num_clients=10, fraction=1.01), "fraction"),
    (dict(num_clients=10, fraction=-0.1), "fraction"),
    (dict(num_clients=10, fraction=math.nan), "fraction"),
    (dict(num_clients=10, fraction="0.5"), "fraction"),
])
def test_sampling_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        num_clients_per_round(**kwargs)
    with pytest.raises(ValueError, match=name):
        sample_clients(**kwargs, seed=0, round=0)


def test_sampling_bad_round_or_seed():
    with pytest.raises(ValueError, match="round"):
        sample_clients(10, 0.5, seed=0, round=-1)
    with pytest.raises(ValueError, match="seed"):
        sample_clients(10, 0.5, seed=-1, round=0)


# ---- weighted_average -------------------------------------------------------------------------

def test_weighted_average_is_the_float64_formula():
    rng = np.random.default_rng(0)
    us = [rng.standard_normal(1000).astype(np.float32) for _ in range(5)]
    ns = [3, 100, 1, 57, 12]
    expected = (sum(n * u.astype(np.float64) for n, u in zip(ns, us)) / sum(ns)).astype(np.float32)
    got = weighted_average(us, ns)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_weighted_average_simple_values_and_dtype():
    got = weighted_average([np.array([0.0, 4.0]), np.array([3.0, 0.0])], [1, 3])
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, [2.25, 1.0])
    one = np.array([1.5, -2.0], dtype=np.float32)
    np.testing.assert_array_equal(weighted_average([one], [np.int64(9)]), one)


def test_weighted_average_equal_counts_is_the_mean():
    rng = np.random.default_rng(1)
    us = [rng.standard_normal(50).astype(np.float32) for _ in range(4)]
    np.testing.assert_allclose(weighted_average(us, [7] * 4), np.mean(us, axis=0), rtol=1e-6, atol=1e-7)


def test_weighted_average_into_out_even_when_out_is_an_input():
    a = np.array([1.0, 2.0], dtype=np.float32)
    b = np.array([3.0, 6.0], dtype=np.float32)
    out = np.empty(2, dtype=np.float32)
    assert weighted_average([a, b], [1, 1], out=out) is out
    np.testing.assert_array_equal(out, [2.0, 4.0])
    assert weighted_average([a, b], [1, 1], out=a) is a       # a is read before it is written
    np.testing.assert_array_equal(a, [2.0, 4.0])


def test_weighted_average_is_deterministic():
    rng = np.random.default_rng(2)
    us = [(rng.standard_normal(300) * 10.0 ** rng.integers(-3, 4)).astype(np.float32) for _ in range(9)]
    ns = rng.integers(1, 1000, 9).tolist()
    np.testing.assert_array_equal(weighted_average(us, ns), weighted_average(us, ns))


F32 = np.zeros(3, dtype=np.float32)


@pytest.mark.parametrize("updates, counts, name", [
    ([], [], "updates"),
    ([F32, F32], [1], "length"),
    ([F32, np.zeros(4, np.float32)], [1, 1], r"updates\[1\]"),
    ([F32, np.zeros(3, np.float64)], [1, 1], r"updates\[1\]"),
    ([F32, [0.0, 0.0, 0.0]], [1, 1], r"updates\[1\]"),
    ([np.zeros(3, np.int64)], [1], "floating"),
    ([F32, F32], [1, 0], r"num_examples\[1\]"),
    ([F32, F32], [-2, 1], r"num_examples\[0\]"),
    ([F32, F32], [1, 2.5], r"num_examples\[1\]"),
    ([F32, F32], [1, 2.0], r"num_examples\[1\]"),
    ([F32, F32], [True, 1], r"num_examples\[0\]"),
])
def test_weighted_average_bad_inputs(updates, counts, name):
    with pytest.raises(ValueError, match=name):
        weighted_average(updates, counts)


def test_weighted_average_bad_out():
    for out in (np.empty(4, np.float32), np.empty(3, np.float64), [0.0] * 3):
        with pytest.raises(ValueError, match="out"):
            weighted_average([F32], [1], out=out)


# ---- check_update -----------------------------------------------------------------------------

def test_check_update_accepts_a_good_update():
    assert check_update(np.ones(1234, np.float32), size=1234, dtype=np.float32) is None
    assert check_update(np.ones(0, np.float64), size=0, dtype="float64") is None


@pytest.mark.parametrize("update, reason", [
    ([1.0, 2.0], "is not a numpy array"),
    (None, "is not a numpy array"),
    (np.ones(12, np.float32), "has 12 elements, expected 1,234"),
    (np.ones(1234, np.float64), "has dtype float64, expected float32"),
    (np.ones((2, 617), np.float32), "has shape (2, 617), expected (1,234,)"),
])
def test_check_update_reasons(update, reason):
    assert check_update(update, size=1234, dtype=np.float32) == reason


def test_check_update_counts_non_finite_values():
    u = np.ones(1234, np.float32)
    u[[3, 40, 500]] = [np.nan, np.inf, -np.inf]
    assert check_update(u, size=1234, dtype=np.float32) == "has 3 non-finite values (NaN or Inf)"
    u[[40, 500]] = 0
    assert check_update(u, size=1234, dtype=np.float32) == "has 1 non-finite value (NaN or Inf)"


# ---- clip_update, gaussian_noise --------------------------------------------------------------

def test_clip_scales_down_keeping_direction():
    rng = np.random.default_rng(3)
    u = (rng.standard_normal(10_000) * 5).astype(np.float32)
    before = u.copy()
    norm = clip_update(u, 1.5)
    assert norm == pytest.approx(np.linalg.norm(before.astype(np.float64)), rel=1e-12)
    assert u.dtype == np.float32
    assert np.linalg.norm(u.astype(np.float64)) == pytest.approx(1.5, rel=1e-6)
    np.testing.assert_allclose(u, before * (1.5 / norm), rtol=1e-6)   # same direction


def test_clip_leaves_small_updates_alone():
    u = np.array([3.0, 4.0], dtype=np.float32)
    assert clip_update(u, 5.0) == 5.0
    np.testing.assert_array_equal(u, [3.0, 4.0])
    assert clip_update(u, 1.0) == 5.0
    np.testing.assert_allclose(u, [0.6, 0.8], rtol=1e-6)
    z = np.zeros(4, np.float32)
    assert clip_update(z, 1.0) == 0.0 and not z.any()


def test_clip_norm_is_computed_in_float64():
    u = np.full(1_000_000, 0.1, dtype=np.float32)   # float32 sums of squares drift; float64 do not
    assert clip_update(u, 1e9) == pytest.approx(math.sqrt(1e6 * float(np.float32(0.1)) ** 2), rel=1e-12)


@pytest.mark.parametrize("max_norm", [0, -1.0, math.nan, "1"])
def test_clip_needs_positive_max_norm(max_norm):
    with pytest.raises(ValueError, match="max_norm"):
        clip_update(np.ones(3, np.float32), max_norm)


def test_clip_rejects_non_float_or_non_finite():
    with pytest.raises(ValueError, match="update"):
        clip_update(np.ones(3, np.int64), 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        clip_update(np.array([1.0, np.inf], np.float32), 1.0)


def test_noise_has_the_right_std_and_dtype():
    z = gaussian_noise(100_000, 0.5, np.random.default_rng(0))
    assert z.dtype == np.float32 and z.shape == (100_000,)
    assert abs(z.mean()) < 0.01 and z.std() == pytest.approx(0.5, rel=0.02)
    z64 = gaussian_noise(100_000, 2.0, np.random.default_rng(1), dtype=np.float64)
    assert z64.dtype == np.float64 and z64.std() == pytest.approx(2.0, rel=0.02)
    assert gaussian_noise(10, 1.0, np.random.default_rng(0), dtype=np.float16).dtype == np.float16


def test_noise_is_reproducible_and_zero_std_is_zero():
    a = gaussian_noise(50, 1.0, np.random.default_rng(5))
    np.testing.assert_array_equal(a, gaussian_noise(50, 1.0, np.random.default_rng(5)))
    assert not gaussian_noise(50, 0.0, np.random.default_rng(5)).any()
    assert gaussian_noise(0, 1.0, np.random.default_rng(5)).shape == (0,)


def test_noise_bad_arguments():
    rng = np.random.default_rng(0)
    for kwargs, name in [(dict(size=-1, std=1.0), "size"), (dict(size=3, std=-0.1), "std"),
                         (dict(size=3, std=math.inf), "std"), (dict(size=3, std=1.0, dtype=np.int32), "dtype")]:
        with pytest.raises(ValueError, match=name):
            gaussian_noise(rng=rng, **kwargs)


# ---- quantize / dequantize --------------------------------------------------------------------

def test_quantize_round_trip():
    x = np.array([0.0, 1.0, -1.5, 1e-3, 123.456, -2.0 ** -33], dtype=np.float64)
    q = quantize(x)
    assert q.dtype == np.int64 and q[1] == 2 ** FIXED_POINT_BITS and q[2] == -(3 << 31)
    np.testing.assert_allclose(dequantize(q, np.float64), x, rtol=0, atol=2.0 ** -33)
    assert dequantize(q).dtype == np.float32


def test_quantize_limit_and_overflow_error():
    assert quantize(np.array([2.0 ** 30, -(2.0 ** 30)]))[0] == 2 ** 62
    with pytest.raises(ValueError, match="2147483648.0"):
        quantize(np.array([1.0, -(2.0 ** 31)]))
    with pytest.raises(ValueError, match="largest magnitude"):
        quantize(np.array([2.0 ** 30 * (1 + 2.0 ** -20)], dtype=np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        quantize(np.array([np.nan]))
    assert quantize(np.array([])).shape == (0,)


def test_dequantize_needs_int64():
    with pytest.raises(ValueError, match="int64"):
        dequantize(np.zeros(3, np.uint64))


# ---- secure aggregation -----------------------------------------------------------------------

def test_pair_seed_is_shared_and_keyed_by_round_and_pair():
    s = pair_seed(1, 2, 3, 4)
    assert s.generate_state(4).tolist() == pair_seed(1, 2, 3, 4).generate_state(4).tolist()
    for other in (pair_seed(1, 3, 3, 4), pair_seed(1, 2, 3, 5), pair_seed(2, 2, 3, 4)):
        assert s.generate_state(4).tolist() != other.generate_state(4).tolist()
    for i, j in [(4, 3), (3, 3)]:
        with pytest.raises(ValueError, match="i < j"):
            pair_seed(1, 2, i, j)


def _wrapping_sum(qs, size):
    total = np.zeros(size, dtype=np.uint64)
    for q in qs:
        total += q.view(np.uint64)
    return total.view(np.int64)


clients_st = st.lists(st.integers(0, 99), min_size=1, max_size=8, unique=True)
values_st = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 50), clients=clients_st, seed=st.integers(0, 2 ** 32), round=st.integers(0, 1000),
       data=st.data())
def test_masks_cancel_exactly(size, clients, seed, round, data):
    xs = [np.array(data.draw(st.lists(values_st, min_size=size, max_size=size))) for _ in clients]
    qs = [quantize(x) for x in xs]
    copies = [q.copy() for q in qs]
    masked = [mask(q, c, clients, seed=seed, round=round) for q, c in zip(qs, clients)]
    for q, c in zip(qs, copies):
        np.testing.assert_array_equal(q, c)                   # q is not modified
    assert all(m.dtype == np.int64 and m.shape == (size,) for m in masked)
    total = secure_sum(masked)
    assert total.dtype == np.int64
    np.testing.assert_array_equal(total, _wrapping_sum(qs, size))
    np.testing.assert_allclose(dequantize(total, np.float64), np.sum(xs, axis=0), rtol=0, atol=1e-8)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(8, 50), clients=st.lists(st.integers(0, 99), min_size=2, max_size=8, unique=True),
       seed=st.integers(0, 2 ** 32), drop=st.integers(0, 7))
def test_a_masked_vector_hides_q_and_dropping_one_breaks_the_sum(size, clients, seed, drop):
    rng = np.random.default_rng(seed)
    qs = [quantize(rng.standard_normal(size)) for _ in clients]
    masked = [mask(q, c, clients, seed=seed, round=0) for q, c in zip(qs, clients)]
    for q, m in zip(qs, masked):
        assert np.count_nonzero(m != q) >= 0.9 * size
    drop %= len(clients)
    rest = [m for k, m in enumerate(masked) if k != drop]
    plain = _wrapping_sum([q for k, q in enumerate(qs) if k != drop], size)
    assert np.count_nonzero(secure_sum(rest) != plain) >= 0.9 * size


def test_single_client_mask_is_a_copy_of_q():
    q = quantize(np.array([1.0, 2.0]))
    m = mask(q, 5, [5], seed=0, round=0)
    np.testing.assert_array_equal(m, q)
    assert not np.shares_memory(m, q)


def test_masks_depend_on_seed_and_round():
    q = np.zeros(16, np.int64)
    a = mask(q, 1, [1, 2], seed=0, round=0)
    assert not np.array_equal(a, mask(q, 1, [1, 2], seed=0, round=1))
    assert not np.array_equal(a, mask(q, 1, [1, 2], seed=1, round=0))
    np.testing.assert_array_equal(a, -mask(q, 2, [1, 2], seed=0, round=0))   # r and -r


def test_secure_average_matches_weighted_average():
    rng = np.random.default_rng(11)
    clients = sample_clients(50, 0.2, seed=11, round=4).tolist()
    us = [rng.standard_normal(200).astype(np.float32) for _ in clients]
    ns = rng.integers(1, 500, len(clients)).tolist()
    masked = [mask(quantize(n * u.astype(np.float64)), c, clients, seed=11, round=4)
              for u, n, c in zip(us, ns, clients)]
    secure = dequantize(secure_sum(masked), np.float64) / sum(ns)
    np.testing.assert_allclose(secure, weighted_average(us, ns), rtol=1e-6, atol=1e-6)


def test_mask_and_secure_sum_bad_inputs():
    q = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="client 3"):
        mask(q, 3, [1, 2], seed=0, round=0)
    with pytest.raises(ValueError, match="repeated"):
        mask(q, 1, [1, 2, 2], seed=0, round=0)
    with pytest.raises(ValueError, match="int64"):
        mask(np.zeros(4), 1, [1, 2], seed=0, round=0)
    with pytest.raises(ValueError, match="masked"):
        secure_sum([])
    with pytest.raises(ValueError, match=r"masked\[1\]"):
        secure_sum([q, np.zeros(5, np.int64)])
    with pytest.raises(ValueError, match=r"masked\[1\]"):
        secure_sum([q, np.zeros(4, np.uint64)])


# ---- plot_partition ---------------------------------------------------------------------------

@pytest.mark.parametrize("clients", [5, 100])
def test_plot_partition_writes_a_png(tmp_path, clients):
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra) not installed")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    parts = shard_partition(labels, clients, shards_per_client=2, seed=0)
    hist = label_histogram(labels, parts, 10)
    path = tmp_path / "partition.png"
    plot_partition(hist, path, title="shards")
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["partition.png"]   # no temporary left


def test_plot_partition_needs_a_2d_histogram(tmp_path):
    with pytest.raises(ValueError, match="hist"):
        plot_partition(np.zeros(5), tmp_path / "x.png")


# ---- strategy objects (make_strategy and what it composes) ---------------------------------------


def _updates(k=4, size=300, seed=3, dtype=np.float32):
    """k updates of magnitude ~1 and k distinct example counts."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(size).astype(dtype) for _ in range(k)], [int(n) for n in rng.integers(1, 400, k)]


@pytest.mark.parametrize("secure, clip, noise", list(product([False, True], [None, 1.5], [0.0, 0.7])))
def test_make_strategy_composes_the_objects_its_options_ask_for(secure, clip, noise):
    s = make_strategy(num_clients=30, fraction=0.2, seed=9, secure_agg=secure, dp_clip=clip, dp_noise=noise)
    assert s.sampler == ClientSampler(30, 0.2, 9)
    assert type(s.rule) is (SecureAggregation if secure else WeightedAverage)
    assert s.rule.equal is (clip is not None)           # DP-FedAvg weighs every client equally
    assert s.rule.all_or_nothing is secure
    if secure:
        assert s.rule.seed == 9                          # the pairwise masks come from the run seed
    if clip is None:
        assert s.privacy is None                         # --dp-noise alone adds nothing
        assert "DP" not in s.describe()
    else:
        assert s.privacy == DifferentialPrivacy(clip, noise, 9)
        assert f"DP clip {clip:g} noise {noise:g}" in s.describe()
    rule = "equal-weight average" if clip is not None else "example-weighted average"
    assert s.describe().startswith(("secure aggregation of the " if secure else "") + rule)


def test_all_or_nothing_only_for_secure_aggregation():
    assert WeightedAverage().all_or_nothing is False
    assert WeightedAverage(equal=True).all_or_nothing is False
    assert SecureAggregation().all_or_nothing is True
    assert SecureAggregation(equal=True, seed=3).all_or_nothing is True


@pytest.mark.parametrize("n, frac", [(100, 0.1), (10, 0.35), (7, 1.0), (1, 0.5)])
def test_client_sampler_is_sample_clients(n, frac):
    sampler = ClientSampler(n, frac, seed=5)
    assert sampler.per_round() == num_clients_per_round(n, frac)
    for r in (0, 1, 17):
        np.testing.assert_array_equal(sampler.sample(r), sample_clients(n, frac, seed=5, round=r))


def test_weighted_average_rule_combines_in_float64():
    us, ns = _updates()
    got = WeightedAverage().combine(us, ns, round=0)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, weighted_average(us, ns).astype(np.float64))
    # equal weights: the plain mean, whatever the counts
    eq = WeightedAverage(equal=True).combine(us, ns, round=0)
    assert eq.dtype == np.float64
    np.testing.assert_array_equal(eq, weighted_average(us, [1] * len(us)).astype(np.float64))
    np.testing.assert_allclose(eq, np.mean(np.stack(us).astype(np.float64), axis=0), rtol=1e-6, atol=1e-7)
    assert not np.allclose(eq, got)                     # the counts differ, so the weights matter
    assert WeightedAverage(equal=True).weight(123) == 1 and WeightedAverage().weight(123) == 123


def test_weighted_average_rule_sends_the_update_itself():
    us, ns = _updates(k=1)
    assert WeightedAverage().encode(us[0], ns[0], 0, [0], 0) is us[0]
    assert WeightedAverage().wire_dtype(np.float32) == np.float32


@pytest.mark.parametrize("equal", [False, True])
def test_secure_aggregation_combines_to_the_weighted_average(equal):
    us, ns = _updates(k=5)
    rule = SecureAggregation(equal=equal, seed=21)
    sampled, rnd = [2, 7, 11, 40, 41], 6
    msgs = [rule.encode(u, n, c, sampled, rnd) for u, n, c in zip(us, ns, sampled)]
    assert all(m.dtype == np.int64 and m.shape == us[0].shape for m in msgs)
    assert rule.wire_dtype(np.float32) == np.int64
    got = rule.combine(msgs, ns, rnd)
    weights = [1] * len(ns) if equal else ns
    want = sum(w * u.astype(np.float64) for w, u in zip(weights, us)) / sum(weights)
    # each client's weighted update rounds to 2**-32 (half a unit each way), the sum of k of them to k
    # units, divided by the sum of weights
    tol = len(us) * 2.0 ** -32 / sum(weights) + 4 * np.finfo(np.float64).eps * np.abs(want).max()
    assert np.abs(got - want).max() <= tol
    # no single message is the quantized update (it is masked)
    assert not np.array_equal(msgs[0], quantize(us[0].astype(np.float64) * weights[0]))


def test_secure_aggregation_without_one_clients_vector_is_garbage():
    us, ns = _updates(k=4)
    rule, sampled = SecureAggregation(seed=2), [0, 3, 5, 8]
    msgs = [rule.encode(u, n, c, sampled, 1) for u, n, c in zip(us, ns, sampled)]
    want = WeightedAverage().combine(us, ns, 1)
    np.testing.assert_allclose(rule.combine(msgs, ns, 1), want, atol=1e-6)
    for drop in range(4):
        keep = [k for k in range(4) if k != drop]
        partial = rule.combine([msgs[k] for k in keep], [ns[k] for k in keep], 1)
        # the masks of the dropped client's pairs no longer cancel: values far beyond the updates' scale
        assert np.abs(partial - want).max() > 1e3


def test_client_message_of_a_non_finite_update():
    bad = np.array([1.0, np.nan, 2.0], np.float32)
    for privacy in (None, DifferentialPrivacy(1.0, 0.5, 0)):
        plain = Strategy(ClientSampler(10, 0.5, 0), WeightedAverage(equal=privacy is not None), privacy)
        msg, ok = plain.client_message(bad, 10, 1, [1, 2], 0)
        assert msg is bad and ok is False                 # sent as it is, for the server to reject
        assert np.isnan(bad[1]) and bad[0] == 1.0         # and not clipped
        secure = Strategy(ClientSampler(10, 0.5, 0), SecureAggregation(equal=privacy is not None), privacy)
        msg, ok = secure.client_message(bad, 10, 1, [1, 2], 0)
        assert ok is False and msg.dtype == np.int64 and msg.shape == (0,)   # cannot be masked: nothing
    inf = np.array([np.inf, 0.0], np.float64)
    assert Strategy(ClientSampler(10, 0.5, 0), WeightedAverage()).client_message(inf, 3, 0, [0], 0)[1] is False


def test_client_message_clips_to_the_dp_norm_before_encoding():
    rng = np.random.default_rng(4)
    big = (10 * rng.standard_normal(500)).astype(np.float32)          # norm ~ 224
    clip = 2.5
    # plain averaging: the update itself, clipped in place
    s = make_strategy(num_clients=10, fraction=0.5, seed=1, dp_clip=clip)
    u = big.copy()
    msg, ok = s.client_message(u, 40, 3, [3, 4], 0)
    assert ok and msg is u
    norm = np.linalg.norm(msg.astype(np.float64))
    assert norm <= clip * (1 + 1e-6) and norm == pytest.approx(clip, rel=1e-5)
    np.testing.assert_allclose(msg / norm, big / np.linalg.norm(big.astype(np.float64)), rtol=1e-5, atol=1e-7)
    # secure aggregation: the clipped update is what gets encoded (one sampled client: no mask)
    s = make_strategy(num_clients=10, fraction=0.5, seed=1, dp_clip=clip, secure_agg=True)
    u = big.copy()
    msg, ok = s.client_message(u, 40, 3, [3], 0)
    assert ok and msg.dtype == np.int64
    decoded = dequantize(msg, np.float64)                             # weight 1 under DP
    assert np.linalg.norm(decoded) <= clip * (1 + 1e-6)
    np.testing.assert_array_equal(msg, s.rule.encode(u, 40, 3, [3], 0))   # u was clipped, then encoded
    # without DP nothing is clipped
    s = make_strategy(num_clients=10, fraction=0.5, seed=1)
    u = big.copy()
    s.client_message(u, 40, 3, [3, 4], 0)
    np.testing.assert_array_equal(u, big)


def test_dp_noise_is_reproducible_per_seed_and_round():
    dp = DifferentialPrivacy(clip=1.0, noise=0.8, seed=12)
    avg = np.linspace(-1, 1, 1000)
    before = avg.copy()
    a = dp.add_noise(avg, 5, round=3)
    np.testing.assert_array_equal(avg, before)                       # the input is not modified
    assert a.dtype == np.float64
    np.testing.assert_array_equal(a, dp.add_noise(avg, 5, round=3))
    np.testing.assert_array_equal(a, DifferentialPrivacy(1.0, 0.8, 12).add_noise(before.copy(), 5, 3))
    assert not np.array_equal(a, dp.add_noise(avg, 5, round=4))
    assert not np.array_equal(a, DifferentialPrivacy(1.0, 0.8, 13).add_noise(avg, 5, round=3))


@pytest.mark.parametrize("clip, noise, m", [(2.0, 1.5, 4), (0.5, 0.3, 1)])
def test_dp_noise_has_std_noise_times_clip_over_m(clip, noise, m):
    n = 200_000
    z = DifferentialPrivacy(clip, noise, seed=7).add_noise(np.zeros(n), m, round=2)
    std = noise * clip / m
    # the sample std's own relative std is 1/sqrt(2n) = 0.16%: 2% is over 12 of those
    assert z.std() == pytest.approx(std, rel=0.02)
    assert abs(z.mean()) < 6 * std / np.sqrt(n)


def test_dp_without_noise_returns_the_average_itself():
    avg = np.arange(5.0)
    assert DifferentialPrivacy(1.0, 0.0, 3).add_noise(avg, 2, 0) is avg
    np.testing.assert_array_equal(avg, np.arange(5.0))


@pytest.mark.parametrize("secure, clip, noise", [(False, None, 0.0), (True, None, 0.0), (False, 1.0, 0.5),
                                                 (True, 1.0, 0.5), (False, 1.0, 0.0)])
def test_aggregate_is_combine_then_noise(secure, clip, noise):
    s = make_strategy(num_clients=20, fraction=0.2, seed=4, secure_agg=secure, dp_clip=clip, dp_noise=noise)
    us, ns = _updates(k=4, size=100)
    sampled = s.sampler.sample(5).tolist()
    msgs = [s.client_message(u.copy(), n, c, sampled, 5)[0] for u, n, c in zip(us, ns, sampled)]
    got = s.aggregate(msgs, ns, 5)
    combined = s.rule.combine(msgs, ns, 5)
    want = s.privacy.add_noise(combined, len(msgs), 5) if s.privacy else combined
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float64
    if noise:
        assert not np.array_equal(got, combined)
