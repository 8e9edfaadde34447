"""The pieces every cost formula is written with: one call's sizes (:class:`Call`) and its time (:class:`Cost`).

Notation (Thakur, Rabenseifner and Gropp 2005): p ranks, n bytes, lg the base-2 logarithm; for p
not a power of two, p2 is the largest power of two below p, r = p - p2 and L = lg p2 (MPICH's
fold, :class:`mpisim.comm._common.Fold`). On a topology, L ranks per node on N nodes, α β the
intra-node link and αₑ βₑ the inter-node one. :mod:`mpisim.comm.costs` says what ``kind`` means.
Each algorithm's own formulas sit beside its code and are registered with it
(:mod:`mpisim.comm.registry`).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from ._common import block_offsets
from .network import TICK

__all__ = ["Call", "Cost", "FOLD_BLOCKS", "LOPSIDED", "UNEVEN", "blocks", "make_cost", "subtree_blocks", "tree_kind"]

UNEVEN = "unequal blocks: the formula takes n/p"
LOPSIDED = "p is not a power of two: the binomial tree is lopsided, the formula bounds it"
FOLD_BLOCKS = "the fold's virtual ranks hold one or two blocks"


@dataclass(frozen=True)
class Call:
    """One call of a collective: ``count`` elements of ``itemsize`` bytes on ``p`` ranks.

    ``count`` is the whole result's for gather, scatter and allgather; ``contention`` is the
    network's per-link limit (only the naive allreduce's formula depends on it); ``ppn`` the ranks
    per node of a topology (0: none, all ranks on one link; a ppn that does not divide p is taken
    as one node, as the hierarchical allreduce takes such a layout).
    """

    p: int
    count: int
    itemsize: int
    contention: bool = False
    ppn: int = 0

    @property
    def per_node(self) -> int:
        """Ranks per node: ppn when it splits the p ranks into several equal nodes, else p (one node)."""
        ppn = self.ppn
        return ppn if 0 < ppn < self.p and self.p % ppn == 0 else self.p

    @property
    def nodes(self) -> int:
        """Nodes the p ranks span (1 without a topology)."""
        return self.p // self.per_node

    @property
    def n(self) -> int:
        """Bytes of the vector."""
        return self.count * self.itemsize

    @property
    def p2(self) -> int:
        """The largest power of two <= p."""
        return 1 << (self.p.bit_length() - 1)

    @property
    def r(self) -> int:
        """Ranks the fold hands over: p - p2."""
        return self.p - self.p2

    @property
    def L(self) -> int:
        """lg p2."""
        return self.p2.bit_length() - 1

    @property
    def lg(self) -> int:
        """ceil(lg p)."""
        return (self.p - 1).bit_length()

    @property
    def pow2(self) -> bool:
        return self.r == 0

    @property
    def even(self) -> bool:
        """The count splits into p equal blocks."""
        return self.count % self.p == 0

    @property
    def b(self) -> Fraction:
        """n/p bytes, one block."""
        return Fraction(self.n, self.p)

    @property
    def b2(self) -> Fraction:
        """n/p2 bytes, one virtual rank's range."""
        return Fraction(self.n, self.p2)


@dataclass(frozen=True)
class Cost:
    """Time = the largest over ``forms`` of a*alpha + b*beta + c*gamma (b, c in bytes).

    A form (a, b, c) charges the one link of a flat network (on a topology, the slower link:
    :meth:`mpisim.comm.network.Network.time`); a form (a, b, c, ae, be) charges a and b to the
    intra-node link and ae messages and be bytes to the inter-node one.
    """

    text: str
    forms: tuple[tuple[Fraction, Fraction, Fraction], ...]
    kind: str = "exact"      # exact | bound | approx (see mpisim.comm.costs)
    why: str = ""

    def ticks(self, net) -> Fraction:
        return max(net.time(*f) for f in self.forms)

    def seconds(self, net) -> float:
        return float(self.ticks(net)) * TICK


def make_cost(text: str, *forms, kind: str = "exact", why: str = "") -> Cost:
    """A :class:`Cost` from ``text`` and forms (a, b, c) or (a, b, c, ae, be) of any numbers (kept as exact
    fractions)."""
    return Cost(text, tuple(tuple(Fraction(x) for x in f) for f in forms), kind, why)


def tree_kind(c: Call) -> dict:
    """``kind`` and ``why`` of a binomial tree's ceil(lg p) formula: exact for a power of two, else a bound."""
    return {"kind": "exact", "why": ""} if c.pow2 else {"kind": "bound", "why": LOPSIDED}


def blocks(count: int, p: int) -> list[int]:
    """Element counts of the collectives' blocks (numpy.array_split's)."""
    offs = block_offsets(count, p)
    return [hi - lo for lo, hi in zip(offs, offs[1:])]


def subtree_blocks(p: int) -> int:
    """Blocks a binomial scatter (or gather) moves in all: relative rank v gets its subtree's."""
    return sum(min(v + (v & -v), p) - v for v in range(1, p))
