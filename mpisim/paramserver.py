"""``mpisim.paramserver``: a parameter server (Li et al. 2014, "Scaling Distributed Machine
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
from dataclasses import dataclass, replace

import numpy as np

from .comm import ANY_SOURCE, ANY_TAG
from .comm._common import block_offsets
from .data import distributed_indices, epoch_permutation
from .nn import make_optimizer
from .train import gather_batch
from .train.compress import SCHEMES, add_compress_args, check_compress_args, make_compressor
from .train.distributed import Formula
from .train.runtime import Paradigm, Payload, Role, Run, fault_on_server
from .train.metrics import plural, share

PROG = "python -m mpisim.paramserver"
MODES = ("sync", "async", "ssp")
TAG_PULL, TAG_PUSH, TAG_PUSH_LAST, TAG_CMD, TAG_EVAL, TAG_STATS, TAG_CKPT, TAG_CLOSED = range(201, 209)
GO, STOP = 0, 1


@dataclass(frozen=True)
class Options:
    servers: int = 1                          # server ranks 0..S-1, each owns one shard of the parameters
    mode: str = "sync"                        # sync | async | ssp
    staleness: int = 2                        # ssp: steps a worker may run ahead of the slowest
    straggler: tuple[int, float] | None = None   # (worker rank, slow-down factor)
    compress: str = "none"                    # a scheme of mpisim.train.compress for the pushes
    error_feedback: bool = False              # keep what the scheme leaves out of a push, send it with the next


MAX_STRAGGLER = 1000.0      # --straggler's FACTOR at most: the worker sleeps (FACTOR-1) x its compute time a
#                            step, so 1e9 would stall the run for days; 1000 already makes a step of 1 ms one of 1 s


def _straggler(text: str) -> tuple[int, float]:
    try:
        rank, factor = text.split(":")
        rank, factor = int(rank), float(factor)
        if rank < 0 or not 1 <= factor <= MAX_STRAGGLER:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected RANK:FACTOR with RANK >= 0 and FACTOR >= 1 (at most "
                                         f"{MAX_STRAGGLER:g}), got {text!r}") from None
    return rank, factor


def fault_steps(o: Options, N: int, batches: int) -> int:
    """The most gradient steps one worker takes in an epoch of ``batches`` global batches (--inject-fault's
    count): one a batch in sync; async and ssp share W x batches pushes among the W workers however they fall."""
    return batches if o.mode == "sync" else (N - o.servers) * batches


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parameter server")
    g.add_argument("--servers", type=int, default=1, metavar="S", help="server ranks 0..S-1 (default 1)")
    g.add_argument("--mode", choices=MODES, default="sync", help="(default sync)")
    g.add_argument("--staleness", type=int, default=2, metavar="s",
                   help="ssp: how many steps a worker may run ahead of the slowest worker, a step being one minibatch: "
                        "one push of its gradient and one pull of the parameters (default 2; 0 = sync)")
    g.add_argument("--straggler", type=_straggler, default=None, metavar="RANK:FACTOR",
                   help=f"make worker RANK FACTOR times slower, e.g. 3:4 (FACTOR 1..{MAX_STRAGGLER:g})")
    add_compress_args(g, "each push (a worker's gradient shard)",
                      schemes=[s.name for s in SCHEMES.values() if s.point_to_point])


def check(p: argparse.ArgumentParser, train, o: Options) -> Options:
    if o.servers < 1:
        p.error(f"--servers must be at least 1, got {o.servers}")
    if o.staleness < 0:
        p.error(f"--staleness must be >= 0, got {o.staleness}")
    check_compress_args(p, train, o, point_to_point=True)
    if o.mode == "ssp" and o.staleness == 0:
        return replace(o, mode="sync")           # s = 0 is bulk synchronous, by definition: run it
    return o


def check_world(train, o: Options, N: int) -> str | None:
    """Why this rank count cannot run these options, or None."""
    if N < 2:
        return (f"a parameter server needs at least 2 ranks (a server and a worker), got {N}: "
                f"mpiexec -n 2 {PROG} or --sim 2")
    if o.servers > N - 1:
        return f"--servers {o.servers} leaves no worker on {N} ranks: at most {N - 1} servers"
    if o.straggler and not o.servers <= o.straggler[0] < N:
        return (f"--straggler {o.straggler[0]}:...: workers are ranks {o.servers}..{N - 1} "
                f"(ranks 0..{o.servers - 1} are servers)")
    return fault_on_server(train, o.servers, N)


# -- servers -----------------------------------------------------------------------------------------------
class Server:
    """Server j: owns params[lo:hi] and its optimizer state; serves pulls and applies pushes."""

    def __init__(self, run: Run, offs: list[int], W: int):
        self.t, self.opts, self.model, self.meter, self.lr_at = run.t, run.opts, run.model, run.meter, run.lr_at
        self.S, self.W = self.opts.servers, W
        self.lo, self.hi = offs[run.rank], offs[run.rank + 1]
        self.shard = self.model.params[self.lo:self.hi]
        self.grad = np.zeros_like(self.shard)                     # what the optimizer reads
        self.incoming = np.zeros((W, self.hi - self.lo), dtype=self.model.dtype)
        tr = run.train
        self.opt = make_optimizer(tr.optimizer, self.shard, self.grad, lr=tr.lr, weight_decay=tr.weight_decay,
                                  momentum=tr.momentum)
        state = run.opt.state_dict()
        self.opt.load_state_dict({k: (v if k == "steps" else v[self.lo:self.hi]) for k, v in state.items()})
        self.staleness: list[list[int]] = [[] for _ in range(W)]
        self.pushes = np.zeros(W, dtype=np.int64)
        self.comp = make_compressor(self.opts.compress)
        n = self.hi - self.lo                                     # --compress: a push is a payload of bytes
        self.wire = None if self.comp.name == "none" else np.empty(self.comp.payload_bytes(n), dtype=np.uint8)

    def worker_rank(self, w: int) -> int:
        return self.S + w

    def receive(self, out: np.ndarray, source: int, tag: int):
        """A push into ``out`` (decoded, with --compress); returns the receive's Status."""
        if self.wire is None:
            with self.meter.comm("payload"):
                return self.t.recv(out, source, tag)
        with self.meter.comm("payload"):
            st = self.t.recv(self.wire, source, tag)
        with self.meter.computing():
            out[...] = self.comp.decode(self.wire, out.size)
        if not np.isfinite(out).all():          # nothing from a peer is trusted (fp16 overflows to inf, say)
            raise FloatingPointError(f"server rank {self.t.rank}: the push of rank {st.source} decodes to "
                                     f"non-finite values (--compress {self.comp.spec}): lower --lr")
        return st

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
                self.receive(self.incoming[w], self.worker_rank(w), TAG_PUSH)
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
        s = self.opts.staleness if self.opts.mode == "ssp" else None
        version, pulled = 0, np.zeros(W, dtype=np.int64)
        clock = np.zeros(W, dtype=np.int64)                   # pushes of each worker this epoch
        done = np.zeros(W, dtype=bool)
        held: list[int] = []                                  # ssp: workers waiting for the slowest
        cmd = np.zeros(1, dtype=np.int64)
        for w in range(W):
            self.pull(w)
        applied = 0
        while not done.all():
            st = self.receive(self.grad, ANY_SOURCE, TAG_PUSH if lead else ANY_TAG)
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
            self.release(held, clock, done, s, pulled, version)
        assert applied == budget, (applied, budget)

    def release(self, held: list[int], clock, done, s: int | None, pulled, version: int) -> None:
        """Server 0 lets held workers go on: each at once (async), or (ssp) when it is at most s steps
        ahead of the slowest unfinished worker; a released worker pulls the parameters of ``version``."""
        slowest = clock[~done].min() if (~done).any() else 0
        go = np.array([GO], dtype=np.int64)
        for h in list(held):
            if s is None or clock[h] - slowest <= s:
                held.remove(h)
                with self.meter.comm("control"):
                    self.t.send(go, self.worker_rank(h), TAG_CMD)
                pulled[h] = version
                self.pull(h)


# -- workers -----------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, run: Run, offs: list[int], W: int):
        self.run, self.t, self.ds, self.model, self.meter, self.offs = run, run.t, run.ds, run.model, run.meter, offs
        self.S, self.W, self.B, self.seed = run.opts.servers, W, run.train.batch_size, run.train.seed
        self.w = run.rank - self.S
        self.b = max(1, self.B // W)                              # async: this worker's own batch size
        rows = min(max(-(-self.B // W), self.b), self.ds.num_train)   # a batch never holds more than the data
        self.xbuf = np.empty((rows, self.ds.num_features), dtype=self.model.dtype)
        self.sums = np.zeros(3, dtype=np.float64)                 # loss sum, correct, seen
        self.steps_done = 0
        straggler = run.opts.straggler
        self.slow = straggler[1] if straggler and straggler[0] == run.rank else 1.0
        self.stream = np.zeros(0, dtype=np.int64)              # async: what is left of this worker's share
        self.stream_epoch = -1
        self.comp = make_compressor(run.opts.compress, error_feedback=run.opts.error_feedback, seed=run.train.seed)

    def shards(self, vec: np.ndarray):
        return [(j, vec[self.offs[j]:self.offs[j + 1]]) for j in range(self.S)]

    def pull_all(self, only: range | None = None) -> None:
        for j, part in self.shards(self.model.params):
            if only is None or j in only:
                with self.meter.comm("payload"):
                    self.t.recv(part, j, TAG_PULL)

    def compute(self, idx: np.ndarray, scale: float, where: str) -> None:
        t0 = time.perf_counter()
        xb = gather_batch(self.run.x_train, idx, self.xbuf)
        self.run.maybe_fail(self.steps_done + 1, xb)
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
            self.t.sleep((self.slow - 1) * spent)                # --straggler (other simulated ranks run meanwhile)
        self.meter.compute += spent

    def push(self, j: int, tag: int) -> None:
        shard = self.model.grads[self.offs[j]:self.offs[j + 1]]
        if self.comp.name != "none":
            with self.meter.computing():
                shard = self.comp.encode(shard, key=j, rank=self.t.rank)
        with self.meter.comm("payload"):
            self.t.send(shard, j, tag)

    def sync_epoch(self, epoch: int, steps: int) -> None:
        n, B = self.ds.num_train, self.B
        perm = epoch_permutation(n, seed=self.seed, epoch=epoch)
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
                                              seed=self.seed, epoch=self.stream_epoch)
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


def _afresh(run: Run, comp) -> str:
    """The header's note on a resume whose compression keeps state the checkpoint does not hold."""
    if run.state.start_epoch and comp.stateful:
        return " (the compression's state is not in the checkpoint: it starts afresh, so this resume is not exact)"
    return ""


# -- one rank ----------------------------------------------------------------------------------------------
class ParameterServer(Role):
    """Ranks 0..S-1 serve a shard each, the others work; at each epoch's end every rank reports to rank 0."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        o, tr, N = run.opts, run.train, run.size
        S, W = o.servers, N - o.servers
        self.offs = block_offsets(run.model.num_params, S)
        self.part = Server(run, self.offs, W) if run.rank < S else Worker(run, self.offs, W)
        self.stats = np.zeros(7, dtype=np.float64)
        self.title = f"parameter server ({o.mode}), {S}+{W} ranks, {run.ds.name}"
        mode = o.mode + (f", staleness {o.staleness}" if o.mode == "ssp" else "")
        run.say(f"paramserver: {S} server{'s' if S > 1 else ''} + {W} worker{'s' if W > 1 else ''} "
                f"({run.where()}), {mode}; {run.ds.describe()}")
        run.say(f"model {run.model.describe()}; {tr.optimizer} lr {tr.lr:g}, global batch {tr.batch_size} "
                f"({share(tr.batch_size, W)} per worker), {plural(tr.epochs, 'epoch')}"
                + (f"; worker rank {o.straggler[0]} is {o.straggler[1]:g}x slower" if o.straggler else "")
                + (f"; pushes compressed: {o.compress}" if o.compress != "none" else "")
                + run.resuming() + _afresh(run, self.part.comp))

    def epoch(self, epoch: int) -> dict | None:
        part, sync = self.part, self.run.opts.mode == "sync"
        if isinstance(part, Worker):
            part.sums[:] = 0
            part.sync_epoch(epoch, self.run.steps) if sync else part.async_epoch(epoch)
        else:
            part.staleness = [[] for _ in range(part.W)]
            part.pushes[:] = 0
            part.sync_epoch(epoch, self.run.steps) if sync else part.async_epoch(epoch, self.run.steps)
        now, before = self.run.meter.snapshot(), self.run.before
        self.stats[:3] = part.sums if isinstance(part, Worker) else 0
        self.stats[3:] = [now[k] - before[k] for k in now]
        if self.run.rank != 0:
            self.report()
            return None
        return self.collect()

    def report(self) -> None:
        """Epoch end on ranks > 0 (control): the figures; a server's shard (and optimizer state)."""
        t, part = self.run.t, self.part
        with self.run.meter.comm("control"):
            t.send(self.stats, 0, TAG_STATS)
            if isinstance(part, Server):
                t.send(part.shard, 0, TAG_EVAL)
                if self.run.train.checkpoint:
                    for v in part.opt.state.values():
                        t.send(v, 0, TAG_CKPT)
            t.recv(np.zeros(1, dtype=np.int64), 0, TAG_CLOSED)   # every server is done with the epoch:
        # nothing of the next phase can reach a server still in this one

    def collect(self) -> dict:
        """Epoch end on rank 0: the others' figures, shards and optimizer state; the epoch's record."""
        run, t, server, offs, S = self.run, self.run.t, self.part, self.offs, self.run.opts.servers
        total = self.stats.copy()
        with run.meter.comm("control"):
            for src in range(1, run.size):
                got = np.empty_like(self.stats)
                t.recv(got, src, TAG_STATS)
                total += got
                if src < S:
                    t.recv(run.model.params[offs[src]:offs[src + 1]], src, TAG_EVAL)
                    if run.train.checkpoint:
                        for k in server.opt.state_names:
                            t.recv(run.opt.state[k][offs[src]:offs[src + 1]], src, TAG_CKPT)
            for dst in range(1, run.size):
                t.send(np.zeros(1, dtype=np.int64), dst, TAG_CLOSED)
        per_worker = {str(S + w): {"pushes": int(server.pushes[w]), "mean": float(np.mean(st)) if st else 0.0,
                                   "max": int(max(st)) if st else 0} for w, st in enumerate(server.staleness)}
        every = [x for st in server.staleness for x in st]
        return {**run.figures(total, server.opt.lr), "staleness_mean": float(np.mean(every)) if every else 0.0,
                "staleness_max": int(max(every)) if every else 0, "workers": per_worker}

    def note(self, record: dict) -> str | None:
        if self.run.opts.mode == "sync":
            return None
        return "    pushes (staleness mean/max) by worker rank: " + ", ".join(
            f"{r}: {v['pushes']} ({v['mean']:.1f}/{v['max']})" for r, v in record["workers"].items())

    def checkpoint_optimizer(self):
        """Rank 0 holds the other servers' optimizer state (sent at the epoch's end); its own is copied in."""
        full, server, offs = self.run.opt, self.part, self.offs
        for k in server.opt.state_names:
            full.state[k][offs[0]:offs[1]] = server.opt.state[k]
        full.steps = server.opt.steps
        return full

    def payload(self) -> Payload:
        """U = S·W pushes of b·P bytes (in shards), each answered by a pull."""
        run, S, N = self.run, self.run.opts.servers, self.run.size
        W, P, b = N - S, run.model.num_params, run.model.params.itemsize
        U = run.steps * W * run.epochs_run
        msgs, nbytes = U * S, U * P * b
        comp = self.part.comp
        if comp.name == "none":
            pushed, push_text = nbytes, "S·W·b·P"
        else:                                       # each push to server j is a payload of its shard's size
            pushed = U * sum(comp.payload_bytes(hi - lo) for lo, hi in zip(self.offs[:-1], self.offs[1:]))
            push_text = f"S·W·Σ_j payload({comp.spec}, P_j)"
        formulas = {"server": Formula(f"S·W·b·P pulls (S steps, W = N - servers workers); pushes {push_text}",
                                      msgs, nbytes, msgs, pushed),
                    "worker": Formula(push_text, msgs, pushed, msgs, nbytes)}
        legend = (f"communication in this run: P = {P:,} parameters, b = {b} bytes, N = {N} ranks ({S} server(s), "
                  f"W = {W} workers), S = {run.steps * run.epochs_run} steps (sync-equivalent; U = S·W = {U:,} "
                  f"pushes), mode {run.opts.mode}. Payload: pushes and pulls, each split into one message per server"
                  + ("" if comp.name == "none" else f"; pushes compressed: {comp.describe()}, pulls whole"))
        return Payload({"server": list(range(S)), "worker": list(range(S, N))}, formulas, legend)


PARADIGM = Paradigm(name="paramserver", doc=__doc__, setup=ParameterServer, options=Options, add_args=add_args,
                    check=check, check_world=check_world, workers=lambda o, N: N - o.servers, fault_steps=fault_steps,
                    no_batchnorm="its running statistics would live on the workers, not the servers "
                                 "(use mpisim.allreduce)",
                    description="Parameter-server SGD: sync, async or stale-synchronous, sharded over --servers.")
build_parser, main = PARADIGM.build_parser, PARADIGM.main


if __name__ == "__main__":
    sys.exit(main())
