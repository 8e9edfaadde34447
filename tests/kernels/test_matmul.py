"""matmul on every backend against NumPy's, on shapes that are not multiples of any tile."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import matmul

from .helpers import HOST, on_host_or_device

dims = st.integers(0, 37)
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def _pair(rng, sa, sb, dtype):
    return rng.standard_normal(sa).astype(dtype), rng.standard_normal(sb).astype(dtype)


def _check(got, a, b, dtype):
    want = a.astype(np.float64) @ b.astype(np.float64)
    assert got.dtype == dtype and got.shape == want.shape
    scale = np.sqrt(max(a.shape[-1], 1))                   # a sum of K products of N(0, 1) values
    np.testing.assert_allclose(got, want, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale)


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(m=dims, k=dims, n=dims, seed=st.integers(0, 2**32 - 1))
def test_2d_on_awkward_shapes(backend, dtype, m, k, n, seed):
    a, b = _pair(np.random.default_rng(seed), (m, k), (k, n), dtype)
    _check(matmul(a, b, backend), a, b, dtype)


@pytest.mark.parametrize("backend", HOST)
@given(batch_a=st.sampled_from([(), (1,), (3,), (2, 1)]), batch_b=st.sampled_from([(), (1,), (3,), (1, 3)]),
       m=st.integers(1, 9), k=st.integers(0, 9), n=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=25)
def test_batches_broadcast_as_numpy(backend, batch_a, batch_b, m, k, n, seed):
    a, b = _pair(np.random.default_rng(seed), batch_a + (m, k), batch_b + (k, n), np.float32)
    got = matmul(a, b, backend)
    assert got.shape == np.matmul(a, b).shape
    _check(got, a, b, np.float32)


@pytest.mark.parametrize("backend", HOST)
def test_vectors_transposes_and_sizes_across_the_blocks(backend):
    rng = np.random.default_rng(5)
    v, m = rng.standard_normal(13), rng.standard_normal((13, 6))
    _check(matmul(v, m, backend), v, m, np.float64)            # (K,) @ (K, N) -> (N,)
    _check(matmul(m.T, v, backend), m.T, v, np.float64)        # transposed view @ (K,) -> (M,)
    _check(matmul(v, v, backend), v, v, np.float64)            # dot product -> shape ()
    if backend != "python":                                    # 4 x 4 unrolled part, remainders, 2 row blocks
        a, b = _pair(rng, (131, 263), (263, 259), np.float32)
        _check(matmul(a, b, backend), a, b, np.float32)
        _check(matmul(b.T, a.T, backend), b.T, a.T, np.float32)


@pytest.mark.parametrize("backend", HOST)
def test_out_and_empty_inner_dimension(backend):
    a, b = np.ones((3, 0), np.float32), np.ones((0, 4), np.float32)
    out = np.full((3, 4), np.nan, np.float32)
    assert matmul(a, b, backend, out=out) is out
    np.testing.assert_array_equal(out, 0)                      # a sum of nothing is 0, as in NumPy


def test_auto_is_numpy_on_the_host():
    a, b = _pair(np.random.default_rng(6), (5, 7), (7, 3), np.float32)
    np.testing.assert_array_equal(matmul(a, b), a @ b)


@pytest.mark.parametrize("a, b, err, match", [
    (np.ones((2, 3), np.float32), np.ones((4, 2), np.float32), ValueError, r"do not multiply: a has 3 columns, b has 4 rows"),
    (np.ones((2, 3), np.float32), np.ones((3, 2), np.float64), TypeError, "got float32 and float64"),
    (np.ones((2, 3), np.int64), np.ones((3, 2), np.int64), TypeError, "two float32 or two float64"),
    (np.float32(2), np.ones((3, 2), np.float32), ValueError, "a scalar is not a matrix"),
    (np.ones((2, 2, 3), np.float32), np.ones((3, 3, 2), np.float32), ValueError, "do not broadcast"),
])
def test_bad_operands(a, b, err, match):
    with pytest.raises(err, match=match):
        matmul(a, b, "numba")


def test_bad_outputs_and_backends():
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"out has shape \(4, 2\), the result has shape \(2, 4\)"):
        matmul(a, b, out=np.zeros((4, 2), np.float32))
    buf = np.ones(20, np.float32)
    with pytest.raises(ValueError, match="overlaps an input"):
        matmul(buf[:6].reshape(2, 3), buf[6:15].reshape(3, 3), "numba", out=buf[10:16].reshape(2, 3))
    with pytest.raises(ValueError, match="unknown backend 'blas'"):
        matmul(a, b, "blas")
    with pytest.raises(ValueError, match="python backend is the plain-loop reference"):
        matmul(np.ones((100, 100)), np.ones((100, 100)), "python")
    with pytest.raises(TypeError, match="backend must be a name"):
        matmul(a, b, None)
    with pytest.raises(ValueError, match="1,600,000 multiply-adds is over"):      # the whole batch counts
        matmul(np.ones((100, 20, 20)), np.ones((20, 40)), "python")
    ro = np.zeros((2, 4), np.float32)
    ro.flags.writeable = False
    for backend in HOST:
        with pytest.raises(ValueError, match="out is read-only"):
            matmul(a, b, backend, out=ro)
        with pytest.raises(TypeError, match="out must be an array"):
            matmul(a, b, backend, out=[[0.0] * 4] * 2)


# -- on the GPU: Numba CUDA (the simulator where there is no GPU), CuPy and cuBLAS -------------------------
needs = {name: pytest.mark.skipif(name not in kernels.available_backends(), reason=kernels.backend_status()[name])
         for name in kernels.GPU_BACKENDS}
GPU = [pytest.param(name, marks=needs[name]) for name in kernels.GPU_BACKENDS]


@pytest.mark.parametrize("backend", GPU)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(m=st.integers(0, 19), k=st.integers(0, 21), n=st.integers(0, 19), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=6)       # the simulator runs every CUDA thread as a Python thread
def test_gpu_2d_on_awkward_shapes(backend, dtype, m, k, n, seed):
    a, b = _pair(np.random.default_rng(seed), (m, k), (k, n), dtype)
    _check(on_host_or_device(matmul, backend, a, b), a, b, dtype)


@pytest.mark.parametrize("backend", GPU)
def test_gpu_tile_edges_batches_and_array_kinds(backend):
    rng = np.random.default_rng(7)
    a, b = _pair(rng, (129, 9), (9, 130), np.float32)          # one past the 128 x 128 tile, K not a multiple of 8
    _check(on_host_or_device(matmul, backend, a, b), a, b, np.float32)
    a, b = _pair(rng, (2, 3, 5), (5, 4), np.float64)           # a batch, b broadcast over it
    _check(on_host_or_device(matmul, backend, a, b), a, b, np.float64)
    da, db = kernels.to_device(a[0], backend), kernels.to_device(b, backend)
    out = kernels.to_device(np.zeros((3, 4)), backend)
    res = matmul(da, db, backend, out=out)
    assert res is out and kernels.is_device_array(res)
    _check(kernels.to_host(res), a[0], b, np.float64)
    with pytest.raises(TypeError, match="one operand is on the GPU"):
        matmul(da, b, backend)
    sq = kernels.to_device(np.ones((3, 3)), backend)
    with pytest.raises(ValueError, match="out overlaps an input"):   # it would read what it already wrote
        matmul(sq, sq, backend, out=sq)
