"""The ``numpy`` backend: whole-array expressions (grayscale) and BLAS through ``np.matmul``."""
from __future__ import annotations

import numpy as np

from ._luma import DIV, HALF, W_F32, W_INT


def _luma(r, g, b, dst) -> None:
    if dst.dtype == np.uint8:          # int32: 255 * 1000 + 500 fits, uint16 would overflow
        y = r.astype(np.int32) * W_INT[0]
        y += g.astype(np.int32) * W_INT[1]
        y += b.astype(np.int32) * W_INT[2]
        y += HALF
        y //= DIV
        dst[...] = y
    else:                              # float32 scalars: float32 math (a Python float would promote)
        np.multiply(r, W_F32[0], out=dst)
        dst += g * W_F32[1]
        dst += b * W_F32[2]


def gray_hwc(src: np.ndarray, dst: np.ndarray) -> None:
    """src (P, 3) -> dst (P,)."""
    _luma(src[:, 0], src[:, 1], src[:, 2], dst)


def gray_chw(src: np.ndarray, dst: np.ndarray) -> None:
    """src (N, 3, Q) -> dst (N, Q)."""
    _luma(src[:, 0], src[:, 1], src[:, 2], dst)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """Batched and broadcast as np.matmul; ``out`` has the full result shape."""
    np.matmul(a, b, out=out)
