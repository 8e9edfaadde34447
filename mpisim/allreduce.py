"""``mpisim.allreduce``: synchronous data-parallel SGD without a server (HW "Q2", PyTorch DDP's design).

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

    python -m mpisim.allreduce --sim 4                                 # 4 simulated ranks, digits
    mpiexec -n 2 python -m mpisim.allreduce --algorithm ring --bucket-mb 0.25 --overlap
    mpiexec -n 2 python -m mpisim.allreduce --algorithm mpi            # MPI's own Allreduce, the baseline
"""
from __future__ import annotations

import argparse
import queue
import sys
import threading
import time

import numpy as np

from .comm import ALLREDUCE_ALGORITHMS, allreduce, choose_allreduce
from .comm.costs import allreduce_formula, allreduce_traffic
from .data import epoch_permutation
from .nn import BatchNorm1d
from .train import add_training_args, build_dataset, build_model, build_optimizer, build_schedule, gather_batch
from .train.distributed import (Formula, Meter, Reporter, add_cluster_args, check_cluster_args,
                                comm_report, paradigm_main, stop_here, maybe_fail, paradigm_config,
                                share_resume)
from .train.loop import data_fingerprint, save_state
from .train.options import check_training_args

PROG = "python -m mpisim.allreduce"
ALGORITHMS = (*ALLREDUCE_ALGORITHMS, "mpi")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Data-parallel SGD: the gradient averaged by an allreduce.",
                                epilog=__doc__.rsplit("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(p)
    add_cluster_args(p)
    g = p.add_argument_group("data parallel")
    g.add_argument("--algorithm", choices=ALGORITHMS, default="auto",
                   help="allreduce algorithm; mpi = MPI's own Allreduce, needs mpiexec (default auto)")
    g.add_argument("--bucket-mb", type=float, default=0.0, metavar="MB",
                   help="gradient bucket size in MiB, whole layers each; 0 = one bucket (default 0)")
    g.add_argument("--overlap", action="store_true",
                   help="allreduce each bucket on a communication thread while backward goes on")
    g.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics over the global batch (allreduced)")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    check_training_args(p, args)
    check_cluster_args(p, args)
    if not args.bucket_mb >= 0 or args.bucket_mb == float("inf"):
        p.error(f"--bucket-mb must be a finite number >= 0, got {args.bucket_mb}")
    if args.sync_bn and not args.batchnorm:
        p.error("--sync-bn needs --batchnorm")
    if args.overlap and args.network is not None:
        p.error("--overlap runs the allreduce on a second thread; --network's virtual clock models one thread "
                "per rank: use one of them")
    if args.algorithm == "mpi" and args.sim:
        p.error("--algorithm mpi is MPI's own Allreduce: run under mpiexec, not --sim")


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
    in the same order), while the main thread computes. ``wait()`` re-raises a job's failure."""

    def __init__(self) -> None:
        self.jobs: queue.Queue = queue.Queue()
        self.pending = 0
        self.done = threading.Condition()
        self.error: BaseException | None = None
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
        with self.done:
            self.pending += 1
        self.jobs.put(job)

    def wait(self) -> None:
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
        self.jobs.put(None)


class GradientSync:
    """Sums the flat gradient over the ranks, bucket by bucket, optionally overlapped with backward."""

    def __init__(self, t, model, meter: Meter, args: argparse.Namespace) -> None:
        self.t, self.model, self.meter, self.alg = t, model, meter, args.algorithm
        self.buckets = plan_buckets(model, args.bucket_mb * 2**20)
        self.thread = CommThread() if args.overlap and t.size > 1 else None
        self.sent = 0
        self.where = ""
        if args.sync_bn:
            for layer in model.layers:
                if isinstance(layer, BatchNorm1d):
                    layer.sum_across = self.sum_bn_stats

    def _sum(self, a: np.ndarray, category: str) -> None:
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
        if not np.isfinite(g).all():
            raise FloatingPointError(f"non-finite gradient {self.where}: lower --lr")
        if self.thread is None:
            self._sum(g, "payload")
        else:
            self.thread.submit(lambda: self._sum(g, "payload"))

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
            loss, correct = model.train_step(xb, yb, scale=scale, hook=self.hook if overlap else None)
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
def run_rank(t, args: argparse.Namespace) -> dict | None:
    r, N = t.rank, t.size
    ds = build_dataset(args)
    model = build_model(args, ds)
    opt = build_optimizer(args, model)
    lr_at = build_schedule(args)
    config = paradigm_config(args, N, paradigm="allreduce", data=data_fingerprint(ds))
    state = share_resume(t, args, model, opt, config)
    meter = Meter(t)
    sync = GradientSync(t, model, meter, args)
    rep = Reporter(args, model, state) if r == 0 else None
    if rep:
        rep.say(f"allreduce: {N} rank{'s' if N > 1 else ''} ({'simulated' if args.sim else 'MPI'}), {ds.describe()}")
        rep.say(f"model {model.describe()}; {args.optimizer} lr {args.lr:g}, global batch {args.batch_size} "
                f"(~{args.batch_size / N:g} per rank), {args.epochs} epochs; allreduce {args.algorithm}, "
                f"{len(sync.buckets)} bucket{'s' if len(sync.buckets) > 1 else ''}"
                + (", overlapped" if sync.thread else "") + (", sync BN" if args.sync_bn else "")
                + (f"; resuming after epoch {state.start_epoch}" if state.start_epoch else ""))
        if args.batch_size < N:
            rep.say(f"note: global batch {args.batch_size} < {N} ranks: some ranks get no examples per step")

    n, B = ds.num_train, args.batch_size
    x_train = ds.x_train.astype(model.dtype, copy=False)
    steps = -(-n // B)
    xbuf = np.empty((-(-min(B, n) // N), ds.num_features), dtype=model.dtype)
    done_steps = 0
    try:
        for epoch in range(state.start_epoch, args.epochs):
            if stop_here(args, epoch, rep):
                break
            t0 = time.perf_counter()
            before = meter.snapshot()
            model.seed_dropout(epoch, r)
            perm = epoch_permutation(n, seed=args.seed, epoch=epoch)
            sums = np.zeros(3, dtype=np.float64)            # loss sum, correct, seen (this rank)
            for i in range(steps):
                batch = perm[i * B:(i + 1) * B]
                if args.batchnorm and (len(batch) if args.sync_bn else len(batch) // N) < 2:
                    continue                                # BatchNorm cannot train on one example
                mine = batch[r::N]
                opt.lr = lr_at(epoch + i / steps)
                xb = gather_batch(x_train, mine, xbuf)
                maybe_fail(args, r, done_steps + 1, xb)
                loss, c = sync.step(model, xb, ds.y_train[mine], 1.0 / len(batch),
                                    f"at epoch {epoch + 1}, step {i + 1}")
                with meter.computing():
                    opt.step()
                sums += (loss * len(mine), c, len(mine))
                done_steps += 1
            # one small control allreduce: the epoch's loss and accuracy, and the ledger, over all ranks
            now = meter.snapshot()
            tot = np.concatenate([sums, [now[k] - before[k] for k in now]])
            with meter.comm("control"):
                allreduce(t, tot, out=tot, check=False)
            if rep:
                seconds = time.perf_counter() - t0
                values = {"loss": tot[0] / max(tot[2], 1), "train_acc": tot[1] / max(tot[2], 1), "lr": opt.lr,
                          "samples_per_s": tot[2] / seconds if seconds > 0 else None,
                          "payload_messages": int(tot[3]), "payload_bytes": int(tot[4]),
                          "compute_s": tot[5] / N, "comm_s": tot[6] / N, "seconds": seconds}
                rep.record(epoch + 1, ds.x_test, ds.y_test, values, x_val=ds.x_val, y_val=ds.y_val,
                           save=lambda h, e=epoch: save_state(args.checkpoint, model, opt, epoch=e + 1,
                                                              epochs=args.epochs, config=config, history=h))
    finally:
        if sync.thread:
            sync.thread.close()

    # the table: measured next to the closed form
    P, w = model.num_params, model.params.itemsize
    if args.algorithm == "mpi":
        formula = None
    else:
        per = [allreduce_traffic(args.algorithm, hi - lo, w, N) for lo, hi, _ in sync.buckets]
        m, b = sum(x[0] for x in per) * done_steps, sum(x[1] for x in per) * done_steps
        f = allreduce_formula(args.algorithm, P, w, N).replace("·n", "·b·P")
        formula = Formula(f"S·{f}", m, b, m, b)
    legend = (f"communication in this run: P = {P:,} parameters, b = {w} bytes, N = {N} ranks, S = {done_steps} "
              f"steps, {len(sync.buckets)} bucket(s), algorithm {args.algorithm}"
              + (f" ({choose_allreduce(P * w, P, N)} for the whole vector)" if args.algorithm == "auto" else "")
              + ("; MPI's own Allreduce: its messages are invisible to mpisim, only its time is counted"
                 if args.algorithm == "mpi" else ""))
    cats = ("payload", "bn-sync", "control") if args.sync_bn else ("payload", "control")
    report = comm_report(t, meter, {"rank": list(range(N))}, {"rank": formula}, legend, cats)
    return rep.finish(report, f"allreduce SGD, {N} ranks, {ds.name}, {model.describe()}", steps=done_steps) if rep else None


def main(argv=None) -> int:
    return paradigm_main(PROG, sys.modules[__name__], argv, default_ranks=4)


if __name__ == "__main__":
    sys.exit(main())
