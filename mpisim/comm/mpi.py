"""The MPI transport: mpi4py's buffer calls over a duplicated communicator.

Only the uppercase, buffer-based calls are used (``Send``, ``Recv``, ``Sendrecv``, ``Isend``,
``Irecv``): numpy arrays go to the wire as they are, with no pickling. The communicator is a
duplicate of ``COMM_WORLD`` (or of the one given), so mpisim's messages never match a user's.

:func:`mpi_transport` also installs an exception hook (as ``python -m mpi4py`` does): an
uncaught exception on any rank prints the rank and the traceback, then calls ``MPI_Abort`` so
the whole job ends with a non-zero exit instead of the other ranks waiting forever. It also starts
a watch (:class:`_Watch`, a thread and a duplicate of ``COMM_WORLD`` of its own) that ends the job when a
rank exits before the others are done with it: each process says so to every other when it exits
(``sys.exit`` or the end of the script, from an ``atexit`` handler, before MPI_Finalize), and a rank that
has been waiting in a transport call for a rank that has exited aborts the job naming that rank; a
rank that is sent SIGINT or SIGTERM while blocked inside MPI (where Python cannot run its handler) ends
the job too. An MPI error other than a truncated message, such as a transfer from a process that has
just died, is raised as :class:`PeerLost`, which blames the peer, not the rank that saw it.

``transport.split(color, key=0)`` is ``Comm_split`` on the transport's communicator (None for
MPI_UNDEFINED), wrapped in an MPITransport whose counters also roll up into its parent's (see
:mod:`mpisim.comm.group`). MPI's own messages for the split are not counted, and neither is its time.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable

import numpy as np

from .group import check_split, count_received, count_reduced, count_sent, count_time
from .transport import ANY_SOURCE, ANY_TAG, CommError, Stats, Status, as_buffer, check_peer

__all__ = ["MPITransport", "PeerLost", "install_abort_hook", "mpi_transport"]


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:  # pragma: no cover - mpi4py is a hard dependency
        raise ImportError("the MPI transport needs mpi4py: pip install mpi4py mpich") from exc
    return MPI


class PeerLost(CommError):
    """MPI failed a transfer for a reason other than its size: in practice the peer process has died (the
    launcher then ends the job). ``rank`` saw it; ``peer`` is the rank it was talking to (None: any rank)."""

    def __init__(self, rank: int, size: int, peer: int | None, detail: str):
        who = f"rank {peer} of {size}" if peer is not None else "another rank"
        super().__init__(f"lost contact with {who}: that process has probably died (killed, or out of memory); "
                         f"MPI on rank {rank} said: {detail}")
        self.rank, self.size, self.peer, self.detail = rank, size, peer, detail


# MPI error classes that say the call itself was wrong (a programming error, reported as it is); any other
# failure of a transfer is the peer's (PeerLost)
_CALLER_ERRORS = ("ERR_ARG", "ERR_BUFFER", "ERR_COUNT", "ERR_TYPE", "ERR_TAG", "ERR_RANK", "ERR_COMM", "ERR_OP",
                  "ERR_ROOT", "ERR_GROUP", "ERR_REQUEST")


def _mpi_detail(exc: Exception) -> str:
    """The last line of MPICH's error stack without its 'function(line)....: ' prefix."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return last.split(": ", 1)[1].strip() if ": " in last and "(" in last.split(": ", 1)[0] else last


class _MPIRequest:
    """Wraps an mpi4py request; counts the receive when it completes."""

    __slots__ = ("transport", "req", "buf", "is_recv", "status", "result", "peer")

    def __init__(self, transport: "MPITransport", req: Any, buf: np.ndarray, is_recv: bool, peer: int = ANY_SOURCE):
        self.transport, self.req, self.buf, self.is_recv, self.peer = transport, req, buf, is_recv, peer
        self.status = _mpi().Status() if is_recv else None
        self.result: Status | None = None

    def _complete(self) -> Status | None:
        if self.is_recv and self.result is None:
            self.result = self.transport._received(self.buf, self.status)
        return self.result

    def wait(self) -> Status | None:
        t0 = time.perf_counter()
        if self.req is not None:
            t = self.transport
            w = _watch
            if w is not None:
                w.waiting = t._waiting_on(self.peer)
            try:
                with t._truncation(self.buf, self.peer):
                    self.req.Wait(self.status)
            finally:
                if w is not None:
                    w.waiting = None
            self.req = None
        count_time(self.transport._chain, time.perf_counter() - t0)
        return self._complete()

    def test(self) -> bool:
        if self.req is None:
            return True
        with self.transport._truncation(self.buf, self.peer):
            done = self.req.Test(self.status)
        if done:
            self.req = None
            self._complete()
            return True
        return False


class MPITransport:
    """One MPI process's endpoint (see :class:`mpisim.comm.transport.Transport`).

    ``parent`` and ``members`` are set on a group made by :meth:`split`: the transport it was
    split from, and the parent ranks of its ranks 0..size-1.
    """

    def __init__(self, comm: Any, *, parent: MPITransport | None = None, members: tuple[int, ...] | None = None):
        self._MPI = _mpi()
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.stats = Stats()
        self.parent = parent
        self.members = tuple(range(self.size)) if members is None else members
        # this transport and its ancestors: every count goes to all of them
        self._chain: tuple[MPITransport, ...] = (self,) if parent is None else (self, *parent._chain)
        # the COMM_WORLD rank of each of its ranks (the watch knows processes by those)
        self._world = _world_ranks(comm)
        others = tuple(r for i, r in enumerate(self._world) if i != self.rank)
        self._any = (others, True)   # a wait on ANY_SOURCE is stuck once every other rank has exited
        self._all = (others, False)  # a collective is stuck once any of them has

    def __repr__(self) -> str:
        return f"MPITransport(rank={self.rank}, size={self.size})"

    def reset_stats(self) -> None:
        self.stats = Stats()

    def split(self, color: int | None, key: int = 0) -> MPITransport | None:
        """``Comm_split``: the group of the ranks that pass the same ``color``, ordered by (key, rank).

        Collective over every rank of this transport; ``color=None`` (MPI_UNDEFINED) takes part and
        returns None. See :mod:`mpisim.comm.group`.
        """
        check_split(color, key)
        MPI = self._MPI
        w = _watch
        if w is not None:
            w.waiting = self._waiting_all()
        try:
            with self._truncation(None):
                comm = self.comm.Split(MPI.UNDEFINED if color is None else int(color), int(key))
        finally:
            if w is not None:
                w.waiting = None
        if comm == MPI.COMM_NULL:
            return None
        mine, theirs = comm.Get_group(), self.comm.Get_group()
        try:
            members = tuple(int(r) for r in mine.Translate_ranks(list(range(comm.Get_size())), theirs))
        finally:
            mine.Free()
            theirs.Free()
        return MPITransport(comm, parent=self, members=members)

    def reduced(self, nbytes: int) -> None:
        count_reduced(self._chain, nbytes)

    def compute(self, flops: float) -> None:
        pass  # real computation takes real time

    def _src_tag(self, source: int, tag: int) -> tuple[int, int]:
        MPI = self._MPI
        check_peer(source, self.size, "source", allow_any=True)
        return (MPI.ANY_SOURCE if source == ANY_SOURCE else source,
                MPI.ANY_TAG if tag == ANY_TAG else tag)

    def _truncated(self, exc: Exception, buf: np.ndarray | None, peer: int = ANY_SOURCE) -> Exception:
        """MPI's 'message truncated' as the CommError the protocol promises; a failed transfer as PeerLost
        (naming ``peer``, a rank of this transport, or ANY_SOURCE); a wrong call as it is."""
        MPI = self._MPI
        if not isinstance(exc, MPI.Exception):
            return exc
        cls = exc.Get_error_class()
        if cls == MPI.ERR_TRUNCATE and buf is not None:
            return CommError(f"rank {self.rank}: an incoming message is larger than the receive "
                             f"buffer ({buf.nbytes} bytes)")
        if any(cls == getattr(MPI, name, None) for name in _CALLER_ERRORS):
            return exc
        world = MPI.COMM_WORLD
        who = None if peer == ANY_SOURCE or not 0 <= peer < self.size else self._world[peer]
        return PeerLost(world.Get_rank(), world.Get_size(), who, _mpi_detail(exc))

    @contextlib.contextmanager
    def _truncation(self, buf: np.ndarray | None, peer: int = ANY_SOURCE):
        """Turn MPI's errors into the CommError the protocol promises (see :meth:`_truncated`)."""
        try:
            yield
        except self._MPI.Exception as exc:
            err = self._truncated(exc, buf, peer)
            if err is exc:
                raise
            raise err from exc

    def _waiting_on(self, peer: int) -> tuple:
        """What the watch is told while this rank blocks on ``peer`` (a rank here, or ANY_SOURCE)."""
        if peer == ANY_SOURCE:
            return (*self._any, time.monotonic())
        return ((self._world[peer],), False, time.monotonic())

    def _waiting_all(self) -> tuple:
        return (*self._all, time.monotonic())

    def _sent(self, buf: np.ndarray) -> None:
        count_sent(self._chain, buf.nbytes)

    def _wrong_size(self, buf: np.ndarray, status: Any, nbytes: int) -> CommError:
        return CommError(f"rank {self.rank}: message from rank {status.Get_source()} "
                         f"(tag {status.Get_tag()}) has {nbytes} bytes but the receive buffer "
                         f"holds {buf.nbytes}")

    def _received(self, buf: np.ndarray, status: Any) -> Status:
        nbytes = status.Get_count(self._MPI.BYTE)
        if nbytes != buf.nbytes:
            raise self._wrong_size(buf, status, nbytes)
        count_received(self._chain, nbytes)
        return Status(status.Get_source(), status.Get_tag(), nbytes)

    def _bytes(self, buf: np.ndarray) -> list:
        # Sent as bytes: one datatype for every dtype, and a received size we can check exactly.
        return [buf, buf.nbytes, self._MPI.BYTE]

    # The per-call path is short on purpose (a 4 KiB message costs MPI about 2 us): checks, one
    # MPI call, the counts; try/except rather than a context manager around the MPI call. While the call
    # blocks, the watch (if any) knows whom this rank waits for.
    def send(self, buf: np.ndarray, dest: int, tag: int = 0) -> None:
        as_buffer(buf, "send buffer")
        check_peer(dest, self.size, "dest")
        w = _watch
        t0 = time.perf_counter()
        if w is not None:
            w.waiting = ((self._world[dest],), False, time.monotonic())
        try:
            self.comm.Send([buf, buf.nbytes, self._MPI.BYTE], dest, tag)
        except self._MPI.Exception as exc:
            raise self._truncated(exc, None, dest) from exc
        finally:
            if w is not None:
                w.waiting = None
        count_time(self._chain, time.perf_counter() - t0)
        self._sent(buf)

    def recv(self, buf: np.ndarray, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> Status:
        as_buffer(buf, "receive buffer")
        src, tg = self._src_tag(source, tag)
        status = self._MPI.Status()
        w = _watch
        t0 = time.perf_counter()
        if w is not None:
            w.waiting = self._waiting_on(source)
        try:
            self.comm.Recv([buf, buf.nbytes, self._MPI.BYTE], src, tg, status)
        except self._MPI.Exception as exc:
            raise self._truncated(exc, buf, source) from exc
        finally:
            if w is not None:
                w.waiting = None
        count_time(self._chain, time.perf_counter() - t0)
        return self._received(buf, status)

    def sendrecv(self, sendbuf: np.ndarray, dest: int, recvbuf: np.ndarray, source: int,
                 sendtag: int = 0, recvtag: int = ANY_TAG) -> Status:
        as_buffer(sendbuf, "send buffer")
        as_buffer(recvbuf, "receive buffer")
        check_peer(dest, self.size, "dest")
        src, tg = self._src_tag(source, recvtag)
        BYTE = self._MPI.BYTE
        status = self._MPI.Status()
        w = _watch
        t0 = time.perf_counter()
        if w is not None:   # stuck once either partner has exited
            w.waiting = (self._world[dest],) + (() if source == ANY_SOURCE else (self._world[source],)), False, \
                time.monotonic()
        try:
            self.comm.Sendrecv([sendbuf, sendbuf.nbytes, BYTE], dest, sendtag,
                               [recvbuf, recvbuf.nbytes, BYTE], src, tg, status)
        except self._MPI.Exception as exc:
            raise self._truncated(exc, recvbuf, source) from exc
        finally:
            if w is not None:
                w.waiting = None
        count_time(self._chain, time.perf_counter() - t0)
        self._sent(sendbuf)
        return self._received(recvbuf, status)

    def isend(self, buf: np.ndarray, dest: int, tag: int = 0) -> _MPIRequest:
        as_buffer(buf, "send buffer")
        check_peer(dest, self.size, "dest")
        t0 = time.perf_counter()
        with self._truncation(None, dest):
            req = self.comm.Isend(self._bytes(buf), dest, tag)
        count_time(self._chain, time.perf_counter() - t0)
        self._sent(buf)
        return _MPIRequest(self, req, buf, is_recv=False, peer=dest)

    def irecv(self, buf: np.ndarray, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> _MPIRequest:
        as_buffer(buf, "receive buffer")
        src, tg = self._src_tag(source, tag)
        t0 = time.perf_counter()
        with self._truncation(buf, source):
            req = self.comm.Irecv(self._bytes(buf), src, tg)
        count_time(self._chain, time.perf_counter() - t0)
        return _MPIRequest(self, req, buf, is_recv=True, peer=source)

    def prepare(self, call: str, *args: Any) -> Callable[[], Any]:
        """``getattr(self, call)(*args)`` as a call without arguments, checked and set up now, once.

        For persistent plans (:mod:`mpisim.comm.plan`): ``send``, ``recv`` and ``sendrecv`` get the
        argument checks and MPI's buffer specs done here, so each later call is the MPI call, the
        received size check and the counts (the same counts as the plain call). Other calls are
        bound as they are.
        """
        if call == "send":
            buf, dest, tag = args
            as_buffer(buf, "send buffer")
            check_peer(dest, self.size, "dest")
            return self._prepared(None, 0, 0, [buf, buf.nbytes, self._MPI.BYTE], dest, tag)
        if call == "recv":
            buf, source, tag = args
            as_buffer(buf, "receive buffer")
            src, tg = self._src_tag(source, tag)
            return self._prepared(buf, src, tg)
        if call == "sendrecv":
            sendbuf, dest, recvbuf, source, sendtag, recvtag = args
            as_buffer(sendbuf, "send buffer")
            as_buffer(recvbuf, "receive buffer")
            check_peer(dest, self.size, "dest")
            src, tg = self._src_tag(source, recvtag)
            return self._prepared(recvbuf, src, tg, [sendbuf, sendbuf.nbytes, self._MPI.BYTE], dest, sendtag)
        return functools.partial(getattr(self, call), *args)

    def _prepared(self, recvbuf: np.ndarray | None, src: int, tg: int,
                  sendspec: list | None = None, dest: int = 0, sendtag: int = 0) -> Callable[[], None]:
        """The closure behind :meth:`prepare`: one Send, Recv or Sendrecv on fixed buffers."""
        MPI, comm, chain, clock, mono = self._MPI, self.comm, self._chain, time.perf_counter, time.monotonic
        BYTE, MPIException = MPI.BYTE, MPI.Exception
        status = MPI.Status()
        # whom the watch is told this call waits for: the send's destination and the receive's source
        peers = (() if sendspec is None else (self._world[dest],)) + (
            () if recvbuf is None or src == MPI.ANY_SOURCE else (self._world[src],))
        anyone = recvbuf is not None and src == MPI.ANY_SOURCE and sendspec is None
        if anyone:
            peers = self._any[0]
        blame = src if recvbuf is not None else dest
        sent = sendspec[1] if sendspec is not None else 0
        want = recvbuf.nbytes if recvbuf is not None else 0
        recvspec = [recvbuf, want, BYTE] if recvbuf is not None else None
        if recvspec is None:
            Send = comm.Send

            def run() -> None:
                w = _watch
                t0 = clock()
                if w is not None:
                    w.waiting = (peers, False, mono())
                try:
                    Send(sendspec, dest, sendtag)
                except MPIException as exc:
                    raise self._truncated(exc, None, dest) from exc
                finally:
                    if w is not None:
                        w.waiting = None
                dt = clock() - t0
                for t in chain:
                    s = t.stats
                    s.comm_time += dt
                    s.messages_sent += 1
                    s.bytes_sent += sent
            return run
        exchange = (functools.partial(comm.Sendrecv, sendspec, dest, sendtag, recvspec, src, tg, status)
                    if sendspec is not None else functools.partial(comm.Recv, recvspec, src, tg, status))

        def run() -> None:
            w = _watch
            t0 = clock()
            if w is not None:
                w.waiting = (peers, anyone, mono())
            try:
                exchange()
            except MPIException as exc:
                raise self._truncated(exc, recvbuf, blame if blame != MPI.ANY_SOURCE else ANY_SOURCE) from exc
            finally:
                if w is not None:
                    w.waiting = None
            dt = clock() - t0
            got = status.Get_count(BYTE)
            if got != want:
                raise self._wrong_size(recvbuf, status, got)
            for t in chain:
                s = t.stats
                s.comm_time += dt
                if sendspec is not None:
                    s.messages_sent += 1
                    s.bytes_sent += sent
                s.messages_received += 1
                s.bytes_received += got
        return run

    # -- beyond the protocol: MPI-only calls, for baselines and for ending a failed job -------------
    def native_allreduce(self, array: np.ndarray, out: np.ndarray) -> np.ndarray:
        """MPI's own ``MPI_Allreduce`` (sum) of ``array`` into ``out``: the baseline the hand-written
        algorithms are compared with. Its messages are MPI's and are not counted; its time is."""
        as_buffer(array, "allreduce input")
        as_buffer(out, "allreduce output")
        w = _watch
        t0 = time.perf_counter()
        if w is not None:
            w.waiting = self._waiting_all()
        try:
            with self._truncation(None):
                if out is array:
                    self.comm.Allreduce(self._MPI.IN_PLACE, out, op=self._MPI.SUM)
                else:
                    self.comm.Allreduce(array, out, op=self._MPI.SUM)
        finally:
            if w is not None:
                w.waiting = None
        count_time(self._chain, time.perf_counter() - t0)
        return out

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of wall time (the simulated transport lets its other ranks run meanwhile)."""
        time.sleep(seconds)

    def abort(self, code: int = 1) -> None:
        """End every process of the job (``MPI_Abort``) with exit status ``code``."""
        _abort(self.comm, code)


# MPI_Abort makes the launcher kill every process at once; what a process wrote to its stderr pipe just
# before may not have been forwarded yet and is then lost (about 1 job in 15 with MPICH's hydra on a busy
# machine), so the message that names the failed rank waits this long before the abort
ABORT_DELAY = 0.5


def _abort(comm: Any, code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(ABORT_DELAY)
    comm.Abort(code)


_hook_installed = False


def install_abort_hook() -> None:
    """Make an uncaught exception on any rank abort the whole MPI job, naming the rank.

    Only installed when there is more than one process: a single process exits by itself. A
    :class:`PeerLost` names the peer that is gone, in one line, and not the rank that saw it as failed.
    """
    global _hook_installed
    MPI = _mpi()
    world = MPI.COMM_WORLD
    if _hook_installed or world.Get_size() == 1:
        return

    def hook(etype, value, tb):
        rank, size = world.Get_rank(), world.Get_size()
        if isinstance(value, PeerLost):
            sys.stderr.write(f"mpisim: {value}\nmpisim: aborting the job (MPI_Abort)\n")
        else:
            text = "".join(traceback.format_exception(etype, value, tb))
            sys.stderr.write(f"mpisim: rank {rank} of {size} failed with {etype.__name__}: {value}\n{text}"
                             f"mpisim: aborting the job (MPI_Abort) because rank {rank} failed\n")
        _abort(world, 1)

    sys.excepthook = hook
    _hook_installed = True


# -- the watch: a rank that exits while others wait for it; a signal Python cannot handle inside MPI ------
TAG_EXIT = 1          # on the watch's own communicator: "this process is exiting"
WATCH_POLL = 0.1      # seconds between the watch's looks
EXIT_GRACE = 1.0      # a wait on a rank that has exited may last this long (what it sent before exiting
#                       arrives meanwhile); then it is a hang
SIGNAL_GRACE = 3.0    # a rank blocked inside MPI since before a SIGINT/SIGTERM (so Python has not run its
#                       handler) for this long after it ends the job

_watch: "_Watch | None" = None


def _world_ranks(comm: Any) -> tuple[int, ...]:
    """The COMM_WORLD rank of each rank of ``comm`` (-1 for one outside it)."""
    MPI = _mpi()
    mine, world = comm.Get_group(), MPI.COMM_WORLD.Get_group()
    try:
        ranks = mine.Translate_ranks(list(range(comm.Get_size())), world)
    finally:
        mine.Free()
        world.Free()
    return tuple(int(r) if r >= 0 else -1 for r in ranks)


class _Watch:
    """One per process under mpiexec (with ``abort_on_error``): a thread that ends the job when this rank
    cannot go on.

    * Exit notices: when a process exits (``sys.exit`` anywhere, or the end of its script; an ``atexit``
      handler, which runs before mpi4py's MPI_Finalize), it sends a notice to every other process on the
      watch's own duplicate of COMM_WORLD. Each transport call that blocks tells the watch whom it waits for
      (:attr:`waiting`: the world ranks, whether any one of them would do, and since when); a wait on a rank
      that has exited (on ANY_SOURCE: once every other rank has) that lasts ``EXIT_GRACE`` after both is a
      hang, and the watch aborts the job naming that rank. A rank that exited by ``os._exit`` or a signal
      sends nothing, but then MPICH's launcher ends the job itself.
    * Signals: Python runs a signal handler only between bytecodes of the main thread, never while it is
      blocked inside an MPI call, so a SIGINT or SIGTERM handled by Python would leave a rank blocked in MPI
      running. The watch hears every such signal through ``signal.set_wakeup_fd``; when the main thread is
      still in the call it was in before the signal ``SIGNAL_GRACE`` later, the watch prints
      :attr:`interrupt_message` and aborts with status 128 + the signal's number.
    """

    def __init__(self) -> None:
        MPI = self.MPI = _mpi()
        world = MPI.COMM_WORLD
        self.rank, self.size = world.Get_rank(), world.Get_size()
        self.comm = world.Dup()      # collective: every rank makes its first world transport together
        self.waiting: tuple | None = None        # (world ranks, any one of them?, since), by the main thread
        self.gone: dict[int, float] = {}         # world rank -> when its exit notice arrived
        self.signalled: tuple[int, float] | None = None   # the last SIGINT/SIGTERM and when it came
        self.interrupt_message: Callable[[int], str] | None = None   # set by the launcher
        self.stop = threading.Event()
        self._pair = self._wakeup()
        self.thread = threading.Thread(target=self._run, name="mpisim-watch", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def _wakeup(self) -> tuple[socket.socket, socket.socket] | None:
        """A socket pair whose write end is Python's signal wakeup fd (main thread only; not over another's)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        try:
            old = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):
            old = None
        if old is None or old != -1:      # someone else's (an event loop's): leave theirs in place
            if old is not None:
                signal.set_wakeup_fd(old)
            r.close()
            w.close()
            return None
        return r, w

    def _run(self) -> None:
        MPI = self.MPI
        status = MPI.Status()
        note = np.zeros(1, dtype=np.int64)
        wake = self._pair[0] if self._pair else None
        while not self.stop.is_set():
            if wake is not None:
                try:
                    ready = select.select([wake], [], [], WATCH_POLL)[0]
                    data = wake.recv(64) if ready else b""
                except (OSError, ValueError):   # closed at exit
                    data, wake = b"", None
                for signum in data:
                    if signum in (signal.SIGINT, signal.SIGTERM):
                        self.signalled = (signum, time.monotonic())
            else:
                self.stop.wait(WATCH_POLL)
            if self.stop.is_set():
                return
            try:
                while self.comm.Iprobe(MPI.ANY_SOURCE, TAG_EXIT, status):
                    self.comm.Recv(note, status.Get_source(), TAG_EXIT)
                    self.gone.setdefault(status.Get_source(), time.monotonic())
            except MPI.Exception:
                return               # MPI is being torn down: nothing left to watch
            self._check()

    def _check(self) -> None:
        now, w = time.monotonic(), self.waiting
        if w is None:
            return
        peers, any_of, since = w
        sig = self.signalled
        if sig is not None and since <= sig[1] and now - sig[1] > SIGNAL_GRACE and self.waiting is w:
            name = signal.Signals(sig[0]).name
            default = (f"mpisim: rank {self.rank} of {self.size} interrupted by {name} while blocked in MPI; "
                       f"ending the job")
            try:
                text = self.interrupt_message(sig[0]) if self.interrupt_message else default
            except Exception:     # noqa: BLE001 - the job must end whatever the message does
                text = default
            self._end(text, 128 + sig[0])
        gone = sorted({p for p in peers if p in self.gone})
        if not gone or (any_of and len(gone) < len(set(peers))):
            return
        if now - max(since, *(self.gone[p] for p in gone)) <= EXIT_GRACE or self.waiting is not w:
            return
        who = f"rank {gone[0]}" if len(gone) == 1 else "ranks " + ", ".join(map(str, gone))
        self._end(f"mpisim: {who} of {self.size} exited before the run finished, while rank {self.rank} was "
                  f"waiting for {'it' if len(gone) == 1 else 'them'} ({now - since:.1f} s); aborting the job "
                  f"(MPI_Abort)", 1)

    def _end(self, text: str, code: int) -> None:
        sys.stderr.write(text + "\n")
        _abort(self.MPI.COMM_WORLD, code)

    def close(self) -> None:
        """At exit (before MPI_Finalize): stop the thread and tell every other process this one is gone."""
        if self.stop.is_set():
            return
        self.stop.set()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=2 * WATCH_POLL + 1)
        if self._pair:
            with contextlib.suppress(ValueError, OSError):
                old = signal.set_wakeup_fd(-1)
                if old != self._pair[1].fileno():   # another's since: put it back
                    signal.set_wakeup_fd(old)
            for sock in self._pair:
                sock.close()
        MPI = self.MPI
        if MPI.Is_finalized():
            return
        note = np.zeros(1, dtype=np.int64)
        with contextlib.suppress(MPI.Exception):
            MPI.Request.Waitall([self.comm.Isend(note, r, TAG_EXIT) for r in range(self.size) if r != self.rank])


def _start_watch() -> None:
    """Start the process's watch (once; only with several processes and MPI_THREAD_MULTIPLE)."""
    global _watch
    MPI = _mpi()
    if _watch is None and MPI.COMM_WORLD.Get_size() > 1 and MPI.Query_thread() == MPI.THREAD_MULTIPLE:
        _watch = _Watch()


def watching() -> bool:
    """Whether this process's watch runs (so a rank blocked inside MPI still ends on SIGINT/SIGTERM)."""
    return _watch is not None


def set_interrupt_message(fn: Callable[[int], str] | None) -> None:
    """What the watch prints (given the signal's number) when it ends a job blocked in MPI after a signal."""
    if _watch is not None:
        _watch.interrupt_message = fn


def mpi_transport(comm: Any = None, *, abort_on_error: bool = True) -> MPITransport:
    """The MPI transport over a duplicate of ``comm`` (``MPI.COMM_WORLD`` when None).

    With ``abort_on_error`` (the default) an uncaught exception on any rank aborts the job, and (for the
    world) the process's watch starts: a rank that exits while others wait for it, or a SIGINT/SIGTERM that
    Python cannot handle inside MPI, ends the job (see :class:`_Watch`).
    """
    MPI = _mpi()
    base = MPI.COMM_WORLD if comm is None else comm
    if abort_on_error:
        install_abort_hook()
        if comm is None:
            _start_watch()
    return MPITransport(base.Dup())
