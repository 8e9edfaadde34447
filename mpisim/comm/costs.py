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

Each algorithm's formulas sit beside its code, registered with it (:mod:`mpisim.comm.registry`);
the functions here look them up.
"""
from __future__ import annotations

from .allreduce import choose_allreduce
from .formulas import Call, Cost, make_cost
from .registry import ALGORITHMS, Algorithm, get

__all__ = ["ALGORITHMS", "Cost", "allreduce_formula", "allreduce_traffic", "cost", "traffic"]

# ALGORITHMS: {collective: tuple of its registered algorithms}, the ones the report covers (auto
# only picks among them); read from the registry on every access


def _entry(coll: str, algorithm: str, count: int, itemsize: int, p: int) -> Algorithm:
    """The registered algorithm; an allreduce's ``auto`` is the one it picks for this call."""
    if coll == "allreduce" and algorithm == "auto":
        algorithm = choose_allreduce(count * itemsize, count, p)
    return get(coll, algorithm)


def traffic(coll: str, algorithm: str, p: int, count: int, itemsize: int) -> tuple[int, int]:
    """(messages, bytes) all ``p`` ranks send in one call on ``count`` elements (the whole
    result's count for gather, scatter and allgather), exact for any p and count."""
    alg = _entry(coll, algorithm, count, itemsize, p)
    return (0, 0) if p == 1 else alg.traffic(Call(p, count, itemsize))


def cost(coll: str, algorithm: str, p: int, count: int, itemsize: int, *, contention: bool = False) -> Cost:
    """The closed-form time of one call (see the module docstring for ``kind``)."""
    try:
        alg = _entry(coll, algorithm, count, itemsize, p)
    except ValueError:
        raise ValueError(f"no cost formula for {coll} algorithm {algorithm!r}") from None
    return make_cost("0", (0, 0, 0)) if p == 1 else alg.cost(Call(p, count, itemsize, contention))


def allreduce_traffic(algorithm: str, count: int, itemsize: int, p: int) -> tuple[int, int]:
    """(messages, bytes) sent by all ``p`` ranks together in one allreduce of ``count`` elements.

    With L = lg p2 (the fold adds 2r whole-vector messages): naive and tree 2(p-1) messages of n
    bytes; recursive doubling p2 L + 2r of n; ring 2p(p-1) messages, 2(p-1) n bytes; Rabenseifner
    2 p2 L + 2r messages, (2(p2-1) + 2r) n bytes. Exact for any n: every block that travels is a
    whole range of the vector and the ranges of one step tile it.
    """
    return traffic("allreduce", algorithm, p, count, itemsize)


def allreduce_formula(algorithm: str, count: int, itemsize: int, p: int, *, n: str = "n") -> str:
    """The bytes-sent formula of :func:`allreduce_traffic` as text in N (ranks) and ``n`` (the vector's
    bytes; a paradigm passes "b·P")."""
    text = _entry("allreduce", algorithm, count, itemsize, p).formula(Call(p, count, itemsize))
    return text if n == "n" else text.replace("·n", "·" + n)
