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

import json
import os
from typing import Mapping, Sequence

import numpy as np

from ._common import (
    combine,
    copy,
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
from .formulas import UNEVEN, Call, Cost, make_cost, tree_kind
from .reduce_scatter import halving_groups, ring_reduce_scatter
from .registry import choices, computed_tuples, get, names, register
from .rooted import binomial_bcast, binomial_reduce
from .transport import Transport

__all__ = ["ALLREDUCE_ALGORITHMS", "allreduce", "choose_allreduce", "load_allreduce_table",
           "set_allreduce_table"]

# ALLREDUCE_ALGORITHMS: ("auto", then every registered allreduce algorithm), read on each access
__getattr__, __dir__ = computed_tuples(__name__, ALLREDUCE_ALGORITHMS="allreduce")

# MPICH's default (MPIR_CVAR_ALLREDUCE_SHORT_MSG_SIZE = 2048 bytes): short messages are
# latency-bound, so recursive doubling's log2 p steps win although each moves the whole vector;
# long ones are bandwidth-bound, so Rabenseifner's 2 (p-1)/p n bytes win. Vectors with fewer
# elements than p2 cannot be halved into p2 ranges, so they also take recursive doubling.
ALLREDUCE_SHORT_MSG = 2048


# A table measured on this machine can replace MPICH's rule: ``python -m mpisim.bench --save-table
# FILE`` writes, per rank count, the fastest algorithm at each size it timed, and
# ``MPISIM_ALLREDUCE_TABLE=FILE`` (or set_allreduce_table) makes auto use it: for ``size`` ranks and
# ``nbytes``, the entry of the smallest listed size >= nbytes. Rank counts and sizes beyond the table
# keep MPICH's rule. Every rank must load the same table (a plan's init check compares the choice).
TABLE_ENV = "MPISIM_ALLREDUCE_TABLE"
_table: dict[int, list[tuple[int, str]]] | None = None   # None: not loaded yet


def set_allreduce_table(table: Mapping[int, Sequence[tuple[int, str]]] | None) -> None:
    """Make ``auto`` follow ``table`` ({ranks: [(up to nbytes, algorithm), ...]}); None or {}: MPICH's rule."""
    global _table
    rows: dict[int, list[tuple[int, str]]] = {}
    for ranks, entries in (table or {}).items():
        for upto, alg in entries:
            if alg not in names("allreduce"):
                raise ValueError(f"allreduce table: unknown algorithm {alg!r} for {ranks} ranks; "
                                 f"choose one of {', '.join(names('allreduce'))}")
        rows[int(ranks)] = sorted((int(upto), str(alg)) for upto, alg in entries)
    _table = rows


def load_allreduce_table(path: str) -> dict[int, list[tuple[int, str]]]:
    """Read a table written by ``mpisim.bench --save-table`` ({"ranks": [[nbytes, algorithm], ...]})."""
    try:
        with open(path) as fh:
            raw = json.load(fh)
        table = {int(k): [(int(n), str(a)) for n, a in v] for k, v in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"allreduce table {path}: cannot be read as a table of "
                         f"{{ranks: [[bytes, algorithm], ...]}} ({exc})") from None
    known = set(names("allreduce"))
    bad = sorted({a for rows in table.values() for _, a in rows} - known)
    if bad:
        raise ValueError(f"allreduce table {path}: unknown algorithm(s) {', '.join(bad)}; "
                         f"known: {', '.join(sorted(known))}")
    return table


def check_out(out: np.ndarray, array: np.ndarray, name: str) -> None:
    """ValueError unless ``out`` can take the result for ``array``: the same shape and dtype, and either the same
    buffer (in place) or one that does not overlap it."""
    check_array(out, name + " out")
    if out.shape != array.shape or out.dtype != array.dtype:
        raise ValueError(f"{name}: out has shape {out.shape} and dtype {out.dtype}, the input "
                         f"{array.shape} and {array.dtype}")
    same = out.__array_interface__["data"][0] == array.__array_interface__["data"][0]
    if not same and np.shares_memory(out, array):
        raise ValueError(f"{name}: out overlaps the input without being the same buffer")


def choose_allreduce(nbytes: int, count: int, size: int) -> str:
    """The algorithm ``auto`` runs for a vector of ``count`` elements (``nbytes``) on ``size`` ranks."""
    if _table is None:
        path = os.environ.get(TABLE_ENV)
        set_allreduce_table(load_allreduce_table(path) if path else None)
    p2 = 1 << (size.bit_length() - 1)
    if count < p2:
        return "recursive_doubling"
    for upto, alg in _table.get(size, ()):
        if nbytes <= upto:
            return alg
    if nbytes <= ALLREDUCE_SHORT_MSG:
        return "recursive_doubling"
    return "rabenseifner"


def _naive(t: Transport, w: np.ndarray, ufunc, tag: int, src: np.ndarray) -> None:
    # Linear: rank 0 receives from 1, 2, ..., p-1 in order, reduces, and sends the result to each.
    copy(t, w, src)
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


def _naive_cost(c: Call) -> Cost:
    p, n = c.p, c.n
    if c.contention:   # the root's link takes one message at a time: arrivals k(α+nβ)
        return make_cost("(p-1)(α+nβ) + max((p-1)(α+nβ) + nγ, α + nβ + (p-1)nγ)",
                         (2 * (p - 1), 2 * (p - 1) * n, n), (p, p * n, (p - 1) * n))
    return make_cost("p(α + nβ) + (p-1)nγ", (p, p * n, (p - 1) * n))


def _two_trips(c: Call) -> tuple[int, int]:
    """2(p-1) messages of n bytes: every rank's vector goes up once and the result down once."""
    return 2 * (c.p - 1), 2 * (c.p - 1) * c.n


register("allreduce", "naive", _naive, traffic=_two_trips, cost=_naive_cost, marker="o",
         formula=lambda c: "2(N-1)·n",
         explain="Every rank sends its vector to rank 0 at once; rank 0 adds the p-1 vectors one by one "
         "((p-1)nγ), then sends the result to each rank in turn from its one port: p-1 messages back to back. "
         "Every term grows with p. With `contention` the p-1 incoming vectors also queue on rank 0's link.")


def _tree(t: Transport, w: np.ndarray, ufunc, tag: int, src: np.ndarray) -> None:
    copy(t, w, src)
    binomial_reduce(t, w, ufunc, 0, tag)
    binomial_bcast(t, w, 0, tag)


register("allreduce", "tree", _tree, traffic=_two_trips, marker="s", formula=lambda c: "2(N-1)·n",
         cost=lambda c: make_cost("2⌈lg p⌉(α + nβ) + ⌈lg p⌉nγ", (2 * c.lg, 2 * c.lg * c.n, c.lg * c.n),
                                  **tree_kind(c)),
         explain="A binomial reduce to rank 0, then a binomial broadcast: ⌈lg p⌉ levels each way and the "
         "whole vector at every level. Few rounds, but n·lg p bytes on the critical path.")


# the power-of-two algorithms, plus the fold: (α + nβ + nγ) in front, (α + nβ) after
def _rd_cost(c: Call) -> Cost:
    n, L = c.n, c.L
    if c.pow2:
        return make_cost("lg p(α + nβ + nγ)", (L, L * n, L * n))
    return make_cost("(⌊lg p⌋+2)(α + nβ) + (⌊lg p⌋+1)nγ", (L + 2, (L + 2) * n, (L + 1) * n))


def _rd_formula(c: Call) -> str:
    return "N·log2(N)·n" if not c.r else f"(p2·log2(p2) + 2r)·n [p2={c.p2}, r={c.r}]"


register("allreduce", "recursive_doubling", rd_allreduce, cost=_rd_cost, formula=_rd_formula, marker="D",
         traffic=lambda c: (c.p2 * c.L + 2 * c.r, (c.p2 * c.L + 2 * c.r) * c.n),
         explain="In step k every rank swaps its whole vector with the rank 2^k away and adds: "
         "lg p steps of α + nβ + nγ. The fewest rounds and the most bytes: the short-vector algorithm. For p not a "
         "power of two the fold adds a step before (α + nβ + nγ) and one after (α + nβ).")


def _ring(t: Transport, w: np.ndarray, ufunc, tag: int, src: np.ndarray) -> None:
    offs = block_offsets(w.size, t.size)
    ring_reduce_scatter(t, w, offs, ufunc, tag, src)
    ring_allgather(t, w, offs, tag)


def _ring_cost(c: Call) -> Cost:
    kind, why = ("exact", "") if c.even else ("approx", UNEVEN)
    p, b = c.p, c.b
    return make_cost("2(p-1)α + 2(p-1)/p·nβ + (p-1)/p·nγ", (2 * (p - 1), 2 * (p - 1) * b, (p - 1) * b),
                     kind=kind, why=why)


register("allreduce", "ring", _ring, cost=_ring_cost, marker="^", formula=lambda c: "2(N-1)·n",
         traffic=lambda c: (2 * c.p * (c.p - 1), 2 * (c.p - 1) * c.n),
         explain="A reduce-scatter and then an allgather around a ring, p-1 steps each, one block of n/p "
         "per step. The β term tends to 2nβ, the least any allreduce can send per rank, whatever p; "
         "the α term grows linearly in p.")


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


def _rabenseifner_cost(c: Call) -> Cost:
    n, L, b2 = c.n, c.L, c.b2
    kind, why = ("exact", "") if c.count % c.p2 == 0 else ("approx", UNEVEN)
    if c.pow2:
        return make_cost("2 lg p·α + 2(p-1)/p·nβ + (p-1)/p·nγ", (2 * L, 2 * (n - b2), n - b2), kind=kind, why=why)
    return make_cost("(2⌊lg p⌋+2)α + (2(p2-1)/p2 + 2)nβ + ((p2-1)/p2 + 1)nγ",
                     (2 * L + 2, 2 * (n - b2) + 2 * n, n - b2 + n), kind=kind, why=why)


register("allreduce", "rabenseifner", _rabenseifner, cost=_rabenseifner_cost, marker="v",
         traffic=lambda c: (2 * c.p2 * c.L + 2 * c.r, (2 * (c.p2 - 1) + 2 * c.r) * c.n),
         formula=lambda c: "2(N-1)·n" if not c.r else f"(2(p2-1) + 2r)·n [p2={c.p2}, r={c.r}]",
         explain="Reduce-scatter by recursive halving (send n/2, n/4, ..., n/p) and allgather by "
         "recursive doubling (the same backwards): the ring's bytes in 2 lg p rounds. MPICH's long-vector choice.")


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
    check_algorithm(algorithm, choices(name), name)
    if out is not None:
        check_out(out, array, name)
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
    get(name, algorithm).run(t, out.reshape(-1), ufunc, TAG_ALLREDUCE, array.reshape(-1))
    return out
