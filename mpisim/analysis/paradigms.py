"""The paradigms' data volume: each run for real on the simulated cluster with a small model.

Each paradigm already prints its communication table with the closed form of its payload and
a column saying whether they agree (:func:`mpisim.train.distributed.comm_report`); here they
are run with the same small model, side by side, under one network model.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, replace

from ..comm import SimCluster
from ..comm.network import Network

__all__ = ["PARADIGMS", "ParadigmRun", "run_paradigm"]

# name, module, options, the formula in P (parameters), b (bytes each), N (ranks), S (steps),
# R (rounds), m (clients per round), W (workers), H, tau, d, in words a student can check
_SMALL = ["--dataset", "digits", "--hidden", "32", "--quiet", "--seed", "0"]
PARADIGMS = {
    "allreduce SGD (ring)": ("mpisim.allreduce", ["--epochs", "1", "--algorithm", "ring"],
                             "S·2(N-1)·b·P bytes sent in all: each step every rank sends 2(N-1)/N of the vector"),
    "allreduce SGD (tree)": ("mpisim.allreduce", ["--epochs", "1", "--algorithm", "tree"],
                             "S·2(N-1)·b·P in all too, but the root sends and receives 2⌈lg N⌉·b·P a step"),
    "parameter server (sync)": ("mpisim.paramserver", ["--epochs", "1", "--mode", "sync"],
                                "S·W·b·P pushed and S·W·b·P pulled, W = N-1 workers: all of it through the "
                                "server's link"),
    "parameter server (sync), link contention": (
        "mpisim.paramserver", ["--epochs", "1", "--mode", "sync"],
        "the same bytes; with contention the server's incoming link takes one push at a time"),
    "FedAvg": ("mpisim.fedavg", ["--rounds", "2", "--clients", "6", "--fraction", "0.5", "--local-epochs", "1"],
               "R·m·b·P down and R·m·b·P up, m = sampled clients per round, whatever the local epochs"),
    "local SGD (H = 4)": ("mpisim.localsgd", ["--epochs", "1", "--sync-every", "4"],
                          "A allreduces of b·P, A = ceil(S/H) averages: H times fewer bytes than allreduce SGD"),
    "EASGD (sync, tau = 4)": ("mpisim.easgd", ["--epochs", "1", "--period", "4"],
                              "X·b·P each way, X = W·ceil(S/tau) exchanges of the workers with the center's servers"),
    "gossip (ring)": ("mpisim.gossip", ["--epochs", "1", "--topology", "ring"],
                      "S·N·d·b·P, d = 2 neighbours: no global collective, a rank's bytes do not grow with N"),
}


@dataclass
class ParadigmRun:
    name: str
    formula: str
    command: str
    table: str
    agrees: bool
    vtime: float
    wall: float


def run_paradigm(name: str, ranks: int, net: Network) -> ParadigmRun:
    """Run the paradigm ``name`` of :data:`PARADIGMS` on ``ranks`` simulated ranks under ``net``."""
    import time
    module, opts, formula = PARADIGMS[name]
    mod = importlib.import_module(module)
    if "contention" in name:
        net = replace(net, contention=True)
    argv = [*_SMALL, *opts, "--sim", str(ranks), "--network", net.spec()]
    cfg = mod.PARADIGM.parse(argv)
    cluster = SimCluster(ranks, network=net)
    t0 = time.perf_counter()
    res = cluster.run(mod.PARADIGM.run_rank, cfg)
    wall = time.perf_counter() - t0
    vtime = max(t.vtime for t in cluster.transports)
    command = f"python -m {module} " + " ".join(argv)
    return ParadigmRun(name, formula, command, res[0]["comm_table"], bool(res[0]["comm_agrees"]), vtime, wall)
