"""The ``numba`` backend: compiled, parallel loops on the CPU (``prange`` over rows or pixels).

Each function compiles once per dtype and layout and is cached on disk (``cache=True``), so only
the first run on a machine pays the compilation.

The matrix multiply is blocked the way BLAS is, without its hand-written assembly:
* a thread takes ``MB`` rows of C (``prange``), and walks ``NB`` columns and ``KB`` of K at a time,
  so the slices of B and C it touches stay in its cache (KB x NB of B is 256 KB in float32);
* the innermost loop runs along a row of B and of C (contiguous: LLVM vectorizes it), and does
  4 rows x 4 k at once, so each element of C loaded and stored carries 16 multiply-adds instead of 1.
``fastmath`` lets LLVM reorder the sums (the result differs from BLAS in the last bits, as BLAS's
own blocking does from the naive sum).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._luma import DIV, HALF, W_F32, W_INT

_jit = numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy")

MB, KB, NB = 64, 256, 256      # rows of C per task, depth of K and columns of C per block
WR, WG, WB = W_INT
FR, FG, FB = W_F32


@_jit
def _gray_hwc_u8(src, dst):
    for i in prange(dst.shape[0]):
        y = WR * np.int32(src[i, 0]) + WG * np.int32(src[i, 1]) + WB * np.int32(src[i, 2])
        dst[i] = (y + HALF) // DIV


@_jit
def _gray_hwc_f32(src, dst):
    for i in prange(dst.shape[0]):
        dst[i] = FR * src[i, 0] + FG * src[i, 1] + FB * src[i, 2]


@_jit
def _gray_chw_u8(src, dst):
    N, Q = dst.shape
    for n in range(N):                  # one parallel loop per image (an image is many pixels)
        for q in prange(Q):
            y = WR * np.int32(src[n, 0, q]) + WG * np.int32(src[n, 1, q]) + WB * np.int32(src[n, 2, q])
            dst[n, q] = (y + HALF) // DIV


@_jit
def _gray_chw_f32(src, dst):
    N, Q = dst.shape
    for n in range(N):
        for q in prange(Q):
            dst[n, q] = FR * src[n, 0, q] + FG * src[n, 1, q] + FB * src[n, 2, q]


def gray_hwc(src: np.ndarray, dst: np.ndarray) -> None:
    """src (P, 3) -> dst (P,)."""
    (_gray_hwc_u8 if dst.dtype == np.uint8 else _gray_hwc_f32)(src, dst)


def gray_chw(src: np.ndarray, dst: np.ndarray) -> None:
    """src (N, 3, Q) -> dst (N, Q)."""
    (_gray_chw_u8 if dst.dtype == np.uint8 else _gray_chw_f32)(src, dst)


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
def _matmul(A, B, C):
    M, K = A.shape
    N = B.shape[1]
    for ib in prange((M + MB - 1) // MB):
        i0 = ib * MB
        i1 = min(i0 + MB, M)
        for i in range(i0, i1):
            for j in range(N):
                C[i, j] = 0
        for j0 in range(0, N, NB):
            j1 = min(j0 + NB, N)
            nj = j1 - j0
            for k0 in range(0, K, KB):
                k1 = min(k0 + KB, K)
                for i in range(i0, i1, 4):
                    k = k0
                    if i + 4 <= i1:                # 4 rows x 4 k per pass over the row of C
                        c0, c1, c2, c3 = C[i, j0:j1], C[i + 1, j0:j1], C[i + 2, j0:j1], C[i + 3, j0:j1]
                        while k + 4 <= k1:
                            b0, b1, b2, b3 = B[k, j0:j1], B[k + 1, j0:j1], B[k + 2, j0:j1], B[k + 3, j0:j1]
                            a00, a01, a02, a03 = A[i, k], A[i, k + 1], A[i, k + 2], A[i, k + 3]
                            a10, a11, a12, a13 = A[i + 1, k], A[i + 1, k + 1], A[i + 1, k + 2], A[i + 1, k + 3]
                            a20, a21, a22, a23 = A[i + 2, k], A[i + 2, k + 1], A[i + 2, k + 2], A[i + 2, k + 3]
                            a30, a31, a32, a33 = A[i + 3, k], A[i + 3, k + 1], A[i + 3, k + 2], A[i + 3, k + 3]
                            for j in range(nj):
                                x0, x1, x2, x3 = b0[j], b1[j], b2[j], b3[j]
                                c0[j] += a00 * x0 + a01 * x1 + a02 * x2 + a03 * x3
                                c1[j] += a10 * x0 + a11 * x1 + a12 * x2 + a13 * x3
                                c2[j] += a20 * x0 + a21 * x1 + a22 * x2 + a23 * x3
                                c3[j] += a30 * x0 + a31 * x1 + a32 * x2 + a33 * x3
                            k += 4
                    for r in range(i, min(i + 4, i1)):   # the rows and k left over: one at a time
                        c = C[r, j0:j1]
                        for kk in range(k, k1):
                            a = A[r, kk]
                            b = B[kk, j0:j1]
                            for j in range(nj):
                                c[j] += a * b[j]


def matmul2d(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """(M, K) @ (K, N) -> out (M, N)."""
    _matmul(a, b, out)
