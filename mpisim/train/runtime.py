"""The paradigm runtime: everything the ways of training share, written once.

A paradigm is one small module that declares a :class:`Paradigm` and supplies only:

* **its options**: a frozen dataclass (``options``), declared on the command line by ``add_args(parser)``
  and checked by ``check(parser, train, opts)`` (usage errors, exit 2; it may return a corrected copy).
  The runtime builds :class:`~mpisim.train.options.TrainOptions` and the paradigm's dataclass once from
  argparse: no domain code sees the Namespace. ``check_world(train, opts, N)`` says why a rank count
  cannot run, before anything is built: a usage error (exit 2), at parsing with ``--sim N``, else once
  the MPI job knows its size.
* **its roles**: ``setup(run)`` returns this rank's :class:`Role`, given the built :class:`Run`
  (transport, options, dataset, model, optimizer, schedule, resumed state, ledger, rank 0's reporter).
  ``Role.epoch(i)`` does one epoch (or round) of work and returns rank 0's figures for the record
  (``None`` on the other ranks); :meth:`Run.totals` and :meth:`Run.figures` sum the usual ones.
* **its payload formulas**: ``Role.payload()`` gives each role's ranks and the closed form of what it
  sends and receives, for the closing table.

The runtime owns the rest: the launch (``--sim N`` or ``mpiexec``; the centralized trainer is the
one-rank case, without cluster options), building the data, model, optimizer and schedule, resuming
from a checkpoint on rank 0 and broadcasting it, the epoch/round loop with ``--stop-after`` and a
checkpoint after each, metrics, progress lines and plots, fault injection (:meth:`Run.maybe_fail`), the
communication ledger and the closing table with its formula check, and a closing one-line summary.

Model parallelism (``Paradigm(parts=True)``): each rank trains a :class:`Part` of the one flat parameter
vector with an optimizer of its own and hands it to :meth:`Run.attach`; the runtime gathers the owned
positions into rank 0's full model before each evaluation (and its moments into rank 0's full optimizer
before each checkpoint), and gives every part its moments back on a resume, so a pipeline stage, a tensor
shard or a ZeRO shard needs no checkpoint code of its own. ``Role.epilogue()`` adds a paradigm's own
measurements after the closing table.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from ..comm import allreduce, barrier, bcast, gather, reduce
from ..comm.group import uncounted
from ..comm.network import TICK
from ..data import epoch_permutation
from ..nn.model import EVAL_BATCH
from ..trace import TOTAL_KEYS, Tracer, category, current, span
from ..trace import finish as finish_trace
from .checkpoint import CheckpointError
from .distributed import (LAUNCH_OPTIONS, CommReport, Formula, Meter, ParadigmError, Reporter, UsageError,
                          add_cluster_args, check_cluster_args, comm_report, default_to_sim, launch, maybe_fail,
                          share_resume, stop_here)
from .loop import (build_dataset, build_model, build_optimizer, build_schedule, data_fingerprint, gather_batch,
                   save_state)
from .metrics import time_table
from .options import (Parser, TrainOptions, add_training_args, check_training_args, options_from, run_config,
                      scaled_lr)

__all__ = ["Config", "LocalSteps", "NoOptions", "Paradigm", "Part", "Payload", "Role", "Run", "TracedMeter", "fault_on_server",
           "summary_line"]


@dataclass(frozen=True)
class NoOptions:
    """The options of a paradigm that has none of its own."""


@dataclass(frozen=True)
class Config:
    """A parsed command line: the shared options and the paradigm's own."""
    train: TrainOptions
    opts: Any


@dataclass
class Payload:
    """Each role's ranks and the closed form of its payload, for the closing table."""
    roles: dict[str, list[int]]
    formulas: dict[str, Formula | None]
    legend: str
    categories: tuple[str, ...] = ("payload", "control")


@dataclass
class Part:
    """What one rank of a model-parallel paradigm trains (see ``Paradigm.parts``): ``index``, positions in the
    full flat parameter vector, and ``opt``, the optimizer over this rank's own copy of the parameters at
    those positions (``opt.params[j]`` is ``model.params[index[j]]``; its moments lie the same way), or a list
    of optimizers whose vectors, one after the other, lie at those positions.
    ``owned`` (True, False, or a mask over ``index``) marks the positions this rank answers for: every
    parameter is owned by exactly one rank; the others hold replicas (data-parallel copies, replicated
    biases), which are restored on a resume but never gathered."""
    index: np.ndarray
    opt: Any
    owned: Any = True


TAG_OWN = 501      # each rank's own state to and from rank 0 for checkpoints
TAG_PART = 502     # model-parallel parts to and from rank 0


class _Refused(Exception):
    """Raised on the ranks other than 0 when rank 0 refuses the run (its error ends the job)."""


class Role:
    """What one rank does. A paradigm implements :meth:`epoch` and :meth:`payload`; the rest are hooks
    with defaults."""

    title = ""                      # the plot's title

    def __init__(self, run: "Run") -> None:
        self.run = run

    def epoch(self, epoch: int) -> dict | None:
        """One epoch (or round) ``epoch`` (from 0); rank 0 returns the record's figures."""
        raise NotImplementedError

    def payload(self) -> Payload | None:
        """The closing table's roles and formulas (None: no table, as for one process)."""
        return None

    def note(self, record: dict) -> str | None:
        """An extra line for rank 0 to print after the epoch's progress line."""
        return None

    def eval_model(self):
        """The model rank 0 evaluates after each epoch."""
        return self.run.model

    def checkpoint_optimizer(self):
        """The optimizer whose state rank 0 saves (complete on rank 0 when this is called)."""
        return self.run.opt

    def result(self) -> dict:
        """Extra entries for rank 0's return value."""
        return {}

    def epilogue(self) -> str | None:
        """Rank 0's closing text after the communication table (a paradigm's own measurements)."""
        return None

    def close(self) -> None:
        """Release what the role started (threads), also after an error."""


@dataclass(frozen=True)
class Paradigm:
    """A paradigm's declaration; :meth:`main` is its command line."""
    name: str                                   # runs as python -m mpisim.<name>
    doc: str                                    # the module docstring: its last paragraph ends --help
    description: str
    setup: Callable[["Run"], Role]
    options: type = NoOptions
    add_args: Callable[[argparse.ArgumentParser], None] | None = None
    check: Callable[[argparse.ArgumentParser, TrainOptions, Any], Any] | None = None
    check_world: Callable[[TrainOptions, Any, int], str | None] | None = None
    default_ranks: Any = 4                      # without mpiexec and --sim (or a function of the options)
    listed_ranks: int = 2                       # the mpiexec -n of its line in python -m mpisim
    per_rank_state: bool = False                # ranks hold models and optimizers of their own: each
    #                                             rank's are checkpointed, so a resume is exact
    no_batchnorm: str | None = None             # why --batchnorm is refused, if it is
    mixed_precision: bool = False               # --precision fp16/bf16 (loss scaling) is supported
    unit: str = "epoch"                         # or "round"
    defaults: dict = field(default_factory=dict)   # add_training_args' defaults: epochs, lr, optimizer
    cluster: bool = True                        # False: one process, no cluster options
    parts: bool = False                         # model parallel: each rank trains a Part of the model
    #                                             (Run.attach); the full model and optimizer on rank 0 are
    #                                             gathered from the parts before each evaluation and checkpoint
    workers: Callable[[Any, int], int] | None = None   # data parallel: how many of N ranks share the global
    #                                             batch (given the paradigm's options); enables --per-rank-batch
    replicas: bool = False                      # every rank's eval_model() equals rank 0's after each epoch
    #                                             (--eval distributed then needs no broadcast of the model)
    fault_steps: Callable[[Any, int, int], int] | None = None   # the most training steps (--inject-fault's
    #                                             count) a rank takes in one epoch, given the options, N and the
    #                                             global batches of an epoch; default: one per global batch, or
    #                                             one per round

    @property
    def prog(self) -> str:
        return f"python -m mpisim.{self.name}"

    def flags(self) -> dict[str, str]:
        """The command-line flag of each option, by its name in the options (for messages)."""
        return {a.dest: a.option_strings[0] for a in self.build_parser()._actions if a.option_strings}

    def ranks_by_default(self, opts=None) -> int:
        """The simulated ranks a run without mpiexec and --sim gets."""
        if callable(self.default_ranks):
            return self.default_ranks(self.options() if opts is None else opts)
        return self.default_ranks

    def build_parser(self) -> argparse.ArgumentParser:
        p = Parser(prog=self.prog, description=self.description, epilog=self.doc.rsplit("\n\n", 1)[1],
                   formatter_class=argparse.RawDescriptionHelpFormatter)
        add_training_args(p, unit=self.unit, **self.defaults)
        if self.cluster:
            add_cluster_args(p)
        if self.workers:
            next(g for g in p._action_groups if g.title == "optimization").add_argument(
                "--per-rank-batch", type=int, default=None, metavar="B",
                help="each worker's batch: the global batch is B times the workers (weak scaling: the work per "
                     "worker stays the same as workers are added; instead of --batch-size)")
        if self.add_args:
            self.add_args(p)
        return p

    def parse(self, argv=None) -> Config:
        """Parse and check a command line (usage errors exit 2)."""
        p = self.build_parser()
        if self.workers:                       # to tell a --batch-size given (in any abbreviation) from the default
            default_batch = p.get_default("batch_size")
            p.set_defaults(batch_size=None)
        args = p.parse_args(None if argv is None else [str(a) for a in argv])
        if self.workers:
            if args.per_rank_batch is not None:
                if args.per_rank_batch < 1:
                    p.error(f"--per-rank-batch must be a positive integer, got {args.per_rank_batch}")
                if args.batch_size is not None:
                    p.error("--per-rank-batch sets the global batch (B times the workers): drop --batch-size")
            if args.batch_size is None:
                args.batch_size = default_batch
        check_training_args(p, args)
        if self.cluster:
            check_cluster_args(p, args)
        train, opts = options_from(TrainOptions, args), options_from(self.options, args)
        if train.batchnorm and self.no_batchnorm:
            p.error(f"--batchnorm is not supported by {self.name}: {self.no_batchnorm}")
        if train.precision != "fp32" and not self.mixed_precision:
            p.error(f"--precision {train.precision} is not supported by {self.name}: use fp32 (mixed precision runs in "
                    f"mpisim.centralized and mpisim.allreduce)")
        if self.check:
            opts = self.check(p, train, opts) or opts
        problem = self.world_problem(train, opts, train.sim) if train.sim else None
        if problem:
            p.error(problem)
        if train.sim:
            train = self.resolve(train, opts, train.sim)
        return Config(train, opts)

    def resolve(self, train: TrainOptions, opts, N: int) -> TrainOptions:
        """The options as they run on ``N`` ranks: the global batch from --per-rank-batch, and --lr scaled to
        it by --lr-scaling. Idempotent: ``base_lr`` keeps the rate given on the command line."""
        if train.per_rank_batch and self.workers:
            train = replace(train, batch_size=train.per_rank_batch * self.workers(opts, N))
        if train.lr_scaling != "none" and train.batch_size:
            base = train.base_lr if train.base_lr is not None else train.lr
            train = replace(train, base_lr=base, lr=scaled_lr(base, train.lr_scaling, train.batch_size, train.base_batch))
        return train

    def world_problem(self, train: TrainOptions, opts, N: int) -> str | None:
        """Why these options cannot run on ``N`` ranks (the paradigm's ``check_world`` and the fault's rank and
        step)."""
        if train.inject_fault and train.inject_fault[0] >= N:
            return f"--inject-fault names rank {train.inject_fault[0]}, but the ranks are 0..{N - 1}"
        if train.per_rank_batch and self.workers and train.batchnorm and train.per_rank_batch * self.workers(opts, N) < 2:
            return (f"--batchnorm needs a global batch of at least 2, but --per-rank-batch {train.per_rank_batch} on "
                    f"{self.workers(opts, N)} worker makes {train.per_rank_batch * self.workers(opts, N)}")
        problem = self.check_world(self.resolve(train, opts, N), opts, N) if self.check_world else None
        return problem or self.fault_problem(self.resolve(train, opts, N), opts, N)

    def fault_problem(self, train: TrainOptions, opts, N: int) -> str | None:
        """Why ``--inject-fault``'s step can never be reached in this run, where the most steps a rank takes is
        known before the data is loaded; None otherwise (the run then warns at its end if the fault never
        fired)."""
        fault = train.inject_fault
        if not fault:
            return None
        epochs = min(train.epochs, train.stop_after or train.epochs)
        span = f"{epochs} {self.unit}{'s' if epochs != 1 else ''}" + (
            f" (--stop-after {train.stop_after})" if epochs < train.epochs else "")
        if self.unit == "round":             # a federated run counts rounds: one a round on every rank
            most, what, step = epochs, f"the run has {span}", "round"
        else:
            if not train.batch_size:
                return None
            from ..data.datasets import training_size
            n = training_size(train.dataset, data_dir=train.data_dir, val_fraction=train.val_fraction,
                              synthetic_size=train.synthetic_size)
            if n is None:
                return None
            batches = -(-n // train.batch_size)
            per = self.fault_steps(opts, N, batches) if self.fault_steps else batches
            most = epochs * per
            what = (f"rank {fault[0]} takes at most {most:,} training step{'s' if most != 1 else ''} in {span}, "
                    f"{per:,} per {self.unit} ({n:,} training examples in {batches:,} global batch"
                    f"{'es' if batches != 1 else ''} of {train.batch_size})")
            step = "step"
        if fault[1] <= most:
            return None
        return (f"--inject-fault {fault[0]}:{fault[1]}:{fault[2]} can never fire: {what}; name a {step} "
                f"1..{most:,}")

    def main(self, argv=None) -> int:
        cfg = self.parse(argv)
        train = default_to_sim(cfg.train, self.ranks_by_default(cfg.opts), self.prog) if self.cluster else cfg.train
        return launch(self.prog, train, self.run_rank, Config(train, cfg.opts), local=not self.cluster)

    def run_rank(self, t, cfg: Config) -> dict | None:
        """This rank's part of the run; rank 0 returns its last record, the model and the table."""
        problem = self.world_problem(cfg.train, cfg.opts, t.size)
        if problem:                                      # a usage error (exit 2), said once by rank 0
            if t.rank == 0:
                raise UsageError(problem)
            return None
        cfg = Config(self.resolve(cfg.train, cfg.opts, t.size), cfg.opts)
        # --trace, --timeline: the transport is traced from the first epoch on (Run.loop begins the recording)
        tracer = Tracer(t, active=False) if cfg.train.trace or cfg.train.timeline else None
        with current(tracer) if tracer else contextlib.nullcontext():
            try:
                run = Run(tracer.wrap(t) if tracer else t, self, cfg, tracer=tracer)
                role = self.setup(run)
            except _Refused:
                return None
            try:
                run.loop(role)
            finally:
                role.close()
            return run.finish(role)


class TracedMeter(Meter):
    """A traced run's ledger: its communication blocks mark their collectives and messages with the
    category (payload, control, ...), its computation blocks are ``compute`` spans."""

    @contextlib.contextmanager
    def comm(self, category_: str = "payload"):
        with category(category_), super().comm(category_):
            yield

    @contextlib.contextmanager
    def computing(self):
        with span("compute"), super().computing():
            yield


class Run:
    """One rank's run: what the runtime built, and the loop around the paradigm's epochs."""

    def __init__(self, t, paradigm: Paradigm, cfg: Config, *, tracer: Tracer | None = None) -> None:
        self.t, self.paradigm, self.train, self.opts = t, paradigm, cfg.train, cfg.opts
        self.tracer = tracer                # --trace/--timeline: t is tracer.wrap(the rank's transport)
        self.rank, self.size, self.unit = t.rank, t.size, paradigm.unit
        self.started = time.perf_counter()
        tr = self.train
        self.ds = build_dataset(tr)
        self.model = build_model(tr, self.ds)
        # model parallel: the full optimizer state only on rank 0, and only to checkpoint it; it never steps,
        # so it needs no gradient of its own (a zero-stride stand-in of the right shape holds no memory)
        if not paradigm.parts:
            self.opt = build_optimizer(tr, self.model)
        elif t.rank == 0 and tr.checkpoint:
            p = self.model.params
            self.opt = build_optimizer(tr, None, p, np.broadcast_to(np.zeros(1, dtype=p.dtype), p.shape))
        else:
            self.opt = None
        self.lr_at = build_schedule(tr)
        ranks = {"ranks": t.size} if paradigm.cluster else {}
        self.config = run_config(tr, self.opts, exclude=LAUNCH_OPTIONS, **ranks, paradigm=paradigm.name,
                                 data=data_fingerprint(self.ds))
        self.state = share_resume(t, tr, self.model, self.opt, self.config, opt_state=not paradigm.parts,
                                  flags=paradigm.flags())
        self.part: Part | None = None
        self.part_opts: list = []                                   # the part's optimizer(s)
        self.part_index: list[tuple[np.ndarray, np.ndarray]] = []   # rank 0: every rank's (index, owned mask)
        self.meter = TracedMeter(t) if tracer else Meter(t)
        if paradigm.per_rank_state and tr.resume:
            self.scatter_own()
        self.rep = Reporter(tr, self.model, self.state, unit=self.unit) if t.rank == 0 else None
        self.x_train = self.ds.x_train.astype(self.model.dtype, copy=False)
        self.steps = -(-self.ds.num_train // tr.batch_size) if tr.batch_size else 0   # global batches per epoch
        self._eval_copy = None              # --eval distributed: rank 0's model, on the ranks that need a copy
        self.epochs_run = 0
        self.last_step = 0                  # the latest step maybe_fail saw (a fault never reached is said)
        self.epoch_started = self.started
        self.before = self.meter.snapshot()

    # -- for the paradigms ----------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """Print on rank 0 (unless --quiet)."""
        if self.rep:
            self.rep.say(text)

    def refuse(self, why: str) -> None:
        """End the run before it starts: rank 0 raises ``why``, the other ranks return quietly."""
        if self.rank == 0:
            raise ParadigmError(why)
        raise _Refused

    def where(self) -> str:
        return "simulated" if self.train.sim else "MPI"

    def resuming(self) -> str:
        """The header's note on a resumed run ("" otherwise)."""
        return f"; resuming after {self.unit} {self.state.start_epoch}" if self.state.start_epoch else ""

    def maybe_fail(self, step: int, x: np.ndarray) -> None:
        """``--inject-fault``: fail here if it names this rank and its ``step`` (from 1)."""
        self.last_step = max(self.last_step, step)
        maybe_fail(self.train, self.rank, step, x)

    def elapsed(self) -> float:
        """Seconds since this epoch started."""
        return time.perf_counter() - self.epoch_started

    def totals(self, sums: np.ndarray, extra=()) -> np.ndarray:
        """``sums`` (loss sum, correct, seen), this epoch's payload messages and bytes, compute and comm
        seconds, then the paradigm's ``extra`` figures (from index 7 on), each summed over all ranks by
        one small control allreduce."""
        now = self.meter.snapshot()
        tot = np.concatenate([sums, [now[k] - self.before[k] for k in now], extra]).astype(np.float64)
        with self.meter.comm("control"):
            allreduce(self.t, tot, out=tot, check=False)
        return tot

    def figures(self, tot: np.ndarray, lr: float) -> dict:
        """The record's usual figures from :meth:`totals`' vector (or one of the same layout)."""
        seconds = self.elapsed()
        out = {"loss": tot[0] / max(tot[2], 1), "train_acc": tot[1] / max(tot[2], 1), "lr": lr,
               "samples_per_s": tot[2] / seconds if seconds > 0 else None,
               "payload_messages": int(tot[3]), "payload_bytes": int(tot[4]),
               "compute_s": tot[5] / self.size, "comm_s": tot[6] / self.size, "seconds": seconds}
        if getattr(self.t, "network", None) is not None:     # --network: the run's virtual time so far (rank 0's
            out["virtual_s"] = self.t.clock * TICK          # clock, just after the epoch's closing allreduce)
        return out

    def batches(self, epoch: int):
        """The epoch's global batches, the same on every rank (one seeded permutation of the training set):
        yields (step i, the batch's example indices, the learning rate of step i)."""
        B = self.train.batch_size
        perm = epoch_permutation(self.ds.num_train, seed=self.train.seed, epoch=epoch)
        for i in range(self.steps):
            yield i, perm[i * B:(i + 1) * B], self.lr_at(epoch + i / self.steps)

    def check_finite(self, loss: float, where: str) -> None:
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} {where}: lower --lr")

    def say_batch(self) -> None:
        """After the paradigm's own header: how --per-rank-batch and --lr-scaling set the batch and the rate,
        and a global batch larger than the training set."""
        tr = self.train
        if tr.per_rank_batch and self.paradigm.workers:
            W = self.paradigm.workers(self.opts, self.size)
            self.say(f"global batch {tr.batch_size} = {tr.per_rank_batch} per worker x {W} worker{'s' if W != 1 else ''} "
                     "(--per-rank-batch)")
        if tr.batch_size and tr.batch_size > self.ds.num_train:
            self.say(f"note: the global batch {tr.batch_size} is larger than the training set ({self.ds.num_train:,} "
                     f"examples): an epoch is one step on all of it")
        if tr.lr_scaling != "none":
            ratio = f"{tr.batch_size}/{tr.base_batch}"
            self.say(f"learning rate {tr.lr:g} = {tr.base_lr:g} x {ratio if tr.lr_scaling == 'linear' else f'sqrt({ratio})'} "
                     f"(--lr-scaling {tr.lr_scaling} from --base-batch {tr.base_batch})")

    # -- the loop -------------------------------------------------------------------------------------
    def loop(self, role: Role) -> None:
        tr, rep, unit = self.train, self.rep, self.unit
        self.say_batch()
        if self.tracer:
            with uncounted(self.tracer.t):     # every rank starts its record together (under mpiexec the
                barrier(self.tracer.t)         # ranks start at different times); the barrier is set-up, uncounted
            self.tracer.begin()
        if self.state.start_epoch >= tr.epochs:
            self.say(f"the checkpoint has already done {self.state.start_epoch} of {tr.epochs} {unit}s: "
                     f"nothing to train")
        for epoch in range(self.state.start_epoch, tr.epochs):
            if stop_here(tr, epoch, rep, unit):
                break
            self.epoch_started = time.perf_counter()
            self.before = self.meter.snapshot()
            values = role.epoch(epoch)
            self.epochs_run += 1
            own = self.gather_own() if self.paradigm.per_rank_state and tr.checkpoint else None
            if self.paradigm.parts:
                self.gather_parts()
            if rep:
                values.setdefault("seconds", self.elapsed())
            scored = self.score(role) if tr.eval == "distributed" else None
            if rep:
                rec = rep.record(epoch + 1, self.ds.x_test, self.ds.y_test, values, model=role.eval_model(),
                                 x_val=self.ds.x_val, y_val=self.ds.y_val, scored=scored,
                                 save=lambda h, e=epoch: self.save(role, e + 1, h, own))
                note = role.note(rec)
                if note:
                    rep.say(note)

    def score(self, role: Role) -> dict | None:
        """``--eval distributed``: every rank scores its share of the test (and validation) set with rank 0's
        evaluation model and one reduce sums the loss sums, correct counts and sizes on rank 0 (control). The
        other ranks evaluate a copy: rank 0's parameters are broadcast unless every rank holds them already
        (``Paradigm.replicas``), its BatchNorm running statistics always (each replica keeps its own). A share
        is a run of whole evaluation batches (``EVAL_BATCH`` rows), so every forward pass sees exactly the rows
        it sees on rank 0 alone and the counts are the same, bit for bit. Rank 0 returns the record's figures,
        the others None."""
        started = time.perf_counter()
        t = self.t
        if self.rank == 0:
            model = role.eval_model()
        else:
            if self._eval_copy is None:
                self._eval_copy = build_model(self.train, self.ds)
            model = self._eval_copy
            if self.paradigm.replicas:
                np.copyto(model.params, role.eval_model().params)
        with self.meter.comm("control"):
            if not self.paradigm.replicas:
                got = bcast(t, model.params, root=0)
                if self.rank:
                    model.params[...] = got
            if model.buffers.size:
                got = bcast(t, model.buffers, root=0)
                if self.rank:
                    model.buffers[...] = got
        sets = [(self.ds.x_test, self.ds.y_test)]
        if self.ds.x_val is not None:
            sets.append((self.ds.x_val, self.ds.y_val))
        sums = np.zeros(3 * len(sets), dtype=np.float64)
        for k, (x, y) in enumerate(sets):
            q, extra = divmod(-(-len(y) // EVAL_BATCH), self.size)     # whole batches; the first ranks take one more
            first = self.rank * q + min(self.rank, extra)
            lo, hi = EVAL_BATCH * first, min(EVAL_BATCH * (first + q + (self.rank < extra)), len(y))
            if hi > lo:
                loss, acc = model.evaluate(x[lo:hi], y[lo:hi], batch_size=EVAL_BATCH)
                sums[3 * k:3 * k + 3] = (loss * (hi - lo), round(acc * (hi - lo)), hi - lo)
        with self.meter.comm("control"):
            tot = reduce(t, sums, op="sum", root=0)
        if self.rank != 0:
            return None
        out = {}
        for k, name in enumerate(("test", "val")[:len(sets)]):
            n = tot[3 * k + 2]
            out[f"{name}_loss"], out[f"{name}_acc"] = ((tot[3 * k] / n, tot[3 * k + 1] / n) if n else
                                                       (float("nan"), float("nan")))
        out["eval_s"] = time.perf_counter() - started
        return out

    def save(self, role: Role, epoch: int, history: list[dict], own: dict | None = None) -> None:
        save_state(self.train.checkpoint, self.model, role.checkpoint_optimizer(), epoch=epoch,
                   epochs=self.train.epochs, config=self.config, history=history, per_rank=own)

    # -- model-parallel parts (Paradigm.parts) -------------------------------------------------------------
    def optimizer(self, params: np.ndarray, grads: np.ndarray):
        """The optimizer the options name, over a part's own flat ``params`` and ``grads``."""
        return build_optimizer(self.train, None, params, grads)

    def attach(self, part: Part) -> None:
        """Take this rank's part: its parameters from the full model (which every rank built from the same
        seed, or, on a resume, received from rank 0), its optimizer state from rank 0's checkpoint on a
        resume; rank 0 learns where every part lies (control)."""
        t, idx = self.t, np.ascontiguousarray(part.index, dtype=np.int64)
        opts = list(part.opt) if isinstance(part.opt, (list, tuple)) else [part.opt]
        n = sum(o.params.size for o in opts)
        if idx.ndim != 1 or idx.size != n:
            raise ValueError(f"a part's index has {idx.size} positions but its optimizer {n}")
        owned = np.ascontiguousarray(np.broadcast_to(np.asarray(part.owned, dtype=bool), idx.shape))
        self.part, self.part_opts = Part(idx, part.opt, owned), opts
        for o, piece in zip(opts, self._pieces(idx)):
            o.params[...] = self.model.params[piece]
        with self.meter.comm("control"):
            if self.rank != 0:
                t.send(np.array([idx.size], dtype=np.int64), 0, TAG_PART)
                t.send(idx, 0, TAG_PART)
                t.send(owned.view(np.uint8), 0, TAG_PART)
            else:
                self.part_index = [(idx, owned)]
                head = np.zeros(1, dtype=np.int64)
                for r in range(1, self.size):
                    t.recv(head, r, TAG_PART)
                    other, mask = np.empty(int(head[0]), dtype=np.int64), np.empty(int(head[0]), dtype=np.uint8)
                    t.recv(other, r, TAG_PART)
                    t.recv(mask, r, TAG_PART)
                    self.part_index.append((other, mask.view(bool)))
                self._check_cover()
            if self.train.resume:
                self._scatter_part_state()

    def _pieces(self, a: np.ndarray) -> list[np.ndarray]:
        """``a`` (laid out as the part's index) cut into the pieces of the part's optimizers."""
        offs = np.cumsum([0, *(o.params.size for o in self.part_opts)])
        return [a[lo:hi] for lo, hi in zip(offs[:-1], offs[1:])]

    def _joined(self, name: str) -> np.ndarray:
        """The part's optimizers' ``params`` or moment ``name``, one after the other."""
        vs = [o.params if name == "params" else o.state[name] for o in self.part_opts]
        return vs[0] if len(vs) == 1 else np.concatenate(vs)

    def _check_cover(self) -> None:
        """The owned positions must cover the model's parameters once each (a paradigm's bug otherwise)."""
        count = np.zeros(self.model.params.size, dtype=np.int64)
        for idx, owned in self.part_index:
            np.add.at(count, idx[owned], 1)
        if (count != 1).any():
            raise RuntimeError(f"{self.paradigm.name}: the parts own {int((count == 0).sum())} parameters "
                               f"never and {int((count > 1).sum())} more than once")

    def _scatter_part_state(self) -> None:
        """On a resume: each part's optimizer moments from rank 0's checkpoint (the step count came with
        the broadcast head)."""
        opts, idx = self.part_opts, self.part.index
        for o in opts:
            o.steps = self.state.opt_steps
        for k in opts[0].state_names:
            if self.rank != 0:
                values = np.empty(idx.size, dtype=self.model.dtype)
                self.t.recv(values, 0, TAG_PART)
            else:
                for r, (other, _) in enumerate(self.part_index[1:], start=1):
                    self.t.send(np.ascontiguousarray(self.opt.state[k][other]), r, TAG_PART)
                values = self.opt.state[k][idx]
            for o, piece in zip(opts, self._pieces(values)):
                o.state[k][...] = piece

    def gather_parts(self) -> None:
        """Rank 0's full model (and, when checkpointing, its optimizer) <- the owned positions of every
        part (control)."""
        if self.part is None:
            raise RuntimeError(f"{self.paradigm.name}: a model-parallel role must attach its part")
        t, owned = self.t, self.part.owned
        names = ["params", *(self.part_opts[0].state_names if self.train.checkpoint else ())]
        with self.meter.comm("control"):
            if self.rank != 0:
                if owned.any():
                    for k in names:
                        t.send(np.ascontiguousarray(self._joined(k)[owned]), 0, TAG_PART)
                return
            full = {"params": self.model.params, **(self.opt.state if len(names) > 1 else {})}
            for r, (idx, mask) in enumerate(self.part_index):
                if not mask.any():
                    continue
                for k in names:
                    if r == 0:
                        got = self._joined(k)[mask]
                    else:
                        got = np.empty(int(mask.sum()), dtype=self.model.dtype)
                        t.recv(got, r, TAG_PART)
                    full[k][idx[mask]] = got
            if len(names) > 1:
                self.opt.steps = self.part_opts[0].steps

    # -- each rank's own model and optimizer (Paradigm.per_rank_state) ------------------------------------
    def _own(self) -> list[tuple[str, np.ndarray]]:
        return [("params", self.model.params), *((f"opt.{k}", v) for k, v in self.opt.state.items())]

    def gather_own(self) -> dict[str, np.ndarray] | None:
        """Every rank's parameters and optimizer state, on rank 0 (control), for the checkpoint."""
        own, t = self._own(), self.t
        with self.meter.comm("control"):
            if self.rank != 0:
                for _, a in own:
                    t.send(a, 0, TAG_OWN)
                return None
            out = {f"rank0.{k}": a.copy() for k, a in own}
            for r in range(1, self.size):
                for k, a in own:
                    out[f"rank{r}.{k}"] = np.empty_like(a)
                    t.recv(out[f"rank{r}.{k}"], r, TAG_OWN)
        return out

    def scatter_own(self) -> None:
        """On a resume: each rank's own parameters and optimizer state, from rank 0's checkpoint."""
        own, t = self._own(), self.t
        if self.rank != 0:
            for _, a in own:
                t.recv(a, 0, TAG_OWN)
            return
        saved = self.state.per_rank
        missing = [f"rank{r}.{k}" for r in range(self.size) for k, _ in own if f"rank{r}.{k}" not in saved]
        if missing:     # the other ranks wait in their receive: this error ends the job
            raise CheckpointError(f"{self.train.checkpoint}: no per-rank state {missing[0]} (a checkpoint of "
                                  f"another version?)")
        for r in range(self.size):
            for k, a in own:
                if saved[f"rank{r}.{k}"].shape != a.shape or saved[f"rank{r}.{k}"].dtype != a.dtype:
                    raise CheckpointError(f"{self.train.checkpoint}: rank{r}.{k} should be {a.shape} {a.dtype}")
                if r == 0:
                    a[...] = saved[f"rank0.{k}"]
                else:
                    t.send(np.ascontiguousarray(saved[f"rank{r}.{k}"]), r, TAG_OWN)

    def finish(self, role: Role) -> dict | None:
        if self.tracer:
            self.tracer.stop()              # the run's window ends here: the closing messages are not traced
        fault = self.train.inject_fault
        if fault and fault[0] == self.rank and self.last_step < fault[1]:
            what = "rounds" if self.unit == "round" else "steps"
            print(f"{self.paradigm.prog}: warning: --inject-fault {fault[0]}:{fault[1]}:{fault[2]} never happened: "
                  f"rank {self.rank} reached {what} 1..{self.last_step} in this run", file=sys.stderr, flush=True)
        pay = role.payload()
        report = (comm_report(self.t, self.meter, pay.roles, pay.formulas, pay.legend, pay.categories)
                  if pay else None)
        times = self.finish_trace(role, pay.roles if pay else {"rank": list(range(self.size))}) if self.tracer else None
        if not self.rep:
            return None
        if times and report is not None:
            report = report._replace(text=report.text + "\n\n" + times[0])
        result = self.rep.finish(report, role.title, **role.result())
        if times:
            if report is None:
                self.rep.say("\n" + times[0])
            result["times"] = times[1]
            for flag, path in (("trace", self.train.trace), ("timeline", self.train.timeline)):
                if path:
                    self.rep.say(f"{flag} written to {path}")
        text = role.epilogue()
        if text:
            self.rep.say("\n" + text)
        line = summary_line(self.rep.log.records, self.epochs_run, self.unit, time.perf_counter() - self.started,
                            report)
        self.rep.say(line)
        result["summary"] = line
        return result


    def finish_trace(self, role: Role, roles: dict[str, list[int]]) -> tuple[str, dict] | None:
        """Gather every rank's trace totals and spans on rank 0 (on the untraced transport), write the
        files there; rank 0 returns the time table's text and figures, the others None."""
        tr = self.tracer
        mine = tr.totals()
        allv = gather(tr.t, np.array([mine[k] for k in TOTAL_KEYS], dtype=np.float64), root=0)
        title = role.title or f"{self.paradigm.prog}, {self.size} rank{'s' if self.size > 1 else ''}"
        finish_trace(tr, self.train.trace, self.train.timeline, title=title)
        if self.rank != 0:
            return None
        return time_table(allv.reshape(self.size, -1), TOTAL_KEYS, roles, virtual=tr.virtual)


class LocalSteps:
    """Local SGD steps of one of ``members`` training ranks (this one is number ``index``): in step i of an
    epoch it takes its strided share ``batch[index::members]`` of the global batch i (DistributedSampler's
    split, as :mod:`mpisim.allreduce`), so a step of all members covers the global batch once.

    The gradient is the share's loss summed with weight ``members / len(batch)``: the mean loss when the
    shares are equal, and in general the weight that makes the average of the members' steps equal one
    step on the global batch (plain SGD), so averaging the parameters after each step is allreduce SGD.
    """

    def __init__(self, run: Run, index: int, members: int) -> None:
        self.run, self.index, self.members = run, index, members
        B, n = run.train.batch_size, run.ds.num_train
        self.xbuf = np.empty((-(-min(B, n) // members), run.ds.num_features), dtype=run.model.dtype)
        self.sums = np.zeros(3, dtype=np.float64)          # this epoch: loss sum, correct, seen
        self.done = 0                                      # steps over the run, for --inject-fault
        self.perm = np.zeros(0, dtype=np.int64)

    def start(self, epoch: int) -> None:
        """The epoch's global batches (the same permutation on every rank) and its dropout masks."""
        run = self.run
        run.model.seed_dropout(epoch, run.rank)
        self.perm = epoch_permutation(run.ds.num_train, seed=run.train.seed, epoch=epoch)
        self.sums[:] = 0

    def step(self, epoch: int, i: int) -> None:
        """Step ``i`` of ``epoch``: forward, backward and the optimizer on this rank's share."""
        run, B = self.run, self.run.train.batch_size
        batch = self.perm[i * B:(i + 1) * B]
        mine = batch[self.index::self.members]
        run.opt.lr = run.lr_at(epoch + i / run.steps)
        xb = gather_batch(run.x_train, mine, self.xbuf)
        run.maybe_fail(self.done + 1, xb)
        with run.meter.computing():
            with np.errstate(all="ignore"):        # a diverging run is caught just below
                loss, c = run.model.train_step(xb, run.ds.y_train[mine], scale=self.members / len(batch))
            run.t.compute(run.model.train_flops(len(mine)))   # virtual time, with --network ...,compute=RATE
            run.check_finite(loss, f"at epoch {epoch + 1}, step {i + 1} on rank {run.rank}")
            run.opt.step()
        self.sums += (loss * len(mine), c, len(mine))
        self.done += 1


def fault_on_server(train: TrainOptions, servers: int, N: int) -> str | None:
    """Why ``--inject-fault`` cannot fire when ranks 0..servers-1 take no training steps, or None."""
    if train.inject_fault and train.inject_fault[0] < servers:
        return (f"--inject-fault names rank {train.inject_fault[0]}, a server, which takes no training steps: "
                f"name a worker, rank {servers}..{N - 1}")
    return None


def summary_line(records: list[dict], run_now: int, unit: str, wall: float, report: CommReport | None) -> str:
    """One line: best and final test accuracy, wall time, time per epoch, payload and its formula check."""
    if not run_now:
        return f"summary: no {unit} trained in this run; {wall:.1f} s in all"
    best = max(records, key=lambda r: (r.get("test_acc") or 0.0))
    mine = records[-run_now:]
    per = sum(r["seconds"] for r in mine) / run_now
    per_text = f"{per:.2f}" if per >= 0.01 else f"{per:.1g}"      # a tiny run: 0.004, not 0.00
    text = (f"summary: test accuracy {100 * records[-1]['test_acc']:.1f}% final, {100 * best['test_acc']:.1f}% best "
            f"({unit} {best[unit]}); {wall:.1f} s in all, {per_text} s per {unit}")
    if report is None:
        return text + "; no communication (one process)"
    if not report.has_formula:
        return text + f"; payload {report.payload_bytes:,} B sent (no closed form to check)"
    return text + (f"; payload {report.payload_bytes:,} B sent, "
                   + ("matches the formula" if report.agrees else "DIFFERS from the formula"))
