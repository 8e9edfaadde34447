"""``mpisim.localsgd``: local SGD, periodic model averaging (Stich 2019, "Local SGD Converges Fast and
Communicates Little"; Lin et al. 2020, "Don't Use Large Mini-Batches, Use Local SGD").

Every rank holds a replica and its own optimizer state. In step i of an epoch each rank takes one
optimizer step on its strided share of the global batch i (as mpisim.allreduce splits it); every H steps
(``--sync-every H``), and after an epoch's last step, one allreduce averages the parameters. So the
ranks exchange the model once per H steps instead of the gradient every step: H times fewer bytes, at the
price of replicas that drift apart between averages. With plain SGD and H = 1 this is allreduce SGD (the
tests check it in float64). ``--post-local E`` runs H = 1 for the first E epochs and H afterwards (Lin et
al.'s post-local SGD: average every step while the loss falls fast, then save communication).

Optimizer state (momentum, Adam's moments) stays local; checkpoints hold every rank's, so a resume is exact
(with ``--compress``, unless the scheme keeps state: error feedback, PowerSGD's Q, random-k's draws).

``--compress SCHEME`` (:mod:`mpisim.train.compress`) sends each rank's change of the parameters since the last
average, compressed, instead of the parameters: an average is then the last average plus the mean change.
With ``--error-feedback`` what a scheme leaves out of a change is sent with the next one.

    python -m mpisim.localsgd --sim 4                                  # H = 4, digits
    python -m mpisim.localsgd --sim 4 --sync-every 16 --post-local 2
    mpiexec -n 2 python -m mpisim.localsgd --sync-every 8 --algorithm ring
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from .comm import ALLREDUCE_ALGORITHMS, allreduce
from .comm.costs import allreduce_formula, allreduce_traffic, times
from .comm.hierarchical import known_ranks_per_node
from .train.compress import add_compress_args, check_compress_args, make_compressor
from .train.distributed import Formula
from .train.options import _int_at_least
from .train.runtime import LocalSteps, Paradigm, Payload, Role, Run
from .train.metrics import plural, share


@dataclass(frozen=True)
class Options:
    sync_every: int = 4            # H: local steps between two averages
    post_local: int = 0            # average every step for the first E epochs
    algorithm: str = "auto"        # the allreduce that averages
    compress: str = "none"         # a scheme of mpisim.train.compress for the parameters' change
    error_feedback: bool = False   # keep what the scheme leaves out, send it with the next change


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("local SGD")
    g.add_argument("--sync-every", type=_int_at_least(1, "a number of steps H >= 1"), default=4, metavar="H",
                   help="average the parameters every H local steps and at each epoch's end (default 4)")
    g.add_argument("--post-local", type=_int_at_least(0, "a number of epochs >= 0"), default=0, metavar="E",
                   help="average every step (H = 1) for the first E epochs (default 0)")
    g.add_argument("--algorithm", choices=ALLREDUCE_ALGORITHMS, default="auto",
                   help="the allreduce that averages (default auto)")
    add_compress_args(g, "each rank's change of the parameters since the last average")


class LocalSGD(Role):
    """A replica: local steps on its share, the parameters averaged every H steps."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        o, tr, N = run.opts, run.train, run.size
        self.local = LocalSteps(run, run.rank, N)
        self.averages = 0
        self.comp = make_compressor(o.compress, error_feedback=o.error_feedback, seed=run.model.seed,
                                    layout=run.model.slices)
        self.comp.ppn = known_ranks_per_node(run.t)    # for the hierarchical allreduce's formulas
        # compressed: the parameters of the last average, the same on every rank (an average ends each epoch,
        # so a checkpoint holds them too)
        self.anchor = run.model.params.copy() if o.compress != "none" else None
        self.title = f"local SGD (H={o.sync_every}), {N} ranks, {run.ds.name}, {run.model.describe()}"
        run.say(f"localsgd: {N} rank{'s' if N > 1 else ''} ({run.where()}), {run.ds.describe()}")
        run.say(f"model {run.model.describe()}; {tr.optimizer} lr {tr.lr:g} on every rank, global batch "
                f"{tr.batch_size} ({share(tr.batch_size, N)} per rank), {plural(tr.epochs, 'epoch')}; average every "
                f"{o.sync_every} step{'s' if o.sync_every > 1 else ''}"
                + (f" (every step for the first {o.post_local} epochs)" if o.post_local else "")
                + f" by allreduce {o.algorithm}"
                + (f", the change since the last one compressed: {self.comp.describe()}" if self.anchor is not None
                   else "") + run.resuming()
                + (" (the compression's state is not in the checkpoint: it starts afresh, so this resume is not "
                   "exact)" if run.state.start_epoch and self.comp.stateful else ""))

    def period(self, epoch: int) -> int:
        return 1 if epoch < self.run.opts.post_local else self.run.opts.sync_every

    def epoch(self, epoch: int) -> dict | None:
        run, H = self.run, self.period(epoch)
        self.local.start(epoch)
        for i in range(run.steps):
            self.local.step(epoch, i)
            if (i + 1) % H == 0 or i == run.steps - 1:
                self.average()
        tot = run.totals(self.local.sums)
        return run.figures(tot, run.opt.lr) if run.rank == 0 else None

    def average(self) -> None:
        run, params = self.run, self.run.model.params
        if self.anchor is None:
            with run.meter.comm("payload"):
                allreduce(run.t, params, algorithm=run.opts.algorithm, out=params, check=False)
            with run.meter.computing():
                params /= run.size      # every rank holds the same sum: the same average, bit for bit
        else:
            with run.meter.computing():
                delta = params - self.anchor              # (P,) this rank's change since the last average
            self.comp.allreduce(run.t, delta, algorithm=run.opts.algorithm, meter=run.meter)
            with run.meter.computing():
                delta /= run.size                         # the mean change, the same on every rank
                np.add(self.anchor, delta, out=params)
                self.anchor[...] = params
        self.averages += 1

    def payload(self) -> Payload:
        """A averages, each one allreduce of the P parameters."""
        run, o, N = self.run, self.run.opts, self.run.size
        P, b = run.model.num_params, run.model.params.itemsize
        first = run.state.start_epoch                    # A in closed form: ceil(S_e / H_e) per epoch run
        A = sum(-(-run.steps // self.period(e)) for e in range(first, first + run.epochs_run))
        if self.anchor is None:
            ppn = known_ranks_per_node(run.t)
            m, nbytes = (A * x for x in allreduce_traffic(o.algorithm, P, b, N, ppn=ppn))
            text = allreduce_formula(o.algorithm, P, b, N, n='b·P', ppn=ppn)
            text = times("A", text)
        else:
            m, nbytes = (A * x for x in self.comp.traffic(P, N, algorithm=o.algorithm, itemsize=b))
            text = f"A·[{self.comp.formula(P, N, algorithm=o.algorithm, itemsize=b)}]"
        legend = (f"communication in this run: P = {P:,} parameters, b = {b} bytes, N = {N} ranks, "
                  f"A = {A} averages of S = {self.local.done} steps ("
                  + (f"every step in the first {o.post_local} epochs, then " if o.post_local else "")
                  + f"every H = {o.sync_every} steps and at each epoch's end), algorithm {o.algorithm}. "
                  + ("Payload: the parameters, one allreduce per average" if self.anchor is None else
                     f"Payload: each rank's change of the parameters, compressed ({self.comp.describe()})"))
        return Payload({"rank": list(range(N))}, {"rank": Formula(text, m, nbytes, m, nbytes)}, legend)

    def result(self) -> dict:
        return {"steps": self.local.done, "averages": self.averages}


PARADIGM = Paradigm(name="localsgd", doc=__doc__, setup=LocalSGD, options=Options, add_args=add_args,
                    check=check_compress_args, per_rank_state=True, workers=lambda o, N: N, no_batchnorm="running statistics are not averaged (use mpisim.allreduce)",
                    description="Local SGD: H local steps on every rank, then the parameters averaged.")
build_parser, main = PARADIGM.build_parser, PARADIGM.main


if __name__ == "__main__":
    sys.exit(main())
