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


# Grayscale is a stream: 3 (or 12) bytes in, 1 (or 4) out per pixel. To run at memory speed the
# loop must be vectorized, and LLVM vectorizes a plain loop over a flat array with stride-3 loads
# (it also turns the division by 1000 into a multiply), but not the same loop written inside a
# prange. So the parallel loop hands chunks of CHUNK pixels to a serial, vectorized loop.
CHUNK = 1 << 16
_serial = numba.njit(cache=True, nogil=True, error_model="numpy")


@_serial
def _run_u8(rgb, dst):                    # rgb: 3 n bytes, R G B R G B ...; int32 math, exact
    for i in range(dst.shape[0]):
        y = (np.int32(WR) * np.int32(rgb[3 * i]) + np.int32(WG) * np.int32(rgb[3 * i + 1])
             + np.int32(WB) * np.int32(rgb[3 * i + 2]) + np.int32(HALF))
        dst[i] = y // np.int32(DIV)


@_serial
def _run_f32(rgb, dst):
    for i in range(dst.shape[0]):
        dst[i] = FR * rgb[3 * i] + FG * rgb[3 * i + 1] + FB * rgb[3 * i + 2]


@_serial
def _run_planar_u8(r, g, b, dst):         # channels first: three unit-stride planes
    for i in range(dst.shape[0]):
        y = (np.int32(WR) * np.int32(r[i]) + np.int32(WG) * np.int32(g[i]) + np.int32(WB) * np.int32(b[i])
             + np.int32(HALF))
        dst[i] = y // np.int32(DIV)


@_serial
def _run_planar_f32(r, g, b, dst):
    for i in range(dst.shape[0]):
        dst[i] = FR * r[i] + FG * g[i] + FB * b[i]


@_jit
def _gray_hwc(rgb, dst, u8):
    n = dst.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        a, b = c * CHUNK, min(n, (c + 1) * CHUNK)
        if u8:
            _run_u8(rgb[3 * a:3 * b], dst[a:b])
        else:
            _run_f32(rgb[3 * a:3 * b], dst[a:b])


@_jit
def _gray_chw(src, dst, u8):
    N, Q = dst.shape
    per = (Q + CHUNK - 1) // CHUNK
    for t in prange(N * per):
        n = t // per
        a = (t - n * per) * CHUNK
        b = min(Q, a + CHUNK)
        if u8:
            _run_planar_u8(src[n, 0, a:b], src[n, 1, a:b], src[n, 2, a:b], dst[n, a:b])
        else:
            _run_planar_f32(src[n, 0, a:b], src[n, 1, a:b], src[n, 2, a:b], dst[n, a:b])


def gray_hwc(src: np.ndarray, dst: np.ndarray) -> None:
    """src (P, 3) -> dst (P,)."""
    _gray_hwc(np.ascontiguousarray(src).reshape(-1), dst, dst.dtype == np.uint8)


def gray_chw(src: np.ndarray, dst: np.ndarray) -> None:
    """src (N, 3, Q) -> dst (N, Q)."""
    _gray_chw(src, dst, dst.dtype == np.uint8)


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
