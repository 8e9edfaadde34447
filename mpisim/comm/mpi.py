"""The MPI transport: mpi4py's buffer calls over a duplicated communicator.

Only the uppercase, buffer-based calls are used (``Send``, ``Recv``, ``Sendrecv``, ``Isend``,
``Irecv``): numpy arrays go to the wire as they are, with no pickling. The communicator is a
duplicate of ``COMM_WORLD`` (or of the one given), so mpisim's messages never match a user's.

:func:`mpi_transport` also installs an exception hook (as ``python -m mpi4py`` does): an
uncaught exception on any rank prints the rank and the traceback, then calls ``MPI_Abort`` so
the whole job ends with a non-zero exit instead of the other ranks waiting forever.

``transport.split(color, key=0)`` is ``Comm_split`` on the transport's communicator (None for
MPI_UNDEFINED), wrapped in an MPITransport whose counters also roll up into its parent's (see
:mod:`mpisim.comm.group`). MPI's own messages for the split are not counted, and neither is its time.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import time
import traceback
from typing import Any, Callable

import numpy as np

from .group import check_split, count_received, count_reduced, count_sent, count_time
from .transport import ANY_SOURCE, ANY_TAG, CommError, Stats, Status, as_buffer, check_peer

__all__ = ["MPITransport", "install_abort_hook", "mpi_transport"]


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:  # pragma: no cover - mpi4py is a hard dependency
        raise ImportError("the MPI transport needs mpi4py: pip install mpi4py mpich") from exc
    return MPI


class _MPIRequest:
    """Wraps an mpi4py request; counts the receive when it completes."""

    __slots__ = ("transport", "req", "buf", "is_recv", "status", "result")

    def __init__(self, transport: "MPITransport", req: Any, buf: np.ndarray, is_recv: bool):
        self.transport, self.req, self.buf, self.is_recv = transport, req, buf, is_recv
        self.status = _mpi().Status() if is_recv else None
        self.result: Status | None = None

    def _complete(self) -> Status | None:
        if self.is_recv and self.result is None:
            self.result = self.transport._received(self.buf, self.status)
        return self.result

    def wait(self) -> Status | None:
        t0 = time.perf_counter()
        if self.req is not None:
            with self.transport._truncation(self.buf):
                self.req.Wait(self.status)
            self.req = None
        count_time(self.transport._chain, time.perf_counter() - t0)
        return self._complete()

    def test(self) -> bool:
        if self.req is None:
            return True
        with self.transport._truncation(self.buf):
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
        comm = self.comm.Split(MPI.UNDEFINED if color is None else int(color), int(key))
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

    def _truncated(self, exc: Exception, buf: np.ndarray) -> Exception:
        """MPI's 'message truncated' as the CommError the protocol promises; any other error as it is."""
        if not isinstance(exc, self._MPI.Exception) or exc.Get_error_class() != self._MPI.ERR_TRUNCATE:
            return exc
        return CommError(f"rank {self.rank}: an incoming message is larger than the receive "
                         f"buffer ({buf.nbytes} bytes)")

    @contextlib.contextmanager
    def _truncation(self, buf: np.ndarray):
        """Turn MPI's 'message truncated' into the CommError the protocol promises."""
        try:
            yield
        except self._MPI.Exception as exc:
            err = self._truncated(exc, buf)
            if err is exc:
                raise
            raise err from exc

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
    # MPI call, the counts; try/except rather than a context manager around the MPI call.
    def send(self, buf: np.ndarray, dest: int, tag: int = 0) -> None:
        as_buffer(buf, "send buffer")
        check_peer(dest, self.size, "dest")
        t0 = time.perf_counter()
        self.comm.Send([buf, buf.nbytes, self._MPI.BYTE], dest, tag)
        count_time(self._chain, time.perf_counter() - t0)
        self._sent(buf)

    def recv(self, buf: np.ndarray, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> Status:
        as_buffer(buf, "receive buffer")
        src, tg = self._src_tag(source, tag)
        status = self._MPI.Status()
        t0 = time.perf_counter()
        try:
            self.comm.Recv([buf, buf.nbytes, self._MPI.BYTE], src, tg, status)
        except self._MPI.Exception as exc:
            raise self._truncated(exc, buf) from exc
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
        t0 = time.perf_counter()
        try:
            self.comm.Sendrecv([sendbuf, sendbuf.nbytes, BYTE], dest, sendtag,
                               [recvbuf, recvbuf.nbytes, BYTE], src, tg, status)
        except self._MPI.Exception as exc:
            raise self._truncated(exc, recvbuf) from exc
        count_time(self._chain, time.perf_counter() - t0)
        self._sent(sendbuf)
        return self._received(recvbuf, status)

    def isend(self, buf: np.ndarray, dest: int, tag: int = 0) -> _MPIRequest:
        as_buffer(buf, "send buffer")
        check_peer(dest, self.size, "dest")
        t0 = time.perf_counter()
        req = self.comm.Isend(self._bytes(buf), dest, tag)
        count_time(self._chain, time.perf_counter() - t0)
        self._sent(buf)
        return _MPIRequest(self, req, buf, is_recv=False)

    def irecv(self, buf: np.ndarray, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> _MPIRequest:
        as_buffer(buf, "receive buffer")
        src, tg = self._src_tag(source, tag)
        t0 = time.perf_counter()
        req = self.comm.Irecv(self._bytes(buf), src, tg)
        count_time(self._chain, time.perf_counter() - t0)
        return _MPIRequest(self, req, buf, is_recv=True)

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
        MPI, comm, chain, clock = self._MPI, self.comm, self._chain, time.perf_counter
        BYTE, MPIException = MPI.BYTE, MPI.Exception
        status = MPI.Status()
        sent = sendspec[1] if sendspec is not None else 0
        want = recvbuf.nbytes if recvbuf is not None else 0
        recvspec = [recvbuf, want, BYTE] if recvbuf is not None else None
        if recvspec is None:
            Send = comm.Send

            def run() -> None:
                t0 = clock()
                Send(sendspec, dest, sendtag)
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
            t0 = clock()
            try:
                exchange()
            except MPIException as exc:
                raise self._truncated(exc, recvbuf) from exc
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
        t0 = time.perf_counter()
        if out is array:
            self.comm.Allreduce(self._MPI.IN_PLACE, out, op=self._MPI.SUM)
        else:
            self.comm.Allreduce(array, out, op=self._MPI.SUM)
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

    Only installed when there is more than one process: a single process exits by itself.
    """
    global _hook_installed
    MPI = _mpi()
    world = MPI.COMM_WORLD
    if _hook_installed or world.Get_size() == 1:
        return

    def hook(etype, value, tb):
        rank, size = world.Get_rank(), world.Get_size()
        text = "".join(traceback.format_exception(etype, value, tb))
        sys.stderr.write(f"mpisim: rank {rank} of {size} failed with {etype.__name__}: {value}\n{text}"
                         f"mpisim: aborting the job (MPI_Abort) because rank {rank} failed\n")
        _abort(world, 1)

    sys.excepthook = hook
    _hook_installed = True


def mpi_transport(comm: Any = None, *, abort_on_error: bool = True) -> MPITransport:
    """The MPI transport over a duplicate of ``comm`` (``MPI.COMM_WORLD`` when None).

    With ``abort_on_error`` (the default) an uncaught exception on any rank aborts the job.
    """
    MPI = _mpi()
    base = MPI.COMM_WORLD if comm is None else comm
    if abort_on_error:
        install_abort_hook()
    return MPITransport(base.Dup())
