"""The simulated transport: N ranks as N cooperative tasks (greenlets) of one thread.

Each rank is a greenlet; it runs until it blocks in a receive (or sleeps, or polls a request that is
not complete), and then the scheduler runs the next rank that can go on, in a fixed first-in,
first-out order. So a switch between ranks costs about a microsecond instead of an OS thread's hand-over,
thousands of ranks fit in memory (no per-pair structures: a rank keeps its posted receives and, per
sender with something pending, its unexpected messages), and a run's schedule, and with it every virtual
clock, is the same run to run, ANY_SOURCE and link contention included. The collectives stay the same
blocking code they are under MPI.

Messages have MPI's semantics: a send copies the buffer before it returns (the sender may reuse it
at once), messages from one sender with one tag arrive in order, and receives posted first are
matched first. Matching follows MPI's two lists: a send first looks for a posted receive, otherwise
the message waits in the receiver's unexpected queue for the sender.

Failure is never a hang: an exception on any rank aborts every other rank (their blocked
receives raise) and :func:`run_simulated` re-raises it as :class:`RankError` naming the rank;
when every live rank is blocked in a receive nobody can satisfy, that is a deadlock and is
reported at once with what each rank waits for; a rank blocked longer than ``timeout`` seconds
(another rank stuck computing, say) is reported as a :class:`CommTimeout` (a watchdog on the
calling thread sees it even when a rank never returns to the scheduler).

With a :class:`~mpisim.comm.network.Network` (``SimCluster(n, network=...)``) every rank also keeps
a virtual clock ``transport.clock`` in ticks (femtoseconds; ``transport.vtime`` in seconds): a
send starting at t keeps the sender busy until t + alpha + n*beta (the link's, on a topology) and the
message arrives then, or later when its links are busy (``contention``); a receive completes at
max(own clock, arrival), ``transport.reduced(n)`` charges n*gamma. The clocks depend only on the
schedule, which is deterministic, except with ``compute=wall`` (measured CPU time varies).

Groups (``transport.split(color, key)``, see :mod:`mpisim.comm.group`) are :class:`SimGroup`
transports on the same ranks. Every message and every posted receive carries a context id
(0 for the world, a new one per group), and matching, ANY_SOURCE and ANY_TAG included, happens
only within one context, so a group's messages never meet its parent's or another group's; a
receive's Status names the sender's rank in the group. A group has no clock of its own: its
``clock``, ``network``, ``compute`` and ``reduced`` act on the rank's one clock, so time spent in
a group shows on the rank. Its counters roll up into its parent's. The logical clock
``stats.rounds`` is kept per level: a message carries its sender's rounds of the group and of
each ancestor, and the receiver takes the maximum level by level (both ends of a message share
the chain of ancestors). Deadlock, failure and timeout detection see every rank's receives,
whatever group they are in, and name world ranks and the group context.

Rank code must not block the thread for long outside the transport (``time.sleep`` stops every rank):
``transport.sleep(s)`` lets the others run meanwhile. Another OS thread must not call a simulated
transport (``transport.cooperative`` is True: run such work inline).
"""
from __future__ import annotations

import collections
import heapq
import os
import threading
import time
from typing import Any, Callable

import numpy as np
from greenlet import greenlet, getcurrent

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

__all__ = ["CommTimeout", "DeadlockError", "RankError", "SimCluster", "SimGroup", "SimTransport", "memory_estimate",
           "run_simulated"]

DEFAULT_TIMEOUT = float(os.environ.get("MPISIM_SIM_TIMEOUT", "60"))
ABORT_GRACE = 2.0  # seconds a failed run waits for the other ranks to stop
WATCH = 0.05       # seconds between the watchdog's looks
RANK_BYTES = 24 * 1024  # memory of one idle simulated rank (its transport, counters and greenlet), measured


def _available_memory() -> int | None:
    """Bytes of memory available to this process now (Linux: MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_estimate(size: int, rank_bytes: int = 0) -> int:
    """Bytes ``size`` simulated ranks need: the cluster's own ``RANK_BYTES`` each plus ``rank_bytes`` of data each."""
    return int(size) * (RANK_BYTES + max(0, int(rank_bytes)))


def _gib(n: float) -> str:
    """'3.2 GiB', '24 KiB': a byte count for a message."""
    for unit, f in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= f:
            return f"{n / f:,.3g} {unit}" if n < 1000 * f or unit != "TiB" else f"{n / f:,.0f} {unit}"
    return f"{n:.0f} B"


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


class _Recv:
    """A posted receive (the request behind irecv and recv)."""

    __slots__ = ("owner", "ctx", "buf", "source", "tag", "done", "data", "src", "wsrc", "msg_tag", "stamp",
                 "copied", "status")

    def __init__(self, owner: "SimTransport", buf: np.ndarray, source: int, tag: int):
        self.owner, self.buf, self.source, self.tag = owner, buf, source, tag
        self.ctx = owner.ctx  # matches only messages of the owner's group
        self.done = False
        self.data: np.ndarray | None = None  # set when the message is matched but not yet copied
        self.src = self.msg_tag = self.wsrc = -1  # the sender's rank in the group and in the world, and the tag
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
        """True once the message has arrived; the buffer is then filled (as by ``wait``).

        False lets the other ranks run first (MPI's progress), so a rank that polls in a loop does not
        stop them.
        """
        if self.status is None:
            owner = self.owner
            owner._charge()
            if self.done:
                owner._finish(self)
            else:
                owner._world._yield(poll=True)
            owner._mark()
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


def _interrupt(thread: threading.Thread) -> None:
    """Raise KeyboardInterrupt in ``thread`` at its next Python instruction."""
    import ctypes
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt))


class SimCluster:
    """Shared state of N simulated ranks: queues, posted receives, the scheduler, failure and deadlock watch.

    ``rank_bytes`` is what the caller expects each rank to hold (its arrays); with the cluster's own
    ``RANK_BYTES`` it makes the memory estimate a cluster is refused on (MemoryError, before anything is
    allocated) when it exceeds the memory available.
    """

    def __init__(self, size: int, *, timeout: float | None = None, network: Network | str | None = None,
                 rank_bytes: int = 0):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise TypeError(f"the number of simulated ranks must be an int, got {type(size).__name__}")
        if size < 1:
            raise ValueError(f"a simulated cluster needs at least 1 rank, got {size!r}")
        self.size = int(size)
        self.timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
        if not 0 < self.timeout < 1e9:
            raise ValueError(f"the simulated cluster's timeout must be > 0 and finite seconds, got {timeout!r}")
        need, have = memory_estimate(self.size, rank_bytes), _available_memory()
        if have is not None and need > have:
            raise MemoryError(f"{self.size:,} simulated ranks need about {_gib(need)} "
                              f"({_gib(need / self.size)} per rank) but {_gib(have)} is available")
        self.network = None if network is None else parse_network(network)
        if self.network is not None:
            self.network.check_size(self.size)
        self.links = None if self.network is None else self.network.links(self.size)
        self.wall = self.network is not None and self.network.compute == "wall"
        # unexpected[dest]: {world src: deque of (ctx, tag, src in the group, payload, stamp, seq)}, only for
        # senders with something pending; seq orders arrivals from different senders for ANY_SOURCE
        self.unexpected: list[dict[int, collections.deque]] = [{} for _ in range(self.size)]
        self.seq = 0
        self.posted: list[list[_Recv]] = [[] for _ in range(self.size)]
        self.waiting: dict[int, _Recv] = {}  # world rank -> the receive it is blocked on
        self.finished = 0
        self.progress = 0          # messages sent and receives completed so far: a polling loop that sees none is stuck
        self.polled = False        # the rank that just gave control back did so from an incomplete test()
        self.running: int | None = None  # the rank running now, and since when (monotonic), for the watchdog
        self.since = time.monotonic()
        self.failed: tuple[int, BaseException] | None = None
        self.contexts: dict[tuple, int] = {}  # a group's (parent context, split number, color) -> its context
        self.transports = [SimTransport(self, r) for r in range(self.size)]
        self.tasks: list[Any] = []
        self.ready: collections.deque = collections.deque()  # ranks that can go on, in the order they run
        self.sleepers: list[tuple[float, int, int]] = []     # (wake-up time, seq, rank), a heap
        self.hub: Any = None
        self._ran = False

    def context(self, parent: int, split: int, color: int) -> int:
        """The context id of group ``color`` of the ``split``-th split of context ``parent``.

        Every member asks with the same triple and gets the same id; any other group gets
        another (0 is the world's).
        """
        return self.contexts.setdefault((parent, split, color), len(self.contexts) + 1)

    # -- failure handling -----------------------------------------------------------------------
    def fail(self, rank: int, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = (rank, exc)

    def _waits(self) -> str:
        """'rank 0 waits for rank 1 (tag 5, 16 bytes); ranks [2] have returned'."""
        parts = [f"rank {r} waits for {self.waiting[r].describe()}" for r in sorted(self.waiting)]
        done = [r for r, g in enumerate(self.tasks) if g.dead and r not in self.waiting]
        if done:
            parts.append(f"ranks {done} have returned")
        return "; ".join(parts)

    def _deadlock(self) -> DeadlockError:
        return DeadlockError("deadlock among simulated ranks: " + self._waits())

    def _watch(self) -> None:
        """The watchdog (calling thread): when one rank has run for longer than the timeout without coming back
        to the scheduler while others wait for messages, the run fails. (Ranks run one at a time, so a rank's own
        wait also includes the others' turns; what cannot last is one turn.)"""
        running, since = self.running, self.since
        if running is None or time.monotonic() - since <= self.timeout or self.failed is not None:
            return
        try:
            blocked = sorted(self.waiting.items())  # a consistent copy under the GIL
        except RuntimeError:  # pragma: no cover - changed while copied; look again next time
            return
        if blocked and self.running == running and self.since == since:
            rank, req = blocked[0]
            self.fail(rank, CommTimeout(f"simulated rank {rank} blocked for {self.timeout:g} s waiting for a message "
                                        f"from {req.describe()}, while rank {running} ran all that time without "
                                        f"communicating"))

    # -- scheduling (the hub greenlet) -------------------------------------------------------------
    def _wake(self, rank: int) -> None:
        """Rank ``rank``, blocked on a receive that just completed, can go on."""
        del self.waiting[rank]
        self.ready.append(rank)

    def _schedule(self, fn: Callable[..., Any], args: tuple, kwargs: dict, results: list) -> None:
        self.hub = getcurrent()

        def body(rank: int) -> None:
            t = self.transports[rank]
            try:
                results[rank] = fn(t, *args, **kwargs)
                t._charge()
            except _Aborted:
                pass
            except BaseException as exc:  # noqa: BLE001 - any failure must stop the others
                self.fail(rank, exc)
            finally:
                self.finished += 1
                self.progress += 1

        self.tasks = [greenlet(body, parent=self.hub) for _ in range(self.size)]
        ready, tasks = self.ready, self.tasks
        ready.extend(range(self.size))
        started = [False] * self.size
        sleepers = self.sleepers
        clock = time.monotonic
        seen, quiet = -1, clock()   # the progress count at the last turn that made some, and when
        r = 0
        try:
            while self.failed is None:
                if sleepers and sleepers[0][0] <= clock():  # a sleep is over: that rank goes on next
                    ready.append(heapq.heappop(sleepers)[2])
                if ready:
                    r = ready.popleft()
                    self.running, self.since = r, clock()
                    if started[r]:
                        tasks[r].switch()
                    else:
                        started[r] = True
                        tasks[r].switch(r)
                    self.running = None
                    if not self.polled or self.progress != seen:
                        seen, quiet = self.progress, clock()
                    elif clock() - quiet > self.timeout:   # ranks poll, and nothing is sent or received
                        polling = sorted({r, *ready})
                        self.fail(r, CommTimeout(f"simulated ranks {polling} polled requests for {self.timeout:g} s "
                                                 "and no message was sent or received meanwhile"
                                                 + (f"; {self._waits()}" if self._waits() else "")))
                    self.polled = False
                elif sleepers:
                    wake, _, r = heapq.heappop(sleepers)
                    time.sleep(max(0.0, wake - clock()))
                    ready.append(r)
                elif self.finished < self.size:
                    self.fail(min(self.waiting) if self.waiting else 0, self._deadlock())
                else:
                    break
        except BaseException as exc:  # noqa: BLE001 - Ctrl-C landing in the scheduler itself: stop every rank
            self.running = None
            self.fail(r, exc)
        # a failure: unwind every rank that is still suspended (its blocked call raises _Aborted)
        for r, g in enumerate(tasks):
            if started[r] and not g.dead:
                try:
                    g.throw(_Aborted())
                except _Aborted:
                    pass

    # -- running ------------------------------------------------------------------------------
    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(transport, *args, **kwargs)`` on every rank; return the per-rank results.

        A cluster runs once (its queues, counters and failure state belong to that run). The ranks run on
        a thread of their own while this one watches for a receive blocked past the timeout.
        """
        if self._ran:
            raise RuntimeError("a SimCluster runs once; create a new one (or call run_simulated)")
        self._ran = True
        results: list[Any] = [None] * self.size
        if self.size == 1:  # nobody to wait for: the rank runs on this thread (Ctrl-C lands in it)
            self._schedule(fn, args, kwargs, results)
            return self._outcome(results)
        stopped = threading.Event()
        crash: list[BaseException] = []

        def hub() -> None:
            try:
                self._schedule(fn, args, kwargs, results)
            except BaseException as exc:  # noqa: BLE001 - a fault of the scheduler itself, re-raised below
                crash.append(exc)
            finally:
                stopped.set()

        thread = threading.Thread(target=hub, name="mpisim-ranks", daemon=True)
        thread.start()
        grace_end = None
        while True:
            try:
                if stopped.wait(WATCH):
                    break
                if self.failed is None:
                    self._watch()
                else:
                    # Blocked ranks unwind at once; a rank busy computing cannot be stopped, so it is
                    # left behind (daemon thread) after a short grace.
                    grace_end = grace_end or time.monotonic() + ABORT_GRACE
                    if time.monotonic() > grace_end:
                        break
            except KeyboardInterrupt:
                # Ctrl-C reaches this thread: hand it to the rank running now, which fails as it would on
                # its own thread (its finally blocks run; files it was writing are cleaned up)
                _interrupt(thread)
                grace_end = time.monotonic() + ABORT_GRACE
        if crash:
            raise crash[0]
        return self._outcome(results)

    def _outcome(self, results: list[Any]) -> list[Any]:
        if self.failed is not None:
            rank, exc = self.failed
            if isinstance(exc, (DeadlockError, CommTimeout)):  # about the cluster, not one rank
                raise exc
            raise RankError(rank, self.size, exc) from exc
        return results


class SimTransport:
    """One simulated rank's endpoint (see :class:`mpisim.comm.transport.Transport`)."""

    ctx = 0            # the world's context; a group has its own
    parent = None      # the world has none; a group's is the transport it was split from
    cooperative = True  # its ranks are greenlets of one thread: no other OS thread may call it

    def __init__(self, cluster: SimCluster, rank: int):
        self.cluster = cluster
        self.rank = rank
        self.size = cluster.size
        self.stats = Stats()
        self.network = cluster.network
        self.clock = 0        # virtual time in ticks (stays 0 without a network model)
        self._cpu: float | None = None   # compute=wall: the thread's CPU time at this rank's last transport call
        self._world = self              # the rank's world transport, which holds the clock
        self._chain: tuple[SimTransport, ...] = (self,)  # this transport and its ancestors: counts go to all
        self._splits = 0                # splits so far (the same count on every rank): names the contexts

    @property
    def members(self) -> range:
        """World ranks are their own parent ranks (a range: no per-rank copy of p entries)."""
        return range(self.size)

    _wranks = members  # the world rank of each rank of this transport

    def reset_stats(self) -> None:
        """Zero the counters (the virtual clock goes on: it orders messages between ranks)."""
        self.stats = Stats()

    @property
    def vtime(self) -> float:
        """This rank's virtual time in seconds (0 without a network model)."""
        return self.clock * TICK

    def now(self) -> float:
        """This rank's virtual time in seconds, with its computation since the last transport call charged
        first (compute=wall); 0 without a network model."""
        self._charge()
        self._mark()
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

    # -- virtual time of local work, scheduling -----------------------------------------------------
    def _mark(self) -> None:
        if self.cluster.wall:
            self._world._cpu = time.thread_time()

    def _charge(self) -> None:
        """With compute=wall: add the CPU time since this rank's last transport call to its clock (from its
        start on; ranks run one at a time on one thread and switch only inside transport calls, so the
        thread's CPU time between two calls of one rank is that rank's)."""
        w = self._world
        if self.cluster.wall and w._cpu is not None:
            now = time.thread_time()
            w.clock += round((now - w._cpu) / TICK)
            w._cpu = now

    def _yield(self, poll: bool = False) -> None:
        """Let every rank that can go on run once before this one goes on (``poll``: from an incomplete test(),
        which the scheduler watches for a loop that nothing can end)."""
        cl = self.cluster
        if cl.size > 1:
            cl.ready.append(self._world.rank)
            cl.polled = poll
            cl.hub.switch()
        if cl.failed is not None:
            raise _Aborted()

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of wall time while the other ranks run (``time.sleep`` would stop them all)."""
        if not seconds >= 0:
            raise ValueError(f"sleep: seconds must be >= 0, got {seconds!r}")
        cl = self.cluster
        if cl.size == 1:
            time.sleep(seconds)
            return
        self._charge()
        cl.seq += 1
        heapq.heappush(cl.sleepers, (time.monotonic() + seconds, cl.seq, self._world.rank))
        cl.hub.switch()
        self._mark()
        if cl.failed is not None:
            raise _Aborted()

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

    def send(self, buf: np.ndarray, dest: int, tag: int = 0) -> None:
        t0 = time.perf_counter()
        self._check_send(buf, dest, tag)
        cl = self.cluster
        if cl.failed is not None:
            raise _Aborted()
        if cl.wall:
            self._charge()
        data = _payload(buf)
        nbytes = data.nbytes
        chain = self._chain
        for t in chain:  # one round on every level's logical clock
            t.stats.rounds += 1
        world = self._world
        stamp = (tuple(t.stats.rounds for t in chain), world.clock)
        wsrc, wdest, ctx = world.rank, self._wranks[dest], self.ctx
        if self.network is not None:  # the port is busy until the message is out
            world.clock += self.network.send_ticks(wsrc, wdest, nbytes)
        posted = cl.posted[wdest]
        for i, r in enumerate(posted):
            if r.ctx == ctx and (r.source == ANY_SOURCE or r.source == self.rank) and (r.tag == ANY_TAG or r.tag == tag):
                del posted[i]
                if r.buf.nbytes == nbytes:
                    _payload(r.buf)[...] = data
                    r.copied = True
                else:
                    r.data = data.copy()  # the receiver reports the size mismatch
                r.src, r.wsrc, r.msg_tag, r.stamp, r.done = self.rank, wsrc, tag, stamp, True
                if cl.waiting.get(wdest) is r:
                    cl._wake(wdest)
                break
        else:
            box = cl.unexpected[wdest]
            queue = box.get(wsrc)
            if queue is None:
                queue = box[wsrc] = collections.deque()
            queue.append((ctx, tag, self.rank, data.copy(), stamp, cl.seq))
            cl.seq += 1
        count_sent(chain, nbytes)
        cl.progress += 1
        if cl.wall:
            self._mark()
        count_time(chain, time.perf_counter() - t0)

    def isend(self, buf: np.ndarray, dest: int, tag: int = 0) -> _Sent:
        self.send(buf, dest, tag)
        return _SENT

    # -- receiving ----------------------------------------------------------------------------
    def irecv(self, buf: np.ndarray, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> _Recv:
        as_buffer(buf, "receive buffer")
        check_peer(source, self.size, "source", allow_any=True)
        t0 = time.perf_counter()
        cl = self.cluster
        if cl.failed is not None:
            raise _Aborted()
        req = _Recv(self, buf, source, tag)
        found = self._take_unexpected(source, tag)
        if found is None:
            cl.posted[self._world.rank].append(req)
        else:
            req.msg_tag, req.src, req.wsrc, req.data, req.stamp = found
            req.done = True
        count_time(self._chain, time.perf_counter() - t0)
        return req

    def _take_unexpected(self, source: int, tag: int) -> tuple | None:
        """Remove the earliest matching unexpected message of this context; return (tag, src, world src,
        payload, stamp)."""
        box = self.cluster.unexpected[self._world.rank]
        if not box:
            return None
        ctx = self.ctx
        if source != ANY_SOURCE:
            wsrc = self._wranks[source]
            queue = box.get(wsrc)
            if queue is None:
                return None
            for i, msg in enumerate(queue):  # msg: (ctx, tag, src in the group, payload, stamp, seq)
                if msg[0] == ctx and (tag == ANY_TAG or msg[1] == tag):
                    break
            else:
                return None
        else:
            best = None
            for w, q in box.items():
                for i, msg in enumerate(q):
                    if msg[0] == ctx and (tag == ANY_TAG or msg[1] == tag):
                        if best is None or msg[5] < best[2][5]:
                            best = (w, i, msg)
                        break
            if best is None:
                return None
            wsrc, i, msg = best
            queue = box[wsrc]
        del queue[i]
        if not queue:
            del box[wsrc]
        return msg[1], msg[2], wsrc, msg[3], msg[4]

    def _wait(self, req: _Recv) -> Status:
        cl = self.cluster
        t0 = time.perf_counter()
        self._charge()
        if not req.done:
            if cl.failed is not None:
                raise _Aborted()
            me = self._world.rank  # the cluster's lists and the deadlock watch are in world ranks
            cl.waiting[me] = req
            cl.hub.switch()  # back when a sender completed req (or with _Aborted thrown in)
            if not req.done:  # pragma: no cover - woken without the message: a scheduler fault
                raise CommError(f"simulated rank {me} resumed before its receive completed")
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
        nbytes = req.buf.nbytes
        count_received(self._chain, nbytes)
        self.cluster.progress += 1
        rounds, sent_at = req.stamp
        for t, r in zip(self._chain, rounds):  # sender and receiver share the chain of ancestors
            if r > t.stats.rounds:
                t.stats.rounds = r
        if self.network is not None:
            world = self._world
            arrival = self.cluster.links.arrival(req.wsrc, world.rank, sent_at, nbytes)
            if arrival > world.clock:
                world.clock = arrival
        req.status = Status(req.src, req.msg_tag, nbytes)
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
    that belongs to the rank, not to a group (the virtual clock, the CPU time of compute=wall), is the
    world transport's.
    """

    _wranks: tuple[int, ...] = ()  # an instance attribute here (the world's is a range)

    def __init__(self, parent: SimTransport, members: tuple[int, ...], ctx: int):
        self.cluster = parent.cluster
        self.parent = parent
        self._members = members  # parent ranks of group ranks 0..size-1
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
    def members(self) -> tuple[int, ...]:
        return self._members

    @property
    def clock(self) -> int:
        """The rank's one virtual clock: time spent in the group is time on the rank."""
        return self._world.clock

    @clock.setter
    def clock(self, ticks: int) -> None:
        self._world.clock = ticks

    def __repr__(self) -> str:
        return (f"SimGroup(rank={self.rank}, size={self.size}, world rank={self._world.rank}, "
                f"context={self.ctx})")


def run_simulated(n: int, fn: Callable[..., Any], *args: Any, network: Network | str | None = None,
                  trace: str | None = None, timeline: str | None = None, **kwargs: Any) -> list[Any]:
    """Run ``fn(transport, *args, **kwargs)`` on ``n`` simulated ranks; return per-rank results.

    ``network`` (a :class:`~mpisim.comm.network.Network` or a spec such as ``"10gbe"``) turns
    the virtual clocks on. ``trace`` (a .json path) writes every rank's collectives and messages in the
    Chrome trace event format, ``timeline`` (a .png path) draws them (see :mod:`mpisim.trace`); a bad path
    is a ValueError before anything runs. An exception on a rank is re-raised as :class:`RankError`
    (``.rank``, ``.exc``); a deadlock as :class:`DeadlockError`; a receive blocked for
    ``MPISIM_SIM_TIMEOUT`` seconds (default 60) as :class:`CommTimeout`. Use :class:`SimCluster` to set
    the timeout.
    """
    if trace or timeline:
        from ..trace import traced
        fn = traced(fn, trace, timeline)
    return SimCluster(n, network=network).run(fn, *args, **kwargs)
