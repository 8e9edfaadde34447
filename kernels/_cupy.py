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

from ._cuda_src import BM, BN, MATMUL_SRC, TX, TY, defines, gray_source

@functools.cache
def _gray_kernel(kind: str, layout: str) -> cp.ElementwiseKernel:
    params, out, body = gray_source(kind, layout)
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
    grid = ((M + BM - 1) // BM, (N + BN - 1) // BN)            # row blocks on x, as the kernel reads them
    fn(grid, (TX, TY), (a, b, out, cp.int32(M), cp.int32(N), cp.int32(K)))


def cublas_matmul(a, b, out) -> None:
    """Batched and broadcast, as np.matmul: cuBLAS through CuPy."""
    cp.matmul(a, b, out=out)
