"""``mpisim.paramserver``: a parameter server (HW "Q3"; Li et al. 2014, "Scaling Distributed Machine
Learning with the Parameter Server"; Dean et al. 2012, "Large Scale Distributed Deep Networks").

Ranks 0..S-1 are servers and hold the parameters, sharded evenly (server j owns one contiguous range of
the flat vector) together with the optimizer state of their shard; the other W = N - S ranks are
workers. A worker pulls the parameters (one message from every server), computes the gradient of a
batch, and pushes it (one message to every server); the servers apply the optimizer.

* ``--mode sync`` (bulk synchronous): each step the servers wait for all W pushes, sum them and take one
  step. The global batch B is split over the workers as in mpisim.allreduce, so this is allreduce SGD
  with a star for the allreduce (the tests check it).
* ``--mode async``: every push is applied the moment it arrives (Dean et al.'s Downpour), on
  parameters the worker pulled some updates ago: that lag is the staleness, recorded per worker. Each
  worker has its own batches of B/W examples; an epoch is W x (steps of a sync epoch) pushes, however
  they fall among the workers, so fast workers do more of them.
* ``--mode ssp --staleness s`` (Ho et al. 2013, "More Effective Distributed ML via a Stale
  Synchronous Parallel Parameter Server"): as async, but a worker may be at most s steps ahead of the
  slowest one; server 0 holds back its reply until the slowest catches up. s=0 is sync (and runs it).

``--straggler RANK:FACTOR`` makes one worker FACTOR times slower (it sleeps after each step): sync waits
for it every step, async does not.

    python -m mpisim.paramserver --sim 4                           # 1 server, 3 workers, sync
    python -m mpisim.paramserver --sim 5 --servers 2 --mode async --straggler 4:3
    mpiexec -n 4 python -m mpisim.paramserver --mode ssp --staleness 2
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .comm import ANY_SOURCE, ANY_TAG
from .comm._common import block_offsets
from .data import distributed_indices, epoch_permutation
from .nn import make_optimizer
from .train import add_training_args, build_dataset, build_model, build_optimizer, build_schedule, gather_batch
from .train.distributed import (Formula, Meter, ParadigmError, Reporter, add_cluster_args, check_cluster_args,
                                comm_report, paradigm_main, stop_here, maybe_fail, paradigm_config, share_resume)
from .train.loop import data_fingerprint, save_state
from .train.options import check_training_args

PROG = "python -m mpisim.paramserver"
MODES = ("sync", "async", "ssp")
TAG_PULL, TAG_PUSH, TAG_PUSH_LAST, TAG_CMD, TAG_EVAL, TAG_STATS, TAG_CKPT, TAG_CLOSED = range(201, 209)
GO, STOP = 0, 1


def _straggler(text: str) -> tuple[int, float]:
    try:
        rank, factor = text.split(":")
        rank, factor = int(rank), float(factor)
        if rank < 0 or not 1 <= factor < float("inf"):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected RANK:FACTOR with RANK >= 0 and FACTOR >= 1, got {text!r}") from None
    return rank, factor


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Parameter-server SGD: sync, async or stale-synchronous.",
                                epilog=__doc__.rsplit("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(p)
    add_cluster_args(p)
    g = p.add_argument_group("parameter server")
    g.add_argument("--servers", type=int, default=1, metavar="S", help="server ranks 0..S-1 (default 1)")
    g.add_argument("--mode", choices=MODES, default="sync", help="(default sync)")
    g.add_argument("--staleness", type=int, default=2, metavar="s",
                   help="ssp: how many steps a worker may run ahead of the slowest (default 2; 0 = sync)")
    g.add_argument("--straggler", type=_straggler, default=None, metavar="RANK:FACTOR",
                   help="make worker RANK FACTOR times slower, e.g. 3:4")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    check_training_args(p, args)
    check_cluster_args(p, args)
    if args.servers < 1:
        p.error(f"--servers must be at least 1, got {args.servers}")
    if args.staleness < 0:
        p.error(f"--staleness must be >= 0, got {args.staleness}")
    if args.batchnorm:
        p.error("--batchnorm is not supported by the parameter server: its running statistics would live on "
                "the workers, not the servers (use mpisim.allreduce)")
    if args.mode == "ssp" and args.staleness == 0:
        args.mode = "sync"                       # s = 0 is bulk synchronous, by definition: run it
    if args.sim is not None and args.sim < args.servers + 1:
        p.error(f"--sim {args.sim}: {args.servers} server(s) need at least {args.servers + 1} ranks (one worker)")


def check_world(args: argparse.Namespace, N: int) -> str | None:
    """Why this rank count cannot run these options, or None."""
    if N < 2:
        return (f"a parameter server needs at least 2 ranks (a server and a worker), got {N}: "
                f"mpiexec -n 2 {PROG} or --sim 2")
    if args.servers > N - 1:
        return f"--servers {args.servers} leaves no worker on {N} ranks: at most {N - 1} servers"
    if args.straggler and not args.servers <= args.straggler[0] < N:
        return (f"--straggler {args.straggler[0]}:...: workers are ranks {args.servers}..{N - 1} "
                f"(ranks 0..{args.servers - 1} are servers)")
    return None


# -- servers -----------------------------------------------------------------------------------------------
class Server:
    """Server j: owns params[lo:hi] and its optimizer state; serves pulls and applies pushes."""

    def __init__(self, t, args, model, full_opt, meter: Meter, lr_at, W: int):
        self.t, self.args, self.model, self.meter, self.lr_at = t, args, model, meter, lr_at
        self.S, self.W = args.servers, W
        offs = block_offsets(model.num_params, self.S)
        self.lo, self.hi = offs[t.rank], offs[t.rank + 1]
        self.shard = model.params[self.lo:self.hi]
        self.grad = np.zeros_like(self.shard)                     # what the optimizer reads
        self.incoming = np.zeros((W, self.hi - self.lo), dtype=model.dtype)
        self.opt = make_optimizer(args.optimizer, self.shard, self.grad, lr=args.lr,
                                  weight_decay=args.weight_decay, momentum=args.momentum)
        state = full_opt.state_dict()
        self.opt.load_state_dict({k: (v if k == "steps" else v[self.lo:self.hi]) for k, v in state.items()})
        self.staleness: list[list[int]] = [[] for _ in range(W)]
        self.pushes = np.zeros(W, dtype=np.int64)

    def worker_rank(self, w: int) -> int:
        return self.S + w

    def pull(self, w: int) -> None:
        with self.meter.comm("payload"):
            self.t.send(self.shard, self.worker_rank(w), TAG_PULL)

    def apply(self, grad: np.ndarray, lr: float) -> None:
        if grad is not self.grad:
            np.copyto(self.grad, grad)
        self.opt.lr = lr
        with self.meter.computing():
            self.opt.step()

    def sync_epoch(self, epoch: int, steps: int) -> None:
        for i in range(steps):
            for w in range(self.W):
                self.pull(w)
            for w in range(self.W):                                   # fixed order: a deterministic sum
                with self.meter.comm("payload"):
                    self.t.recv(self.incoming[w], self.worker_rank(w), TAG_PUSH)
                self.staleness[w].append(0)
            with self.meter.computing():
                np.sum(self.incoming, axis=0, out=self.grad)
            self.pushes += 1
            self.apply(self.grad, self.lr_at(epoch + i / steps))

    def async_epoch(self, epoch: int, steps: int) -> None:
        """Apply pushes as they come. Server 0 decides when a worker stops (and, for ssp, when it may go
        on); the others follow the tag of the worker's push (PUSH: reply, PUSH_LAST: it is done)."""
        W, budget = self.W, self.W * steps
        lead = self.t.rank == 0
        s = self.args.staleness if self.args.mode == "ssp" else None
        version, pulled = 0, np.zeros(W, dtype=np.int64)
        clock = np.zeros(W, dtype=np.int64)                   # pushes of each worker this epoch
        done = np.zeros(W, dtype=bool)
        held: list[int] = []                                  # ssp: workers waiting for the slowest
        cmd = np.zeros(1, dtype=np.int64)
        for w in range(W):
            self.pull(w)
        applied = 0
        while not done.all():
            with self.meter.comm("payload"):
                st = self.t.recv(self.grad, ANY_SOURCE, TAG_PUSH if lead else ANY_TAG)
            w = st.source - self.S                            # (workers check their gradients before pushing)
            self.apply(self.grad, self.lr_at(epoch + applied / budget))
            applied += 1
            clock[w] += 1
            self.pushes[w] += 1
            self.staleness[w].append(version - pulled[w])
            version += 1
            if not lead:
                if st.tag == TAG_PUSH:
                    self.pull(w)
                else:
                    done[w] = True
                continue
            if applied > budget - W:                          # the epoch's last push of this worker
                done[w] = True
                cmd[0] = STOP
                with self.meter.comm("control"):
                    self.t.send(cmd, st.source, TAG_CMD)
            else:
                held.append(w)
            # ssp: a worker may start its next step when it is at most s steps ahead of the slowest
            slowest = clock[~done].min() if (~done).any() else 0
            for h in list(held):
                if s is None or clock[h] - slowest <= s:
                    held.remove(h)
                    cmd[0] = GO
                    with self.meter.comm("control"):
                        self.t.send(cmd, self.worker_rank(h), TAG_CMD)
                    pulled[h] = version
                    self.pull(h)
        assert applied == budget, (applied, budget)


# -- workers -----------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, t, args, ds, model, meter: Meter, offs: list[int], W: int):
        self.t, self.args, self.ds, self.model, self.meter, self.offs = t, args, ds, model, meter, offs
        self.S, self.W = args.servers, W
        self.w = t.rank - self.S
        self.x_train = ds.x_train.astype(model.dtype, copy=False)
        self.b = max(1, args.batch_size // W)                    # async: this worker's own batch size
        self.xbuf = np.empty((max(-(-args.batch_size // W), self.b), ds.num_features), dtype=model.dtype)
        self.sums = np.zeros(3, dtype=np.float64)                 # loss sum, correct, seen
        self.steps_done = 0
        self.slow = args.straggler[1] if args.straggler and args.straggler[0] == t.rank else 1.0
        self.stream = np.zeros(0, dtype=np.int64)              # async: what is left of this worker's share
        self.stream_epoch = -1

    def shards(self, vec: np.ndarray):
        return [(j, vec[self.offs[j]:self.offs[j + 1]]) for j in range(self.S)]

    def pull_all(self, only: range | None = None) -> None:
        for j, part in self.shards(self.model.params):
            if only is None or j in only:
                with self.meter.comm("payload"):
                    self.t.recv(part, j, TAG_PULL)

    def compute(self, idx: np.ndarray, scale: float, where: str) -> None:
        t0 = time.perf_counter()
        xb = gather_batch(self.x_train, idx, self.xbuf)
        maybe_fail(self.args, self.t.rank, self.steps_done + 1, xb)
        self.model.seed_dropout(self.steps_done, self.t.rank)
        with np.errstate(all="ignore"):
            loss, c = self.model.train_step(xb, self.ds.y_train[idx], scale=scale)
        self.t.compute(self.model.train_flops(len(idx)))   # virtual time, with --network ...,compute=RATE
        if not np.isfinite(loss) or not np.isfinite(self.model.grads).all():
            raise FloatingPointError(f"{'loss' if not np.isfinite(loss) else 'gradient'} became non-finite "
                                     f"{where} on worker rank {self.t.rank}: lower --lr")
        self.sums += (loss * len(idx), c, len(idx))
        self.steps_done += 1
        spent = time.perf_counter() - t0
        if self.slow > 1:
            time.sleep((self.slow - 1) * spent)                  # --straggler
        self.meter.compute += spent

    def push(self, j: int, tag: int) -> None:
        with self.meter.comm("payload"):
            self.t.send(self.model.grads[self.offs[j]:self.offs[j + 1]], j, tag)

    def sync_epoch(self, epoch: int, steps: int) -> None:
        n, B = self.ds.num_train, self.args.batch_size
        perm = epoch_permutation(n, seed=self.args.seed, epoch=epoch)
        for i in range(steps):
            batch = perm[i * B:(i + 1) * B]
            self.pull_all()
            self.compute(batch[self.w::self.W], 1.0 / len(batch), f"at epoch {epoch + 1}, step {i + 1}")
            for j in range(self.S):
                self.push(j, TAG_PUSH)

    def next_batch(self) -> np.ndarray:
        """Async: this worker's own stream, its DistributedSampler share of epoch after epoch."""
        if len(self.stream) == 0:
            self.stream_epoch += 1
            self.stream = distributed_indices(self.ds.num_train, rank=self.w, world_size=self.W,
                                              seed=self.args.seed, epoch=self.stream_epoch)
        idx, self.stream = self.stream[:self.b], self.stream[self.b:]
        return idx

    def async_epoch(self, epoch: int) -> None:
        cmd = np.zeros(1, dtype=np.int64)
        self.pull_all()
        k = 0
        while True:
            idx = self.next_batch()
            k += 1
            self.compute(idx, 1.0 / len(idx), f"at epoch {epoch + 1}, push {k}")
            self.push(0, TAG_PUSH)
            with self.meter.comm("control"):
                self.t.recv(cmd, 0, TAG_CMD)
            last = cmd[0] == STOP
            for j in range(1, self.S):
                self.push(j, TAG_PUSH_LAST if last else TAG_PUSH)
            if last:
                return
            self.pull_all()


# -- one rank ----------------------------------------------------------------------------------------------
def run_rank(t, args: argparse.Namespace) -> dict | None:
    N, S = t.size, args.servers
    problem = check_world(args, N)
    if problem:
        if t.rank == 0:
            raise ParadigmError(problem)
        return None                              # rank 0's error ends the job
    W = N - S
    ds = build_dataset(args)
    model = build_model(args, ds)
    full_opt = build_optimizer(args, model)      # for checkpoints; servers step their shard of it
    lr_at = build_schedule(args)
    config = paradigm_config(args, N, paradigm="paramserver", data=data_fingerprint(ds))
    state = share_resume(t, args, model, full_opt, config)
    meter = Meter(t)
    offs = block_offsets(model.num_params, S)
    role = Server(t, args, model, full_opt, meter, lr_at, W) if t.rank < S else Worker(t, args, ds, model, meter,
                                                                                       offs, W)
    rep = Reporter(args, model, state) if t.rank == 0 else None
    if rep:
        mode = args.mode + (f", staleness {args.staleness}" if args.mode == "ssp" else "")
        rep.say(f"paramserver: {S} server{'s' if S > 1 else ''} + {W} worker{'s' if W > 1 else ''} "
                f"({'simulated' if args.sim else 'MPI'}), {mode}; {ds.describe()}")
        rep.say(f"model {model.describe()}; {args.optimizer} lr {args.lr:g}, global batch {args.batch_size} "
                f"(~{args.batch_size / W:g} per worker), {args.epochs} epochs"
                + (f"; worker rank {args.straggler[0]} is {args.straggler[1]:g}x slower" if args.straggler else "")
                + (f"; resuming after epoch {state.start_epoch}" if state.start_epoch else ""))

    steps = -(-ds.num_train // args.batch_size)
    epochs_run = 0
    stats = np.zeros(7, dtype=np.float64)
    closed = np.zeros(1, dtype=np.int64)
    for epoch in range(state.start_epoch, args.epochs):
        if stop_here(args, epoch, rep):
            break
        t0 = time.perf_counter()
        before = meter.snapshot()
        if isinstance(role, Worker):
            role.sums[:] = 0
            role.sync_epoch(epoch, steps) if args.mode == "sync" else role.async_epoch(epoch)
        else:
            role.staleness = [[] for _ in range(W)]
            role.pushes[:] = 0
            role.sync_epoch(epoch, steps) if args.mode == "sync" else role.async_epoch(epoch, steps)
        epochs_run += 1
        # epoch end (control): every rank reports to rank 0; servers send their shard (and optimizer state)
        now = meter.snapshot()
        stats[:3] = role.sums if isinstance(role, Worker) else 0
        stats[3:] = [now[k] - before[k] for k in now]
        if t.rank != 0:
            with meter.comm("control"):
                t.send(stats, 0, TAG_STATS)
                if isinstance(role, Server):
                    t.send(role.shard, 0, TAG_EVAL)
                    if args.checkpoint:
                        for v in role.opt.state.values():
                            t.send(v, 0, TAG_CKPT)
                t.recv(closed, 0, TAG_CLOSED)    # every server is done with the epoch: nothing of the
            continue                             # next phase can reach a server still in this one
        total = stats.copy()
        per_worker = {}
        with meter.comm("control"):
            for src in range(1, N):
                got = np.empty_like(stats)
                t.recv(got, src, TAG_STATS)
                total += got
                if src < S:
                    t.recv(model.params[offs[src]:offs[src + 1]], src, TAG_EVAL)
                    if args.checkpoint:
                        for k in role.opt.state_names:
                            t.recv(full_opt.state[k][offs[src]:offs[src + 1]], src, TAG_CKPT)
            for dst in range(1, N):
                t.send(closed, dst, TAG_CLOSED)
        for w in range(W):
            st = role.staleness[w]
            per_worker[str(S + w)] = {"pushes": int(role.pushes[w]), "mean": float(np.mean(st)) if st else 0.0,
                                      "max": int(max(st)) if st else 0}
        every = [x for st in role.staleness for x in st]
        seconds = time.perf_counter() - t0
        values = {"loss": total[0] / max(total[2], 1), "train_acc": total[1] / max(total[2], 1),
                  "lr": role.opt.lr, "samples_per_s": total[2] / seconds if seconds > 0 else None,
                  "payload_messages": int(total[3]), "payload_bytes": int(total[4]),
                  "compute_s": total[5] / N, "comm_s": total[6] / N, "seconds": seconds,
                  "staleness_mean": float(np.mean(every)) if every else 0.0,
                  "staleness_max": int(max(every)) if every else 0, "workers": per_worker}

        def save(history, e=epoch):
            for k in role.opt.state_names:
                full_opt.state[k][offs[0]:offs[1]] = role.opt.state[k]
            full_opt.steps = role.opt.steps
            save_state(args.checkpoint, model, full_opt, epoch=e + 1, epochs=args.epochs, config=config,
                       history=history)
        rep.record(epoch + 1, ds.x_test, ds.y_test, values, x_val=ds.x_val, y_val=ds.y_val, save=save)
        if args.mode != "sync" and not args.quiet:
            rep.say("    pushes (staleness mean/max) by worker rank: " + ", ".join(
                f"{r}: {v['pushes']} ({v['mean']:.1f}/{v['max']})" for r, v in per_worker.items()))

    # the table: U = S·W pushes of b·P bytes (in shards), each answered by a pull
    P, b = model.num_params, model.params.itemsize
    U = steps * W * epochs_run
    msgs, nbytes = U * S, U * P * b
    formulas = {"server": Formula("S·W·b·P (S steps, W = N - servers workers)", msgs, nbytes, msgs, nbytes),
                "worker": Formula("S·W·b·P", msgs, nbytes, msgs, nbytes)}
    legend = (f"communication in this run: P = {P:,} parameters, b = {b} bytes, N = {N} ranks ({S} server(s), "
              f"W = {W} workers), S = {steps * epochs_run} steps (sync-equivalent; U = S·W = {U:,} pushes), "
              f"mode {args.mode}. Payload: pushes and pulls, each split into one message per server")
    report = comm_report(t, meter, {"server": list(range(S)), "worker": list(range(S, N))}, formulas, legend)
    return rep.finish(report, f"parameter server ({args.mode}), {S}+{W} ranks, {ds.name}") if rep else None


def main(argv=None) -> int:
    return paradigm_main(PROG, sys.modules[__name__], argv, default_ranks=4)


if __name__ == "__main__":
    sys.exit(main())
