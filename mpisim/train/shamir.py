"""Shamir's secret sharing (Shamir 1979) over the prime field of p = 2**127 - 1, in Python integers.

``share(secret, n, t, rng)`` gives n shares (x, y) with x = 1..n, the points of a random polynomial of degree
t - 1 whose value at 0 is the secret; any t of them give the secret back (``reconstruct``, Lagrange
interpolation at 0), and t - 1 of them say nothing about it. Secure aggregation (Bonawitz et al. 2017) shares
each client's mask key this way, so that the server can remove the masks of a client that dropped out after
masking from the shares of t survivors.

The polynomial's coefficients come from ``rng`` (a seeded NumPy generator in this simulation, so runs repeat;
a deployment would draw them from ``secrets``).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

__all__ = ["PRIME", "random_below", "share", "reconstruct"]

PRIME = 2 ** 127 - 1                 # a Mersenne prime: secrets and shares are integers in [0, PRIME)


def random_below(rng: np.random.Generator, bound: int) -> int:
    """A uniform integer in [0, bound) from 64-bit draws (rejection, so no bias)."""
    words = -(-bound.bit_length() // 64)
    while True:
        v = 0
        for w in rng.integers(0, 2 ** 64, size=words, dtype=np.uint64, endpoint=False):
            v = (v << 64) | int(w)
        v >>= words * 64 - bound.bit_length()
        if v < bound:
            return v


def share(secret: int, n: int, t: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``n`` shares ``(x, y)``, x = 1..n, of ``secret`` (an integer in [0, PRIME)), any ``t`` of which rebuild it."""
    if not isinstance(secret, (int, np.integer)) or not 0 <= int(secret) < PRIME:
        raise ValueError(f"share: the secret must be an integer in [0, 2**127 - 1), got {secret!r}")
    if not 1 <= t <= n:
        raise ValueError(f"share: need 1 <= t <= n, got t={t}, n={n}")
    coeffs = [int(secret)] + [random_below(rng, PRIME) for _ in range(t - 1)]
    out = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coeffs):          # Horner
            y = (y * x + c) % PRIME
        out.append((x, y))
    return out


def reconstruct(shares: Iterable[tuple[int, int]], t: int) -> int:
    """The secret from at least ``t`` shares with distinct x (the first ``t`` are used)."""
    pts: Sequence[tuple[int, int]] = list(shares)
    xs = [x for x, _ in pts]
    if len(set(xs)) != len(xs):
        raise ValueError("reconstruct: two shares have the same x")
    if len(pts) < t:
        raise ValueError(f"reconstruct: {len(pts)} shares, but {t} are needed")
    pts = pts[:t]
    secret = 0
    for i, (xi, yi) in enumerate(pts):
        num = den = 1
        for j, (xj, _) in enumerate(pts):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    return secret
