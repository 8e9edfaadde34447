"""Half-precision number formats on the CPU: IEEE fp16 (NumPy's float16) and bfloat16.

NumPy has no bfloat16. A bfloat16 is the upper 16 bits of a float32 (1 sign, 8 exponent, 7 mantissa bits),
so float32 -> bfloat16 is a rounding of the lower 16 bits away, here round-to-nearest-even as hardware does
it; bfloat16 -> float32 puts the 16 bits back on top of 16 zero bits. NaN stays NaN (its rounding could
carry into the exponent and make an infinity, so NaNs are kept as a quiet NaN), infinities stay infinities.
"""
from __future__ import annotations

import numpy as np

__all__ = ["HALF_FORMATS", "bf16_decode", "bf16_encode", "bf16_round", "fp16_decode", "fp16_encode"]

HALF_FORMATS = ("fp16", "bf16")

_QNAN16 = np.uint16(0x7FC0)       # a quiet bfloat16 NaN


def bf16_encode(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest, ties to even."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = _QNAN16 | ((u[nan] >> np.uint32(16)).astype(np.uint16) & np.uint16(0x8000))
    return rounded


def bf16_decode(b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32 (exact)."""
    wide = np.ascontiguousarray(b, dtype=np.uint16).astype(np.uint32) << np.uint32(16)
    if out is None:
        return wide.view(np.float32)
    out[...] = wide.view(np.float32)
    return out


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (as float32)."""
    return bf16_decode(bf16_encode(x))


def fp16_encode(x: np.ndarray) -> np.ndarray:
    """float32 -> IEEE half bits (uint16), NumPy's rounding (to nearest, ties to even; overflow to inf)."""
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(x, dtype=np.float32).astype(np.float16).view(np.uint16)


def fp16_decode(b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """IEEE half bits (uint16) -> float32 (exact)."""
    wide = np.ascontiguousarray(b, dtype=np.uint16).view(np.float16).astype(np.float32)
    if out is None:
        return wide
    out[...] = wide
    return out
