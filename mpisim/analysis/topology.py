"""Where the hierarchical allreduce beats the flat ones: the cost formulas on the cluster presets, by
message size and node count, and simulated runs that check them.

The formulas are :func:`mpisim.comm.costs.cost` with the preset's ranks per node (forms in the
intra- and inter-node links); the checks run the three algorithms on the simulated cluster
(:func:`mpisim.analysis.measure.measure`) where that is cheap (p <= 64, n <= 1 MiB).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..comm.costs import cost
from ..comm.network import PRESETS, Network
from .measure import DTYPE, Row, _counts, measure

__all__ = ["COMPARED", "Cell", "clusters", "formula_seconds", "topology_grid"]

COMPARED = ("ring", "rabenseifner", "hierarchical")
NODES = (2, 4, 8, 16)
SIZES = (1 << 10, 1 << 15, 1 << 20, 1 << 25, 1 << 28)
SIM_MAX_RANKS, SIM_MAX_BYTES = 64, 1 << 20


@dataclass
class Cell:
    """One (cluster, nodes, size): the formula time of each algorithm, and the simulated runs if made."""

    net: str
    nodes: int
    p: int
    nbytes: int
    formula: dict[str, float]      # seconds
    runs: dict[str, Row]           # the simulated rows, when checked

    @property
    def winner(self) -> str:
        return min(self.formula, key=self.formula.get)

    @property
    def speedup(self) -> float:
        """Best flat formula time / hierarchical formula time (> 1: hierarchical wins)."""
        return min(self.formula["ring"], self.formula["rabenseifner"]) / self.formula["hierarchical"]

    @property
    def sim_winner(self) -> str | None:
        return min(self.runs, key=lambda a: self.runs[a].ticks) if len(self.runs) == len(COMPARED) else None


def clusters() -> dict[str, Network]:
    """The presets with nodes."""
    return {k: v for k, v in PRESETS.items() if v.topology}


def formula_seconds(alg: str, net: Network, p: int, nbytes: int) -> float:
    """The closed-form allreduce time of ``alg`` on ``p`` ranks of ``net``'s nodes."""
    return cost("allreduce", alg, p, _counts("allreduce", p, nbytes), DTYPE.itemsize, contention=net.contention,
                ppn=net.ranks_per_node(p)).seconds(net)


def topology_grid(nets: dict[str, Network] | None = None, nodes=NODES, sizes=SIZES,
                  progress: Callable[[str], None] | None = None) -> list[Cell]:
    """Every (cluster, node count, size); simulated where p <= 64 and n <= 1 MiB."""
    cells = []
    for name, net in (nets or clusters()).items():
        for N in nodes:
            p = N * net.ppn
            for n in sizes:
                runs = {}
                if p <= SIM_MAX_RANKS and n <= SIM_MAX_BYTES:
                    if progress:
                        progress(f"topology {name}: {N} nodes, {p} ranks, {n} B")
                    runs = {a: measure("allreduce", a, p, n, net) for a in COMPARED}
                cells.append(Cell(name, N, p, n, {a: formula_seconds(a, net, p, n) for a in COMPARED}, runs))
    return cells
