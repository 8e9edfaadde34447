"""Allgather: ring and recursive doubling (the non-power-of-two case by MPICH's fold).

Ring: p - 1 steps; in each, every rank passes the block it received last to its right
neighbour. Each rank sends (p-1)/p of the result in p - 1 messages.

Recursive doubling: log2 p steps for a power of two; in step k a rank swaps everything it
holds (2**k blocks) with the rank 2**k away. For other p the extra ranks fold in first
(:class:`mpisim.comm._common.Fold`) and receive the whole result at the end.
"""
from __future__ import annotations

import numpy as np

from ._common import TAG_ALLGATHER, Fold, check_algorithm, equal_offsets, check_array, consistency_check
from .formulas import FOLD_BLOCKS, Call, Cost, make_cost
from .registry import choices, computed_tuples, get, register
from .transport import Transport

__all__ = ["ALLGATHER_ALGORITHMS", "allgather", "choose_allgather"]

# ALLGATHER_ALGORITHMS: ("auto", then every registered allgather algorithm), read on each access
__getattr__, __dir__ = computed_tuples(__name__, ALLGATHER_ALGORITHMS="allgather")

# MPICH's defaults (MPIR_CVAR_ALLGATHER_SHORT_MSG_SIZE / _LONG_MSG_SIZE): recursive doubling
# below 512 KiB in all for a power of two, below 80 KiB otherwise (MPICH uses Bruck there; the
# folded recursive doubling stands in for it), ring above.
ALLGATHER_SHORT_MSG = 81920
ALLGATHER_LONG_MSG = 524288


def ring_allgather(t: Transport, w: np.ndarray, offs: list[int], tag: int, shift: int = 0) -> None:
    """Ring allgather in place; before, rank r holds block (r - shift) % p of ``w``."""
    p, r = t.size, t.rank
    right, left = (r + 1) % p, (r - 1) % p
    for s in range(p - 1):
        sb = (r - shift - s) % p
        rb = (r - shift - s - 1) % p
        t.sendrecv(w[offs[sb]:offs[sb + 1]], right, w[offs[rb]:offs[rb + 1]], left, tag, tag)


register("allgather", "ring", ring_allgather,
         traffic=lambda c: (c.p * (c.p - 1), (c.p - 1) * c.n),   # every block travels p - 1 hops
         cost=lambda c: make_cost("(p-1)(α + n/p·β)", (c.p - 1, (c.p - 1) * c.b, 0)),
         explain="p-1 steps; in each every rank passes on the block it received last: (p-1)(α + n/p·β).")


def rd_allgather(t: Transport, w: np.ndarray, offs: list[int], tag: int) -> None:
    """Recursive-doubling allgather in place; before, rank r holds block r of ``w``."""
    p, r = t.size, t.rank
    if p == 1:
        return
    f = Fold(r, p)
    if f.extra:
        t.send(w[offs[r]:offs[r + 1]], r + 1, tag)
    elif f.folded:
        t.recv(w[offs[r - 1]:offs[r]], r - 1, tag)
    if not f.extra:
        gofs = f.group_offsets(offs)
        rd_allgather_groups(t, w, gofs, f, tag)
    if f.extra:
        t.recv(w, r + 1, tag)
    elif f.folded:
        t.send(w, r - 1, tag)


def rd_allgather_groups(t: Transport, w: np.ndarray, gofs: list[int], f: Fold, tag: int) -> None:
    """The power-of-two core: virtual rank k holds range k of ``gofs``; after, all ranges."""
    k = f.newrank
    mask = 1
    while mask < f.p2:
        partner = k ^ mask
        mine, theirs = k & ~(mask - 1), partner & ~(mask - 1)
        peer = f.old(partner)
        t.sendrecv(w[gofs[mine]:gofs[mine + mask]], peer,
                   w[gofs[theirs]:gofs[theirs + mask]], peer, tag, tag)
        mask <<= 1


def _rd_cost(c: Call) -> Cost:
    if c.pow2:
        return make_cost("lg p·α + (p-1)/p·nβ", (c.L, (c.p - 1) * c.b, 0))
    return make_cost("(⌊lg p⌋+2)α + (n/p + (p2-1)/p2·n + n)β", (c.L + 2, c.b + c.n - c.b2 + c.n, 0),
                     kind="approx", why=FOLD_BLOCKS)


def _rd_traffic(c: Call) -> tuple[int, int]:
    # the fold's r blocks in, the power-of-two exchanges, the whole result back to the r extra ranks
    p2, r, n = c.p2, c.r, c.n
    return p2 * c.L + 2 * r, r * (c.count // c.p) * c.itemsize + (p2 - 1) * n + r * n


register("allgather", "recursive_doubling", rd_allgather, traffic=_rd_traffic, cost=_rd_cost,
         explain="In step k every rank swaps all it has (2^k blocks) with the rank 2^k away: "
         "lg p rounds, (p-1)/p·n bytes.")


def choose_allgather(total_nbytes: int, size: int) -> str:
    """The algorithm ``auto`` runs when the gathered result holds ``total_nbytes`` on ``size`` ranks."""
    pow2 = size & (size - 1) == 0
    return "recursive_doubling" if total_nbytes < (ALLGATHER_LONG_MSG if pow2 else ALLGATHER_SHORT_MSG) else "ring"


def allgather(t: Transport, array: np.ndarray, algorithm: str = "auto", *,
              check: bool | None = None) -> np.ndarray:
    """Every rank's equal-shaped array, stacked in rank order: shape (p, *array.shape)."""
    name = "allgather"
    check_array(array, name)
    check_algorithm(algorithm, choices(name), name)
    consistency_check(t, name, check, length=array.size, dtype=array.dtype, algorithm=algorithm)
    p, m = t.size, array.size
    out = np.empty((p, *array.shape), dtype=array.dtype)
    w = out.reshape(-1)
    w[t.rank * m:(t.rank + 1) * m] = array.reshape(-1)
    if p == 1:
        return out
    if algorithm == "auto":
        algorithm = choose_allgather(p * array.nbytes, p)
    get(name, algorithm).run(t, w, equal_offsets(m, p), TAG_ALLGATHER)
    return out

