"""What every distributed paradigm shares: the launch (MPI or ``--sim N``), failure handling, resuming
from a checkpoint on rank 0, and the communication ledger with its table.

* :func:`launch` runs ``body(transport, *args)`` on every rank: under ``mpiexec`` one process per rank
  (mpi4py), or with ``--sim N`` on N simulated ranks (threads of this process). Same code, other
  transport. An error on any rank ends the whole job with exit status 1 and a message naming the rank
  (``MPI_Abort`` under MPI, the simulated cluster's abort otherwise): nothing waits forever. A rank that
  exits early (``sys.exit``) ends the job the same way. ``--checkpoint DIR`` is locked for the run (one
  run per directory; a second is refused, exit 2). SIGTERM is handled like Ctrl-C: the run stops where
  it is, temporary files are removed, the last checkpoint stays as it is, and the message names the
  epoch it holds; exit status 130 for Ctrl-C (SIGINT) and 143 for SIGTERM (128 + the signal's number,
  what a shell reports for a process the signal killed, so schedulers and ``mpisim.elastic`` read it as
  an interruption and not as a failure).
* :class:`Meter` keeps one rank's ledger: messages and bytes by category (``payload``: the parameter
  and gradient vectors the formulas count; ``control``: headers, metrics and checkpoint traffic), and
  seconds of computation and communication.
* :func:`comm_report` gathers the ledgers on rank 0 (after the run, uncounted) and prints them per
  role next to the closed forms, with a column saying whether measured and formula agree.

:mod:`mpisim.train.runtime` builds the paradigms' common run from these pieces.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, replace
from typing import Any, Callable, NamedTuple

import numpy as np

from ..comm import CommError, CommTimeout, DeadlockError, RankError, SimCluster, bcast, gather
from ..comm.group import uncounted
from ..comm.network import PRESETS, TICK, Network, parse_network
from ..data import DataError
from ..nn import MLP, Optimizer, flush_denormals
from .checkpoint import CheckpointBusy, CheckpointError, DirectoryLock, lock_directory, saved_progress
from .loop import RunState, restore_state
from .options import TrainOptions, _int_at_least, under_mpiexec

__all__ = ["add_cluster_args", "check_cluster_args", "launch", "Meter", "comm_report", "CommReport", "Formula",
           "share_resume", "ParadigmError", "UsageError", "EXPECTED_ERRORS", "maybe_fail", "Reporter",
           "default_to_sim", "under_mpiexec", "stop_here"]


class ParadigmError(RuntimeError):
    """A run that cannot go on (a diverged loss, a bad checkpoint): a message, not a traceback (exit 1)."""


class UsageError(ParadigmError):
    """Options that cannot run on this many ranks, found once the rank count is known (exit 2)."""


# errors a user can cause and read: printed as one line naming the rank, no traceback
EXPECTED_ERRORS = (DataError, CheckpointError, FloatingPointError, ParadigmError, CommError, OSError, MemoryError)
LAUNCH_OPTIONS = ("sim", "sim_timeout", "network")


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--sim", type=_int_at_least(1, "a number of ranks >= 1"), default=None, metavar="N",
                   help="run on N simulated ranks in this process instead of MPI (no mpiexec needed)")
    g.add_argument("--sim-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="with --sim: fail a rank blocked this long in a receive (default 120)")
    g.add_argument("--network", type=_network, default=None, metavar="SPEC",
                   help="with --sim: model the network and report each rank's virtual time: a preset "
                        f"({', '.join(PRESETS)}) or alpha=5us,beta=1GB/s,gamma=0.2ns; nodes with nodes=4x8 or "
                        "ppn=8, their links intra=LINK and inter=LINK (or inter-alpha=,inter-beta=) and an "
                        "oversubscribed fabric oversub=S; optionally ,contention (one message at a time per "
                        "incoming link and per node uplink and downlink) and ,compute=wall or ,compute=10GFLOP/s "
                        "(what local computation costs; default: nothing)")
    g.add_argument("--eval", choices=("rank0", "distributed"), default="rank0",
                   help="who scores the test set after each epoch or round: rank0 alone (default), or distributed: "
                        "every rank scores its share of it with rank 0's model, in whole 1,024-row evaluation batches "
                        "(a smaller test set is rank 0's alone), and a reduce sums the counts: the same accuracy; each "
                        "record's eval_s says how long it took")
    g.add_argument("--inject-fault", type=_fault, default=None, metavar="RANK:STEP:KIND",
                   help="make RANK fail at its STEP-th training step (counted from 1 over the run), to see what "
                        "a failure does: KIND raise (an exception), nan (a NaN in its input, so a NaN loss), "
                        "kill (SIGKILL itself; under mpiexec only)")


FAULT_KINDS = ("raise", "nan", "kill")


def _network(text: str) -> Network:
    try:
        return parse_network(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--network: ")) from None


def _fault(text: str) -> tuple[int, int, str]:
    parts = text.split(":")
    try:
        rank, step, kind = int(parts[0]), int(parts[1]), parts[2]
        if len(parts) != 3 or rank < 0 or step < 1 or kind not in FAULT_KINDS:
            raise ValueError
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"expected RANK:STEP:KIND with RANK >= 0, STEP >= 1 and KIND one of "
                                         f"{', '.join(FAULT_KINDS)}; got {text!r}") from None
    return rank, step, kind


def maybe_fail(args: TrainOptions, rank: int, step: int, x: np.ndarray) -> None:
    """Carry out ``--inject-fault`` if it names this rank and step (``step`` counts from 1)."""
    if args.inject_fault is None or args.inject_fault[:2] != (rank, step):
        return
    kind = args.inject_fault[2]
    if kind == "raise":
        raise RuntimeError(f"fault injected on rank {rank} at step {step} (--inject-fault)")
    if kind == "nan":
        x[...] = np.nan
    else:
        os.kill(os.getpid(), signal.SIGKILL)


SIM_TIMEOUT_MAX = 1e9   # seconds (about 32 years): longer is no timeout, and threading's waits overflow at inf


def check_cluster_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.sim_timeout > 0:
        p.error(f"--sim-timeout must be > 0, got {args.sim_timeout}")
    if not args.sim_timeout < SIM_TIMEOUT_MAX:
        p.error(f"--sim-timeout must be below {SIM_TIMEOUT_MAX:g} seconds, got {args.sim_timeout:g}")
    if args.network is not None and args.sim is None and under_mpiexec():
        p.error("--network models the simulated transport: use it with --sim N (under mpiexec the network is real)")
    if args.sim is not None and under_mpiexec():
        p.error(f"--sim {args.sim} runs simulated ranks in one process: start it without mpiexec, or drop --sim "
                f"to run one rank per MPI process")
    if args.inject_fault and args.inject_fault[2] == "kill" and args.sim:
        p.error("--inject-fault ...:kill kills a process: run under mpiexec, not --sim (simulated ranks share one)")


ADVICE_LR = ": lower --lr"   # the advice a paradigm appends to a non-finite loss or gradient


def _describe(exc: BaseException, train: TrainOptions | None = None) -> str:
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    text = str(exc) or type(exc).__name__
    fault = train.inject_fault if train is not None else None
    if fault and fault[2] == "nan" and isinstance(exc, FloatingPointError) and text.endswith(ADVICE_LR):
        # the learning rate is not to blame: the NaN was put there on purpose
        text = text[:-len(ADVICE_LR)] + f" (the NaN --inject-fault {fault[0]}:{fault[1]}:nan put into the batch)"
    return text


def launch(prog: str, train: TrainOptions, body: Callable[..., Any], *args: Any, local: bool = False) -> int:
    """Run ``body(transport, *args)`` on every rank; return the exit status for this process.

    ``train.sim`` ranks simulated in this process, else this process's MPI rank; ``local``: one process
    without a cluster (its errors name no rank). 0: done. 1: an error on some rank (named in the
    message). 2: options that cannot run: on this many ranks, or on a ``--checkpoint`` DIR that another
    run holds. 130: interrupted (Ctrl-C, SIGINT); 143: terminated (SIGTERM), handled alike.
    """
    with _signals():
        try:
            if train.sim or local:
                return _launch_sim(prog, train, body, args, local)
            return _launch_mpi(prog, train, body, args)
        except KeyboardInterrupt:    # before the ranks started (the cases after are handled inside)
            return _interrupted(prog, train)


def _launch_mpi(prog: str, train: TrainOptions, body, args: tuple) -> int:
    from ..comm import mpi_transport
    from ..comm.mpi import PeerLost, set_interrupt_message, watching
    t = mpi_transport()          # an uncaught exception on any rank aborts the job, naming the rank
    # a rank blocked inside MPI when a signal comes cannot run Python's handler: its watch ends the job
    set_interrupt_message(lambda signum: f"{prog}: {_interrupted_text(train, signum, f' on rank {t.rank}')}")
    if t.size > 1 and not watching() and threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, None):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)   # no watch (MPI without threads): SIGTERM kills at once,
        #                                                 as a handler could leave a rank blocked in MPI running
    lock: DirectoryLock | None = None

    def end(code: int) -> int:
        """Unlock (an abort skips the ``finally``), then end every process of the job with ``code``."""
        if lock:
            lock.release()
        if t.size > 1:
            t.abort(code)        # the other ranks may be waiting for this one: end them all
        return code

    try:
        if train.checkpoint:
            refused = None
            if t.rank == 0:          # the process that writes the checkpoints holds the directory
                try:
                    lock = lock_directory(train.checkpoint)
                except CheckpointError as e:
                    refused = (2 if isinstance(e, CheckpointBusy) else 1, str(e))
            if t.size > 1:           # every rank learns whether the run goes on (set-up traffic, uncounted)
                with uncounted(t):
                    code = int(bcast(t, np.array([refused[0] if refused else 0], dtype=np.int64))[0])
                if code and t.rank != 0:
                    return code
            if refused:
                print(f"{prog}: error: {refused[1]}", file=sys.stderr, flush=True)
                return refused[0]
        _with_ftz(t, body, *args)
    except UsageError as e:      # raised by rank 0 alone; the others have returned
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return 2
    except PeerLost as e:        # another process died under this one: name it, not this rank
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return end(1)
    except EXPECTED_ERRORS as e:
        print(f"{prog}: error: rank {t.rank} of {t.size}: {_describe(e, train)}", file=sys.stderr, flush=True)
        return end(1)
    except KeyboardInterrupt:    # Ctrl-C or SIGTERM (Terminated)
        if lock:
            lock.sweep()
        if t.rank != 0 and t.size > 1:
            time.sleep(INTERRUPT_WAIT)   # rank 0, signalled too, says what is saved and ends the job
        return end(_interrupted(prog, train, f" on rank {t.rank}"))
    except SystemExit as e:      # sys.exit() inside the run: the others would wait for this rank forever
        print(f"{prog}: error: rank {t.rank} of {t.size} exited before the run finished (exit status "
              f"{_exit_status(e.code)})", file=sys.stderr, flush=True)
        return end(1)
    finally:
        if lock:
            lock.release()
    return 0


# under mpiexec a Ctrl-C or SIGTERM reaches every rank; the others give rank 0 this long to say what is
# saved and end the job (a rank signalled alone then ends it itself)
INTERRUPT_WAIT = 1.0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt, so the same cleanup runs."""


_caught: list[int] = []          # the signal that interrupted the current launch (none: Ctrl-C's default)


@contextlib.contextmanager
def _signals():
    """While a run is launched: SIGTERM raises :class:`Terminated` in the main thread (once; a second one
    ends the process at once). Not installed off the main thread, nor over a SIGTERM that is ignored."""
    _caught.clear()
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if previous is None or previous == signal.SIG_IGN:
        yield
        return

    def on_term(signum, frame):
        if _caught:
            os.write(2, b"terminated again: stopping at once\n")
            os._exit(128 + signum)
        _caught.append(signum)
        raise Terminated()

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_status(code: Any) -> int:
    """The exit status ``sys.exit(code)`` gives: None 0, an int itself, anything else (a message) 1."""
    return 0 if code is None else code if isinstance(code, int) else 1


def _interrupted_text(train: TrainOptions, signum: int, where: str = "") -> str:
    """'interrupted by SIGTERM on rank 0; the last finished epoch, 3, is in DIR: continue with --resume',
    read from the checkpoint on disk (what a resume would start from)."""
    how = "interrupted" if signum == signal.SIGINT else f"interrupted by {signal.Signals(signum).name}"
    text = f"{how}{where}"
    if not train.checkpoint:
        return text
    try:
        saved = saved_progress(train.checkpoint)
    except CheckpointError as e:
        return f"{text}; the checkpoint cannot be read: {e}"
    if saved is None:
        return f"{text}; nothing saved in {train.checkpoint} yet"
    unit, done = saved
    return f"{text}; the last finished {unit}, {done}, is in {train.checkpoint}: continue with --resume"


def _interrupted(prog: str, train: TrainOptions, where: str = "") -> int:
    """Say that the run was interrupted and what is saved; the exit status (128 + the signal's number)."""
    signum = _caught[0] if _caught else signal.SIGINT
    print(f"{prog}: {_interrupted_text(train, signum, where)}", file=sys.stderr, flush=True)
    return 128 + signum


def _with_ftz(t, body, *args):
    was_on = flush_denormals()   # per thread: subnormal floats would slow long runs several-fold
    try:
        return body(t, *args)
    finally:
        if was_on is False:
            flush_denormals(False)   # a rank run on the caller's thread leaves it as it was


def rank_bytes(train: TrainOptions) -> int:
    """About what one simulated rank holds: its own copy of the dataset's arrays (each rank loads it), the
    model's vectors (parameters, gradients, two optimizer moments, spare copies) and a batch's activations.
    MNIST's size is read from its image files when they are found (70,000 images otherwise)."""
    from ..data.datasets import MNIST_FILES, _find, _mnist_dir, dataset_shape
    features, classes = dataset_shape(train.dataset, synthetic_features=train.synthetic_features)
    samples = {"digits": 1797, "synthetic": train.synthetic_size}.get(train.dataset, 70_000)
    if train.dataset == "mnist":
        try:
            d = _mnist_dir(train.data_dir, False)
            files = [_find(d, MNIST_FILES[i]) for i in (0, 2)]
            if all(f is not None and f.suffix != ".gz" for f in files):
                samples = sum(f.stat().st_size for f in files) // (features or 1)
        except (DataError, OSError):
            pass
    item = np.dtype(train.dtype).itemsize
    sizes = [features, *train.hidden, classes]
    params = sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))
    batch = min(train.batch_size or 64, samples)        # a batch never holds more than the data
    return item * (samples * features + 6 * params + 4 * batch * sum(sizes)) + 8 * samples


def sim_cluster(train: TrainOptions, local: bool = False) -> SimCluster:
    """The simulated cluster a run's options ask for (``--sim N``, its timeout and network, the memory guard);
    ``local``: the one rank of a trainer without a cluster. MemoryError or ValueError when it cannot be made."""
    return SimCluster(1 if local else train.sim, timeout=train.sim_timeout, network=train.network,
                      rank_bytes=rank_bytes(train))


def run_in_process(train: TrainOptions, body, *args, local: bool = False) -> list:
    """``body(t, *args)`` on the simulated ranks of :func:`sim_cluster`, each with subnormals flushed as a
    launched run has them; every rank's return value. Failures are raised (RankError, CommTimeout, ...), not
    printed: for callers that run paradigms from Python (the studies)."""
    return sim_cluster(train, local).run(_with_ftz, body, *args)


def _launch_sim(prog: str, train: TrainOptions, body, args: tuple, local: bool) -> int:
    if not 0 < train.sim_timeout < SIM_TIMEOUT_MAX:
        print(f"{prog}: error: --sim-timeout must be a number of seconds > 0 and below {SIM_TIMEOUT_MAX:g}, got "
              f"{train.sim_timeout:g}", file=sys.stderr, flush=True)
        return 2
    try:
        cluster = sim_cluster(train, local)
    except (MemoryError, ValueError) as e:   # too many ranks for this machine; a topology of another size
        print(f"{prog}: error: --sim {train.sim}: {e}", file=sys.stderr, flush=True)
        return 2
    lock: DirectoryLock | None = None
    if train.checkpoint:
        try:
            lock = lock_directory(train.checkpoint)
        except CheckpointError as e:
            print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
            return 2 if isinstance(e, CheckpointBusy) else 1
    try:
        return _run_sim(prog, train, cluster, body, args, local, lock)
    finally:
        if lock:
            lock.release()


def _run_sim(prog: str, train: TrainOptions, cluster: SimCluster, body, args: tuple, local: bool,
             lock: DirectoryLock | None) -> int:
    try:
        cluster.run(_with_ftz, body, *args)
    except RankError as e:
        if isinstance(e.exc, KeyboardInterrupt):     # Ctrl-C or SIGTERM, handed to the rank running then
            if lock:
                lock.sweep()
            return _interrupted(prog, train)
        if isinstance(e.exc, UsageError):
            print(f"{prog}: error: {e.exc}", file=sys.stderr, flush=True)
            return 2
        if isinstance(e.exc, SystemExit):          # sys.exit() inside the run
            who = "the run exited before it" if local else f"rank {e.rank} of {e.size} exited before the run"
            print(f"{prog}: error: {who} finished (exit status {_exit_status(e.exc.code)})", file=sys.stderr,
                  flush=True)
            return 1
        if not isinstance(e.exc, EXPECTED_ERRORS):
            traceback.print_exception(type(e.exc), e.exc, e.exc.__traceback__, file=sys.stderr)
        where = "" if local else f"rank {e.rank} of {e.size} failed: "
        print(f"{prog}: error: {where}{_describe(e.exc, train)}", file=sys.stderr, flush=True)
        return 1
    except (DeadlockError, CommTimeout) as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        if lock:
            lock.sweep()
        return _interrupted(prog, train)
    return 0


# -- resuming ------------------------------------------------------------------------------------------
def share_resume(t, args: TrainOptions, model: MLP, opt: Optimizer | None, config: dict, *,
                 opt_state: bool = True, flags: dict[str, str] | None = None) -> RunState:
    """Rank 0 restores ``--checkpoint`` (if resuming) and broadcasts parameters, BatchNorm buffers,
    optimizer state and the epoch to every rank; other ranks get the history-free :class:`RunState`.
    ``opt_state=False``: rank 0 alone holds the optimizer (``opt`` is None elsewhere); only its step
    count is broadcast (``RunState.opt_steps``), the moments go to the ranks that own them later.

    A bad checkpoint raises on rank 0 only, which ends the job with a message naming rank 0.
    """
    state = restore_state(args, model, opt, config, flags) if t.rank == 0 else RunState()
    if not args.resume:
        return state
    steps = opt.steps if t.rank == 0 and opt is not None else 0
    head = bcast(t, np.array([state.start_epoch, steps], dtype=np.int64))
    for a in (model.params, model.buffers):
        a[...] = bcast(t, a)
    if opt_state and opt is not None:      # the same keys in the same order on every rank: one bcast each
        opt.load_state_dict({k: bcast(t, np.atleast_1d(v)).reshape(v.shape) for k, v in opt.state_dict().items()})
    state.start_epoch, state.opt_steps = int(head[0]), int(head[1])
    return state


# -- the ledger ----------------------------------------------------------------------------------------
_FIELDS = ("messages_sent", "bytes_sent", "messages_received", "bytes_received", "comm_time")


class Meter:
    """One rank's ledger of communication by category and of computation time."""

    def __init__(self, t) -> None:
        self.t = t
        self.by: dict[str, np.ndarray] = {}
        self.compute = 0.0

    def _snap(self) -> np.ndarray:
        s = self.t.stats
        return np.array([getattr(s, f) for f in _FIELDS], dtype=np.float64)

    @contextlib.contextmanager
    def comm(self, category: str = "payload"):
        """Count the messages, bytes and transport seconds of the block under ``category``."""
        before = self._snap()
        try:
            yield
        finally:
            self.by[category] = self.by.get(category, 0) + (self._snap() - before)

    @contextlib.contextmanager
    def computing(self):
        """Count the block's wall seconds as computation."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.compute += time.perf_counter() - t0

    def get(self, category: str, field: str) -> float:
        v = self.by.get(category)
        return 0.0 if v is None else float(v[_FIELDS.index(field)])

    def comm_seconds(self) -> float:
        return float(sum(v[-1] for v in self.by.values()))

    def snapshot(self) -> dict[str, float]:
        """Payload counters and times so far (for per-epoch deltas in the metrics file)."""
        return {"payload_messages": self.get("payload", "messages_sent"),
                "payload_bytes": self.get("payload", "bytes_sent"),
                "compute_s": self.compute, "comm_s": self.comm_seconds()}


class CommReport(NamedTuple):
    """The closing table, whether every payload agrees with its formula, the payload bytes all ranks
    sent, and whether any role has a formula."""
    text: str
    agrees: bool
    payload_bytes: int
    has_formula: bool


@dataclass
class Formula:
    """The closed form of one role's payload: text and value of messages and bytes sent and received,
    summed over the ranks of the role."""
    text: str
    messages_sent: int
    bytes_sent: int
    messages_received: int
    bytes_received: int


def comm_report(t, meter: Meter, roles: dict[str, list[int]], formulas: dict[str, Formula | None],
                legend: str, categories: tuple[str, ...] = ("payload", "control")) -> CommReport | None:
    """Gather every rank's ledger on rank 0 (these messages are not counted) and return the table with
    its verdict there (:class:`CommReport`); None on other ranks."""
    vec = np.zeros(len(categories) * len(_FIELDS) + 2, dtype=np.float64)
    for i, c in enumerate(categories):
        if c in meter.by:
            vec[i * len(_FIELDS):(i + 1) * len(_FIELDS)] = meter.by[c]
    vec[-2] = meter.compute
    net = getattr(t, "network", None)
    vec[-1] = t.clock * TICK if net is not None else 0.0   # this rank's virtual time so far (its finish)
    allv = gather(t, vec, root=0)
    if t.rank != 0:
        return None
    allv = allv.reshape(t.size, -1)
    head = (f"{'role':<8} {'ranks':>5}  {'what':<8} {'msgs sent':>10} {'bytes sent':>15} {'msgs recv':>10} "
            f"{'bytes recv':>15} {'compute s':>9} {'comm s':>8}" + (f" {'virtual s':>10}" if net else "")
            + "  formula (bytes sent)")
    lines = [legend, head, "-" * len(head)]
    all_ok = True
    payload_bytes = int(allv[:, categories.index("payload") * len(_FIELDS) + 1].sum()) if "payload" in categories else 0
    for role, ranks in roles.items():
        if not ranks:
            continue
        rows = allv[ranks]
        compute = rows[:, -2].mean()
        for i, c in enumerate(categories):
            s = rows[:, i * len(_FIELDS):(i + 1) * len(_FIELDS)].sum(axis=0)
            comm_s = rows[:, i * len(_FIELDS) + 4].mean()
            f = formulas.get(role) if c == "payload" else None
            note = ""
            if f is not None:
                ok = (int(s[0]), int(s[1]), int(s[2]), int(s[3])) == (
                    f.messages_sent, f.bytes_sent, f.messages_received, f.bytes_received)
                all_ok &= ok
                note = f"{f.text} = {f.bytes_sent:,}  " + ("agrees" if ok else
                        f"DIFFERS (formula: {f.messages_sent:,} msgs sent, {f.messages_received:,} msgs / "
                        f"{f.bytes_received:,} B received)")
            first = i == 0                                        # role, ranks and compute once per role
            lines.append(f"{role if first else '':<8} {len(ranks) if first else '':>5}  {c:<8} {int(s[0]):>10,} "
                         f"{int(s[1]):>15,} {int(s[2]):>10,} {int(s[3]):>15,} "
                         f"{f'{compute:.2f}' if first else '':>9} {comm_s:>8.2f}"
                         + (f" {f'{rows[:, -1].max():.6f}' if first else '':>10}" if net else "") + f"  {note}")
    lines.append("compute s and comm s: mean per rank of the role; comm s is time inside transport calls "
                 "(waiting included)")
    if net is not None:
        lines.append(f"virtual s: the latest virtual finish time among the role's ranks, network {net}")
    return CommReport("\n".join(lines), all_ok, payload_bytes, any(f is not None for f in formulas.values()))


# -- rank 0's side of a run: evaluate, print, log, checkpoint, plot ------------------------------------
def default_to_sim(train: TrainOptions, n: int, prog: str) -> TrainOptions:
    """Not started by mpiexec and no --sim: run on ``n`` simulated ranks (and say so)."""
    if train.sim is not None or under_mpiexec():
        return train
    if not train.quiet:
        print(f"{prog}: not started by mpiexec, so running on {n} simulated ranks (--sim {n}); "
              f"use 'mpiexec -n N {prog}' for real processes", flush=True)
    return replace(train, sim=n)


class Reporter:
    """Rank 0's bookkeeping of a distributed run, the same as the centralized trainer's: one progress
    line and one metrics record per epoch (or round), a checkpoint after each, the curves at the end."""

    def __init__(self, args: TrainOptions, model: MLP, state: RunState, *, unit: str = "epoch",
                 out=None) -> None:
        from .metrics import MetricsLog
        self.args, self.model, self.unit = args, model, unit
        self.log = MetricsLog(args.metrics, state.history)
        self.out = out or sys.stdout

    def say(self, text: str) -> None:
        if not self.args.quiet:
            print(text, file=self.out, flush=True)

    def record(self, index: int, x_eval, y_eval, values: dict, *, save: Callable[[list[dict]], None] | None,
               x_val=None, y_val=None, model: MLP | None = None, scored: dict | None = None) -> dict:
        """Evaluate the model (or ``model``) on the test (and validation) set, log, print, checkpoint
        (``save(history)``). ``values`` holds the paradigm's figures, ``seconds`` (the epoch's training
        time) among them. ``scored``: the evaluation's figures already computed (``--eval distributed``:
        test_loss, test_acc, maybe val_loss and val_acc, and eval_s)."""
        from .metrics import progress_line
        model = model or self.model
        rec = {self.unit: index, **values}
        if scored is not None:
            rec.update(scored)
        else:
            started = time.perf_counter()
            rec["test_loss"], rec["test_acc"] = model.evaluate(x_eval, y_eval)
            if x_val is not None:
                rec["val_loss"], rec["val_acc"] = model.evaluate(x_val, y_val)
            rec["eval_s"] = time.perf_counter() - started
        self.log.add(rec)
        line = progress_line(rec, self.args.epochs, self.unit)
        if rec.get("comm_s") is not None:
            line += f"  (comm {rec['comm_s']:.2f}s/rank)"
        self.say(line)
        if save is not None and self.args.checkpoint:
            save(self.log.records)
        return rec

    def finish(self, report: CommReport | None, title: str, **extra) -> dict:
        """Print the communication table (if any), draw the curves; return the last record with ``extra``
        and ``comm_agrees`` (what a test or a script wants from rank 0)."""
        from .metrics import plot_curves
        if report is not None:
            self.say("\n" + report.text)
        if self.args.plot and self.log.records:
            plot_curves(self.log.records, self.args.plot, title=title, unit=self.unit)
            self.say(f"plot written to {self.args.plot}")
        last = dict(self.log.records[-1]) if self.log.records else {}
        last.update(model=self.model, comm_agrees=report and report.agrees, comm_table=report and report.text,
                    **extra)
        return last


def stop_here(args: TrainOptions, index: int, rep: "Reporter | None", unit: str = "epoch") -> bool:
    """True (and rank 0 says why) when ``--stop-after`` says to stop before epoch/round ``index``."""
    if args.stop_after is None or index < args.stop_after:
        return False
    if rep:
        rep.say(f"stopping after {unit} {index} as asked (--stop-after {args.stop_after})"
                + ("; continue with --resume" if args.checkpoint else "; nothing saved (no --checkpoint)"))
    return True
