"""Traces of a run: what every rank did when, as a Chrome trace and as a Gantt chart.

A :class:`Tracer` keeps one rank's spans: computation (``forward``, ``backward``, ``optimizer``,
``evaluate``, the runtime's ``compute`` blocks and, in virtual time, the FLOPs a rank declares), each
collective call (name, algorithm, bytes, ranks) and each point-to-point message (peer, tag, bytes).
It sees messages through :meth:`Tracer.wrap`, a transport with the same interface that times each call
and passes it on (so the transports know nothing of tracing and an untraced run pays nothing), and
collectives through one hook in the registry's dispatch (:func:`mpisim.comm.registry.set_call_hook`).
Computation is recorded where it happens, in the model, the optimizer and the runtime, with
:func:`span`, which finds the rank's tracer in a :class:`contextvars.ContextVar` (each simulated rank,
thread or greenlet, has its own context) and does nothing when there is none: a model never knows
about ranks.

Time is the rank's virtual clock on a simulated network (``--network``), wall time otherwise. At the
end the ranks' spans are gathered on rank 0 with the project's own collectives (JSON text in int64
buffers, parsed and checked there, never a pickle); under MPI each rank's clock is first aligned to rank
0's by the ping-pong offset estimate of Cristian (1989), "Probabilistic clock synchronization": the
round trip with the smallest delay bounds the error by half of it.

The file is the Chrome trace event format (Google, "Trace Event Format", 2016: ``"X"`` complete
events with ``ts`` and ``dur`` in microseconds, ``"M"`` metadata naming each process and thread), which
Perfetto (ui.perfetto.dev) and chrome://tracing open: one process track per rank, a thread track for
its main thread and one for each other thread (a communication thread). :mod:`mpisim.timeline` draws
the same spans as a Gantt chart. :meth:`Tracer.totals` gives the seconds of computation, communication,
their overlap and idle time, and the algorithm and bus bandwidth of the payload collectives (NCCL's
definitions, nccl-tests' PERFORMANCE.md: busbw = algbw * 2(p-1)/p for an allreduce, (p-1)/p for an
allgather or a reduce-scatter, 1 for a broadcast or a reduce), all from the spans the file holds.
"""
from __future__ import annotations

import contextlib
import contextvars
import io
import json
import math
import os
import threading
import time
from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["COMPUTE", "COLLECTIVE", "MESSAGE", "Tracer", "TracedTransport", "category", "check_output", "span",
           "traced", "tracing", "totals_of", "BUS_FACTOR", "TOTAL_KEYS", "current", "finish", "gather_traces",
           "chrome_trace", "clock_offsets", "events_of", "totals_from_doc", "output_file_problem"]

COMPUTE, COLLECTIVE, MESSAGE = "compute", "collective", "message"     # the spans' "cat"
_CATS = (COMPUTE, COLLECTIVE, MESSAGE)
TAG_TRACE = 901                     # the clock ping-pong (on the world transport, before the gather)
PINGS = 8                           # round trips per rank; the fastest one sets the offset

_CURRENT: contextvars.ContextVar["Tracer | None"] = contextvars.ContextVar("mpisim_tracer", default=None)
_CATEGORY: contextvars.ContextVar[str | None] = contextvars.ContextVar("mpisim_trace_category", default=None)
_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("mpisim_trace_depth", default=0)
_OPEN: contextvars.ContextVar[int] = contextvars.ContextVar("mpisim_trace_open", default=0)   # compute spans open


def BUS_FACTOR(collective: str, p: int) -> float:
    """busbw / algbw of a collective on ``p`` ranks (nccl-tests' PERFORMANCE.md)."""
    if p < 2:
        return 0.0
    if collective == "allreduce":
        return 2 * (p - 1) / p
    if collective in ("allgather", "reduce_scatter"):
        return (p - 1) / p
    return 0.0 if collective == "barrier" else 1.0


# -- recording -------------------------------------------------------------------------------------------
class Tracer:
    """One rank's spans, on its clock: virtual seconds with a network model, else ``time.perf_counter``.

    An event is ``(cat, name, tid, start, end, args)``; ``args`` is a tuple: a message's (peer, tag,
    bytes, category), a collective's (algorithm, bytes, ranks, category, depth), None for computation.
    """

    def __init__(self, t, *, active: bool = True) -> None:
        _install_hook()
        self.t, self.rank, self.size = t, t.rank, t.size
        self.virtual = getattr(t, "network", None) is not None
        if self.virtual:
            from .comm.network import TICK
            now = getattr(t, "now", None)           # charges pending compute=wall time first, where it exists
            self.now: Callable[[], float] = now if callable(now) else (lambda: t.clock * TICK)
        else:
            self.now = time.perf_counter
        self.events: list[tuple] = []
        self.owner = threading.get_ident()
        self.tids: dict[int, int] = {self.owner: 0}
        self.active = active
        self.start = self.now()
        self.end: float | None = None

    def begin(self) -> None:
        """Start the recording (and the run's window) now, for a tracer made with ``active=False``."""
        self.start, self.end, self.active = self.now(), None, True

    def tid(self) -> int:
        """0 for the thread that made the tracer, 1, 2, ... for others (a communication thread)."""
        ident = threading.get_ident()
        if ident == self.owner:
            return 0
        k = self.tids.get(ident)
        if k is None:
            k = self.tids.setdefault(ident, len(self.tids))
        return k

    def add(self, cat: str, name: str, start: float, end: float, args: tuple | None = None) -> None:
        if self.active:
            self.events.append((cat, name, self.tid(), start, end, args))

    def stop(self) -> None:
        """End the recording (the run's window closes now); later calls record nothing."""
        if self.active:
            self.end = self.now()
            self.active = False

    def wrap(self, t) -> "TracedTransport":
        """``t`` (this rank's world transport) with every message recorded."""
        return TracedTransport(t, self, None)

    def totals(self) -> dict[str, float]:
        """This rank's seconds of compute, communication, overlap, idle and run (its window), and the
        payload collectives' bytes, bus bytes and seconds."""
        end = self.now() if self.end is None else self.end
        return totals_of(self.events, self.start, end)


class _Span:
    __slots__ = ("tracer", "name", "t0", "token")

    def __init__(self, tracer: Tracer, name: str) -> None:
        self.tracer, self.name = tracer, name

    def __enter__(self) -> None:
        self.token = _OPEN.set(_OPEN.get() + 1)
        self.t0 = self.tracer.now()

    def __exit__(self, *exc) -> None:
        tr = self.tracer
        tr.add(COMPUTE, self.name, self.t0, tr.now())
        _OPEN.reset(self.token)


_NULL = contextlib.nullcontext()


def span(name: str):
    """A context manager that records its block as computation ``name`` on this rank's tracer, if it has one."""
    tr = _CURRENT.get()
    return _NULL if tr is None or not tr.active else _Span(tr, name)


@contextlib.contextmanager
def category(name: str) -> Iterator[None]:
    """Mark the collectives and messages of the block with a ledger category (payload, control, ...)."""
    token = _CATEGORY.set(name)
    try:
        yield
    finally:
        _CATEGORY.reset(token)


@contextlib.contextmanager
def current(tracer: Tracer | None) -> Iterator[None]:
    """Make ``tracer`` this context's (the rank's) tracer for :func:`span` within the block."""
    token = _CURRENT.set(tracer)
    try:
        yield
    finally:
        _CURRENT.reset(token)


class _TracedRequest:
    """A wrapped irecv: its completion is recorded as a ``wait`` message span."""

    __slots__ = ("req", "tt", "nbytes", "done")

    def __init__(self, req, tt: "TracedTransport", nbytes: int) -> None:
        self.req, self.tt, self.nbytes, self.done = req, tt, nbytes, False

    def wait(self):
        tr = self.tt._tr
        if self.done or not tr.active:
            return self.req.wait()
        s = tr.now()
        status = self.req.wait()
        self._record(status, s, tr.now())
        return status

    def test(self) -> bool:
        ok = self.req.test()
        if ok and not self.done and self.tt._tr.active:
            now = self.tt._tr.now()
            self._record(getattr(self.req, "status", None), now, now)
        return ok

    def _record(self, status, s: float, e: float) -> None:
        self.done = True
        src = getattr(status, "source", -1)
        n = getattr(status, "nbytes", self.nbytes)
        self.tt._tr.add(MESSAGE, "wait", s, e, (self.tt._world(src) if src >= 0 else -1,
                                                getattr(status, "tag", -1), n, _CATEGORY.get()))

    def __getattr__(self, name: str):
        return getattr(self.req, name)


class TracedTransport:
    """A transport that records each point-to-point call of ``inner`` as a span and passes it on.

    Everything else (rank, size, stats, clock, network, native_allreduce, ...) is ``inner``'s. Its
    groups (:meth:`split`) are traced too and name peers by their world rank.
    """

    def __init__(self, inner, tracer: Tracer, world: tuple[int, ...] | None) -> None:
        self._t, self._tr, self._wmap = inner, tracer, world
        self.rank, self.size = inner.rank, inner.size

    def __getattr__(self, name: str):
        if name == "prepare":        # a persistent plan then replays through the traced calls
            raise AttributeError(name)
        return getattr(self._t, name)

    def __repr__(self) -> str:
        return f"Traced({self._t!r})"

    @property
    def inner(self):
        return self._t

    def _world(self, r: int) -> int:
        return r if self._wmap is None else self._wmap[r]

    def send(self, buf: np.ndarray, dest: int, tag: int = 0) -> None:
        tr = self._tr
        if not tr.active:
            return self._t.send(buf, dest, tag)
        s = tr.now()
        self._t.send(buf, dest, tag)
        tr.add(MESSAGE, "send", s, tr.now(), (self._world(dest), tag, buf.nbytes, _CATEGORY.get()))

    def recv(self, buf: np.ndarray, source: int = -1, tag: int = -1):
        tr = self._tr
        if not tr.active:
            return self._t.recv(buf, source, tag)
        s = tr.now()
        st = self._t.recv(buf, source, tag)
        tr.add(MESSAGE, "recv", s, tr.now(), (self._world(st.source), st.tag, st.nbytes, _CATEGORY.get()))
        return st

    def sendrecv(self, sendbuf: np.ndarray, dest: int, recvbuf: np.ndarray, source: int, sendtag: int = 0,
                 recvtag: int = -1):
        tr = self._tr
        if not tr.active:
            return self._t.sendrecv(sendbuf, dest, recvbuf, source, sendtag, recvtag)
        s = tr.now()
        st = self._t.sendrecv(sendbuf, dest, recvbuf, source, sendtag, recvtag)
        tr.add(MESSAGE, "sendrecv", s, tr.now(), (self._world(dest), sendtag, sendbuf.nbytes, _CATEGORY.get(),
                                                  self._world(st.source), st.nbytes))
        return st

    def isend(self, buf: np.ndarray, dest: int, tag: int = 0):
        tr = self._tr
        if not tr.active:
            return self._t.isend(buf, dest, tag)
        s = tr.now()
        req = self._t.isend(buf, dest, tag)
        tr.add(MESSAGE, "isend", s, tr.now(), (self._world(dest), tag, buf.nbytes, _CATEGORY.get()))
        return req

    def irecv(self, buf: np.ndarray, source: int = -1, tag: int = -1):
        req = self._t.irecv(buf, source, tag)
        return _TracedRequest(req, self, buf.nbytes) if self._tr.active else req

    def compute(self, flops: float) -> None:
        tr = self._tr
        if not (tr.active and tr.virtual) or _OPEN.get():     # within a computation span: its time already
            return self._t.compute(flops)
        s = tr.now()
        self._t.compute(flops)
        e = tr.now()
        if e > s:                   # --network ...,compute=RATE: the FLOPs' virtual time
            tr.add(COMPUTE, "compute", s, e)

    def split(self, color, key: int = 0):
        tr = self._tr
        s = tr.now()
        g = self._t.split(color, key)
        if tr.active:
            tr.add(COLLECTIVE, "split", s, tr.now(), ("comm_split", 0, self.size, _CATEGORY.get(), _DEPTH.get()))
        if g is None:
            return None
        return TracedTransport(g, tr, tuple(self._world(m) for m in g.members))

    def native_allreduce(self, array: np.ndarray, out: np.ndarray) -> np.ndarray:
        tr = self._tr
        if not tr.active:
            return self._t.native_allreduce(array, out)
        s = tr.now()
        res = self._t.native_allreduce(array, out)
        tr.add(COLLECTIVE, "allreduce", s, tr.now(), ("mpi", out.nbytes, self.size, _CATEGORY.get(), _DEPTH.get()))
        return res


def _on_collective(collective: str, name: str, fn: Callable, t, args: tuple, kwargs: dict):
    """The registry's hook: a collective called on a traced transport becomes a span."""
    if t.__class__ is not TracedTransport or not t._tr.active:
        return fn(t, *args, **kwargs)
    tr, depth = t._tr, _DEPTH.get()
    w = args[0] if args else None
    nbytes = w.nbytes if isinstance(w, np.ndarray) else 0
    token = _DEPTH.set(depth + 1)
    s = tr.now()
    try:
        out = fn(t, *args, **kwargs)
    finally:
        _DEPTH.reset(token)
    tr.add(COLLECTIVE, collective, s, tr.now(), (name, nbytes, t.size, _CATEGORY.get(), depth))
    return out


_hooked = False


def _install_hook() -> None:
    """Hook the registry's dispatch, once the first tracer exists (so mpisim.nn can import :func:`span`
    without importing mpisim.comm)."""
    global _hooked
    if not _hooked:
        from .comm import registry
        registry.set_call_hook(_on_collective)
        _hooked = True


# -- totals -------------------------------------------------------------------------------------------
def _merged(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of ``spans`` as sorted, disjoint intervals."""
    out: list[list[float]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _length(m: list[tuple[float, float]]) -> float:
    return math.fsum(e - s for s, e in m)


def _minus(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Merged ``a`` less merged ``b``."""
    out, j = [], 0
    for s, e in a:
        while j < len(b) and b[j][1] <= s:
            j += 1
        k = j
        while k < len(b) and b[k][0] < e:
            if b[k][0] > s:
                out.append((s, b[k][0]))
            s = max(s, b[k][1])
            k += 1
        if e > s:
            out.append((s, e))
    return out


def totals_of(events, start: float, end: float) -> dict[str, float]:
    """One rank's seconds within its window [start, end] (``events``: ``(cat, name, tid, start, end, args)``).

    On one thread time inside a transport call is communication even within a computation span (a hook's
    collective during backward); across threads both count, and ``overlap`` is the time both happen at
    once. ``compute``: the union over threads of their computation less their communication; ``comm``: the
    union of collectives and messages; ``idle``: neither; ``run``: end - start. ``grad_bytes``,
    ``grad_busbytes`` (bytes times :func:`BUS_FACTOR`) and ``grad_s``: the outermost collectives of the
    payload category, for their algorithm and bus bandwidth."""
    comp: dict[int, list] = {}
    comm: dict[int, list] = {}
    gb = gbus = gs = 0.0
    for cat, name, tid, s, e, args in events:
        s, e = max(s, start), min(e, end)
        if e < s:
            continue
        (comp if cat == COMPUTE else comm).setdefault(tid, []).append((s, e))
        if cat == COLLECTIVE and args and args[3] == "payload" and args[4] == 0 and name != "split":
            gb += args[1]
            gbus += args[1] * BUS_FACTOR(name, args[2])
            gs += e - s
    m_by = {tid: _merged(v) for tid, v in comm.items()}
    c = _merged([x for tid, v in comp.items() for x in _minus(_merged(v), m_by.get(tid, []))])
    m = _merged([x for v in m_by.values() for x in v])
    cs, ms = _length(c), _length(m)
    both = cs + ms - _length(_merged(c + m))
    run = max(end - start, 0.0)
    return {"compute": cs, "comm": ms, "overlap": max(both, 0.0), "idle": max(run - (cs + ms - both), 0.0),
            "run": run, "grad_bytes": gb, "grad_busbytes": gbus, "grad_s": gs}


TOTAL_KEYS = ("compute", "comm", "overlap", "idle", "run", "grad_bytes", "grad_busbytes", "grad_s")


# -- gathering on rank 0 -------------------------------------------------------------------------------
def _shared_clock(t, tracer: Tracer) -> bool:
    """True when every rank reads the same clock (simulated ranks: one process, or virtual time)."""
    from .comm.sim import SimTransport
    return tracer.virtual or isinstance(t, SimTransport)


def clock_offsets(t, now: Callable[[], float]) -> list[float]:
    """On rank 0, each rank's clock minus rank 0's (rank 0: 0.0), from the fastest of :data:`PINGS` round
    trips (Cristian's algorithm); [] on the other ranks. Collective over the world transport ``t``."""
    cell = np.zeros(1, dtype=np.float64)
    if t.rank != 0:
        for _ in range(PINGS):
            t.recv(cell, 0, TAG_TRACE)
            cell[0] = now()
            t.send(cell, 0, TAG_TRACE)
        return []
    out = [0.0]
    for r in range(1, t.size):
        best = (math.inf, 0.0)
        for _ in range(PINGS):
            t0 = now()
            t.send(cell, r, TAG_TRACE)
            t.recv(cell, r, TAG_TRACE)
            t1 = now()
            best = min(best, (t1 - t0, float(cell[0]) - (t0 + t1) / 2))
        out.append(best[1])
    return out


def _encode(tracer: Tracer) -> bytes:
    ev = [[_CATS.index(c), n, tid, s, e, list(a) if a else None] for c, n, tid, s, e, a in tracer.events]
    end = tracer.now() if tracer.end is None else tracer.end
    return json.dumps({"start": tracer.start, "end": end, "threads": len(tracer.tids), "events": ev}).encode()


def _decode(blob: bytes, r: int) -> dict:
    """Rank ``r``'s trace, checked: what a peer sends is never trusted."""
    bad = ValueError(f"the trace from rank {r} is malformed")
    try:
        d = json.loads(blob.decode())
    except (UnicodeDecodeError, ValueError):
        raise bad from None
    if not isinstance(d, dict) or not isinstance(d.get("events"), list):
        raise bad
    num = (int, float)
    if not all(isinstance(d.get(k), num) and math.isfinite(d[k]) for k in ("start", "end")) \
            or not isinstance(d.get("threads"), int) or d["threads"] < 1:
        raise bad
    events = []
    for x in d["events"]:
        if not (isinstance(x, list) and len(x) == 6 and isinstance(x[0], int) and 0 <= x[0] < len(_CATS)
                and isinstance(x[1], str) and isinstance(x[2], int) and 0 <= x[2] < d["threads"]
                and isinstance(x[3], num) and isinstance(x[4], num) and math.isfinite(x[3]) and math.isfinite(x[4])
                and (x[5] is None or isinstance(x[5], list))):
            raise bad
        events.append((_CATS[x[0]], x[1], x[2], float(x[3]), float(x[4]), tuple(x[5]) if x[5] else None))
    return {"start": float(d["start"]), "end": float(d["end"]), "threads": d["threads"], "events": events}


def gather_traces(tracer: Tracer, t) -> list[dict] | None:
    """Every rank's spans on rank 0, on one time axis (seconds from the earliest rank's start), else None.
    Collective over the world transport ``t`` (untraced); align the clocks first under MPI."""
    from .comm import allgather, gather
    offsets = None if _shared_clock(t, tracer) else clock_offsets(t, time.perf_counter)
    blob = np.frombuffer(_encode(tracer), dtype=np.uint8)
    lens = allgather(t, np.array([blob.size], dtype=np.int64)).reshape(-1)
    buf = np.zeros(-(-int(lens.max()) // 8), dtype=np.int64)      # the collectives move 8-byte words
    buf.view(np.uint8)[:blob.size] = blob
    rows = gather(t, buf, root=0)
    if t.rank != 0:
        return None
    ranks = [_decode(rows[r].view(np.uint8)[:int(lens[r])].tobytes(), r) for r in range(t.size)]
    for r, d in enumerate(ranks):
        d["offset"] = offsets[r] if offsets else 0.0
    origin = min(d["start"] - d["offset"] for d in ranks)
    for d in ranks:
        shift = d["offset"] + origin
        d["start"], d["end"] = d["start"] - shift, d["end"] - shift
        d["events"] = [(c, n, tid, s - shift, e - shift, a) for c, n, tid, s, e, a in d["events"]]
    return ranks


# -- the Chrome trace ---------------------------------------------------------------------------------
def _args(cat: str, name: str, a: tuple | None) -> dict | None:
    if not a:
        return None
    if cat == MESSAGE:
        out = {"peer": a[0], "tag": a[1], "bytes": a[2]}
        if len(a) > 4:
            out.update(source=a[4], bytes_received=a[5])
    else:
        out = {"algorithm": a[0], "bytes": a[1], "ranks": a[2]}
        if a[4]:
            out["depth"] = a[4]
    if a[3]:
        out["category"] = a[3]
    return out


def chrome_trace(ranks: list[dict], *, virtual: bool, title: str = "") -> dict:
    """The Chrome trace event document of :func:`gather_traces`' ranks (pid = rank, tid = thread)."""
    ev: list[dict] = []
    for r, d in enumerate(ranks):
        ev.append({"name": "process_name", "ph": "M", "pid": r, "tid": 0, "args": {"name": f"rank {r}"}})
        ev.append({"name": "process_sort_index", "ph": "M", "pid": r, "tid": 0, "args": {"sort_index": r}})
        for k in range(d["threads"]):
            ev.append({"name": "thread_name", "ph": "M", "pid": r, "tid": k,
                       "args": {"name": "main" if k == 0 else f"thread {k} (communication)"}})
        for cat, name, tid, s, e, a in d["events"]:
            x = {"name": name, "cat": cat, "ph": "X", "ts": s * 1e6, "dur": max(e - s, 0.0) * 1e6, "pid": r, "tid": tid}
            args = _args(cat, name, a)
            if args:
                x["args"] = args
            ev.append(x)
    return {"traceEvents": ev, "displayTimeUnit": "ms",
            "otherData": {"title": title, "clock": "virtual" if virtual else "wall", "ranks": len(ranks),
                          "windows_us": [[d["start"] * 1e6, d["end"] * 1e6] for d in ranks]}}


def events_of(doc: dict) -> list[list[tuple]]:
    """Per rank, the ``(cat, name, tid, start, end, args)`` spans of a Chrome trace document (seconds; ``args``
    is the event's dict, as in the file, not the tuple :func:`totals_of` reads from a live tracer)."""
    n = doc["otherData"]["ranks"]
    out: list[list[tuple]] = [[] for _ in range(n)]
    for x in doc["traceEvents"]:
        if x.get("ph") == "X":
            s = x["ts"] / 1e6
            out[x["pid"]].append((x["cat"], x["name"], x["tid"], s, s + x["dur"] / 1e6, x.get("args")))
    return out


def totals_from_doc(doc: dict) -> list[dict[str, float]]:
    """Each rank's :func:`totals_of` from a written Chrome trace document (what the closing table's time block
    shows, recomputed from the file alone): its spans within its window."""
    out = []
    for r, events in enumerate(events_of(doc)):
        spans = []
        for cat, name, tid, s, e, a in events:
            if cat == COLLECTIVE and a:
                a = (a.get("algorithm"), a.get("bytes", 0), a.get("ranks", 0), a.get("category"), a.get("depth", 0))
            spans.append((cat, name, tid, s, e, a))
        start, end = doc["otherData"]["windows_us"][r]
        out.append(totals_of(spans, start / 1e6, end / 1e6))
    return out


def write_outputs(ranks: list[dict], *, virtual: bool, trace: str | None, timeline: str | None,
                  title: str = "") -> dict:
    """Write the trace (JSON) and the timeline (PNG) atomically; return the trace document."""
    from .train.checkpoint import atomic_write_bytes
    doc = chrome_trace(ranks, virtual=virtual, title=title)
    if trace:
        atomic_write_bytes(trace, json.dumps(doc, separators=(",", ":")).encode())
    if timeline:
        from .timeline import draw_timeline
        buf = io.BytesIO()
        draw_timeline(ranks, buf, virtual=virtual, title=title)
        atomic_write_bytes(timeline, buf.getvalue())
    return doc


def finish(tracer: Tracer, trace: str | None, timeline: str | None, *, title: str = "") -> dict | None:
    """Stop ``tracer``, gather every rank's spans on rank 0 and write the files there; rank 0 returns the
    trace document, the others None. Collective over the tracer's world transport."""
    tracer.stop()
    ranks = gather_traces(tracer, tracer.t)
    if ranks is None:
        return None
    return write_outputs(ranks, virtual=tracer.virtual, trace=trace, timeline=timeline, title=title)


# -- for run_simulated and the bench --------------------------------------------------------------------
def output_file_problem(path: str) -> str | None:
    """Why ``path`` cannot be written as a regular file (an empty name, a directory, an existing FIFO, socket
    or device, which would block the run or swallow its output, or a file that cannot be written), or None.
    The folder is not checked here."""
    if not path:
        return "needs a file name"
    if os.path.isdir(path):
        return f"{path} is a directory; give a file name"
    if os.path.lexists(path):
        if not os.path.isfile(path):
            return f"{path} exists and is not a regular file (a FIFO, socket, device or broken link)"
        if not os.access(path, os.W_OK):
            return f"{path}: cannot write it (permission denied)"
    return None


def check_output(path: str, suffix: str, *, folder: bool = True) -> str | None:
    """Why ``path`` cannot take a ``suffix`` file (.json, .png), or None: a wrong extension, what
    :func:`output_file_problem` refuses, or (``folder``) a folder that is missing or cannot be written in (the
    paradigms check and create their output folders themselves)."""
    if not os.path.isdir(path) and not path.lower().endswith(suffix):
        return f"writes a {suffix[1:].upper()} file: give a name ending in {suffix}, not {path}"
    why = output_file_problem(path)
    if why or not folder:
        return why
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        return f"no such folder: {folder}"
    if not os.path.isdir(folder):
        return f"{folder} is a file, not a folder"
    if not os.access(folder, os.W_OK):
        return f"cannot write in {folder}"
    return None


def _checked(trace: str | None, timeline: str | None) -> None:
    for flag, path, suffix in (("trace", trace, ".json"), ("timeline", timeline, ".png")):
        why = path and check_output(str(path), suffix)
        if why:
            raise ValueError(f"{flag}: {why}")
    if timeline:
        import importlib.util
        if importlib.util.find_spec("matplotlib") is None:
            raise ValueError("timeline: needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')")


def traced(fn: Callable[..., Any], trace: str | None = None, timeline: str | None = None, *,
           title: str = "") -> Callable[..., Any]:
    """``fn(transport, ...)`` run with a tracer on each rank; at the end rank 0 writes ``trace`` (Chrome
    JSON) and ``timeline`` (PNG). For ``run_simulated(n, traced(fn, "t.json"), ...)``; ValueError at once
    for a path that cannot be written."""
    _checked(trace, timeline)

    def body(t, *args: Any, **kwargs: Any) -> Any:
        tracer = Tracer(t)
        with current(tracer):
            out = fn(tracer.wrap(t), *args, **kwargs)
        finish(tracer, trace, timeline, title=title)
        return out
    body.__name__ = getattr(fn, "__name__", "body")
    return body


@contextlib.contextmanager
def tracing(t, trace: str | None = None, timeline: str | None = None, *, title: str = ""):
    """Within the block, the traced ``t`` (or ``t`` itself when both paths are None); on leaving it without
    an error, every rank's spans are gathered and rank 0 writes the files (collective)."""
    if not trace and not timeline:
        yield t
        return
    _checked(trace, timeline)
    tracer = Tracer(t)
    with current(tracer):
        yield tracer.wrap(t)
    finish(tracer, trace, timeline, title=title)
