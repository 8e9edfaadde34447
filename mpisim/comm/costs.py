"""What each collective costs, in closed form: messages and bytes, and time in the alpha-beta-gamma model.

Notation (Thakur, Rabenseifner and Gropp 2005, "Optimization of collective communication
operations in MPICH"): p ranks, n bytes (the vector; for gather, scatter and allgather the
whole p-block result), alpha per message, beta and gamma per byte sent and reduced, lg p the
base-2 logarithm. For p not a power of two, p2 is the largest power of two below p and
r = p - p2: MPICH's fold (:class:`mpisim.comm._common.Fold`) first hands the data of r ranks to
r partners, runs the power-of-two algorithm on p2 ranks and hands the result back.

:func:`traffic` gives the messages and bytes all ranks send together, exact for any p and n.
:func:`cost` gives the time, which is the cost of the longest chain of dependent messages and
reductions; the virtual clocks of the simulated transport (:mod:`mpisim.comm.network`) measure
the same thing, so:

* ``exact``: the simulated time equals the formula to the femtosecond. This holds for every
  algorithm when p is a power of two and the blocks are equal (the element count divides by p).
* ``bound``: the formula is TRG's ceil(lg p) form, an upper bound: a binomial tree on p ranks
  that is not a power of two is lopsided, and the root's last child has a smaller subtree than
  the formula assumes, so its data arrives earlier.
* ``approx``: the blocks are unequal (the count does not divide by p, or the fold's virtual
  ranks stand for one or two blocks), and which rank is on the critical path depends on where
  the larger blocks sit; the formula uses n/p.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from ._common import block_offsets
from .allreduce import ALLREDUCE_ALGORITHMS, choose_allreduce
from .network import TICK

__all__ = ["ALGORITHMS", "Cost", "allreduce_formula", "allreduce_traffic", "cost", "traffic"]

# the algorithms the report covers, per collective (auto only picks among them)
ALGORITHMS = {
    "allreduce": ("naive", "tree", "recursive_doubling", "ring", "rabenseifner"),
    "bcast": ("binomial", "scatter_allgather"),
    "reduce": ("binomial",),
    "gather": ("binomial",),
    "scatter": ("binomial",),
    "allgather": ("ring", "recursive_doubling"),
    "reduce_scatter": ("ring", "recursive_halving"),
    "barrier": ("dissemination",),
}


def _fold(p: int) -> tuple[int, int, int]:
    p2 = 1 << (p.bit_length() - 1)
    return p2, p - p2, p2.bit_length() - 1


def _clog(p: int) -> int:
    return (p - 1).bit_length()   # ceil(lg p)


def _blocks(count: int, p: int) -> list[int]:
    """Element counts of the collectives' blocks (numpy.array_split's)."""
    offs = block_offsets(count, p)
    return [hi - lo for lo, hi in zip(offs, offs[1:])]


def _subtree_blocks(p: int) -> int:
    """Blocks a binomial scatter (or gather) moves in all: relative rank v gets its subtree's."""
    return sum(min(v + (v & -v), p) - v for v in range(1, p))


@dataclass(frozen=True)
class Cost:
    """Time = the largest over ``forms`` of a*alpha + b*beta + c*gamma (b, c in bytes)."""

    text: str
    forms: tuple[tuple[Fraction, Fraction, Fraction], ...]
    kind: str = "exact"      # exact | bound | approx (see the module docstring)
    why: str = ""

    def ticks(self, net) -> Fraction:
        return max(net.time(*f) for f in self.forms)

    def seconds(self, net) -> float:
        return float(self.ticks(net)) * TICK


def _c(text, *forms, kind="exact", why=""):
    return Cost(text, tuple(tuple(Fraction(x) for x in f) for f in forms), kind, why)


UNEVEN = "unequal blocks: the formula takes n/p"
LOPSIDED = "p is not a power of two: the binomial tree is lopsided, the formula bounds it"


def traffic(coll: str, algorithm: str, p: int, count: int, itemsize: int) -> tuple[int, int]:
    """(messages, bytes) all ``p`` ranks send in one call on ``count`` elements (the whole
    result's count for gather, scatter and allgather), exact for any p and count."""
    if coll == "allreduce":
        return allreduce_traffic(algorithm, count, itemsize, p)
    n = count * itemsize
    if p == 1:
        return 0, 0
    p2, r, L = _fold(p)
    if coll == "barrier":
        return p * _clog(p), 0
    if coll in ("reduce",) or (coll, algorithm) == ("bcast", "binomial"):
        return p - 1, (p - 1) * n
    m = count // p if coll in ("gather", "scatter", "allgather") else None
    if coll in ("gather", "scatter"):
        return p - 1, _subtree_blocks(p) * m * itemsize
    if coll == "bcast":   # binomial scatter of array_split blocks, then a ring allgather
        sizes = _blocks(count, p)
        scat = sum(sum(sizes[v:min(v + (v & -v), p)]) for v in range(1, p))
        return p - 1 + p * (p - 1), (scat + (p - 1) * count) * itemsize
    if algorithm == "ring":   # allgather, reduce_scatter: every block travels p - 1 hops
        return p * (p - 1), (p - 1) * n
    if coll == "allgather":   # recursive doubling with the fold
        return p2 * L + 2 * r, r * m * itemsize + (p2 - 1) * n + r * n
    sizes = _blocks(count, p)    # reduce_scatter, recursive halving with the fold
    return p2 * L + 2 * r, r * n + (p2 - 1) * n + sum(sizes[j] for j in range(0, 2 * r, 2)) * itemsize


def cost(coll: str, algorithm: str, p: int, count: int, itemsize: int, *, contention: bool = False) -> Cost:
    """The closed-form time of one call (see the module docstring for ``kind``)."""
    if coll == "allreduce" and algorithm == "auto":
        algorithm = choose_allreduce(count * itemsize, count, p)
    if algorithm not in ALGORITHMS.get(coll, ()):
        raise ValueError(f"no cost formula for {coll} algorithm {algorithm!r}")
    n = count * itemsize
    if p == 1:
        return _c("0", (0, 0, 0))
    p2, r, L = _fold(p)
    pow2 = r == 0
    lg = _clog(p)
    even = count % p == 0
    b = Fraction(n, p)
    tree_kind = ("exact", "") if pow2 else ("bound", LOPSIDED)
    key = (coll, algorithm)
    if key == ("barrier", "dissemination"):
        return _c("⌈lg p⌉α", (lg, 0, 0))
    if key == ("bcast", "binomial"):
        return _c("⌈lg p⌉(α + nβ)", (lg, lg * n, 0))
    if key == ("reduce", "binomial"):
        return _c("⌈lg p⌉(α + nβ + nγ)", (lg, lg * n, lg * n), kind=tree_kind[0], why=tree_kind[1])
    if coll in ("gather", "scatter"):
        return _c("⌈lg p⌉α + (p-1)/p·nβ", (lg, (p - 1) * b, 0), kind=tree_kind[0], why=tree_kind[1])
    if key == ("bcast", "scatter_allgather"):
        ok = pow2 and even
        return _c("(⌈lg p⌉ + p - 1)α + 2(p-1)/p·nβ", (lg + p - 1, 2 * (p - 1) * b, 0),
                  kind="exact" if ok else "approx", why="" if ok else (UNEVEN if pow2 else LOPSIDED))
    if key in (("allgather", "ring"), ("reduce_scatter", "ring"), ("allreduce", "ring")):
        ok = even or coll == "allgather"
        why = "" if ok else UNEVEN
        kind = "exact" if ok else "approx"
        if coll == "allgather":
            return _c("(p-1)(α + n/p·β)", (p - 1, (p - 1) * b, 0), kind=kind, why=why)
        if coll == "reduce_scatter":
            return _c("(p-1)(α + n/p·β + n/p·γ)", (p - 1, (p - 1) * b, (p - 1) * b), kind=kind, why=why)
        return _c("2(p-1)α + 2(p-1)/p·nβ + (p-1)/p·nγ", (2 * (p - 1), 2 * (p - 1) * b, (p - 1) * b),
                  kind=kind, why=why)
    if key == ("allreduce", "naive"):
        if contention:   # the root's link takes one message at a time: arrivals k(α+nβ)
            return _c("(p-1)(α+nβ) + max((p-1)(α+nβ) + nγ, α + nβ + (p-1)nγ)",
                      (2 * (p - 1), 2 * (p - 1) * n, n), (p, p * n, (p - 1) * n))
        return _c("p(α + nβ) + (p-1)nγ", (p, p * n, (p - 1) * n))
    if key == ("allreduce", "tree"):
        return _c("2⌈lg p⌉(α + nβ) + ⌈lg p⌉nγ", (2 * lg, 2 * lg * n, lg * n), kind=tree_kind[0], why=tree_kind[1])
    # the power-of-two algorithms, plus the fold: (α + nβ + nγ) in front, (α + nβ) after
    if key == ("allreduce", "recursive_doubling"):
        if pow2:
            return _c("lg p(α + nβ + nγ)", (L, L * n, L * n))
        return _c("(⌊lg p⌋+2)(α + nβ) + (⌊lg p⌋+1)nγ", (L + 2, (L + 2) * n, (L + 1) * n))
    even2 = count % p2 == 0
    b2 = Fraction(n, p2)
    rs = (L, n - b2, n - b2)   # recursive halving on p2 ranks
    if key == ("allreduce", "rabenseifner"):
        kind, why = ("exact", "") if even2 else ("approx", UNEVEN)
        if pow2:
            return _c("2 lg p·α + 2(p-1)/p·nβ + (p-1)/p·nγ", (2 * L, 2 * (n - b2), n - b2), kind=kind, why=why)
        return _c("(2⌊lg p⌋+2)α + (2(p2-1)/p2 + 2)nβ + ((p2-1)/p2 + 1)nγ",
                  (2 * L + 2, 2 * (n - b2) + 2 * n, n - b2 + n), kind=kind, why=why)
    if key == ("allgather", "recursive_doubling"):
        if pow2:
            return _c("lg p·α + (p-1)/p·nβ", (L, (p - 1) * b, 0))
        return _c("(⌊lg p⌋+2)α + (n/p + (p2-1)/p2·n + n)β", (L + 2, b + n - b2 + n, 0), kind="approx",
                  why="the fold's virtual ranks hold one or two blocks")
    if key == ("reduce_scatter", "recursive_halving"):
        kind, why = ("exact", "") if even else ("approx", UNEVEN)
        if pow2:
            return _c("lg p·α + (p-1)/p·n(β + γ)", rs, kind=kind, why=why)
        return _c("(⌊lg p⌋+2)α + (n + (p2-1)/p2·n + n/p)β + (n + (p2-1)/p2·n)γ",
                  (L + 2, n + n - b2 + b, n + n - b2), kind="approx",
                  why="the fold's virtual ranks hold one or two blocks")
    raise AssertionError(key)


def allreduce_traffic(algorithm: str, count: int, itemsize: int, p: int) -> tuple[int, int]:
    """(messages, bytes) sent by all ``p`` ranks together in one allreduce of ``count`` elements.

    With L = lg p2 (the fold adds 2r whole-vector messages): naive and tree 2(p-1) messages of n
    bytes; recursive doubling p2 L + 2r of n; ring 2p(p-1) messages, 2(p-1) n bytes; Rabenseifner
    2 p2 L + 2r messages, (2(p2-1) + 2r) n bytes. Exact for any n: every block that travels is a
    whole range of the vector and the ranges of one step tile it.
    """
    if algorithm == "auto":
        algorithm = choose_allreduce(count * itemsize, count, p)
    if algorithm not in ALLREDUCE_ALGORITHMS:
        raise ValueError(f"unknown allreduce algorithm {algorithm!r}")
    n = count * itemsize
    if p == 1:
        return 0, 0
    p2, r, L = _fold(p)
    if algorithm in ("naive", "tree"):
        return 2 * (p - 1), 2 * (p - 1) * n
    if algorithm == "recursive_doubling":
        return p2 * L + 2 * r, (p2 * L + 2 * r) * n
    if algorithm == "ring":
        return 2 * p * (p - 1), 2 * (p - 1) * n
    return 2 * p2 * L + 2 * r, (2 * (p2 - 1) + 2 * r) * n      # rabenseifner


def allreduce_formula(algorithm: str, count: int, itemsize: int, p: int) -> str:
    """The bytes-sent formula of :func:`allreduce_traffic` as text in N (ranks) and n (bytes)."""
    if algorithm == "auto":
        algorithm = choose_allreduce(count * itemsize, count, p)
    p2, r, _ = _fold(p)
    if algorithm in ("naive", "tree", "ring") or (algorithm == "rabenseifner" and not r):
        return "2(N-1)·n"
    if algorithm == "recursive_doubling":
        return "N·log2(N)·n" if not r else f"(p2·log2(p2) + 2r)·n [p2={p2}, r={r}]"
    return f"(2(p2-1) + 2r)·n [p2={p2}, r={r}]"
