"""Run each collective on the simulated cluster with a network model and set it beside its formula.

One :class:`Row` per (collective, algorithm, p, size): the counters summed over ranks (messages,
bytes), the schedule depth (rounds), the largest virtual finish time, and the closed forms of
:mod:`mpisim.comm.costs`. The cross-rank argument check is off, so only the algorithm's own
messages are counted.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np

from ..comm import SimCluster, allgather, allreduce, barrier, bcast, gather, reduce, reduce_scatter, scatter
from ..comm.costs import Cost, cost, traffic
from ..comm.hierarchical import hierarchy
from ..comm.network import TICK, Network

__all__ = ["Row", "run_collective", "measure", "crossover", "tree_ring_rounds"]

DTYPE = np.dtype(np.float32)


def _counts(coll: str, p: int, nbytes: int) -> int:
    """Elements of the call for ``nbytes`` (gather/scatter/allgather: the whole result, rounded
    down to a multiple of p; at least one element per rank)."""
    count = max(nbytes // DTYPE.itemsize, 1)
    if coll in ("gather", "scatter", "allgather"):
        count = max(count // p, 1) * p
    return count


def run_collective(t, coll: str, algorithm: str, count: int, data: np.ndarray | None = None):
    """One call of ``coll`` on ``count`` float32 elements (``data``: a shared read-only input)."""
    p = t.size
    x = data if data is not None else np.ones(count, DTYPE)
    if coll == "allreduce":
        return allreduce(t, x, algorithm=algorithm, check=False)
    if coll == "bcast":
        return bcast(t, x, algorithm=algorithm, check=False)
    if coll == "reduce":
        return reduce(t, x, check=False)
    if coll == "reduce_scatter":
        return reduce_scatter(t, x, algorithm=algorithm, check=False)
    if coll == "gather":
        return gather(t, x[:count // p], check=False)
    if coll == "scatter":
        return scatter(t, x.reshape(p, count // p), check=False)
    if coll == "allgather":
        return allgather(t, x[:count // p], algorithm=algorithm, check=False)
    if coll == "barrier":
        return barrier(t)
    raise ValueError(f"unknown collective {coll!r}")


@dataclass
class Row:
    coll: str
    algorithm: str
    p: int
    nbytes: int            # bytes of the call (count * 4)
    messages: int          # measured, all ranks
    bytes: int
    rounds: int            # largest logical clock (schedule depth)
    ticks: int             # largest virtual finish time
    wall: float            # seconds the simulated run took
    cost: Cost
    formula_ticks: Fraction
    traffic: tuple[int, int]

    @property
    def seconds(self) -> float:
        return self.ticks * TICK

    @property
    def formula_seconds(self) -> float:
        return float(self.formula_ticks) * TICK

    @property
    def counts_agree(self) -> bool:
        return (self.messages, self.bytes) == self.traffic

    @property
    def deviation(self) -> float:
        """measured / formula - 1 (0 when both are 0)."""
        return float(self.ticks / self.formula_ticks - 1) if self.formula_ticks else float(self.ticks != 0)

    @property
    def agree(self) -> str:
        """'exact', 'bound -x%' (below an upper-bound formula), '+x%' / '-x%', or 'DIFFERS' (counts)."""
        if not self.counts_agree:
            return "DIFFERS (counts)"
        if self.ticks == self.formula_ticks:
            return "exact"
        if self.cost.kind == "exact":
            return f"DIFFERS ({self.deviation:+.2%})"
        if self.cost.kind == "bound" and self.ticks < self.formula_ticks:
            return f"bound ({self.deviation:+.1%})"
        return f"{self.deviation:+.1%}"

    @property
    def ok(self) -> bool:
        """What the formula promises holds: counts always, time exactly or within the bound."""
        if not self.counts_agree:
            return False
        if self.cost.kind == "exact":
            return self.ticks == self.formula_ticks
        return self.cost.kind == "approx" or self.ticks <= self.formula_ticks


# the set-up an algorithm does once per transport, before its first call (the hierarchical allreduce's
# splits): done and then left out of the timed call, as a persistent plan's set-up is
SETUP = {("allreduce", "hierarchical"): hierarchy}
EPOCH = 10**18   # ticks (1000 s) every clock is set to after a set-up: later than any link it kept busy


def measure(coll: str, algorithm: str, p: int, nbytes: int, net: Network, *,
            timeout: float = 600.0) -> Row:
    """Run one call on ``p`` simulated ranks and return the measured and closed-form figures."""
    count = _counts(coll, p, nbytes)
    data = np.ones(count, DTYPE)
    data.flags.writeable = False     # one input shared by all ranks: the collectives only read it
    setup = SETUP.get((coll, algorithm))

    def body(t):
        start = 0
        if setup is not None:
            setup(t)
            t.reset_stats()
            t.clock = start = EPOCH
        run_collective(t, coll, algorithm, count, data)
        s = t.stats
        return s.messages_sent, s.bytes_sent, s.rounds, t.clock - start

    t0 = time.perf_counter()
    res = SimCluster(p, timeout=timeout, network=net).run(body)
    wall = time.perf_counter() - t0
    ppn = net.ranks_per_node(p) if net.topology else 0
    c = cost(coll, algorithm, p, count, DTYPE.itemsize, contention=net.contention, ppn=ppn)
    return Row(coll, algorithm, p, count * DTYPE.itemsize, sum(r[0] for r in res), sum(r[1] for r in res),
               max(r[2] for r in res), max(r[3] for r in res), wall, c, c.ticks(net),
               traffic(coll, algorithm, p, count, DTYPE.itemsize, ppn=ppn))


# -- tree against ring -----------------------------------------------------------------------------------
def tree_ring_rounds(p: int) -> tuple[int, int]:
    """Sequential message steps of a tree allreduce (2 ceil(lg p)) and a ring allreduce (2(p-1)): the
    alpha coefficients of their formulas."""
    return tuple(int(cost("allreduce", alg, p, p, 1).forms[0][0]) for alg in ("tree", "ring"))


def crossover(p: int, net: Network) -> float | None:
    """The message size in bytes above which the ring allreduce beats the tree on ``p`` ranks
    (0: the ring always wins; None: it never does), from the closed forms."""
    ppn = net.ranks_per_node(p) if net.topology else 0

    def coeffs(alg):   # time(n) = A + B n, from the formula evaluated at n = p and n = 2p bytes
        f1 = cost("allreduce", alg, p, p, 1, ppn=ppn).ticks(net)
        f2 = cost("allreduce", alg, p, 2 * p, 1, ppn=ppn).ticks(net)
        return f1 - (f2 - f1), (f2 - f1) / p
    (at, bt), (ar, br) = coeffs("tree"), coeffs("ring")
    if br >= bt:
        return None if ar >= at else float("inf")
    n = (ar - at) / (bt - br)
    return max(float(n), 0.0)


def sim_winner(p: int, nbytes: int, net: Network) -> str:
    """'ring' or 'tree': which allreduce the simulated cluster finishes first."""
    tr = measure("allreduce", "tree", p, nbytes, net).ticks
    ri = measure("allreduce", "ring", p, nbytes, net).ticks
    return "ring" if ri < tr else "tree"


def grid(colls: dict[str, tuple[str, ...]], ranks: list[int], sizes: list[int], net: Network,
         progress: Callable[[str], None] | None = None) -> list[Row]:
    """Measure every (collective, algorithm, p, size); ``progress`` gets one line per run."""
    jobs = [(c, a, p, s) for c, algs in colls.items() for a in algs for p in ranks
            for s in (sizes if c != "barrier" else sizes[:1])]
    rows = []
    for i, (c, a, p, s) in enumerate(jobs, 1):
        if progress:
            progress(f"[{i}/{len(jobs)}] {c} {a} p={p} {s} B")
        rows.append(measure(c, a, p, s, net))
    return rows
