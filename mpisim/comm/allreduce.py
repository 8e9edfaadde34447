"""Allreduce, five ways (Thakur, Rabenseifner and Gropp 2005, "Optimization of collective
communication operations in MPICH").

=====================  ============================  ====================  ===================
algorithm              how                           messages per rank     bytes sent per rank
=====================  ============================  ====================  ===================
naive                  all send to 0, 0 sends back   root: 2(p-1)          root: (p-1) n
tree                   binomial reduce + bcast       <= 2 ceil(log2 p)     <= 2 ceil(log2 p) n
recursive_doubling     swap whole vector, log2 p x   log2 p                n log2 p
ring                   ring reduce-scatter+allgather 2(p-1)                2 (p-1)/p n
rabenseifner           halving RS + doubling AG      2 log2 p              2 (p-1)/p n
=====================  ============================  ====================  ===================

(counts for a power-of-two p; other p add the fold's two messages on the first 2r ranks).
Every algorithm leaves bit-identical values on all ranks: each element is either reduced once
and copied, or reduced by both partners of a swap as op(mine, theirs), which IEEE arithmetic
makes equal to op(theirs, mine).
"""
from __future__ import annotations

import numpy as np

from ._common import (
    combine,
    TAG_ALLREDUCE,
    Fold,
    block_offsets,
    check_algorithm,
    check_array,
    check_op,
    consistency_check,
    rd_allreduce,
    scratch,
)
from .allgather import rd_allgather_groups, ring_allgather
from .reduce_scatter import halving_groups, ring_reduce_scatter
from .rooted import binomial_bcast, binomial_reduce
from .transport import Transport

__all__ = ["ALLREDUCE_ALGORITHMS", "allreduce", "choose_allreduce"]

ALLREDUCE_ALGORITHMS = ("auto", "naive", "tree", "recursive_doubling", "ring", "rabenseifner")

# MPICH's default (MPIR_CVAR_ALLREDUCE_SHORT_MSG_SIZE = 2048 bytes): short messages are
# latency-bound, so recursive doubling's log2 p steps win although each moves the whole vector;
# long ones are bandwidth-bound, so Rabenseifner's 2 (p-1)/p n bytes win. Vectors with fewer
# elements than p2 cannot be halved into p2 ranges, so they also take recursive doubling.
ALLREDUCE_SHORT_MSG = 2048


def choose_allreduce(nbytes: int, count: int, size: int) -> str:
    """The algorithm ``auto`` runs for a vector of ``count`` elements (``nbytes``) on ``size`` ranks."""
    p2 = 1 << (size.bit_length() - 1)
    if nbytes <= ALLREDUCE_SHORT_MSG or count < p2:
        return "recursive_doubling"
    return "rabenseifner"


def _naive(t: Transport, w: np.ndarray, ufunc, tag: int, src: np.ndarray) -> None:
    # Linear: rank 0 receives from 1, 2, ..., p-1 in order, reduces, and sends the result to each.
    np.copyto(w, src)
    if t.rank == 0:
        tmp = scratch(w.size, w.dtype)
        for peer in range(1, t.size):
            t.recv(tmp, peer, tag)
            combine(t, ufunc, w, tmp, w)
        for dst in range(1, t.size):
            t.send(w, dst, tag)
    else:
        t.send(w, 0, tag)
        t.recv(w, 0, tag)


def _tree(t: Transport, w: np.ndarray, ufunc, tag: int, src: np.ndarray) -> None:
    np.copyto(w, src)
    binomial_reduce(t, w, ufunc, 0, tag)
    binomial_bcast(t, w, 0, tag)


def _ring(t: Transport, w: np.ndarray, ufunc, tag: int, src: np.ndarray) -> None:
    offs = block_offsets(w.size, t.size)
    ring_reduce_scatter(t, w, offs, ufunc, tag, src)
    ring_allgather(t, w, offs, tag)


def _rabenseifner(t: Transport, w: np.ndarray, ufunc, tag: int, src: np.ndarray) -> None:
    r = t.rank
    f = Fold(r, t.size)
    if f.extra:
        t.send(src, r + 1, tag)
        t.recv(w, r + 1, tag)
        return
    if f.folded:
        tmp = scratch(w.size, w.dtype)
        t.recv(tmp, r - 1, tag)
        combine(t, ufunc, src, tmp, w)
        src = w
    gofs = block_offsets(w.size, f.p2)  # the p2 virtual ranks split the vector evenly
    halving_groups(t, w, gofs, f, ufunc, tag, src)
    rd_allgather_groups(t, w, gofs, f, tag)
    if f.folded:
        t.send(w, r - 1, tag)


_ALGORITHMS = {
    "naive": _naive,
    "tree": _tree,
    "recursive_doubling": rd_allreduce,
    "ring": _ring,
    "rabenseifner": _rabenseifner,
}


def allreduce(t: Transport, array: np.ndarray, op: str = "sum", algorithm: str = "auto", *,
              out: np.ndarray | None = None, check: bool | None = None) -> np.ndarray:
    """The element-wise reduction (``op``: sum, prod, max, min) of every rank's array, on every rank.

    The result has the input's shape and dtype and is written to ``out`` when given (same shape
    and dtype; ``out=array`` reduces in place, like ``MPI_IN_PLACE``), else to a new array; the
    input is otherwise not modified. All ranks must pass arrays of the same size and dtype and
    the same op and algorithm (checked unless ``check=False``).
    """
    name = "allreduce"
    check_array(array, name)
    ufunc = check_op(op, name)
    check_algorithm(algorithm, ALLREDUCE_ALGORITHMS, name)
    if out is not None:
        check_array(out, name + " out")
        if out.shape != array.shape or out.dtype != array.dtype:
            raise ValueError(f"{name}: out has shape {out.shape} and dtype {out.dtype}, the input "
                             f"{array.shape} and {array.dtype}")
        same = out.__array_interface__["data"][0] == array.__array_interface__["data"][0]
        if not same and np.shares_memory(out, array):
            raise ValueError(f"{name}: out overlaps the input without being the same buffer")
    consistency_check(t, name, check, length=array.size, dtype=array.dtype, op=op, algorithm=algorithm)
    if out is None:
        out = np.empty_like(array)
    if t.size == 1:
        np.copyto(out, array)
        return out
    if algorithm == "auto":
        algorithm = choose_allreduce(out.nbytes, out.size, t.size)
    # The algorithms read the input and write the output: no up-front copy of the input
    # (out is array works too: then they reduce in place).
    _ALGORITHMS[algorithm](t, out.reshape(-1), ufunc, TAG_ALLREDUCE, array.reshape(-1))
    return out
