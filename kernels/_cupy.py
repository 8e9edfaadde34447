"""The ``cupy`` backend (kernels of our own, compiled by CuPy at first use) and ``cublas``
(``cupy.matmul``: NVIDIA's BLAS, the reference to beat).

Grayscale is an ``ElementwiseKernel``: CuPy writes the loop over the output and the launch, we write
the body for one pixel ``i``. Matmul is a ``RawKernel`` in CUDA C: the same tiled, register-blocked
algorithm as the Numba CUDA kernel (docs/kernels.md), as a template instantiated for float and double.
Both need C-contiguous arrays; the wrapper in ``kernels.matmul`` makes them so.
"""
from __future__ import annotations

import functools

import cupy as cp

from ._cuda_src import BM, BN, MATMUL_SRC, TX, TY, defines
from ._luma import DIV, HALF, W_F32, W_INT

_U8 = " + ".join(f"{w} * (int)src[{{{c}}}]" for w, c in zip(W_INT, "rgb"))
_F32 = " + ".join(f"{float(w)!r}f * src[{{{c}}}]" for w, c in zip(W_F32, "rgb"))    # the float32 weights, exactly


@functools.cache
def _gray_kernel(kind: str, layout: str) -> cp.ElementwiseKernel:
    # hwc: src is (P, 3) flattened, pixel i at 3i, 3i+1, 3i+2; chw: (N, 3, Q), pixel i = n Q + q
    if layout == "hwc":
        idx, params = dict(r="3 * i", g="3 * i + 1", b="3 * i + 2"), "raw T src"
        pre = ""
    else:
        idx, params = dict(r="o", g="o + Q", b="o + 2 * Q"), "raw T src, int64 Q"
        pre = "long long o = (i / Q) * 3 * Q + i % Q; "
    if kind == "u8":
        body = f"{pre}int y = {_U8.format(**idx)}; dst = (unsigned char)((y + {HALF}) / {DIV});"
        out = "uint8 dst"
    else:
        body = f"{pre}dst = {_F32.format(**idx)};"
        out = "float32 dst"
    return cp.ElementwiseKernel(params, out, body, f"mpisim_gray_{kind}_{layout}")


def gray_hwc(src, dst) -> None:
    """src (P, 3) -> dst (P,), C-contiguous CuPy arrays."""
    _gray_kernel("u8" if dst.dtype == cp.uint8 else "f32", "hwc")(src.reshape(-1), dst)


def gray_chw(src, dst) -> None:
    """src (N, 3, Q) -> dst (N, Q), C-contiguous CuPy arrays."""
    _gray_kernel("u8" if dst.dtype == cp.uint8 else "f32", "chw")(src.reshape(-1), src.shape[2], dst.reshape(-1))


@functools.cache
def _module() -> cp.RawModule:
    return cp.RawModule(code=defines() + MATMUL_SRC, options=("-std=c++14",),
                        name_expressions=("mm<float>", "mm<double>"))


def matmul2d(a, b, out) -> None:
    """(M, K) @ (K, N) -> out (M, N), C-contiguous CuPy arrays."""
    M, K = a.shape
    N = b.shape[1]
    fn = _module().get_function("mm<float>" if out.dtype == cp.float32 else "mm<double>")
    grid = ((N + BN - 1) // BN, (M + BM - 1) // BM)
    fn(grid, (TX, TY), (a, b, out, cp.int32(M), cp.int32(N), cp.int32(K)))


def cublas_matmul(a, b, out) -> None:
    """Batched and broadcast, as np.matmul: cuBLAS through CuPy."""
    cp.matmul(a, b, out=out)
