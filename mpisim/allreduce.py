"""``mpisim.allreduce``: synchronous data-parallel SGD without a server (PyTorch DDP's design).

Every rank holds a replica of the model. Each step the global batch of B examples is split across the
N ranks (DistributedSampler's strided split, applied to the centralized trainer's batches: rank r takes
examples r, r+N, ... of the batch), each rank computes the gradient of its share with weight 1/B per
example, one allreduce sums the flat gradient vector, and every rank applies the same update. So N ranks
compute what one process computes with batch B, also when the shares are unequal (the last batch, or
B not a multiple of N): the test suite checks it in float64.

``--bucket-mb`` cuts the flat gradient into buckets of about that size (whole layers, last layer first);
``--overlap`` starts each bucket's allreduce on a communication thread as soon as backward has finished
its layers, while the earlier layers are still being differentiated (Li et al. 2020, "PyTorch
Distributed: Experiences on Accelerating Data Parallel Training").

``--compress SCHEME`` sends each bucket compressed (:mod:`mpisim.train.compress`: fp16, bf16, topk:RATIO,
randomk:RATIO, signsgd, powersgd:RANK), as DDP's communication hooks do; ``--error-feedback`` keeps what a
biased scheme leaves out and adds it to the next step's gradient (Seide et al. 2014). The closing table
checks the scheme's closed form, and each epoch's record has ``compression``: the bytes the plain allreduce
would have sent over the bytes sent.

    python -m mpisim.allreduce --sim 4                                 # 4 simulated ranks, digits
    mpiexec -n 2 python -m mpisim.allreduce --algorithm ring --bucket-mb 0.25 --overlap
    mpiexec -n 2 python -m mpisim.allreduce --algorithm mpi            # MPI's own Allreduce, the baseline
    python -m mpisim.allreduce --sim 4 --compress topk:0.01 --error-feedback
"""
from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from .comm import ALLREDUCE_ALGORITHMS, allreduce, bcast, choose_allreduce
from .comm.costs import allreduce_traffic, times
from .comm.hierarchical import known_ranks_per_node
from .nn import BatchNorm1d
from .train import gather_batch
from .train.compress import add_compress_args, check_compress_args, make_compressor, sub_layout
from .train.distributed import Formula, Meter, under_mpiexec
from .train.loop import loss_scaling_figures, loss_scaling_note
from .train.runtime import Paradigm, Payload, Role, Run
from .train.metrics import plural, share

ALGORITHMS = (*ALLREDUCE_ALGORITHMS, "mpi")


@dataclass(frozen=True)
class Options:
    algorithm: str = "auto"        # an allreduce of mpisim.comm, or mpi: MPI's own Allreduce
    bucket_mb: float = 0.0         # gradient bucket size in MiB, whole layers each; 0: one bucket
    overlap: bool = False          # allreduce each bucket on a communication thread during backward
    sync_bn: bool = False          # BatchNorm statistics over the global batch
    compress: str = "none"         # a scheme of mpisim.train.compress: fp16, topk:0.01, powersgd:2, ...
    error_feedback: bool = False   # keep what the scheme leaves out, add it to the next step's gradient


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data parallel")
    g.add_argument("--algorithm", choices=ALGORITHMS, default="auto",
                   help="allreduce algorithm; mpi = MPI's own Allreduce, needs mpiexec (default auto)")
    g.add_argument("--bucket-mb", type=float, default=0.0, metavar="MB",
                   help="gradient bucket size in MiB, whole layers each; 0 = one bucket (default 0)")
    g.add_argument("--overlap", action="store_true",
                   help="allreduce each bucket on a communication thread while backward goes on")
    g.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics over the global batch (allreduced)")
    add_compress_args(g, "the gradient")


def check_world(train, o: Options, N: int) -> str | None:
    """BatchNorm without --sync-bn normalizes each rank's share by its own statistics: a share needs 2 rows."""
    if train.batchnorm and not o.sync_bn and train.batch_size // N < 2:
        return (f"--batchnorm without --sync-bn normalizes each rank's share of the batch on its own, and a global "
                f"batch of {train.batch_size} on {N} ranks leaves fewer than 2 rows per rank (every step would be "
                f"skipped): use a global batch of at least {2 * N}, or --sync-bn")
    return None


def check(p: argparse.ArgumentParser, train, o: Options) -> None:
    check_compress_args(p, train, o)
    scheme = o.compress.split(":")[0]
    if train.precision == "fp16" and (o.error_feedback or scheme in ("powersgd", "signsgd", "randomk")):
        why = {"powersgd": "would keep the overflow in its warm-started Q",
               "signsgd": "would turn the overflow into an infinite scale, which the other ranks refuse",
               "randomk": "sends a random few values, so an overflow elsewhere would go unseen and the step "
                          "would not be skipped"}.get(scheme, "would keep the overflow in its residual")
        p.error(f"--precision fp16 skips the steps whose scaled gradient overflowed, but --compress {o.compress}"
                f"{' --error-feedback' if o.error_feedback else ''} {why}: use --precision bf16, or fp16, bf16 or "
                f"topk without --error-feedback")
    if not o.bucket_mb >= 0 or o.bucket_mb == float("inf"):
        p.error(f"--bucket-mb must be a finite number >= 0, got {o.bucket_mb}")
    if o.sync_bn and not train.batchnorm:
        p.error("--sync-bn needs --batchnorm")
    if o.overlap and train.network is not None:
        p.error("--overlap runs the allreduce on a second thread; --network's virtual clock models one thread "
                "per rank: use one of them")
    if o.algorithm == "mpi" and not under_mpiexec():
        p.error("--algorithm mpi is MPI's own Allreduce: run under mpiexec (not --sim or a simulated cluster)")


# -- buckets -----------------------------------------------------------------------------------------------
def plan_buckets(model, bucket_bytes: float) -> list[tuple[int, int, int]]:
    """Buckets as (lo, hi, first_layer): contiguous ranges of the flat gradient made of whole layers,
    from the last layer down, each closed once it reaches ``bucket_bytes`` (0: one bucket).
    A bucket is ready when backward has passed ``first_layer``."""
    starts: dict[int, int] = {}
    for li, _, off, _ in model.slices:
        starts[li] = min(off, starts.get(li, off))
    buckets, hi, first = [], model.params.size, None
    for li in sorted(starts, reverse=True):
        lo = starts[li]
        first = li
        if bucket_bytes > 0 and (hi - lo) * model.params.itemsize >= bucket_bytes:
            buckets.append((lo, hi, first))
            hi = lo
    if hi > 0:
        buckets.append((0, hi, first if first is not None else 0))
    return buckets


class CommThread:
    """A rank's communication thread: runs submitted jobs in order (so every rank runs its collectives
    in the same order), while the main thread computes. ``wait()`` re-raises a job's failure.

    ``inline``: run each job at once on the caller's thread instead (simulated ranks are greenlets of one
    thread, which no other thread may call into; their virtual clock is one sum either way)."""

    def __init__(self, inline: bool = False) -> None:
        self.inline = inline
        self.pending = 0
        self.error: BaseException | None = None
        if inline:
            return
        self.jobs: queue.Queue = queue.Queue()
        self.done = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name=f"{threading.current_thread().name}-comm", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        from .nn import flush_denormals
        flush_denormals()
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                if self.error is None:
                    job()
            except BaseException as e:        # noqa: BLE001 - handed to the main thread
                self.error = e
            with self.done:
                self.pending -= 1
                self.done.notify_all()

    def submit(self, job) -> None:
        if self.inline:
            if self.error is None:
                try:
                    job()
                except Exception as e:        # raised by wait(), as from the thread; an abort goes through
                    self.error = e
            return
        with self.done:
            self.pending += 1
        self.jobs.put(job)

    def wait(self) -> None:
        if not self.inline:
            with self.done:
                while self.pending:
                    self.done.wait()
        if self.error is not None:
            raise self.error

    def call(self, job) -> None:
        """Run ``job`` on the communication thread and wait for it (and everything before it)."""
        self.submit(job)
        self.wait()

    def close(self) -> None:
        if not self.inline:
            self.jobs.put(None)


class GradientSync:
    """Sums the flat gradient over the ranks, bucket by bucket, optionally overlapped with backward, and
    optionally compressed (one compressor; each bucket its own state, under the bucket's index)."""

    def __init__(self, t, model, meter: Meter, o: Options, scaler=None) -> None:
        self.t, self.model, self.meter, self.alg = t, model, meter, o.algorithm
        self.scaler = scaler        # fp16 loss scaling: an overflow goes through the sum and is caught after it
        self.buckets = plan_buckets(model, o.bucket_mb * 2**20)
        self.comp = make_compressor(getattr(o, "compress", "none"), error_feedback=getattr(o, "error_feedback", False),
                                    seed=model.seed, layout=model.slices)
        self.layouts = [sub_layout(model.slices, lo, hi) for lo, hi, _ in self.buckets]   # each bucket's matrices
        self.ppn = self.comp.ppn = known_ranks_per_node(t)   # the hierarchical allreduce's formulas need it
        self.thread = CommThread(inline=getattr(t, "cooperative", False)) if o.overlap and t.size > 1 else None
        self.sent = 0
        self.where = ""
        if o.sync_bn:
            for layer in model.layers:
                if isinstance(layer, BatchNorm1d):
                    layer.sum_across = self.sum_bn_stats

    def _sum(self, a: np.ndarray, category: str) -> None:
        """An uncompressed sum (BatchNorm's statistics)."""
        with self.meter.comm(category):
            if self.alg == "mpi":
                self.t.native_allreduce(a, a)
            else:
                allreduce(self.t, a, algorithm=self.alg, out=a, check=False)

    def sum_bn_stats(self, a: np.ndarray) -> None:
        """Sync BatchNorm's statistics; through the comm thread when there is one (one stream of collectives)."""
        if self.thread is None:
            self._sum(a, "bn-sync")
        else:
            self.thread.call(lambda: self._sum(a, "bn-sync"))

    def _bucket(self, b: int) -> None:
        lo, hi, _ = self.buckets[b]
        g = self.model.grads[lo:hi]
        if self.scaler is None and not np.isfinite(g).all():
            raise FloatingPointError(f"non-finite gradient {self.where}: lower --lr")

        def job():
            self.comp.allreduce(self.t, g, key=b, algorithm=self.alg, meter=self.meter, layout=self.layouts[b])
        if self.thread is None:
            job()
        else:
            self.thread.submit(job)

    def traffic(self, N: int) -> tuple[tuple[int, int], int]:
        """((messages, bytes) all ranks send in one step, compressed; bytes the plain allreduce would send)."""
        w, per, plain = self.model.params.itemsize, [0, 0], 0
        for (lo, hi, _), layout in zip(self.buckets, self.layouts):
            m, b = self.comp.traffic(hi - lo, N, layout, algorithm=self.alg, itemsize=w)
            per[0] += m
            per[1] += b
            plain += allreduce_traffic(self.alg, hi - lo, w, N, ppn=self.ppn)[1]
        return (per[0], per[1]), plain

    def hook(self, layer: int) -> None:
        """Called by backward after layer ``layer``: send every bucket that is now complete."""
        while self.sent < len(self.buckets) and layer <= self.buckets[self.sent][2]:
            self._bucket(self.sent)
            self.sent += 1

    def step(self, model, xb, yb, scale: float, where: str) -> tuple[float, int]:
        """Forward, backward and the gradient sum; returns the local (mean loss, correct)."""
        self.sent, self.where = 0, where
        overlap = self.thread is not None
        t0 = time.perf_counter()
        with np.errstate(all="ignore"):
            loss, correct = model.train_step(xb, yb, scale=scale, loss_scale=self.scaler.scale if self.scaler else 1.0,
                                             hook=self.hook if overlap else None)
        t1 = time.perf_counter()
        self.t.compute(model.train_flops(len(xb)))   # virtual time, with --network ...,compute=RATE
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} {where}: lower --lr")
        self.hook(-1)                      # whatever is left (everything, without --overlap)
        if overlap:
            self.thread.wait()
        self.meter.compute += t1 - t0
        return loss, correct


# -- one rank ----------------------------------------------------------------------------------------------
class DataParallel(Role):
    """A replica: its strided share of every global batch, then the gradient summed over all ranks."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        o, tr, N = run.opts, run.train, run.size
        self.sync = GradientSync(run.t, run.model, run.meter, o, scaler=run.opt.loss_scaler)
        scaler = run.opt.loss_scaler
        if scaler is not None and tr.resume:           # rank 0 restored it from the checkpoint; every rank needs it
            with run.meter.comm("control"):
                scaler.load_state_dict({k: bcast(run.t, np.atleast_1d(v)).reshape(v.shape)
                                        for k, v in scaler.state_dict().items()})
        self.xbuf = np.empty((-(-min(tr.batch_size, run.ds.num_train) // N), run.ds.num_features),
                             dtype=run.model.dtype)
        self.done_steps = 0
        self.title = f"allreduce SGD, {N} ranks, {run.ds.name}, {run.model.describe()}"
        comp = self.sync.comp
        if comp.name == "none":
            compression = ""
        else:
            compression = f"; compression {comp.describe()}"
            if N > 1:
                (_, sent), plain = self.sync.traffic(N)
                compression += f", {plain / sent:.3g}x fewer payload bytes than the plain allreduce"
            if run.state.start_epoch and comp.stateful:
                compression += " (its state, not checkpointed, starts afresh on this resume)"
        run.say(f"allreduce: {N} rank{'s' if N > 1 else ''} ({run.where()}), {run.ds.describe()}")
        run.say(f"model {run.model.describe()}; {tr.optimizer} lr {tr.lr:g}, global batch {tr.batch_size} "
                f"({share(tr.batch_size, N)} per rank), {plural(tr.epochs, 'epoch')}; allreduce {o.algorithm}, "
                f"{len(self.sync.buckets)} bucket{'s' if len(self.sync.buckets) > 1 else ''}"
                + (", overlapped" if self.sync.thread else "") + (", sync BN" if o.sync_bn else "")
                + compression + run.resuming())
        if tr.batch_size < N:
            run.say(f"note: global batch {tr.batch_size} < {N} ranks: some ranks get no examples per step")

    def epoch(self, epoch: int) -> dict | None:
        run, tr, r, N = self.run, self.run.train, self.run.rank, self.run.size
        run.model.seed_dropout(epoch, r)
        sums = np.zeros(3, dtype=np.float64)            # loss sum, correct, seen (this rank)
        steps_before = self.done_steps
        for i, batch, lr in run.batches(epoch):
            if tr.batchnorm and (len(batch) if run.opts.sync_bn else len(batch) // N) < 2:
                continue                                # BatchNorm cannot train on one example
            mine = batch[r::N]
            run.opt.lr = lr
            xb = gather_batch(run.x_train, mine, self.xbuf)
            run.maybe_fail(self.done_steps + 1, xb)
            loss, c = self.sync.step(run.model, xb, run.ds.y_train[mine], 1.0 / len(batch),
                                     f"at epoch {epoch + 1}, step {i + 1}")
            with run.meter.computing():
                scaler = run.opt.loss_scaler            # the same summed gradient on every rank: the same decision
                where = f"at epoch {epoch + 1}, step {i + 1}"
                if scaler is None or scaler.unscale_and_check(run.model.grads, where=where):
                    run.opt.step()
            sums += (loss * len(mine), c, len(mine))
            self.done_steps += 1
        tot = run.totals(sums)                          # the epoch's loss, accuracy and ledger, over all ranks
        if r != 0:
            return None
        figures = run.figures(tot, run.opt.lr)
        if run.opts.algorithm != "mpi":                 # bytes the plain allreduce would have sent / sent
            plain = (self.done_steps - steps_before) * self.sync.traffic(N)[1]
            figures["compression"] = plain / tot[4] if tot[4] else None
        return {**figures, **loss_scaling_figures(run.opt)}

    def payload(self) -> Payload:
        """S steps of one allreduce per bucket: the measured traffic next to the closed form."""
        run, alg, N, comp = self.run, self.run.opts.algorithm, self.run.size, self.sync.comp
        P, w, S = run.model.num_params, run.model.params.itemsize, self.done_steps
        formula = None
        if alg != "mpi":
            (m, b), _ = self.sync.traffic(N)
            text = comp.formula(P, N, run.model.slices, algorithm=alg, itemsize=w)
            formula = Formula(f"S·({text})" if comp.name != "none" else times("S", text), m * S, b * S, m * S, b * S)
        legend = (f"communication in this run: P = {P:,} parameters, b = {w} bytes, N = {N} ranks, S = {S} "
                  f"steps, {len(self.sync.buckets)} bucket(s), algorithm {alg}"
                  + (f" ({choose_allreduce(P * w, P, N)} for the whole vector)"
                     if alg == "auto" and comp.name == "none" else "")
                  + ((f" ({N // self.sync.ppn} nodes of {self.sync.ppn} ranks)" if 0 < self.sync.ppn < N
                      else " (one node: the ring)") if alg == "hierarchical" else "")
                  + ("; MPI's own Allreduce: its messages are invisible to mpisim, only its time is counted"
                     if alg == "mpi" else "")
                  + (f"; compression {comp.describe()} ({comp.scheme.sends}"
                     + ("; the formula shown for one vector of P, its value summed over the buckets"
                        if len(self.sync.buckets) > 1 else "") + ")" if comp.name != "none" else ""))
        cats = ("payload", "bn-sync", "control") if run.opts.sync_bn else ("payload", "control")
        return Payload({"rank": list(range(N))}, {"rank": formula}, legend, cats)

    def note(self, record: dict) -> str | None:
        return loss_scaling_note(record)

    def result(self) -> dict:
        return {"steps": self.done_steps}

    def close(self) -> None:
        if self.sync.thread:
            self.sync.thread.close()


PARADIGM = Paradigm(name="allreduce", doc=__doc__, setup=DataParallel, options=Options, add_args=add_args,
                    check=check, check_world=check_world, mixed_precision=True, workers=lambda o, N: N, replicas=True,
                    description="Data-parallel SGD: the gradient summed by an allreduce (ring, tree, ..., or MPI's own).")
build_parser, main = PARADIGM.build_parser, PARADIGM.main


if __name__ == "__main__":
    sys.exit(main())
