"""grayscale on every host backend (and numba_cuda, simulated or real) against an exact reference."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kernels
from kernels import BackendUnavailable, grayscale

from .helpers import HOST, luma_f64, luma_u8, on_host_or_device

shapes = st.tuples(st.sampled_from([None, 0, 1, 2, 3]), st.integers(0, 13), st.integers(0, 17))


def _image(rng, n, h, w, dtype):
    shape = (h, w, 3) if n is None else (n, h, w, 3)
    if dtype == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return (rng.random(shape) * 255).astype(np.float32)


@pytest.mark.parametrize("backend", HOST)
@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_uint8_is_exact_on_awkward_shapes(backend, shape, seed):
    img = _image(np.random.default_rng(seed), *shape, np.uint8)
    got = grayscale(img, backend)
    assert got.dtype == np.uint8 and got.shape == img.shape[:-1]
    np.testing.assert_array_equal(got, luma_u8(img))


@pytest.mark.parametrize("backend", HOST)
@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_float32_matches_the_weighted_sum(backend, shape, seed):
    img = _image(np.random.default_rng(seed), *shape, np.float32)
    got = grayscale(img, backend)
    assert got.dtype == np.float32 and got.shape == img.shape[:-1]
    np.testing.assert_allclose(got, luma_f64(img), rtol=1e-6, atol=1e-4)


def _every_rgb_corner_and_tie():
    """Black, white, the primaries, every grey level, and the pixels whose exact luma ends in .5."""
    v = np.arange(256)
    greys = np.stack([v, v, v], axis=1)
    r, g, b = np.meshgrid(v[::5], v[::3], v, indexing="ij")
    cube = np.stack([r.ravel(), g.ravel(), b.ravel()], axis=1)
    ties = cube[(cube @ np.array([299, 587, 114])) % 1000 == 500]
    corners = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]])
    return np.concatenate([corners, greys, ties[:4000]]).astype(np.uint8), len(ties)


@pytest.mark.parametrize("backend", HOST)
def test_rounding_half_up_and_saturation(backend):
    px, n_ties = _every_rgb_corner_and_tie()
    assert n_ties > 100                                     # the ties exist and are tested
    img = px.reshape(1, -1, 3)
    if backend == "python":
        img = img[:, :20000]
    got = grayscale(img, backend)[0]
    np.testing.assert_array_equal(got, luma_u8(img[0]))
    assert got[0] == 0 and got[1] == 255                    # black, white: nothing wraps around
    np.testing.assert_array_equal(got[5:261], np.arange(256))   # a grey stays its own level
    exact = luma_f64(img[0])
    tie = np.isclose(exact % 1, 0.5)
    np.testing.assert_array_equal(got[tie], np.floor(exact[tie]) + 1)   # .5 rounds up


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_channels_first_and_strided_views(backend, dtype):
    img = _image(np.random.default_rng(1), 2, 9, 11, dtype)
    want = grayscale(img, backend)
    same = np.testing.assert_array_equal           # one backend, one formula: bit for bit
    chw = np.ascontiguousarray(img.transpose(0, 3, 1, 2))
    same(grayscale(chw, backend, layout="chw"), want)
    same(grayscale(chw[1], backend, layout="chw"), want[1])
    same(grayscale(img.transpose(0, 3, 1, 2), backend, layout="chw"), want)
    same(grayscale(img[:, ::2, 1:], backend), want[:, ::2, 1:])
    np.testing.assert_allclose(want, grayscale(img, "numpy"), rtol=1e-6)


@pytest.mark.parametrize("backend", HOST)
def test_out_is_filled_and_returned(backend):
    img = _image(np.random.default_rng(2), 3, 5, 7, np.uint8)
    out = np.full((3, 5, 7), 7, np.uint8)
    assert grayscale(img, backend, out=out) is out
    np.testing.assert_array_equal(out, luma_u8(img))


def test_auto_picks_a_host_backend_and_agrees():
    for shape in [(4, 4, 3), (2, 300, 300, 3)]:
        img = _image(np.random.default_rng(3), None if len(shape) == 3 else shape[0], *shape[-3:-1], np.uint8)
        np.testing.assert_array_equal(grayscale(img), luma_u8(img))


@pytest.mark.parametrize("images, layout, match", [
    (np.zeros((4, 4, 4), np.uint8), "hwc", r"expects \(H, W, 3\) or \(N, H, W, 3\), got shape \(4, 4, 4\)"),
    (np.zeros((3, 4, 5), np.uint8), "hwc", "layout='chw'"),
    (np.zeros((4, 5, 3), np.uint8), "chw", "layout='hwc'"),
    (np.zeros((4, 3), np.uint8), "hwc", "got shape"),
    (np.zeros((1, 2, 4, 4, 3), np.uint8), "hwc", "got shape"),
    (np.zeros((4, 4, 3), np.uint8), "nhwc", "layout must be one of hwc, chw"),
])
def test_bad_shapes_and_layouts(images, layout, match):
    with pytest.raises(ValueError, match=match):
        grayscale(images, layout=layout)


def test_bad_dtypes_backends_and_outputs():
    img = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(TypeError, match="uint8 or float32 images, got float64"):
        grayscale(img.astype(np.float64))
    with pytest.raises(ValueError, match="unknown backend 'cuda'; choose from auto, python"):
        grayscale(img, "cuda")
    with pytest.raises(ValueError, match="has no grayscale"):
        grayscale(img, "cublas")
    with pytest.raises(ValueError, match="out has shape"):
        grayscale(img, out=np.zeros((5, 4), np.uint8))
    with pytest.raises(TypeError, match="out has dtype float32"):
        grayscale(img, out=np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        grayscale(img, out=np.zeros((5, 4), np.uint8).T)
    flat = np.zeros(4 * 5 * 3 + 20, np.uint8)
    with pytest.raises(ValueError, match="overlaps an input"):
        grayscale(flat[:60].reshape(4, 5, 3), "numpy", out=flat[40:60].reshape(4, 5))
    with pytest.raises(ValueError, match="python backend is the plain-loop reference"):
        grayscale(np.zeros((300, 300, 3), np.uint8), "python")


def test_gpu_backends_refuse_host_arrays_or_say_what_is_missing():
    img = np.zeros((4, 5, 3), np.uint8)
    for name in ("numba_cuda", "cupy"):
        if name in kernels.available_backends():
            with pytest.raises(TypeError, match=r"kernels.to_device\(x, '" + name):
                grayscale(img, name)
        else:
            with pytest.raises(BackendUnavailable, match=f"backend '{name}' is not available: "):
                grayscale(img, name)


# -- on the GPU: Numba CUDA (the simulator where there is no GPU) and CuPy ---------------------------------
needs_numba_cuda = pytest.mark.skipif("numba_cuda" not in kernels.available_backends(),
                                      reason=kernels.backend_status()["numba_cuda"])
needs_cupy = pytest.mark.skipif("cupy" not in kernels.available_backends(), reason=kernels.backend_status()["cupy"])
GPU = [pytest.param("numba_cuda", marks=needs_numba_cuda), pytest.param("cupy", marks=needs_cupy)]


@pytest.mark.parametrize("backend", GPU)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 7, 13, 3), (0, 5, 5, 3), (3, 0, 4, 3)])
def test_gpu_grayscale_against_the_reference(backend, dtype, shape):
    img = _image(np.random.default_rng(4), *((None,) + shape[:2] if len(shape) == 3 else shape[:3]), dtype)
    got = on_host_or_device(grayscale, backend, img)
    if dtype == np.uint8:
        np.testing.assert_array_equal(got, luma_u8(img))
    else:
        np.testing.assert_allclose(got, luma_f64(img), rtol=1e-6, atol=1e-4)
    chw = np.ascontiguousarray(np.moveaxis(img, -1, -3))
    np.testing.assert_array_equal(on_host_or_device(grayscale, backend, chw, layout="chw"), got)


@pytest.mark.parametrize("backend", GPU)
def test_gpu_rounding_ties_out_and_array_kinds(backend):
    px, _ = _every_rgb_corner_and_tie()
    img = px[:1400].reshape(1, 28, 50, 3)
    d = kernels.to_device(img, backend)
    out = kernels.to_device(np.zeros((1, 28, 50), np.uint8), backend)
    res = grayscale(d, backend, out=out)
    assert res is out and kernels.is_device_array(res)        # GPU in, GPU out: nothing came back to the host
    np.testing.assert_array_equal(kernels.to_host(res), luma_u8(img))
    with pytest.raises(TypeError, match="got a GPU array"):
        grayscale(d, "numpy")
    with pytest.raises(TypeError, match="out is a host array"):
        grayscale(d, backend, out=np.zeros((1, 28, 50), np.uint8))
