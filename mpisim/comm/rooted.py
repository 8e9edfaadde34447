"""Rooted collectives: bcast, reduce, gather, scatter (binomial trees, as in MPICH).

Binomial trees work in relative ranks ``vr = (rank - root) % p``. The root first sends to the
farthest subtree (vr = 2**(k-1) for the largest such power below p), then to nearer ones; each
rank forwards to its own subtree the same way, so the data reaches all p ranks in
ceil(log2 p) rounds with p - 1 messages in all. Reduce and gather run the same tree upwards.
"""
from __future__ import annotations

import numpy as np

from ._common import (
    combine,
    TAG_BCAST,
    TAG_GATHER,
    TAG_REDUCE,
    TAG_SCATTER,
    block_offsets,
    check_algorithm,
    check_array,
    check_op,
    check_root,
    consistency_check,
    equal_offsets,
    scratch,
)
from .allgather import ring_allgather
from .formulas import LOPSIDED, UNEVEN, Call, Cost, blocks, make_cost, subtree_blocks, tree_kind
from .registry import choices, computed_tuples, get, register
from .transport import Transport

__all__ = ["BCAST_ALGORITHMS", "bcast", "gather", "reduce", "scatter"]

# BCAST_ALGORITHMS: ("auto", then every registered bcast algorithm), read on each access
__getattr__, __dir__ = computed_tuples(__name__, BCAST_ALGORITHMS="bcast")

# MPICH's defaults (MPIR_CVAR_BCAST_SHORT_MSG_SIZE, MPIR_CVAR_BCAST_MIN_PROCS): below 12 KiB or
# 8 ranks a binomial tree (log p latency terms) wins; above, scatter + ring allgather moves
# 2(p-1)/p n bytes per rank instead of the tree's n log p at the root's subtree heads.
BCAST_SHORT_MSG = 12288
BCAST_MIN_PROCS = 8


def binomial_bcast(t: Transport, w: np.ndarray, root: int, tag: int) -> None:
    """Broadcast ``w`` in place from ``root`` down a binomial tree."""
    p = t.size
    vr = (t.rank - root) % p
    mask = 1
    while mask < p:
        if vr & mask:
            t.recv(w, (vr - mask + root) % p, tag)
            break
        mask <<= 1
    mask >>= 1
    while mask > 0:
        if vr + mask < p:
            t.send(w, (vr + mask + root) % p, tag)
        mask >>= 1


def _tree_traffic(c: Call) -> tuple[int, int]:
    """p - 1 messages of the whole vector: one per edge of the tree."""
    return c.p - 1, (c.p - 1) * c.n


register("bcast", "binomial", binomial_bcast, traffic=_tree_traffic,
         cost=lambda c: make_cost("⌈lg p⌉(α + nβ)", (c.lg, c.lg * c.n, 0)),
         explain="The root sends to the farthest half first and every rank that has the data forwards it: "
         "the number of ranks holding it doubles each round, ⌈lg p⌉ rounds of the whole vector.")


def binomial_scatter(t: Transport, w: np.ndarray, offs: list[int], root: int, tag: int) -> None:
    """Binomial scatter in place: afterwards relative rank vr holds block vr of ``w``.

    On the way down each rank receives the blocks of its whole subtree, ``[vr, vr + mask)``,
    and passes the upper half of what it holds to each child.
    """
    p = t.size
    vr = (t.rank - root) % p
    mask = 1
    while mask < p:
        if vr & mask:
            hi = min(vr + mask, p)
            t.recv(w[offs[vr]:offs[hi]], (vr - mask + root) % p, tag)
            break
        mask <<= 1
    mask >>= 1
    while mask > 0:
        if vr + mask < p:
            lo, hi = vr + mask, min(vr + 2 * mask, p)
            t.send(w[offs[lo]:offs[hi]], (lo + root) % p, tag)
        mask >>= 1


def _scatter_allgather(t: Transport, w: np.ndarray, root: int, tag: int) -> None:
    """Van de Geijn's broadcast in place: a binomial scatter of p blocks, then a ring allgather."""
    offs = block_offsets(w.size, t.size)
    binomial_scatter(t, w, offs, root, tag)
    ring_allgather(t, w, offs, tag, shift=root)


def _scatter_allgather_traffic(c: Call) -> tuple[int, int]:
    # binomial scatter of array_split blocks, then a ring allgather
    p, sizes = c.p, blocks(c.count, c.p)
    scat = sum(sum(sizes[v:min(v + (v & -v), p)]) for v in range(1, p))
    return p - 1 + p * (p - 1), (scat + (p - 1) * c.count) * c.itemsize


def _scatter_allgather_cost(c: Call) -> Cost:
    ok = c.pow2 and c.even
    return make_cost("(⌈lg p⌉ + p - 1)α + 2(p-1)/p·nβ", (c.lg + c.p - 1, 2 * (c.p - 1) * c.b, 0),
                     kind="exact" if ok else "approx", why="" if ok else (UNEVEN if c.pow2 else LOPSIDED))


register("bcast", "scatter_allgather", _scatter_allgather, traffic=_scatter_allgather_traffic,
         cost=_scatter_allgather_cost,
         explain="Van de Geijn's broadcast: a binomial scatter of p blocks (lg p·α + (p-1)/p·nβ), "
         "then a ring allgather ((p-1)α + (p-1)/p·nβ): about 2nβ whatever p, for p more rounds.")


def binomial_reduce(t: Transport, w: np.ndarray, ufunc, root: int, tag: int) -> None:
    """Reduce ``w`` in place up a binomial tree; the full result ends on ``root``."""
    p = t.size
    vr = (t.rank - root) % p
    tmp = None
    mask = 1
    while mask < p:
        if vr & mask:
            t.send(w, (vr - mask + root) % p, tag)
            break
        if vr + mask < p:
            if tmp is None:
                tmp = scratch(w.size, w.dtype)
            t.recv(tmp, (vr + mask + root) % p, tag)
            combine(t, ufunc, w, tmp, w)
        mask <<= 1


register("reduce", "binomial", binomial_reduce, traffic=_tree_traffic,
         cost=lambda c: make_cost("⌈lg p⌉(α + nβ + nγ)", (c.lg, c.lg * c.n, c.lg * c.n), **tree_kind(c)),
         explain="The broadcast tree run upwards, adding at each level: ⌈lg p⌉(α + nβ + nγ).")


def binomial_gather(t: Transport, w: np.ndarray, m: int, root: int, tag: int) -> None:
    """Binomial gather in place: afterwards ``root``'s ``w`` holds every relative rank's block of m elements.

    Before, relative rank vr holds block vr; each rank passes its whole subtree's blocks to its
    parent in one message.
    """
    p = t.size
    vr = (t.rank - root) % p
    mask = 1
    while mask < p:
        if vr & mask:
            hi = min(vr + mask, p)
            t.send(w[vr * m:hi * m], (vr - mask + root) % p, tag)
            break
        if vr + mask < p:
            lo, hi = vr + mask, min(vr + 2 * mask, p)
            t.recv(w[lo * m:hi * m], (lo + root) % p, tag)
        mask <<= 1


def _subtree_traffic(c: Call) -> tuple[int, int]:
    """p - 1 messages, each with its sender's (or receiver's) whole subtree of blocks."""
    return c.p - 1, subtree_blocks(c.p) * (c.count // c.p) * c.itemsize


def _subtree_cost(c: Call) -> Cost:
    return make_cost("⌈lg p⌉α + (p-1)/p·nβ", (c.lg, (c.p - 1) * c.b, 0), **tree_kind(c))


register("gather", "binomial", binomial_gather, traffic=_subtree_traffic, cost=_subtree_cost,
         explain="Each rank passes its whole subtree's blocks up in one message: lg p rounds; the "
         "messages double in size towards the root, (p-1)/p·n bytes in all on the critical path.")
register("scatter", "binomial", binomial_scatter, traffic=_subtree_traffic, cost=_subtree_cost,
         explain="The gather tree run downwards: the root sends half of the data, then a quarter, ...")


def bcast(t: Transport, array: np.ndarray, root: int = 0, algorithm: str = "auto", *,
          check: bool | None = None) -> np.ndarray:
    """Return a copy of ``root``'s array on every rank.

    Every rank passes an array of the same shape and dtype (its contents are ignored off the
    root). ``algorithm``: ``binomial`` tree, ``scatter_allgather`` (binomial scatter of p
    blocks, then ring allgather: MPICH's long-message bcast), or ``auto`` (MPICH's choice).
    """
    name = "bcast"
    check_array(array, name)
    check_algorithm(algorithm, choices(name), name)
    root = check_root(root, t.size, name)
    consistency_check(t, name, check, length=array.size, dtype=array.dtype, root=root, algorithm=algorithm)
    w = array.copy() if t.rank == root else np.empty_like(array)
    if t.size == 1:
        return w
    if algorithm == "auto":
        small = w.nbytes < BCAST_SHORT_MSG or t.size < BCAST_MIN_PROCS
        algorithm = "binomial" if small else "scatter_allgather"
    get(name, algorithm).run(t, w.reshape(-1), root, TAG_BCAST)
    return w


def reduce(t: Transport, array: np.ndarray, op: str = "sum", root: int = 0, *,
           check: bool | None = None) -> np.ndarray | None:
    """Reduce every rank's array with ``op`` (binomial tree); the result on ``root``, None elsewhere."""
    name = "reduce"
    check_array(array, name)
    ufunc = check_op(op, name)
    root = check_root(root, t.size, name)
    consistency_check(t, name, check, length=array.size, dtype=array.dtype, op=op, root=root)
    w = array.copy()
    binomial_reduce(t, w.reshape(-1), ufunc, root, TAG_REDUCE)
    return w if t.rank == root else None


def gather(t: Transport, array: np.ndarray, root: int = 0, *,
           check: bool | None = None) -> np.ndarray | None:
    """Gather equal-shaped arrays on ``root`` as one array of shape (p, *array.shape).

    Binomial tree: each rank forwards its whole subtree's blocks to its parent in one message,
    so the root receives ceil(log2 p) messages instead of p - 1. Non-root ranks get None.
    """
    name = "gather"
    check_array(array, name)
    root = check_root(root, t.size, name)
    consistency_check(t, name, check, length=array.size, dtype=array.dtype, root=root)
    p, m = t.size, array.size
    vr = (t.rank - root) % p
    # Working buffer in relative-rank order: block b belongs to relative rank b.
    w = np.empty(p * m, dtype=array.dtype)
    w[vr * m:(vr + 1) * m] = array.reshape(-1)
    binomial_gather(t, w, m, root, TAG_GATHER)
    if t.rank != root:
        return None
    # Relative block b came from rank (b + root) % p: rotate into rank order.
    return np.roll(w.reshape(p, *array.shape), root, axis=0)


def scatter(t: Transport, array: np.ndarray, root: int = 0, *,
            check: bool | None = None) -> np.ndarray:
    """Send ``array[i]`` of ``root``'s array, of shape (p, ...), to rank i; return this rank's part.

    Every rank passes an array of the same shape (p, ...) and dtype (contents ignored off the
    root; ``numpy.empty_like`` will do). Binomial tree, the inverse of :func:`gather`.
    """
    name = "scatter"
    check_array(array, name)
    root = check_root(root, t.size, name)
    p = t.size
    if array.ndim == 0 or array.shape[0] != p:
        raise ValueError(f"scatter: the array's first dimension must be the rank count {p}, "
                         f"got shape {array.shape}")
    consistency_check(t, name, check, length=array.size, dtype=array.dtype, root=root)
    m = array.size // p
    if t.rank == root:
        w = np.roll(array, -root, axis=0).reshape(-1)  # relative-rank order (a copy)
    else:
        w = np.empty(array.size, dtype=array.dtype)
    offs = equal_offsets(m, p)
    binomial_scatter(t, w, offs, root, TAG_SCATTER)
    vr = (t.rank - root) % p
    return w[vr * m:(vr + 1) * m].reshape(array.shape[1:]).copy()
