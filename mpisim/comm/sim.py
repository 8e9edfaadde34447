"""The simulated transport: N ranks as N threads of one process.

Each rank is a thread; messages travel through per-pair queues with MPI's semantics: a send
copies the buffer before it returns (the sender may reuse it at once), messages from one sender
with one tag arrive in order, and receives posted first are matched first. Matching follows
MPI's two lists: a send first looks for a posted receive, otherwise the message waits in the
receiver's unexpected queue for the sender.

Failure is never a hang: an exception on any rank aborts every other rank (their blocked
receives raise) and :func:`run_simulated` re-raises it as :class:`RankError` naming the rank;
when every live rank is blocked in a receive nobody can satisfy, that is a deadlock and is
reported at once with what each rank waits for; a rank blocked longer than ``timeout`` seconds
(another rank stuck computing, say) is reported as a :class:`CommTimeout`.

With a :class:`~mpisim.comm.network.Network` (``SimCluster(n, network=...)``) every rank also keeps
a virtual clock ``transport.clock`` in ticks (femtoseconds; ``transport.vtime`` in seconds): a
send starting at t keeps the sender busy until t + alpha + n*beta and the message arrives then,
a receive completes at max(own clock, arrival), ``transport.reduced(n)`` charges n*gamma. The
clocks depend only on the schedule of messages, not on how the threads happen to run, with two
exceptions: ``compute=wall`` (measured time varies), and link contention with ANY_SOURCE
receives (the link serves messages in the order the receiver matches them, which is real time).

Groups (``transport.split(color, key)``, see :mod:`mpisim.comm.group`) are :class:`SimGroup`
transports on the same threads. Every message and every posted receive carries a context id
(0 for the world, a new one per group), and matching, ANY_SOURCE and ANY_TAG included, happens
only within one context, so a group's messages never meet its parent's or another group's; a
receive's Status names the sender's rank in the group. A group has no clock of its own: its
``clock``, ``network``, ``compute`` and ``reduced`` act on the rank's one clock, so time spent in
a group shows on the rank. Its counters roll up into its parent's. The logical clock
``stats.rounds`` is kept per level: a message carries its sender's rounds of the group and of
each ancestor, and the receiver takes the maximum level by level (both ends of a message share
the chain of ancestors). Deadlock, failure and timeout detection see every rank's receives,
whatever group they are in, and name world ranks and the group context.
"""
from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any, Callable

import numpy as np

from .allgather import allgather
from .group import check_split, count_received, count_reduced, count_sent, count_time, group_of, uncounted
from .network import TICK, Network, parse_network
from .transport import (
    ANY_SOURCE,
    ANY_TAG,
    CommError,
    Stats,
    Status,
    as_buffer,
    check_peer,
)

__all__ = ["CommTimeout", "DeadlockError", "RankError", "SimCluster", "SimGroup", "SimTransport", "run_simulated"]

DEFAULT_TIMEOUT = float(os.environ.get("MPISIM_SIM_TIMEOUT", "60"))
ABORT_GRACE = 2.0  # seconds a failed run waits for the other ranks to stop


class RankError(RuntimeError):
    """An exception raised on one simulated rank; ``rank`` and ``exc`` say which and what."""

    def __init__(self, rank: int, size: int, exc: BaseException):
        super().__init__(f"simulated rank {rank} of {size} raised {type(exc).__name__}: {exc}")
        self.rank, self.size, self.exc = rank, size, exc


class DeadlockError(CommError):
    """Every live rank is blocked in a receive that no rank can satisfy."""


class CommTimeout(CommError, TimeoutError):
    """A rank stayed blocked in a receive for longer than the cluster's timeout."""


class _Aborted(BaseException):
    """Raised inside a rank's blocked call when another rank failed; never reported.

    A BaseException, so user code that catches Exception does not swallow the abort.
    """


def _payload(buf: np.ndarray) -> np.ndarray:
    return buf.reshape(-1).view(np.uint8)


def _matches(want_src: int, want_tag: int, src: int, tag: int) -> bool:
    return (want_src == ANY_SOURCE or want_src == src) and (want_tag == ANY_TAG or want_tag == tag)


class _Recv:
    """A posted receive (the request behind irecv and recv)."""

    __slots__ = ("owner", "ctx", "buf", "source", "tag", "done", "data", "src", "msg_tag", "stamp", "copied",
                 "status")

    def __init__(self, owner: "SimTransport", buf: np.ndarray, source: int, tag: int):
        self.owner, self.buf, self.source, self.tag = owner, buf, source, tag
        self.ctx = owner.ctx  # matches only messages of the owner's group
        self.done = False
        self.data: np.ndarray | None = None  # set when the message is matched but not yet copied
        self.src = self.msg_tag = -1  # the sender's rank in the group, and the tag
        self.stamp: tuple[tuple[int, ...], int] = ((), 0)  # the sender's (rounds per level, virtual send time)
        self.copied = False  # the sender wrote straight into buf
        self.status: Status | None = None  # set once the receive is complete and counted

    def describe(self) -> str:
        """'rank 2 (tag 5, 16 bytes)': what this receive waits for, in world ranks, for error messages."""
        t = self.owner
        src = "any rank" if self.source == ANY_SOURCE else f"rank {t._wranks[self.source]}"
        tag = "any tag" if self.tag == ANY_TAG else f"tag {self.tag}"
        where = ""
        if self.ctx:
            where = f"; in group context {self.ctx} of world ranks {list(t._wranks)}"
            if self.source != ANY_SOURCE:
                where += f", its rank {self.source}"
        return f"{src} ({tag}, {self.buf.nbytes} bytes{where})"

    def test(self) -> bool:
        """True once the message has arrived; the buffer is then filled (as by ``wait``)."""
        if self.status is None and self.done:
            self.owner._charge()
            self.owner._finish(self)
            self.owner._mark()
        return self.status is not None

    def wait(self) -> Status:
        return self.status if self.status is not None else self.owner._wait(self)


class _Sent:
    """An isend: the payload was copied when it was posted, so it is already complete."""

    def test(self) -> bool:
        return True

    def wait(self) -> None:
        return None


_SENT = _Sent()


class SimCluster:
    """Shared state of N simulated ranks: queues, posted receives, failure and deadlock watch."""

    def __init__(self, size: int, *, timeout: float | None = None, network: Network | str | None = None):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise TypeError(f"the number of simulated ranks must be an int, got {type(size).__name__}")
        if size < 1:
            raise ValueError(f"a simulated cluster needs at least 1 rank, got {size!r}")
        self.size = int(size)
        self.timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
        self.network = None if network is None else parse_network(network)
        self.wall = self.network is not None and self.network.compute == "wall"
        self.lock = threading.Lock()
        self.cond = [threading.Condition(self.lock) for _ in range(self.size)]
        # unexpected[dest][src]: messages (tag, payload, stamp, seq) that arrived before their
        # receive; seq orders arrivals from different senders for ANY_SOURCE
        self.unexpected = [[collections.deque() for _ in range(self.size)] for _ in range(self.size)]
        self.seq = 0
        self.posted: list[list[_Recv]] = [[] for _ in range(self.size)]
        self.waiting: dict[int, _Recv] = {}
        self.finished: set[int] = set()
        self.failed: tuple[int, BaseException] | None = None
        self.contexts: dict[tuple, int] = {}  # a group's (parent context, split number, color) -> its context
        self.transports = [SimTransport(self, r) for r in range(self.size)]
        self._ran = False

    def context(self, parent: int, split: int, color: int) -> int:
        """The context id of group ``color`` of the ``split``-th split of context ``parent``.

        Every member asks with the same triple and gets the same id; any other group gets
        another (0 is the world's).
        """
        with self.lock:
            return self.contexts.setdefault((parent, split, color), len(self.contexts) + 1)

    # -- failure handling (lock held) -------------------------------------------------------
    def _abort(self, rank: int, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = (rank, exc)
        for c in self.cond:
            c.notify_all()

    def _check_deadlock(self) -> None:
        if self.waiting and len(self.waiting) + len(self.finished) == self.size:
            parts = []
            for r in sorted(self.waiting):
                parts.append(f"rank {r} waits for {self.waiting[r].describe()}")
            if self.finished:
                parts.append(f"ranks {sorted(self.finished)} have returned")
            exc = DeadlockError("deadlock among simulated ranks: " + "; ".join(parts))
            self._abort(min(self.waiting), exc)
            raise exc

    def fail(self, rank: int, exc: BaseException) -> None:
        with self.lock:
            self._abort(rank, exc)

    def finish(self, rank: int) -> None:
        with self.lock:
            self.finished.add(rank)
            if self.failed is None:
                try:
                    self._check_deadlock()
                except DeadlockError:
                    pass  # recorded in self.failed; the waiting ranks are woken and abort

    # -- running ------------------------------------------------------------------------------
    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(transport, *args, **kwargs)`` on every rank; return the per-rank results.

        A cluster runs once (its queues, counters and failure state belong to that run).
        """
        if self._ran:
            raise RuntimeError("a SimCluster runs once; create a new one (or call run_simulated)")
        self._ran = True
        results: list[Any] = [None] * self.size

        def body(rank: int) -> None:
            t = self.transports[rank]
            try:
                t._owner = threading.get_ident()
                results[rank] = fn(t, *args, **kwargs)
                t._charge()
            except _Aborted:
                pass
            except BaseException as exc:  # noqa: BLE001 - any failure must stop the others
                self.fail(rank, exc)
            finally:
                self.finish(rank)

        if self.size == 1:
            body(0)
        else:
            threads = [threading.Thread(target=body, args=(r,), name=f"mpisim-rank-{r}", daemon=True)
                       for r in range(self.size)]
            for t in threads:
                t.start()
            grace_end = None
            for t in threads:
                while t.is_alive():
                    t.join(0.05)
                    if self.failed is not None:
                        # Blocked ranks wake and abort at once; a rank busy computing cannot be
                        # stopped, so it is left behind (daemon thread) after a short grace.
                        grace_end = grace_end or time.monotonic() + ABORT_GRACE
                        if time.monotonic() > grace_end:
                            break
        if self.failed is not None:
            rank, exc = self.failed
            if isinstance(exc, (DeadlockError, CommTimeout)):  # about the cluster, not one rank
                raise exc
            raise RankError(rank, self.size, exc) from exc
        return results


class SimTransport:
    """One simulated rank's endpoint (see :class:`mpisim.comm.transport.Transport`)."""

    ctx = 0        # the world's context; a group has its own
    parent = None  # the world has none; a group's is the transport it was split from

    def __init__(self, cluster: SimCluster, rank: int):
        self.cluster = cluster
        self.rank = rank
        self.size = cluster.size
        self.members = tuple(range(cluster.size))  # world ranks are their own parent ranks
        self.stats = Stats()
        self.network = cluster.network
        self.clock = 0        # virtual time in ticks (stays 0 without a network model)
        self.rx_free = 0      # with link contention: when this rank's incoming link is next free
        self._cpu: float | None = None   # compute=wall: the owner thread's CPU time at its last transport call
        self._owner: int | None = None
        self._world = self              # the rank's world transport, which holds the clock
        self._wranks = self.members     # the world rank of each rank of this transport
        self._chain: tuple[SimTransport, ...] = (self,)  # this transport and its ancestors: counts go to all
        self._splits = 0                # splits so far (the same count on every rank): names the contexts

    def reset_stats(self) -> None:
        """Zero the counters (the virtual clock goes on: it orders messages between ranks)."""
        self.stats = Stats()

    @property
    def vtime(self) -> float:
        """This rank's virtual time in seconds (0 without a network model)."""
        return self.clock * TICK

    def split(self, color: int | None, key: int = 0) -> SimGroup | None:
        """MPI's Comm_split: the group of the ranks that pass the same ``color`` (see :mod:`mpisim.comm.group`).

        Collective over every rank of this transport. Ranks are ordered in the group by (key,
        rank); ``color=None`` takes part and returns None. The (color, key) exchange is an
        allgather over this transport whose messages are not counted (as MPI's are not), but it
        does advance the virtual clock, as any communication does.
        """
        check_split(color, key)
        mine = np.array([-1 if color is None else color, key], dtype=np.int64)
        with uncounted(self):
            table = allgather(self, mine)
        self._splits += 1
        members = group_of([(None if c < 0 else c, k) for c, k in table.tolist()], self.rank)
        if members is None:
            return None
        return SimGroup(self, members, self.cluster.context(self.ctx, self._splits, int(color)))

    # -- virtual time of local work -------------------------------------------------------------
    def _mark(self) -> None:
        if self.cluster.wall and threading.get_ident() == self._owner:
            self._cpu = time.thread_time()

    def _charge(self) -> None:
        """With compute=wall: add the rank thread's CPU time since its last transport call to the clock
        (from its first call on: set-up before it is not charged; other threads' work is not either)."""
        if self.cluster.wall and self._cpu is not None and threading.get_ident() == self._owner:
            now = time.thread_time()
            self.clock += round((now - self._cpu) / TICK)
            self._cpu = now

    def reduced(self, nbytes: int) -> None:
        """Count a reduction over ``nbytes`` bytes of vector; the model charges nbytes*gamma."""
        count_reduced(self._chain, nbytes)
        if self.network is not None and not self.cluster.wall:
            self.clock += nbytes * self.network.gamma

    def compute(self, flops: float) -> None:
        """Declare ``flops`` of local work; charged at the model's rate with compute=RATE."""
        if flops < 0:
            raise ValueError(f"compute: flops must be >= 0, got {flops}")
        if self.network is not None and self.network.compute == "rate":
            self.clock += round(flops / self.network.flops / TICK)

    def __repr__(self) -> str:
        return f"SimTransport(rank={self.rank}, size={self.size})"

    # -- sending ------------------------------------------------------------------------------
    def _check_send(self, buf: np.ndarray, dest: int, tag: int) -> None:
        as_buffer(buf, "send buffer")
        check_peer(dest, self.size, "dest")
        if tag < 0:
            raise ValueError(f"send tag must be >= 0, got {tag}")

    def _post_send(self, buf: np.ndarray, dest: int, tag: int) -> None:
        self._check_send(buf, dest, tag)
        cl = self.cluster
        data = _payload(buf)
        nbytes = data.nbytes
        for t in self._chain:  # one round on every level's logical clock
            t.stats.rounds += 1
        stamp = (tuple(t.stats.rounds for t in self._chain), self.clock)
        if self.network is not None:
            self.clock += self.network.message(nbytes)  # the port is busy until the message is out
        wdest, ctx = self._wranks[dest], self.ctx
        direct: _Recv | None = None
        with cl.lock:
            if cl.failed is not None:
                raise _Aborted()
            for i, r in enumerate(cl.posted[wdest]):
                if r.ctx == ctx and _matches(r.source, r.tag, self.rank, tag):
                    direct = cl.posted[wdest].pop(i)
                    break
            if direct is None:
                cl.unexpected[wdest][self._world.rank].append((ctx, tag, self.rank, data.copy(), stamp, cl.seq))
                cl.seq += 1
        if direct is not None:
            if direct.buf.nbytes == nbytes:
                _payload(direct.buf)[...] = data
                direct.copied = True
            else:
                direct.data = data.copy()  # the receiver reports the size mismatch
            with cl.lock:
                direct.src, direct.msg_tag, direct.stamp, direct.done = self.rank, tag, stamp, True
                cl.waiting.pop(wdest, None)
                cl.cond[wdest].notify_all()
        count_sent(self._chain, nbytes)

    def send(self, buf: np.ndarray, dest: int, tag: int = 0) -> None:
        t0 = time.perf_counter()
        self._charge()
        self._post_send(buf, dest, tag)
        self._mark()
        count_time(self._chain, time.perf_counter() - t0)

    def isend(self, buf: np.ndarray, dest: int, tag: int = 0) -> _Sent:
        self.send(buf, dest, tag)
        return _SENT

    # -- receiving ----------------------------------------------------------------------------
    def irecv(self, buf: np.ndarray, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> _Recv:
        as_buffer(buf, "receive buffer")
        check_peer(source, self.size, "source", allow_any=True)
        t0 = time.perf_counter()
        self._charge()
        req = _Recv(self, buf, source, tag)
        cl = self.cluster
        with cl.lock:
            if cl.failed is not None:
                raise _Aborted()
            found = self._take_unexpected(source, tag)
            if found is None:
                cl.posted[self._world.rank].append(req)
            else:
                req.msg_tag, req.src, req.data, req.stamp = found
                req.done = True
        self._mark()
        count_time(self._chain, time.perf_counter() - t0)
        return req

    def _take_unexpected(self, source: int, tag: int) -> tuple | None:
        """Remove the earliest matching unexpected message of this context; return its (tag, src, payload, stamp)."""
        box = self.cluster.unexpected[self._world.rank]
        ctx = self.ctx
        best = None
        for src in (range(self.size) if source == ANY_SOURCE else (source,)):
            queue = box[self._wranks[src]]
            for i, msg in enumerate(queue):  # msg: (ctx, tag, src in the group, payload, stamp, seq)
                if msg[0] == ctx and (tag == ANY_TAG or msg[1] == tag):
                    if best is None or msg[5] < best[2]:
                        best = (queue, i, msg[5])
                    break
        if best is None:
            return None
        queue, i, _ = best
        msg = queue[i]
        del queue[i]
        return msg[1:5]

    def _wait(self, req: _Recv) -> Status:
        cl = self.cluster
        me = self._world.rank  # the cluster's lists and the deadlock watch are in world ranks
        t0 = time.perf_counter()
        self._charge()
        with cl.lock:
            deadline = time.monotonic() + cl.timeout
            while not req.done:
                if cl.failed is not None:
                    raise _Aborted()
                cl.waiting[me] = req
                cl._check_deadlock()
                left = deadline - time.monotonic()
                if left <= 0:
                    exc = CommTimeout(f"simulated rank {me} blocked for {cl.timeout:g} s "
                                      f"waiting for a message from {req.describe()}")
                    cl.waiting.pop(me, None)
                    cl._abort(me, exc)
                    raise exc
                cl.cond[me].wait(left)
            cl.waiting.pop(me, None)
        status = self._finish(req)
        self._mark()
        count_time(self._chain, time.perf_counter() - t0)
        return status

    def _finish(self, req: _Recv) -> Status:
        """Copy a matched message into the receive buffer (if the sender did not), count it."""
        if not req.copied:
            nbytes = req.data.nbytes
            if nbytes != req.buf.nbytes:
                raise CommError(f"rank {self._world.rank}: message from rank {self._wranks[req.src]} "
                                f"(tag {req.msg_tag}) has {nbytes} bytes but the receive buffer holds {req.buf.nbytes}")
            _payload(req.buf)[...] = req.data
            req.data = None
            req.copied = True
        count_received(self._chain, req.buf.nbytes)
        rounds, sent_at = req.stamp
        for t, r in zip(self._chain, rounds):  # sender and receiver share the chain of ancestors
            t.stats.rounds = max(t.stats.rounds, r)
        net = self.network
        if net is not None:
            if net.contention:  # the incoming link carries one message at a time
                arrival = max(sent_at, self.rx_free) + net.message(req.buf.nbytes)
                self.rx_free = arrival
            else:
                arrival = sent_at + net.message(req.buf.nbytes)
            self.clock = max(self.clock, arrival)
        req.status = Status(req.src, req.msg_tag, req.buf.nbytes)
        return req.status

    def recv(self, buf: np.ndarray, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> Status:
        return self.irecv(buf, source, tag).wait()

    def sendrecv(self, sendbuf: np.ndarray, dest: int, recvbuf: np.ndarray, source: int,
                 sendtag: int = 0, recvtag: int = ANY_TAG) -> Status:
        self._check_send(sendbuf, dest, sendtag)  # before posting: never leave a receive behind
        req = self.irecv(recvbuf, source, recvtag)
        self.send(sendbuf, dest, sendtag)
        return req.wait()


class SimGroup(SimTransport):
    """A group's endpoint on one simulated rank, made by :meth:`SimTransport.split`.

    The same calls as a world transport, in group ranks and in the group's own context. State
    that belongs to the rank, not to a group (the virtual clock, the incoming link, the CPU
    time of compute=wall), is the world transport's.
    """

    def __init__(self, parent: SimTransport, members: tuple[int, ...], ctx: int):
        self.cluster = parent.cluster
        self.parent = parent
        self.members = members  # parent ranks of group ranks 0..size-1
        self.rank = members.index(parent.rank)
        self.size = len(members)
        self.ctx = ctx
        self.stats = Stats()
        self.network = parent.network
        self._world = parent._world
        self._wranks = tuple(parent._wranks[m] for m in members)
        self._chain = (self, *parent._chain)
        self._splits = 0

    @property
    def clock(self) -> int:
        """The rank's one virtual clock: time spent in the group is time on the rank."""
        return self._world.clock

    @clock.setter
    def clock(self, ticks: int) -> None:
        self._world.clock = ticks

    @property
    def rx_free(self) -> int:
        return self._world.rx_free

    @rx_free.setter
    def rx_free(self, ticks: int) -> None:
        self._world.rx_free = ticks

    def _mark(self) -> None:
        self._world._mark()

    def _charge(self) -> None:
        self._world._charge()

    def __repr__(self) -> str:
        return (f"SimGroup(rank={self.rank}, size={self.size}, world rank={self._world.rank}, "
                f"context={self.ctx})")


def run_simulated(n: int, fn: Callable[..., Any], *args: Any, network: Network | str | None = None,
                  **kwargs: Any) -> list[Any]:
    """Run ``fn(transport, *args, **kwargs)`` on ``n`` simulated ranks; return per-rank results.

    ``network`` (a :class:`~mpisim.comm.network.Network` or a spec such as ``"10gbe"``) turns
    the virtual clocks on. An exception on a rank is re-raised as :class:`RankError` (``.rank``,
    ``.exc``); a deadlock as :class:`DeadlockError`; a receive blocked for ``MPISIM_SIM_TIMEOUT``
    seconds (default 60) as :class:`CommTimeout`. Use :class:`SimCluster` to set the timeout.
    """
    return SimCluster(n, network=network).run(fn, *args, **kwargs)
