"""Weight initializers: He (Kaiming) for ReLU-family layers, Xavier (Glorot) for tanh and sigmoid.

He et al. 2015: Var(W) = 2 / fan_in.  Glorot and Bengio 2010: Var(W) = 2 / (fan_in + fan_out).
Uniform versions draw from U(-a, a) with a = sqrt(3 Var). Each fills a given array (a view into the
model's flat vector) in place, from a given ``numpy.random.Generator``.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["INITIALIZERS", "init_weight"]

INITIALIZERS = ("he_uniform", "he_normal", "xavier_uniform", "xavier_normal")


def init_weight(W: np.ndarray, scheme: str, rng: np.random.Generator) -> None:
    """Fill ``W`` of shape (fan_in, fan_out) in place with the named scheme."""
    if scheme not in INITIALIZERS:
        raise ValueError(f"unknown initializer {scheme!r}; choose from {', '.join(INITIALIZERS)}")
    fan_in, fan_out = W.shape
    var = 2.0 / fan_in if scheme.startswith("he") else 2.0 / (fan_in + fan_out)
    if scheme.endswith("uniform"):
        a = math.sqrt(3.0 * var)
        W[...] = rng.uniform(-a, a, size=W.shape)
    else:
        W[...] = rng.normal(0.0, math.sqrt(var), size=W.shape)
