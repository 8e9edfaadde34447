"""Learning-rate schedules, as functions of the (fractional) epoch, and the linear scaling rule.

* step: lr * gamma ** floor(epoch / step_size)          (torch's StepLR, stepped once per epoch)
* cosine: min_lr + (lr - min_lr) * (1 + cos(pi * t / T)) / 2   (Loshchilov and Hutter 2017, no restarts)
* warmup: lr rises linearly from lr/10 over the first ``warmup`` epochs, then the schedule above takes over
  (Goyal et al. 2017, who pair it with the linear scaling rule: lr * global_batch / base_batch).
"""
from __future__ import annotations

import math
from typing import Callable

__all__ = ["SCHEDULES", "make_schedule", "linear_scaling", "scaled_lr"]

SCHEDULES = ("constant", "step", "cosine")


def linear_scaling(base_lr: float, global_batch: int, base_batch: int = 256) -> float:
    """The linear scaling rule: a global batch k times larger gets a k times larger learning rate."""
    if global_batch <= 0 or base_batch <= 0:
        raise ValueError(f"batch sizes must be positive, got {global_batch} and {base_batch}")
    return base_lr * global_batch / base_batch


def scaled_lr(lr: float, scaling: str, global_batch: int, base_batch: int | None) -> float:
    """``lr``, tuned for ``base_batch``, for ``global_batch`` under ``scaling``: none (unchanged), linear
    (:func:`linear_scaling`) or sqrt (``lr * sqrt(global_batch / base_batch)``, which keeps the variance of
    the update as the batch grows)."""
    if scaling == "none" or not base_batch:
        return lr
    if scaling == "linear":
        return linear_scaling(lr, global_batch, base_batch)
    if scaling == "sqrt":
        return lr * (global_batch / base_batch) ** 0.5
    raise ValueError(f"unknown learning-rate scaling {scaling!r}; choose from none, linear, sqrt")


def make_schedule(name: str, lr: float, *, epochs: int, step_size: int = 3, gamma: float = 0.5,
                  warmup: float = 0.0, min_lr: float = 0.0, warmup_start: float = 0.1) -> Callable[[float], float]:
    """``f(epoch) -> lr``, where ``epoch`` counts from 0 and may be fractional (epoch + step/steps). A
    ``warmup`` rises linearly from ``warmup_start`` times the rate (a tenth by default) to the rate."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    if step_size < 1 or gamma <= 0 or warmup < 0 or epochs < 1 or not 0 < warmup_start <= 1:
        raise ValueError("schedule: need step_size >= 1, gamma > 0, warmup >= 0, epochs >= 1, 0 < warmup_start <= 1")

    def base(t: float) -> float:
        if name == "step":
            return lr * gamma ** (int(t) // step_size)
        if name == "cosine":
            return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(t, epochs) / epochs))
        return lr

    def f(t: float) -> float:
        if warmup > 0 and t < warmup:       # from lr * warmup_start at t = 0 up to lr at t = warmup
            return base(t) * (warmup_start + (1.0 - warmup_start) * t / warmup)
        return base(t)

    return f
