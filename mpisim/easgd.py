"""``mpisim.easgd``: elastic averaging SGD (Zhang, Choromanska and LeCun 2015, "Deep learning with Elastic
Averaging SGD").

Ranks 0..S-1 (``--servers S``) hold the center variable x~, sharded as the parameter server shards its
parameters; the other W = N - S ranks are workers, each with its own model x_i and optimizer. A worker
takes local steps on its strided share of each global batch; every tau steps (``--period``), and after an
epoch's last step, it sends x_i to the servers (a shard to each), server j answers with the elastic
difference d = alpha (x_i - x~) of its shard, the worker moves toward the center (x_i -= d) and the center
toward the worker (x~ += d). alpha = eta rho is ``--elasticity`` (default 0.9 / W, the paper's
beta = W alpha = 0.9).

* ``--mode sync``: in each exchange round the servers answer all W workers from the same x~ and then move
  it by the sum of the W differences: x~ += alpha sum_i (x_i - x~) (the paper's synchronous EASGD).
* ``--mode async``: a server answers each worker the moment its x_i arrives and moves x~ at once
  (asynchronous EASGD, the paper's Algorithm 1); which worker comes first is decided by timing.

Rank 0 evaluates the center variable. Checkpoints hold the center and every worker's model and optimizer
state, so a resume is exact (in sync mode; async runs are not reproducible anyway).

    python -m mpisim.easgd --sim 4                                 # 1 server, 3 workers, sync
    python -m mpisim.easgd --sim 5 --servers 2 --mode async --period 8
    mpiexec -n 2 python -m mpisim.easgd --elasticity 0.5
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from .comm import ANY_SOURCE
from .comm._common import block_offsets
from .train.distributed import Formula
from .train.options import _float_between, _int_at_least
from .train.runtime import LocalSteps, Paradigm, Payload, Role, Run, fault_on_server
from .train.metrics import plural, share

TAG_X, TAG_DIFF, TAG_CENTER = 401, 402, 403
MODES = ("sync", "async")


@dataclass(frozen=True)
class Options:
    servers: int = 1                   # ranks 0..S-1 hold the center variable, a shard each
    mode: str = "sync"                 # sync | async
    elasticity: float | None = None    # alpha = eta rho in (0, 1); None: 0.9 / W
    period: int = 4                    # tau: local steps between two exchanges


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("elastic averaging")
    g.add_argument("--servers", type=_int_at_least(1, "a number of servers >= 1"), default=1, metavar="S",
                   help="ranks 0..S-1 hold the center variable, one shard each (default 1)")
    g.add_argument("--mode", choices=MODES, default="sync", help="(default sync)")
    g.add_argument("--elasticity", type=_float_between(0, 1, "a number in (0, 1)"), default=None, metavar="ALPHA",
                   help="alpha = eta rho in (0, 1): how far worker and center move toward each other "
                        "(default 0.9 / W for W workers; sync needs alpha < 2/(W+1))")
    g.add_argument("--period", type=_int_at_least(1, "a number of steps tau >= 1"), default=4, metavar="TAU",
                   help="local steps between two exchanges with the center (default 4)")


def check_world(train, o: Options, N: int) -> str | None:
    if N < o.servers + 1:
        return (f"easgd needs at least {o.servers + 1} ranks ({o.servers} server(s) and a worker), got {N}: "
                f"mpiexec -n {o.servers + 1} python -m mpisim.easgd or --sim {o.servers + 1}")
    W = N - o.servers
    if o.mode == "sync" and o.elasticity is not None and (W + 1) * o.elasticity >= 2:
        return (f"--elasticity {o.elasticity:g} with {W} workers: synchronous EASGD multiplies the gap between the "
                f"workers' mean and the center by 1 - (W+1) alpha at each exchange, so it diverges unless "
                f"alpha < 2/(W+1) = {2 / (W + 1):.3g}")
    return fault_on_server(train, o.servers, N)


class Elastic(Role):
    """What servers and workers share: the shards, alpha, the exchange count, the closed form."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        o, S = run.opts, run.opts.servers
        self.S, self.W = S, run.size - S
        self.alpha = o.elasticity if o.elasticity is not None else 0.9 / self.W
        self.offs = block_offsets(run.model.num_params, S)
        self.rounds = -(-run.steps // o.period)          # exchanges of one worker per epoch
        self.title = f"EASGD ({o.mode}), {S}+{self.W} ranks, {run.ds.name}"

    def payload(self) -> Payload:
        """X exchanges: x_i up and the difference back, each a message per server."""
        run, S, W, N = self.run, self.S, self.W, self.run.size
        P, b, X = run.model.num_params, run.model.params.itemsize, self.run.epochs_run * self.W * self.rounds
        f = Formula("X·b·P (X exchanges: x_i to the servers, the difference back)", X * S, X * b * P, X * S, X * b * P)
        legend = (f"communication in this run: P = {P:,} parameters, b = {b} bytes, N = {N} ranks ({S} server(s), "
                  f"W = {W} workers), X = {X:,} exchanges (W = {W} workers x {self.rounds} per epoch x "
                  f"{run.epochs_run} epochs), mode {run.opts.mode}. Payload: each exchange one message to and "
                  f"from every server")
        return Payload({"server": list(range(S)), "worker": list(range(S, N))}, {"server": f, "worker": f}, legend)


class Center(Elastic):
    """Server j: the center variable's shard j; answers exchanges, reports the shard to rank 0."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        o, tr = run.opts, run.train
        lo, hi = self.offs[run.rank], self.offs[run.rank + 1]
        self.center = run.model.params[lo:hi]
        self.x = np.empty_like(self.center)
        self.diffs = np.zeros((self.W, hi - lo), dtype=run.model.dtype)
        run.say(f"easgd: {self.S} server{'s' if self.S > 1 else ''} + {self.W} worker{'s' if self.W > 1 else ''} "
                f"({run.where()}), {o.mode}; {run.ds.describe()}")
        run.say(f"model {run.model.describe()}; workers: {tr.optimizer} lr {tr.lr:g}, global batch {tr.batch_size} "
                f"({share(tr.batch_size, self.W)} per worker); elasticity alpha {self.alpha:g} (beta = W alpha = "
                f"{self.W * self.alpha:g}), period tau {o.period}; {plural(tr.epochs, 'epoch')}; rank 0 evaluates the center"
                + run.resuming())

    def epoch(self, epoch: int) -> dict | None:
        run, t, a = self.run, self.run.t, self.run.model.dtype.type(self.alpha)
        for _ in range(self.rounds):
            if run.opts.mode == "sync":              # every worker against the same x~, then x~ moves
                for w in range(self.W):
                    with run.meter.comm("payload"):
                        t.recv(self.x, self.S + w, TAG_X)
                    np.multiply(a, self.x - self.center, out=self.diffs[w])
                    with run.meter.comm("payload"):
                        t.send(self.diffs[w], self.S + w, TAG_DIFF)
                with run.meter.computing():
                    self.center += self.diffs.sum(axis=0)
            else:                                    # each worker as it comes: x~ moves at once
                for _ in range(self.W):
                    with run.meter.comm("payload"):
                        st = t.recv(self.x, ANY_SOURCE, TAG_X)
                    d = a * (self.x - self.center)
                    self.center += d
                    with run.meter.comm("payload"):
                        t.send(d, st.source, TAG_DIFF)
        tot = run.totals(np.zeros(3))   # every rank's part of the epoch is done once this returns: no TAG_X
        #                                 of the next epoch can meet an ANY_SOURCE receive of this one
        with run.meter.comm("control"):              # the center, whole on rank 0 for its evaluation
            if run.rank != 0:
                t.send(self.center, 0, TAG_CENTER)
                return None
            for j in range(1, self.S):
                t.recv(run.model.params[self.offs[j]:self.offs[j + 1]], j, TAG_CENTER)
        return run.figures(tot, run.lr_at(epoch + (run.steps - 1) / run.steps))


class Worker(Elastic):
    """Worker i: local steps on its share; every tau steps an elastic exchange with the center."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self.local = LocalSteps(run, run.rank - self.S, self.W)
        self.diff = np.empty_like(run.model.params)

    def epoch(self, epoch: int) -> None:
        run, tau = self.run, self.run.opts.period
        self.local.start(epoch)
        for i in range(run.steps):
            self.local.step(epoch, i)
            if (i + 1) % tau == 0 or i == run.steps - 1:
                self.exchange()
        self.run.totals(self.local.sums)

    def exchange(self) -> None:
        run, x = self.run, self.run.model.params
        for j in range(self.S):
            lo, hi = self.offs[j], self.offs[j + 1]
            with run.meter.comm("payload"):
                run.t.send(x[lo:hi], j, TAG_X)
                run.t.recv(self.diff[lo:hi], j, TAG_DIFF)
        with run.meter.computing():
            x -= self.diff


PARADIGM = Paradigm(name="easgd", doc=__doc__, setup=lambda run: (Center if run.rank < run.opts.servers else Worker)(run),
                    options=Options, add_args=add_args, check_world=check_world, per_rank_state=True,
                    workers=lambda o, N: N - o.servers,
                    no_batchnorm="running statistics are not averaged (use mpisim.allreduce)",
                    description="Elastic averaging SGD: workers pulled toward a center variable held by servers.")
build_parser, main = PARADIGM.build_parser, PARADIGM.main


if __name__ == "__main__":
    sys.exit(main())
