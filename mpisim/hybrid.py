"""``mpisim.hybrid``: data, pipeline and tensor parallelism at once, on a D x P x T grid of ranks.

The ranks form a grid (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM", PTD-P): rank ``(d*P + s)*T + k`` is tensor rank k of pipeline stage s of
data-parallel replica d. Three families of sub-communicators, each made by ``split`` of the world:

* a **pipe** group per (d, k): the P stages of one replica, which pass activations forward and their
  gradients back in micro-batches, as :mod:`mpisim.pipeline` does (its engine, its schedules);
* a **tensor** group per (d, s): the T ranks of one stage, which split its Linear layers in column- then
  row-parallel pairs, as :mod:`mpisim.tensor` does (its core), with T = 1 a plain stage;
* a **data** group per (s, k): the D replicas of one piece of the model, which sum its gradient with one
  allreduce per step, as :mod:`mpisim.allreduce` does.

Replica d takes the strided share ``batch[d::D]`` of every global batch, cuts it into M micro-batches and
runs it through its pipeline; every piece's gradient (weight 1/B per example) is summed over the replicas,
and each rank steps its own piece. So the grid computes what the centralized trainer computes (tested in
float64). Dropout masks are drawn per replica (they cannot match one process's); BatchNorm is refused.

    python -m mpisim.hybrid --sim 4 --dp 2 --pp 2                 # 2 replicas of a 2-stage pipeline
    python -m mpisim.hybrid --sim 8 --dp 2 --pp 2 --tp 2 --schedule gpipe --micro-batches 8
    mpiexec -n 4 python -m mpisim.hybrid --dp 2 --pp 2
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from .comm import ALLREDUCE_ALGORITHMS, allreduce
from .comm.costs import allreduce_traffic
from .comm.hierarchical import known_ranks_per_node
from .data import dataset_shape
from .nn.loss import SoftmaxCrossEntropy
from .nn.stage import SlotPool, Stage, block_flops
from .pipeline import (Engine, _offsets, _schedule, _stage_list, check_plot, count, cut, draw_first_step,
                       layer_count, micro_batches)
from .tensor import TensorParallelMLP, split_problem
from .train import gather_batch
from .train.distributed import Formula
from .train.options import _int_at_least
from .train.runtime import Paradigm, Part, Payload, Role, Run


@dataclass(frozen=True)
class Options:
    dp: int | None = None          # D: replicas (default: the ranks left by P and T)
    pp: int = 2                    # P: pipeline stages per replica
    tp: int = 1                    # T: tensor-parallel ranks per stage
    micro_batches: int = 4         # M per replica's share of a batch
    pipeline_schedule: str = "1f1b"
    stages: tuple = ()             # blocks per stage; () = balanced by FLOPs
    algorithm: str = "auto"        # the allreduce of the data and tensor groups
    schedule_plot: str | None = None


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hybrid grid")
    g.add_argument("--dp", type=_int_at_least(1, "a number of replicas D >= 1"), default=None, metavar="D",
                   help="data-parallel replicas (default: the rank count / (P x T))")
    g.add_argument("--pp", type=_int_at_least(1, "a number of stages P >= 1"), default=2, metavar="P",
                   help="pipeline stages per replica (default 2)")
    g.add_argument("--tp", type=_int_at_least(1, "a number of tensor ranks T >= 1"), default=1, metavar="T",
                   help="tensor-parallel ranks per stage (default 1)")
    g.add_argument("--micro-batches", type=_int_at_least(1, "a number of micro-batches M >= 1"), default=4,
                   metavar="M", help="micro-batches of each replica's share of a batch (default 4)")
    g.add_argument("--schedule", dest="pipeline_schedule", type=_schedule, default="1f1b",
                   metavar="{gpipe,1f1b}", help="the pipeline schedule (default 1f1b); the learning-rate schedule "
                                                "is --lr-schedule here")
    g.add_argument("--stages", type=_stage_list, default=(), metavar="K,K,...",
                   help="blocks (Linear layers) per stage, P numbers summing to the layer count (default: balanced "
                        "by FLOPs)")
    g.add_argument("--algorithm", choices=ALLREDUCE_ALGORITHMS, default="auto",
                   help="the allreduce of the data and tensor groups (default auto)")
    g.add_argument("--schedule-plot", metavar="FILE.png", default=None,
                   help="draw the first step as it ran: every rank x time, forward, backward, the replicas' "
                        "gradient allreduce, idle")


def check(p: argparse.ArgumentParser, train, o: Options) -> None:
    n = layer_count(train)
    if o.pp > n:
        p.error(f"--pp {o.pp} stages but the model has only {count(n, 'Linear layer')} (--hidden "
                f"{','.join(map(str, train.hidden)) or 'none'})")
    if o.stages and (len(o.stages) != o.pp or sum(o.stages) != n):
        p.error(f"--stages {','.join(map(str, o.stages))} must list {count(o.pp, 'stage')} (--pp) summing to the "
                f"model's {count(n, 'Linear layer')}")
    if train.device != "cpu":
        p.error("--device cuda is not supported by hybrid: its stages compute with NumPy on the host")
    check_plot(p, o.schedule_plot)


def grid(o: Options, N: int) -> tuple[int, int, int]:
    """(D, P, T) for N ranks."""
    return (o.dp or max(N // (o.pp * o.tp), 1)), o.pp, o.tp


def check_world(train, o: Options, N: int) -> str | None:
    D, P, T = grid(o, N)
    if D * P * T != N:
        if o.dp:
            return f"--dp {D} x --pp {P} x --tp {T} = {D * P * T} ranks, but there are {N}: the rank count must be D x P x T"
        return (f"{N} ranks is not a multiple of --pp {P} x --tp {T} = {P * T}: the rank count must be D x P x T "
                f"(D, the replicas, is the rest)")
    if T > 1:
        for s, (a, b) in enumerate(_ranges(train, o)):
            problem = split_problem(train.hidden, T, (a, b))
            if problem:
                return f"stage {s}: {problem}"
    return None


def _ranges(train, o: Options) -> list[tuple[int, int]]:
    """The stages' block ranges, from the options alone (as ``cut`` finds them on the built model)."""
    features, classes = dataset_shape(train.dataset, synthetic_features=train.synthetic_features)
    return cut(_Sizes([features, *train.hidden, classes]), o.pp, o.stages)


@dataclass
class _Sizes:
    sizes: list


# -- a stage split over a tensor group, as the pipeline engine drives a stage ---------------------------------
class TensorStage(SlotPool):
    """Blocks [a, b) of the model, tensor-parallel over ``tt`` (:class:`mpisim.tensor.TensorParallelMLP`),
    with the interface the pipeline :class:`~mpisim.pipeline.Engine` drives a :class:`~mpisim.nn.stage.Stage`
    by. Its FLOPs are charged by the core (its share of each matmul), so the engine charges none, and the
    core counts its own computation time (``meters_itself``)."""

    meters_itself = True

    def __init__(self, tt, model, a: int, b: int, *, algorithm: str, meter) -> None:
        self.core = TensorParallelMLP(tt, model, layers=(a, b), algorithm=algorithm, meter=meter)
        self.params, self.grads = self.core.params, self.core.grads
        self.is_first, self.is_last = a == 0, b == len(model.sizes) - 1
        self.d_in, self.d_out, self.dtype = model.sizes[a], model.sizes[b], model.dtype
        self.model = model
        self.loss_fn = SoftmaxCrossEntropy() if self.is_last else None
        super().__init__()

    def seed_dropout(self, *key: int) -> None:
        self.model.seed_dropout(*key)             # the core draws from the model's generators

    def forward(self, slot, x, train: bool = True):
        y, slot.tape = self.core.forward(x, train=train)
        slot.act_bytes = sum(a.nbytes for a in slot.tape.inputs) + sum(u.nbytes for u in slot.tape.masks
                                                                         if u is not None)
        return y

    loss = Stage.loss

    def backward(self, slot, dy=None):
        return self.core.backward(slot.tape, slot.dlogits if dy is None else dy, need_dx=not self.is_first,
                                  accumulate=True)

    def zero_grad(self) -> None:
        self.grads[...] = 0

    def forward_flops(self, rows: int) -> int:
        return 0

    backward_flops = forward_flops


# -- one rank ---------------------------------------------------------------------------------------------------
class GridRank(Role):
    """Tensor rank k of stage s of replica d."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        o, tr, t = run.opts, run.train, run.t
        D, P, T = self.D, self.P, self.T = grid(o, run.size)
        self.k, rest = run.rank % T, run.rank // T
        self.s, self.d = rest % P, rest // P
        self.pipe = t.split(self.d * T + self.k, key=self.s)
        self.data = t.split(self.s * T + self.k, key=self.d)
        self.tens = t.split(self.d * P + self.s, key=self.k)
        self.ranges = cut(run.model, P, o.stages)
        a, b = self.ranges[self.s]
        if T == 1:
            self.stage = Stage(run.model, a, b)
            index, owned = np.arange(self.stage.lo, self.stage.hi), True
        else:
            self.stage = TensorStage(self.tens, run.model, a, b, algorithm=o.algorithm, meter=run.meter)
            index, owned = self.stage.core.index, self.stage.core.owned
        self.opt = run.optimizer(self.stage.params, self.stage.grads)
        run.attach(Part(index, self.opt, np.asarray(owned) & (self.d == 0)))   # replica 0 answers for the piece
        self.engine = Engine(self.pipe, self.stage, o.pipeline_schedule, run.meter)
        B = min(tr.batch_size, run.ds.num_train)
        self.xbuf = np.empty((-(-B // D), run.ds.num_features), dtype=run.model.dtype)
        self.batches: list[int] = []          # every global batch's size, for the closed forms
        self.events: list | None = None       # the first step's, for --schedule-plot
        self.title = (f"hybrid D={D} x P={P} x T={T} ({o.pipeline_schedule}, M={o.micro_batches}), {run.ds.name}, "
                      f"{run.model.describe()}")
        run.say(f"hybrid: {run.size} ranks ({run.where()}) as D = {D} replica{'s' if D > 1 else ''} x P = {P} "
                f"stage{'s' if P > 1 else ''} x T = {T} tensor rank{'s' if T > 1 else ''}; {run.ds.describe()}")
        run.say(f"model {run.model.describe()}; {tr.optimizer} lr {tr.lr:g}, global batch {tr.batch_size} "
                f"(~{tr.batch_size / D:g} per replica in {o.micro_batches} micro-batches), schedule "
                f"{o.pipeline_schedule}, {tr.epochs} epoch{'s' if tr.epochs != 1 else ''}; allreduce {o.algorithm}"
                + run.resuming())
        for s, (a, b) in enumerate(self.ranges):
            flops = sum(f + bw for f, bw in block_flops(run.model)[a:b])
            run.say(f"  stage {s}: blocks {a}..{b - 1}, {flops:,} FLOPs per example (forward and backward)"
                    + (f", split over {T} tensor ranks" if T > 1 else ""))

    def epoch(self, epoch: int) -> dict | None:
        run, st = self.run, self.stage
        M, D = run.opts.micro_batches, self.D
        st.seed_dropout(epoch, self.d)               # one replica's stages and tensor ranks draw alike
        sums = np.zeros(3, dtype=np.float64)
        for i, batch, lr in run.batches(epoch):
            mine = batch[self.d::D]
            self.opt.lr = lr
            xb = gather_batch(run.x_train, mine, self.xbuf) if st.is_first else None
            step = len(self.batches) + 1
            eng = self.engine
            eng.events = [] if step == 1 and run.opts.schedule_plot else None
            got = eng.step(xb, run.ds.y_train[mine], micro_batches(len(mine), M), 1.0 / len(batch),
                           lambda x: run.maybe_fail(step, x))
            if st.is_last:
                run.check_finite(got[0] / max(got[2], 1), f"at epoch {epoch + 1}, step {i + 1} (rank {run.rank})")
            c0 = eng._clock()
            with run.meter.comm("payload"):          # the piece's gradient, summed over the replicas
                allreduce(self.data, st.grads, algorithm=run.opts.algorithm, out=st.grads, check=False)
            if eng.events is not None:
                eng.events.append(("R", -1, c0, eng._clock()))
                self.events, eng.events = eng.events, None
            with run.meter.computing():
                self.opt.step()
            if self.k == 0:                          # tensor ranks of the last stage all computed the loss
                sums += got
            self.batches.append(len(batch))
        if self.events is not None:
            self.plot()
        tot = run.totals(sums)
        return run.figures(tot, self.opt.lr) if run.rank == 0 else None

    def plot(self) -> None:
        """The first step of every rank, drawn on rank 0."""
        run, o = self.run, self.run.opts
        unit = "virtual" if self.engine.virtual else "wall"
        labels = [f"d{r // (self.P * self.T)} s{r // self.T % self.P}" + (f" k{r % self.T}" if self.T > 1 else "")
                  for r in range(run.size)]
        draw_first_step(run, self.events, o.schedule_plot, unit=unit, labels=labels,
                        title=f"hybrid D={self.D} x P={self.P} x T={self.T}, {o.pipeline_schedule}, M = "
                              f"{o.micro_batches}: first step ({unit} time)")
        self.events = None

    # -- the closed forms --------------------------------------------------------------------------------------
    def _stage_traffic(self, s: int) -> tuple[int, int]:
        """(messages, bytes) the D x T ranks of stage ``s`` send over the run (and receive: the same)."""
        run, o, w = self.run, self.run.opts, self.run.model.dtype.itemsize
        D, P, T, M = self.D, self.P, self.T, o.micro_batches
        a, b = self.ranges[s]
        sizes = run.model.sizes
        width = (sizes[b] if s < P - 1 else 0) + (sizes[a] if s > 0 else 0)     # activations out, gradients back
        ways = (s < P - 1) + (s > 0)
        cores = [TensorParallelMLP(_Rank(k, T), run.model, layers=(a, b), algorithm=o.algorithm) for k in range(T)]
        pieces = [c.params.size for c in cores] if T > 1 else [run.model.slices and _stage_size(run.model, a, b)]
        msgs = nbytes = 0
        for L in self.batches:
            for d in range(D):
                n = len(range(d, L, D))
                m = micro_batches(n, M) if n else 0
                msgs += T * m * ways                           # every tensor rank passes the whole activation
                nbytes += T * n * w * width
                if T > 1:                                      # the tensor group's allreduces, per micro-batch
                    offs = _offsets(n, m) if m else [0]
                    for j in range(m):
                        tm, tb = cores[0].traffic(int(offs[j + 1] - offs[j]), need_dx=s > 0)
                        msgs, nbytes = msgs + tm, nbytes + tb
            ppn = known_ranks_per_node(self.data)              # every (s, k) data group is laid out alike
            for piece in pieces:                               # each (s, k) piece summed over the D replicas
                dm, db = allreduce_traffic(o.algorithm, piece, w, D, ppn=ppn)
                msgs, nbytes = msgs + dm, nbytes + db
        return msgs, nbytes

    def payload(self) -> Payload:
        """Per stage: the pipe's activations and gradients, the tensor groups' allreduces and the replicas'
        gradient allreduce, in closed form from the batches the run took."""
        roles, formulas = {}, {}
        for s in range(self.P):
            roles[f"stage {s}"] = [(d * self.P + s) * self.T + k for d in range(self.D) for k in range(self.T)]
            m, b = self._stage_traffic(s) if self.run.rank == 0 else (0, 0)
            formulas[f"stage {s}"] = Formula("pipe + tensor + data", m, b, m, b)
        legend = (f"communication in this run: D = {self.D} replicas x P = {self.P} stages x T = {self.T} tensor ranks; "
                  f"per stage: the pipe's activations and gradients in micro-batches (E·b·d each way), the tensor "
                  f"groups' allreduces of activations per micro-batch, one allreduce of each piece's gradient over "
                  f"the D replicas per step (algorithm {self.run.opts.algorithm})")
        return Payload(roles, formulas, legend)

    def result(self) -> dict:
        return {"steps": len(self.batches), "grid": (self.D, self.P, self.T)}


class _Rank:
    """Rank k of a group of T: what a tensor core's closed forms need of a transport."""

    def __init__(self, k: int, T: int) -> None:
        self.rank, self.size = k, T


def _stage_size(model, a: int, b: int) -> int:
    """Parameters of blocks [a, b) of ``model``."""
    from .nn.stage import blocks_of
    blocks = blocks_of(model)
    lo, hi = blocks[a][0], blocks[b - 1][1]
    return sum(int(np.prod(shape)) for li, _, _, shape in model.slices if lo <= li < hi)


PARADIGM = Paradigm(name="hybrid", doc=__doc__, setup=GridRank, options=Options, add_args=add_args, check=check,
                    check_world=check_world, parts=True, listed_ranks=4,
                    workers=lambda o, N: o.dp or max(N // (o.pp * o.tp), 1),
                    default_ranks=lambda o: (o.dp or 2) * o.pp * o.tp,      # without --sim: the grid asked for
                    no_batchnorm="a pipeline stage would normalize each micro-batch by its own statistics",
                    defaults={"hidden": (64,) * 7, "lr_schedule_flag": "--lr-schedule"},   # 8 Linear layers
                    description="Data, pipeline and tensor parallelism on a D x P x T grid of ranks.")
build_parser, main = PARADIGM.build_parser, PARADIGM.main


if __name__ == "__main__":
    sys.exit(main())
