"""Half-precision number formats on the CPU (IEEE fp16 and bfloat16), and what mixed-precision training
needs of them (Micikevicius et al. 2018, "Mixed Precision Training"): rounding to a format, and dynamic
loss scaling.

NumPy has no bfloat16. A bfloat16 is the upper 16 bits of a float32 (1 sign, 8 exponent, 7 mantissa bits),
so float32 -> bfloat16 is a rounding of the lower 16 bits away, here round-to-nearest-even as hardware does
it; bfloat16 -> float32 puts the 16 bits back on top of 16 zero bits. NaN stays NaN (its rounding could
carry into the exponent and make an infinity, so NaNs are kept as a quiet NaN), infinities stay infinities.

Mixed precision keeps float32 master weights and computes in a half format. NumPy has no fast half GEMM,
so on the CPU the MLP EMULATES it (mpisim.nn.model): it computes in float32 but rounds every layer's
inputs, weights and outputs, and in backward the incoming gradient and the gradients it produces, to the
half format (:func:`rounder`): the numerics of half storage with float32 accumulation, as tensor cores
accumulate. fp16's range ends at 65504 and its smallest subnormal is 2^-24, so small gradients vanish;
:class:`LossScaler` multiplies the loss (its gradient) by a large scale before backward and divides it out
of the float32 gradient after, skipping the steps whose gradient overflowed (torch.cuda.amp.GradScaler's
rule). bfloat16 has float32's range and needs no loss scaling, only fp16 gets one.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["BYTES_PER_VALUE", "HALF_FORMATS", "PRECISIONS", "UNIT_ROUNDOFF", "LossScaler", "bf16_decode", "bf16_encode",
           "bf16_round", "fp16_decode", "fp16_encode", "fp16_round", "gpu_half_dtype", "half_matmul", "rounder"]

HALF_FORMATS = ("fp16", "bf16")
PRECISIONS = ("fp32", *HALF_FORMATS)                     # --precision
BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "bf16": 2}
# |round(x) - x| <= u |x| in the normal range: 2^-(mantissa bits + 1)
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8}

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


def fp16_round(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 values rounded to the nearest fp16 (as float32); from 65520 up (half a step past fp16's
    largest, 65504) they overflow to inf, as a float32 -> half conversion does."""
    return fp16_decode(fp16_encode(x), out=out)


def rounder(precision: str, xp=np) -> Callable[..., None] | None:
    """``round_(a, out=None)``: the float32 array ``a`` (of array module ``xp``) rounded to ``precision``,
    in place or into ``out``: its values become those of the half format (fp16 overflows to inf).
    None for fp32: nothing to do."""
    if precision == "fp32":
        return None
    if precision not in HALF_FORMATS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if xp is np:
        encode, decode = (fp16_encode, fp16_decode) if precision == "fp16" else (bf16_encode, bf16_decode)

        def round_(a, out=None) -> None:
            decode(encode(a), out=a if out is None else out)
        return round_
    half = gpu_half_dtype(precision, xp)

    def round_gpu(a, out=None) -> None:
        (a if out is None else out)[...] = a.astype(half)
    return round_gpu


# -- a GPU (--device cuda): real half GEMMs --------------------------------------------------------------
def gpu_half_dtype(precision: str, xp):
    """The dtype of ``precision`` in array module ``xp`` (CuPy): float16, or bfloat16 where CuPy has one
    (CuPy 14 with ml_dtypes, still experimental there). Raises ValueError saying why not."""
    if precision == "fp16":
        return xp.float16
    try:
        import ml_dtypes
        bf16 = np.dtype(ml_dtypes.bfloat16)
        a = xp.ones((2, 2), dtype=bf16)                 # CuPy without bfloat16 refuses the dtype here
        xp.matmul(a, a).astype(xp.float32)
    except Exception as e:                              # noqa: BLE001 - any refusal means "not here"
        raise ValueError("--precision bf16 with --device cuda needs CuPy arrays of bfloat16 (CuPy 14 or later "
                         f"with ml_dtypes), not available here ({type(e).__name__}: {e}); use --precision fp16 on "
                         "the GPU, or bf16 on the CPU (emulated)") from None
    return bf16


def half_matmul(xp, half) -> Callable:
    """``matmul(a, b, out)`` for float32 ``a``, ``b``, ``out`` of ``xp`` (CuPy) that multiplies in the half
    dtype ``half``: cuBLAS's GEMM on half inputs (tensor cores; CuPy's default compute type accumulates in
    float32), its half result widened into ``out``. The layers round their inputs and weights to the format
    first, so the casts lose nothing; the bias is added after the GEMM's rounding (the emulation rounds once).
    Not run in the test suite (no GPU there)."""
    def matmul(a, b, out):
        out[...] = xp.matmul(a.astype(half), b.astype(half))    # (m, k) @ (k, n) -> (m, n), in half
        return out
    return matmul


# -- dynamic loss scaling ----------------------------------------------------------------------------------
class LossScaler:
    """Dynamic loss scaling for fp16 (Micikevicius et al. 2018, section 3.2), with the rule of
    torch.cuda.amp.GradScaler.

    Each step: the loss gradient is multiplied by ``scale`` before backward (pass ``loss_scale=scale`` to
    ``MLP.train_step``); after backward, and in a data-parallel trainer after the gradient allreduce (so
    every rank decides alike), :meth:`unscale_and_check` divides the gradient by the scale and says
    whether every value is finite. If not, the optimizer step must be skipped: the scale backs off and
    the step is counted in ``skipped``. After ``growth_interval`` clean steps in a row the scale grows.

    A gradient that stays non-finite however small the scale is not the scale's doing: once the scale
    falls below ``min_scale`` (2^-24, fp16's smallest subnormal) the run has diverged, and
    :meth:`unscale_and_check` raises FloatingPointError as the trainers do.
    """

    def __init__(self, *, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, min_scale: float = 2.0**-24) -> None:
        if not (0 < init_scale < np.inf and growth_factor > 1 and 0 < backoff_factor < 1 and growth_interval >= 1
                and 0 < min_scale <= init_scale):
            raise ValueError(f"LossScaler: need 0 < min_scale <= init_scale < inf, growth_factor > 1, "
                             f"0 < backoff_factor < 1, growth_interval >= 1; got {init_scale}, {growth_factor}, "
                             f"{backoff_factor}, {growth_interval}, {min_scale}")
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval, self.min_scale = int(growth_interval), float(min_scale)
        self.clean = 0              # clean steps since the scale last changed (GradScaler's growth tracker)
        self.skipped = 0            # steps skipped over the run

    def unscale_and_check(self, grads: np.ndarray, *, where: str = "") -> bool:
        """Divide ``grads`` (the float32 gradient, in place) by the scale; True if every value is finite
        (take the step), False if not (skip it: the scale has backed off). Updates the scale either way.
        ``where`` names the step in the error raised when the scale falls below ``min_scale``."""
        with np.errstate(over="ignore", invalid="ignore"):
            grads *= grads.dtype.type(1.0 / self.scale)   # checked after: 1/scale > 1 can overflow too
        if np.isfinite(grads).all():
            self.clean += 1
            if self.clean >= self.growth_interval:
                self.scale *= self.growth_factor
                self.clean = 0
            return True
        self.skipped += 1
        self.clean = 0
        self.scale *= self.backoff_factor
        if self.scale < self.min_scale:
            raise FloatingPointError(f"non-finite gradient{' ' + where if where else ''} even with the fp16 "
                                     f"loss scale down to {self.scale:g}: lower --lr")
        return False

    def state_dict(self) -> dict[str, np.ndarray]:
        """The scaler's state as arrays (for a checkpoint): scale, clean steps, skipped steps."""
        return {"scale": np.array(self.scale, dtype=np.float64), "clean": np.array(self.clean, dtype=np.int64),
                "skipped": np.array(self.skipped, dtype=np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned."""
        missing = {"scale", "clean", "skipped"} - set(state)
        if missing:
            raise ValueError(f"loss scaler state is missing {sorted(missing)}")
        scale = float(state["scale"])
        if not 0 < scale < np.inf:
            raise ValueError(f"loss scaler state: scale must be positive and finite, got {scale}")
        self.scale, self.clean, self.skipped = scale, int(state["clean"]), int(state["skipped"])

    def __repr__(self) -> str:
        return f"LossScaler(scale={self.scale:g}, skipped={self.skipped})"
