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

On a topology (``ppn``: ranks per node, see :mod:`mpisim.comm.network`) a formula written for one
link (forms (a, b, c)) charges every message the slower link: an upper bound (``bound``), met
exactly by the ring allreduce, whose every step has a message on each kind of link. The ring's
and Rabenseifner's allreduce also get their forms in both links, Rabenseifner's
exact for p and L powers of two (its first lg N steps cross nodes, the last lg L stay inside); the
hierarchical allreduce (:mod:`mpisim.comm.hierarchical`) is written in both links from the start.
With ``contention`` on a topology the formulas leave the shared node links out (``approx``).
"""
from __future__ import annotations

from fractions import Fraction

from .allreduce import choose_allreduce
from .formulas import Call, Cost, make_cost
from .registry import ALGORITHMS, Algorithm, get

__all__ = ["ALGORITHMS", "Cost", "allreduce_formula", "allreduce_traffic", "cost", "times", "traffic"]

# ALGORITHMS: {collective: tuple of its registered algorithms}, the ones the report covers (auto
# only picks among them); read from the registry on every access


def _entry(coll: str, algorithm: str, count: int, itemsize: int, p: int) -> Algorithm:
    """The registered algorithm; an allreduce's ``auto`` is the one it picks for this call."""
    if coll == "allreduce" and algorithm == "auto":
        algorithm = choose_allreduce(count * itemsize, count, p)
    return get(coll, algorithm)


def traffic(coll: str, algorithm: str, p: int, count: int, itemsize: int, *, ppn: int = 0) -> tuple[int, int]:
    """(messages, bytes) all ``p`` ranks send in one call on ``count`` elements (the whole
    result's count for gather, scatter and allgather), exact for any p and count; ``ppn``: ranks per
    node (only the hierarchical allreduce depends on it)."""
    alg = _entry(coll, algorithm, count, itemsize, p)
    return (0, 0) if p == 1 else alg.traffic(Call(p, count, itemsize, ppn=ppn))


def cost(coll: str, algorithm: str, p: int, count: int, itemsize: int, *, contention: bool = False,
         ppn: int = 0) -> Cost:
    """The closed-form time of one call (see the module docstring for ``kind``; ``ppn``: ranks per node)."""
    try:
        alg = _entry(coll, algorithm, count, itemsize, p)
    except ValueError:
        raise ValueError(f"no cost formula for {coll} algorithm {algorithm!r}") from None
    if p == 1:
        return make_cost("0", (0, 0, 0))
    c = Call(p, count, itemsize, contention, ppn)
    res = alg.cost(c)
    if not ppn or all(len(f) == 5 for f in res.forms):
        return res
    if c.nodes == 1:      # every message stays inside the node: the one-link forms on the intra-node link
        return Cost(res.text, tuple((*f, 0, 0) if len(f) == 3 else f for f in res.forms), res.kind, res.why)
    if coll == "allreduce" and alg.name in _ON_NODES:
        res = _ON_NODES[alg.name](c, res)
    elif res.kind == "exact":
        res = Cost(res.text, res.forms, "bound", SLOWER)
    if contention:
        res = Cost(res.text, res.forms, "approx", "contention on a topology: the formula leaves the node's shared "
                   "links out")
    return res


SLOWER = "a topology: every message is charged the slower link"


def _ring_on_nodes(c: Call, flat: Cost) -> Cost:
    # every step has a message on each kind of link (on every link when L = 1): the slower one sets the pace
    p, b = c.p, c.b
    inter = (0, 0, (p - 1) * b, 2 * (p - 1), 2 * (p - 1) * b)
    forms = (inter,) if c.per_node == 1 else ((2 * (p - 1), 2 * (p - 1) * b, (p - 1) * b, 0, 0), inter)
    return make_cost("2(p-1)·max(α + n/p·β, αₑ + n/p·βₑ) + (p-1)/p·nγ", *forms, kind=flat.kind, why=flat.why)


def _rabenseifner_on_nodes(c: Call, flat: Cost) -> Cost:
    if not (c.pow2 and c.per_node & (c.per_node - 1) == 0):
        return Cost(flat.text, flat.forms, "bound" if flat.kind == "exact" else flat.kind, flat.why or SLOWER)
    # halving step k sends n/2^k to the rank p/2^k away: across nodes for the first lg N steps
    n, N, L = c.n, c.nodes, c.per_node
    lgN, lgL = N.bit_length() - 1, L.bit_length() - 1
    return make_cost("2 lg L·α + 2(1/N - 1/p)·nβ + 2 lg N·αₑ + 2(N-1)/N·nβₑ + (p-1)/p·nγ",
                     (2 * lgL, 2 * (Fraction(n, N) - c.b), n - c.b, 2 * lgN, 2 * (n - Fraction(n, N))),
                     kind=flat.kind, why=flat.why)


# the flat algorithms' forms in both links (they would sit beside the algorithms, as a registry entry's
# cost taking Call.ppn into account)
_ON_NODES = {"ring": _ring_on_nodes, "rabenseifner": _rabenseifner_on_nodes}


def allreduce_traffic(algorithm: str, count: int, itemsize: int, p: int, *, ppn: int = 0) -> tuple[int, int]:
    """(messages, bytes) sent by all ``p`` ranks together in one allreduce of ``count`` elements.

    With L = lg p2 (the fold adds 2r whole-vector messages): naive and tree 2(p-1) messages of n
    bytes; recursive doubling p2 L + 2r of n; ring 2p(p-1) messages, 2(p-1) n bytes; Rabenseifner
    2 p2 L + 2r messages, (2(p2-1) + 2r) n bytes. Exact for any n: every block that travels is a
    whole range of the vector and the ranges of one step tile it. ``ppn``: ranks per node (the
    hierarchical allreduce's counts depend on it).
    """
    return traffic("allreduce", algorithm, p, count, itemsize, ppn=ppn)


def allreduce_formula(algorithm: str, count: int, itemsize: int, p: int, *, n: str = "n", ppn: int = 0) -> str:
    """The bytes-sent formula of :func:`allreduce_traffic` as text in N (ranks) and ``n`` (the vector's
    bytes; a paradigm passes "b·P")."""
    text = _entry("allreduce", algorithm, count, itemsize, p).formula(Call(p, count, itemsize, ppn=ppn))
    return text if n == "n" else text.replace("·n", "·" + n)


def times(factor: str, text: str) -> str:
    """``factor·text``, with ``text`` in parentheses when it is a sum outside any bracket ('S·(a + b)')."""
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if depth == 0 and text.startswith(" + ", i):
            return f"{factor}·({text})"
    return f"{factor}·{text}"
