"""``mpisim.gossip``: decentralized SGD without any global collective (D-PSGD; Lian et al. 2017, "Can
Decentralized Algorithms Outperform Centralized Algorithms? A Case Study for Decentralized Parallel
Stochastic Gradient Descent").

Every rank holds its own model x_i and its own optimizer state. Each step rank i takes a local step on its
strided share of the global batch (as :mod:`mpisim.allreduce`), then averages its parameters with its
neighbours, x_i <- sum_j W_ij x_j: it sends x_i to each out-neighbour and receives x_j from each
in-neighbour, point to point, and sums self and in-neighbours in rank order. No rank ever waits for more
than its neighbours. The mixing matrix W comes from ``--topology``, each doubly stochastic:

* ``ring``: neighbours i-1 and i+1 (mod N), weight 1/(d+1) on self and each distinct neighbour;
* ``torus``: an R x C grid with wrap-around (R x C = N, R, C >= 2, as square as possible), neighbours
  up, down, left and right, weight 1/(d+1) on self and each distinct neighbour;
* ``exponential`` (Assran et al. 2019, Ying et al. 2021): i sends to i + 2^k and receives from i - 2^k
  (mod N) for k = 0..floor(log2(N-1)), weight 1/(K+1) on self and each in-neighbour (circulant);
* ``complete``: W = 11^T/N, every rank averages all N: with plain SGD this is allreduce SGD.

At each epoch's end the ranks average their parameters by a control allreduce: rank 0 evaluates that
average model x_bar, and the record carries the consensus distance, the mean over ranks of
||x_i - x_bar||_2. Checkpoints hold every rank's parameters and optimizer state, so a resume is exact.

    python -m mpisim.gossip --sim 4                                   # ring of 4 simulated ranks, digits
    python -m mpisim.gossip --sim 8 --topology exponential
    mpiexec -n 4 python -m mpisim.gossip --topology torus
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from .comm import allreduce
from .train import build_model
from .train.distributed import Formula
from .train.runtime import LocalSteps, Paradigm, Payload, Role, Run
from .train.metrics import plural, share

TOPOLOGIES = ("ring", "torus", "exponential", "complete")
TAG_PARAMS = 401


@dataclass(frozen=True)
class Options:
    topology: str = "ring"          # ring | torus | exponential | complete: who averages with whom


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("gossip")
    g.add_argument("--topology", choices=TOPOLOGIES, default="ring",
                   help="the graph of neighbours and its mixing matrix (default ring)")


def grid(N: int) -> tuple[int, int]:
    """The torus's R x C = N with 2 <= R <= C, as square as possible; (1, N) when there is none."""
    R = max((r for r in range(2, int(N ** 0.5) + 1) if N % r == 0), default=1)
    return R, N // R


def world_problem(topology: str, N: int) -> str | None:
    """Why ``topology`` cannot run on ``N`` ranks, or None."""
    if N < 2:
        return f"--topology {topology} needs at least 2 ranks (a rank and a neighbour), got {N}"
    if topology == "torus" and grid(N)[0] < 2:
        bigger = next(n for n in range(max(N, 4), 2 * N + 4) if grid(n)[0] >= 2)
        return (f"--topology torus needs an R x C grid with R, C >= 2: at least 4 ranks and not a prime number, "
                f"got {N} (try {bigger} ranks)")
    return None


def check_world(train, o: Options, N: int) -> str | None:
    return world_problem(o.topology, N)


def peers(topology: str, N: int, i: int) -> tuple[list[int], list[int]]:
    """Rank i's distinct out- and in-neighbours (sorted), self excluded; W_ij = 1/(1 + len(in)) for j in
    in + [i]. Every rank has the same degree, so W is doubly stochastic."""
    if topology == "ring":
        out = {(i - 1) % N, (i + 1) % N}
    elif topology == "torus":
        R, C = grid(N)
        a, b = divmod(i, C)
        out = {(a - 1) % R * C + b, (a + 1) % R * C + b, a * C + (b - 1) % C, a * C + (b + 1) % C}
    elif topology == "exponential":
        hops = [2 ** k for k in range((N - 1).bit_length())]          # 2^k <= N-1: distinct mod N
        return sorted((i + h) % N for h in hops), sorted((i - h) % N for h in hops)
    else:
        out = set(range(N))
    out.discard(i)
    return sorted(out), sorted(out)                                    # undirected: in = out


def mixing_matrix(topology: str, N: int) -> np.ndarray:
    """W (N x N) as the exchange applies it: row i averages rank i and its in-neighbours."""
    W = np.zeros((N, N))
    for i in range(N):
        ins = peers(topology, N, i)[1]
        W[i, [i, *ins]] = 1.0 / (1 + len(ins))
    return W


class Gossip(Role):
    """A rank of D-PSGD: a local step, then its parameters mixed with its in-neighbours'."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        tr, N, r, topo = run.train, run.size, run.rank, run.opts.topology
        self.out, self.ins = peers(topo, N, r)
        self.order = sorted([r, *self.ins])                            # a fixed summation order
        self.weight = 1.0 / (1 + len(self.ins))
        self.bufs = {j: np.empty_like(run.model.params) for j in self.ins}
        self.mixed = np.empty_like(run.model.params)
        self.local = LocalSteps(run, index=r, members=N)
        self.avg = build_model(tr, run.ds) if r == 0 else None          # rank 0 evaluates x_bar
        self.title = f"gossip SGD ({topo}), {N} ranks, {run.ds.name}, {run.model.describe()}"
        shape = f" {'x'.join(map(str, grid(N)))}" if topo == "torus" else ""
        run.say(f"gossip (D-PSGD): {N} ranks ({run.where()}), {run.ds.describe()}; "
                f"rank 0 evaluates the average of all ranks' models")
        run.say(f"model {run.model.describe()}; {tr.optimizer} lr {tr.lr:g}, global batch {tr.batch_size} "
                f"({share(tr.batch_size, N)} per rank), {plural(tr.epochs, 'epoch')}; topology {topo}{shape}, degree "
                f"{len(self.out)}" + run.resuming())

    def mix(self) -> None:
        """x_i <- sum_j W_ij x_j over self and the in-neighbours, in rank order (deterministic)."""
        run, x = self.run, self.run.model.params
        with run.meter.comm("payload"):
            reqs = [run.t.irecv(self.bufs[j], j, TAG_PARAMS) for j in self.ins]
            reqs += [run.t.isend(x, j, TAG_PARAMS) for j in self.out]
            for q in reqs:
                q.wait()                                   # x is not touched until its sends are done
        with run.meter.computing():
            self.mixed[:] = 0
            for j in self.order:
                self.mixed += self.weight * (x if j == run.rank else self.bufs[j])
            x[:] = self.mixed

    def epoch(self, epoch: int) -> dict | None:
        run = self.run
        self.local.start(epoch)
        for i in range(run.steps):
            self.local.step(epoch, i)
            self.mix()
        dist = self.consensus()
        tot = run.totals(self.local.sums, extra=[dist])
        if run.rank != 0:
            return None
        return {**run.figures(tot, run.opt.lr), "consensus_distance": tot[7] / run.size}

    def consensus(self) -> float:
        """Epoch end (control): x_bar by an allreduce in float64; this rank's ||x_i - x_bar||_2."""
        run, x = self.run, self.run.model.params
        x_bar = x.astype(np.float64)
        with run.meter.comm("control"):
            allreduce(run.t, x_bar, out=x_bar, check=False)
        x_bar /= run.size
        if self.avg is not None:
            self.avg.params[:] = x_bar
        return float(np.linalg.norm(x - x_bar))

    def eval_model(self):
        return self.avg

    def note(self, record: dict) -> str | None:
        return f"    consensus distance {record['consensus_distance']:.4g}"

    def payload(self) -> Payload:
        """Each step every rank sends its P parameters to each of its d out-neighbours."""
        run, N, d = self.run, self.run.size, len(self.out)
        P, b, S = run.model.num_params, run.model.params.itemsize, run.steps * run.epochs_run
        m, nbytes = S * N * d, S * N * d * b * P
        legend = (f"communication in this run: P = {P:,} parameters, b = {b} bytes, N = {N} ranks, S = {S} steps, "
                  f"topology {run.opts.topology} with d = {d} out-neighbours (and in-neighbours) per rank")
        return Payload({"rank": list(range(N))}, {"rank": Formula("S·N·d·b·P", m, nbytes, m, nbytes)}, legend)

    def result(self) -> dict:
        return {"steps": self.local.done, "average": self.avg}


PARADIGM = Paradigm(name="gossip", doc=__doc__, setup=Gossip, options=Options, add_args=add_args,
                    check_world=check_world, per_rank_state=True, workers=lambda o, N: N,
                    no_batchnorm="the ranks' running statistics are not averaged (use mpisim.allreduce)",
                    description="Decentralized SGD (D-PSGD): parameters averaged with neighbours only.")
build_parser, main = PARADIGM.build_parser, PARADIGM.main


if __name__ == "__main__":
    sys.exit(main())
