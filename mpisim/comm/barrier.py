"""Barrier: the dissemination algorithm (Hensgen, Finkel and Manber 1988; MPICH's default).

In round k every rank sends an empty message to rank + 2**k and waits for one from
rank - 2**k (mod p). After ceil(log2 p) rounds each rank has heard, directly or through others,
from every rank, so none leaves before all have arrived. Works for any p, no fold needed.
"""
from __future__ import annotations

import numpy as np

from ._common import TAG_BARRIER
from .formulas import make_cost
from .registry import register
from .transport import Transport

__all__ = ["barrier"]

_EMPTY = np.empty(0, dtype=np.uint8)


def dissemination(t: Transport, tag: int) -> None:
    """The dissemination barrier: ceil(log2 p) rounds of empty messages."""
    p, r = t.size, t.rank
    dist = 1
    while dist < p:
        t.sendrecv(_EMPTY, (r + dist) % p, np.empty(0, dtype=np.uint8), (r - dist) % p, tag, tag)
        dist <<= 1


register("barrier", "dissemination", dissemination,
         traffic=lambda c: (c.p * c.lg, 0), cost=lambda c: make_cost("⌈lg p⌉α", (c.lg, 0, 0)),
         explain="In round k every rank sends an empty message 2^k ranks ahead: ⌈lg p⌉ rounds of α.")


def barrier(t: Transport) -> None:
    """Return on each rank only after every rank has called barrier."""
    dissemination(t, TAG_BARRIER)
