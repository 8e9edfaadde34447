"""Property tests: every collective on the simulated transport equals NumPy's reduction.

hypothesis draws the rank count (1..16), length (0..5000), dtype, op, algorithm, root and a
seed for each rank's data. Data are integer-valued, so every algorithm must match the NumPy
result exactly, whatever order it reduces in; allreduce results must also be bit-identical
across ranks.
"""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mpisim import run_simulated
from mpisim.comm import (
    ALLGATHER_ALGORITHMS,
    ALLREDUCE_ALGORITHMS,
    BCAST_ALGORITHMS,
    DTYPES,
    REDUCE_SCATTER_ALGORITHMS,
    allgather,
    allreduce,
    barrier,
    bcast,
    gather,
    reduce,
    reduce_scatter,
    scatter,
)

REFERENCE = {"sum": np.sum, "prod": np.prod, "max": np.max, "min": np.min}

ranks = st.integers(1, 16)
lengths = st.integers(0, 5000)
dtypes = st.sampled_from(DTYPES)
ops = st.sampled_from(sorted(REFERENCE))
seeds = st.integers(0, 2**32 - 1)


def rank_data(seed: int, p: int, n: int, dtype, op: str) -> list[np.ndarray]:
    """Integer-valued data per rank whose reduction is exact in every dtype and order."""
    rng = np.random.default_rng(seed)
    if op == "prod":  # |product| <= 2**16 for 16 ranks: exact in float32
        vals = [rng.choice(np.array([-2, -1, 0, 1, 1, 1, 2]), size=n) for _ in range(p)]
    else:
        vals = [rng.integers(-1000, 1001, size=n) for _ in range(p)]
    return [v.astype(dtype) for v in vals]


def expected(data: list[np.ndarray], op: str) -> np.ndarray:
    stacked = np.stack(data)
    return REFERENCE[op](stacked, axis=0).astype(stacked.dtype)


@given(p=ranks, n=lengths, dtype=dtypes, op=ops, algorithm=st.sampled_from(ALLREDUCE_ALGORITHMS), seed=seeds)
def test_allreduce_equals_numpy_and_is_bit_identical(p, n, dtype, op, algorithm, seed):
    data = rank_data(seed, p, n, dtype, op)
    out = run_simulated(p, lambda t: allreduce(t, data[t.rank], op, algorithm))
    want = expected(data, op)
    for r, res in enumerate(out):
        assert res.dtype == dtype and res.shape == (n,)
        np.testing.assert_array_equal(res, want, err_msg=f"rank {r}")
        assert res.tobytes() == out[0].tobytes()


@given(p=ranks, shape=st.lists(st.integers(0, 7), min_size=0, max_size=3), dtype=dtypes, op=ops,
       algorithm=st.sampled_from(ALLREDUCE_ALGORITHMS), seed=seeds)
def test_allreduce_keeps_nd_shape(p, shape, dtype, op, algorithm, seed):
    n = int(np.prod(shape))
    data = [d.reshape(shape) for d in rank_data(seed, p, n, dtype, op)]
    out = run_simulated(p, lambda t: allreduce(t, data[t.rank], op, algorithm))
    for res in out:
        assert res.shape == tuple(shape)
        np.testing.assert_array_equal(res, expected(data, op))


@given(p=ranks, n=st.integers(0, 3000), dtype=st.sampled_from([np.float32, np.float64]),
       algorithm=st.sampled_from(ALLREDUCE_ALGORITHMS), seed=seeds)
def test_allreduce_real_valued_is_close_and_bit_identical(p, n, dtype, algorithm, seed):
    """Non-integer floats: the sum depends on order, but all ranks must agree bit for bit."""
    rng = np.random.default_rng(seed)
    data = [rng.standard_normal(n).astype(dtype) for _ in range(p)]
    out = run_simulated(p, lambda t: allreduce(t, data[t.rank], "sum", algorithm))
    want = np.sum(np.stack(data).astype(np.float64), axis=0)
    for res in out:
        assert res.tobytes() == out[0].tobytes()
        np.testing.assert_allclose(res, want, rtol=1e-4, atol=1e-4 * p)


@given(p=ranks, n=lengths, dtype=dtypes, data=st.data(), algorithm=st.sampled_from(BCAST_ALGORITHMS), seed=seeds)
def test_bcast(p, n, dtype, data, algorithm, seed):
    root = data.draw(st.integers(0, p - 1), label="root")
    vals = rank_data(seed, p, n, dtype, "sum")
    out = run_simulated(p, lambda t: bcast(t, vals[t.rank], root, algorithm))
    for res in out:
        np.testing.assert_array_equal(res, vals[root])


@given(p=ranks, n=lengths, dtype=dtypes, op=ops, data=st.data(), seed=seeds)
def test_reduce(p, n, dtype, op, data, seed):
    root = data.draw(st.integers(0, p - 1), label="root")
    vals = rank_data(seed, p, n, dtype, op)
    out = run_simulated(p, lambda t: reduce(t, vals[t.rank], op, root))
    for r, res in enumerate(out):
        if r == root:
            np.testing.assert_array_equal(res, expected(vals, op))
        else:
            assert res is None


@given(p=ranks, n=st.integers(0, 600), dtype=dtypes, data=st.data(), seed=seeds)
def test_gather_and_scatter_are_inverse(p, n, dtype, data, seed):
    root = data.draw(st.integers(0, p - 1), label="root")
    vals = [v.reshape(-1, 1) if n % 2 else v for v in rank_data(seed, p, n, dtype, "sum")]

    def fn(t):
        g = gather(t, vals[t.rank], root)
        full = g if t.rank == root else np.empty((p, *vals[0].shape), dtype=vals[0].dtype)
        return g, scatter(t, full, root)

    out = run_simulated(p, fn)
    for r, (g, s) in enumerate(out):
        if r == root:
            np.testing.assert_array_equal(g, np.stack(vals))
        else:
            assert g is None
        np.testing.assert_array_equal(s, vals[r])


@given(p=ranks, n=st.integers(0, 600), dtype=dtypes, algorithm=st.sampled_from(ALLGATHER_ALGORITHMS), seed=seeds)
def test_allgather(p, n, dtype, algorithm, seed):
    vals = rank_data(seed, p, n, dtype, "sum")
    out = run_simulated(p, lambda t: allgather(t, vals[t.rank], algorithm))
    for res in out:
        np.testing.assert_array_equal(res, np.stack(vals))


@given(p=ranks, n=lengths, dtype=dtypes, op=ops, algorithm=st.sampled_from(REDUCE_SCATTER_ALGORITHMS), seed=seeds)
def test_reduce_scatter(p, n, dtype, op, algorithm, seed):
    vals = rank_data(seed, p, n, dtype, op)
    out = run_simulated(p, lambda t: reduce_scatter(t, vals[t.rank], op, algorithm))
    blocks = np.array_split(expected(vals, op), p)
    for r, res in enumerate(out):
        np.testing.assert_array_equal(res, blocks[r])


@given(p=ranks)
def test_barrier_lets_no_rank_leave_early(p):
    """Every rank records 'in' before the barrier and reads the log after it: all p 'in's are there."""
    log = []

    def fn(t):
        log.append(t.rank)
        barrier(t)
        return len(log)

    assert run_simulated(p, fn) == [p] * p


@given(p=ranks, n=st.integers(0, 3000), dtype=dtypes, op=ops, algorithm=st.sampled_from(ALLREDUCE_ALGORITHMS),
       seed=seeds, in_place=st.booleans())
def test_allreduce_into_out_and_in_place(p, n, dtype, op, algorithm, seed, in_place):
    data = rank_data(seed, p, n, dtype, op)

    def fn(t):
        x = data[t.rank].copy()
        out = x if in_place else np.full_like(x, 77)
        res = allreduce(t, x, op, algorithm, out=out)
        return res is out, out, x

    want = expected(data, op)
    for r, (is_out, out, x) in enumerate(run_simulated(p, fn)):
        assert is_out
        np.testing.assert_array_equal(out, want)
        if not in_place:
            np.testing.assert_array_equal(x, data[r])  # the input is untouched


@given(p=st.integers(2, 16), n=st.integers(1, 200), op=st.sampled_from(["max", "min", "sum"]),
       algorithm=st.sampled_from(ALLREDUCE_ALGORITHMS), seed=seeds)
def test_allreduce_bit_identical_with_signed_zeros_and_nans(p, n, op, algorithm, seed):
    """max(-0.0, 0.0) and NaN payloads depend on operand order: every rank must still agree."""
    rng = np.random.default_rng(seed)
    specials = np.array([0.0, -0.0, np.nan, -np.nan, 1.0], dtype=np.float32)
    nan2 = np.frombuffer(np.uint32(0x7FC00001).tobytes(), np.float32)  # another NaN payload
    pool = np.concatenate([specials, nan2])
    data = [rng.choice(pool, size=n) for _ in range(p)]
    out = run_simulated(p, lambda t: allreduce(t, data[t.rank], op, algorithm))
    assert all(res.tobytes() == out[0].tobytes() for res in out)


def test_recursive_doubling_nan_payloads_one_element_three_ranks():
    """The case hypothesis found: NumPy's size-1 add keeps the second operand's NaN payload."""
    nan2 = np.frombuffer(np.uint32(0x7FC00001).tobytes(), np.float32)
    data = [np.array([np.nan], np.float32), -nan2.copy(), nan2.copy()]
    for p in (3, 5):
        out = run_simulated(p, lambda t: allreduce(t, data[t.rank % 3], "sum", "recursive_doubling"))
        assert all(res.tobytes() == out[0].tobytes() for res in out)
