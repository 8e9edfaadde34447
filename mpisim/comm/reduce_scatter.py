"""Reduce-scatter: ring and recursive halving (the non-power-of-two case by MPICH's fold).

Rank r receives block r of the reduced array, with blocks cut as ``numpy.array_split`` cuts
the flattened array into p parts.

Ring: p - 1 steps; in each, every rank sends one partial block to its right neighbour and adds
the block coming from its left into its own copy. Each rank sends (p-1)/p of the data in p - 1
messages, and every block is reduced along one chain, so the result is the same on any run.

Recursive halving (power of two): log2 p steps; in step k a rank keeps half of its current
range, sends the other half to the rank p/2**(k+1) away and adds what that rank sends back.
"""
from __future__ import annotations

import numpy as np

from ._common import (
    combine,
    TAG_REDUCE_SCATTER,
    Fold,
    block_offsets,
    scratch,
    check_algorithm,
    check_array,
    check_op,
    consistency_check,
)
from .formulas import FOLD_BLOCKS, UNEVEN, Call, Cost, blocks, make_cost
from .registry import choices, computed_tuples, get, register
from .transport import Transport

__all__ = ["REDUCE_SCATTER_ALGORITHMS", "choose_reduce_scatter", "reduce_scatter"]

# REDUCE_SCATTER_ALGORITHMS: ("auto", then every registered reduce_scatter algorithm), read on each access
__getattr__, __dir__ = computed_tuples(__name__, REDUCE_SCATTER_ALGORITHMS="reduce_scatter")

# MPICH's default (MPIR_CVAR_REDSCAT_COMMUTATIVE_LONG_MSG_SIZE): recursive halving below
# 512 KiB in all, pairwise exchange above (the ring here plays that part: same bytes, p-1 steps).
REDSCAT_LONG_MSG = 524288


def ring_reduce_scatter(t: Transport, w: np.ndarray, offs: list[int], ufunc, tag: int,
                        src: np.ndarray | None = None) -> None:
    """Ring reduce-scatter: afterwards block r of ``w`` is fully reduced on rank r.

    ``src`` is this rank's input (default ``w``: in place). It is only read: the first step
    sends straight from it and each received block is reduced as ``w[b] = src[b] op recv``, so
    an allreduce needs no copy of its input. Blocks other than r are left partial.
    """
    src = w if src is None else src
    p, r = t.size, t.rank
    right, left = (r + 1) % p, (r - 1) % p
    tmp = scratch(max(offs[b + 1] - offs[b] for b in range(p)), w.dtype)
    for s in range(p - 1):
        sb = (r - s - 1) % p
        rb = (r - s - 2) % p
        lo, hi = offs[rb], offs[rb + 1]
        part = tmp[:hi - lo]
        t.sendrecv((src if s == 0 else w)[offs[sb]:offs[sb + 1]], right, part, left, tag, tag)
        combine(t, ufunc, src[lo:hi], part, w[lo:hi])


def _ring_cost(c: Call) -> Cost:
    kind, why = ("exact", "") if c.even else ("approx", UNEVEN)
    return make_cost("(p-1)(α + n/p·β + n/p·γ)", (c.p - 1, (c.p - 1) * c.b, (c.p - 1) * c.b), kind=kind, why=why)


register("reduce_scatter", "ring", ring_reduce_scatter, cost=_ring_cost,
         traffic=lambda c: (c.p * (c.p - 1), (c.p - 1) * c.n),   # every block travels p - 1 hops
         explain="p-1 steps; every rank adds the block from its left to its own and passes it on.")


def halving_groups(t: Transport, w: np.ndarray, gofs: list[int], f: Fold, ufunc, tag: int,
                   src: np.ndarray | None = None) -> None:
    """The power-of-two core: afterwards virtual rank k holds range k of ``gofs`` reduced.

    ``src`` (default ``w``) is read in the first step only, as in :func:`ring_reduce_scatter`.
    """
    src = w if src is None else src
    k = f.newrank
    lo, hi = 0, f.p2
    half = f.p2 // 2  # a rank keeps either half in the first step, and parts of it later
    tmp = scratch(max(gofs[half] - gofs[0], gofs[-1] - gofs[half]), w.dtype)
    mask = f.p2 >> 1
    while mask > 0:
        mid = (lo + hi) // 2
        if k & mask:
            keep, give = (mid, hi), (lo, mid)
        else:
            keep, give = (lo, mid), (mid, hi)
        peer = f.old(k ^ mask)
        a, b = gofs[keep[0]], gofs[keep[1]]
        part = tmp[:b - a]
        t.sendrecv(src[gofs[give[0]]:gofs[give[1]]], peer, part, peer, tag, tag)
        combine(t, ufunc, src[a:b], part, w[a:b])
        src = w
        lo, hi = keep
        mask >>= 1


def halving_reduce_scatter(t: Transport, w: np.ndarray, offs: list[int], ufunc, tag: int) -> None:
    """Recursive-halving reduce-scatter in place, any p: block r of ``w`` reduced on rank r."""
    p, r = t.size, t.rank
    if p == 1:
        return
    f = Fold(r, p)
    if f.extra:
        t.send(w, r + 1, tag)
    elif f.folded:
        tmp = scratch(w.size, w.dtype)
        t.recv(tmp, r - 1, tag)
        combine(t, ufunc, w, tmp, w)
    if not f.extra:
        halving_groups(t, w, f.group_offsets(offs), f, ufunc, tag)
    # a folded rank reduced its partner's block too: hand it over
    if f.extra:
        t.recv(w[offs[r]:offs[r + 1]], r + 1, tag)
    elif f.folded:
        t.send(w[offs[r - 1]:offs[r]], r - 1, tag)


def _halving_cost(c: Call) -> Cost:
    n, b2 = c.n, c.b2
    if c.pow2:
        kind, why = ("exact", "") if c.even else ("approx", UNEVEN)
        return make_cost("lg p·α + (p-1)/p·n(β + γ)", (c.L, n - b2, n - b2), kind=kind, why=why)
    return make_cost("(⌊lg p⌋+2)α + (n + (p2-1)/p2·n + n/p)β + (n + (p2-1)/p2·n)γ",
                     (c.L + 2, n + n - b2 + c.b, n + n - b2), kind="approx", why=FOLD_BLOCKS)


def _halving_traffic(c: Call) -> tuple[int, int]:
    # the r extra ranks' whole vectors in, the power-of-two halving, their blocks back
    p2, r, n = c.p2, c.r, c.n
    back = sum(blocks(c.count, c.p)[:2 * r:2])
    return p2 * c.L + 2 * r, r * n + (p2 - 1) * n + back * c.itemsize


register("reduce_scatter", "recursive_halving", halving_reduce_scatter, traffic=_halving_traffic,
         cost=_halving_cost,
         explain="In step k a rank keeps half of its range, sends the other half to its "
         "partner and adds what comes back: lg p rounds, (p-1)/p·n bytes sent and added.")


def choose_reduce_scatter(nbytes: int) -> str:
    """The algorithm ``auto`` runs on a vector of ``nbytes``."""
    return "recursive_halving" if nbytes < REDSCAT_LONG_MSG else "ring"


def reduce_scatter(t: Transport, array: np.ndarray, op: str = "sum", algorithm: str = "auto", *,
                   check: bool | None = None) -> np.ndarray:
    """Block ``rank`` of the reduction of all ranks' arrays (1-D, ``numpy.array_split`` blocks)."""
    name = "reduce_scatter"
    check_array(array, name)
    ufunc = check_op(op, name)
    check_algorithm(algorithm, choices(name), name)
    consistency_check(t, name, check, length=array.size, dtype=array.dtype, op=op, algorithm=algorithm)
    p, r = t.size, t.rank
    w = array.reshape(-1).copy()
    offs = block_offsets(w.size, p)
    if p > 1:
        if algorithm == "auto":
            algorithm = choose_reduce_scatter(w.nbytes)
        get(name, algorithm).run(t, w, offs, ufunc, TAG_REDUCE_SCATTER)
    return w[offs[r]:offs[r + 1]].copy()
