"""The ``python`` backend: plain loops, the reference a course starts from.

Every pixel and every multiply-add is one step of the interpreter (about a microsecond), so this
backend refuses inputs over a small limit instead of running for minutes.
"""
from __future__ import annotations

import numpy as np

from ._luma import DIV, HALF, W_INT, W_PY

MAX_PIXELS = 1 << 16            # about 0.1 s of loops
MAX_MULTIPLY_ADDS = 1 << 18     # about 0.3 s of loops


def _too_big(what: str, n: int, limit: int) -> ValueError:
    return ValueError(f"the python backend is the plain-loop reference for small inputs: {n:,} {what} is over "
                      f"its limit of {limit:,}; use backend='numpy' or 'numba'")


def _luma(r, g, b, integer: bool):       # float images: Python floats (float64), stored as float32
    if integer:     # exact: round half up of (299 R + 587 G + 114 B) / 1000, never above 255
        return (W_INT[0] * r + W_INT[1] * g + W_INT[2] * b + HALF) // DIV
    return W_PY[0] * r + W_PY[1] * g + W_PY[2] * b


def gray_hwc(src: np.ndarray, dst: np.ndarray) -> None:
    """src (P, 3) -> dst (P,)."""
    if src.shape[0] > MAX_PIXELS:
        raise _too_big("pixels", src.shape[0], MAX_PIXELS)
    integer = dst.dtype == np.uint8
    rgb = src.tolist()
    dst[...] = [_luma(r, g, b, integer) for r, g, b in rgb]


def gray_chw(src: np.ndarray, dst: np.ndarray) -> None:
    """src (N, 3, Q) -> dst (N, Q)."""
    if dst.size > MAX_PIXELS:
        raise _too_big("pixels", dst.size, MAX_PIXELS)
    integer = dst.dtype == np.uint8
    for n, (rs, gs, bs) in enumerate(src.tolist()):
        dst[n] = [_luma(r, g, b, integer) for r, g, b in zip(rs, gs, bs)]


def check_size(multiply_adds: int) -> None:
    """Refuse a whole call (all of its batch) over the limit, before any loop starts."""
    if multiply_adds > MAX_MULTIPLY_ADDS:
        raise _too_big("multiply-adds", multiply_adds, MAX_MULTIPLY_ADDS)


def matmul2d(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """(M, K) @ (K, N) -> out (M, N): the triple loop, C[i][j] = sum_k A[i][k] * B[k][j]."""
    M, K = a.shape
    N = b.shape[1]
    check_size(M * N * K)
    A, B = a.tolist(), b.tolist()
    C = [[0.0] * N for _ in range(M)]
    for i in range(M):
        for k in range(K):
            aik, Bk, Ci = A[i][k], B[k], C[i]
            for j in range(N):
                Ci[j] += aik * Bk[j]
    out[...] = C
