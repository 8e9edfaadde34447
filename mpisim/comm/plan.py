"""Persistent allreduce: the checks and the schedule paid once, each call only the messages and the sums.

In the spirit of MPI-4's persistent collectives (``MPI_Allreduce_init``, then ``MPI_Start`` /
``MPI_Wait`` on every iteration; MPI Forum, MPI-4.0 standard, section 6.13)::

    plan = allreduce_init(t, grad, op="sum", algorithm="auto")   # collective: checks, agrees, plans
    for step in range(steps):
        ...                     # write this step's values into grad (the same buffer)
        plan()                  # the reduction of every rank's grad, in plan.out

At init every rank checks its arguments, runs the cross-rank consistency check once (length,
dtype, op, algorithm and the algorithm ``auto`` resolved to must agree, else the same
``ValueError`` on every rank), chooses the algorithm and records its schedule: the algorithm
runs once on a recorder (:class:`mpisim.comm._common.Recording`) that notes each point-to-point
call and each local step (reduction, copy, NaN canonicalization) with the buffer views it
touches, and moves nothing. A call replays that list: the same transport calls in the same
order with the same bytes, so results are bit-identical to :func:`mpisim.comm.allreduce` with
the same algorithm, and the counters (messages, bytes, rounds, virtual time) equal those of
``allreduce(..., check=False)``. A transport with ``prepare`` (the MPI one) also does its
argument checks and buffer specs once, at init.

The plan is bound to ``array`` and ``out`` (default: a new array, reused by every call): write
new values into ``array`` between calls. Every rank must call its plans in the same order, as
with MPI. Algorithms outside :data:`RECORDED` (registered later, e.g. by another module) are not
recorded: a call runs the algorithm as :func:`allreduce` does, still without the per-call
checks.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from ._common import (
    TAG_ALLREDUCE,
    Recording,
    check_algorithm,
    check_array,
    check_op,
    consistency_check,
)
from .allreduce import check_out, choose_allreduce
from .registry import choices, dispatch, get
from .transport import ANY_SOURCE, ANY_TAG, Status, Transport

__all__ = ["AllreducePlan", "RECORDED", "allreduce_init"]

# the algorithms whose every data movement goes through the transport or _common's local steps
# (combine, copy, canonical_nans): only these can be recorded and replayed
RECORDED = frozenset({"naive", "tree", "recursive_doubling", "ring", "rabenseifner"})


class _Pending:
    """A recorded isend/irecv: the replayed request lives in ``req`` between its start and its wait."""

    __slots__ = ("req", "recorder", "status")

    def __init__(self, recorder: "_Recorder", status: Status | None):
        self.req: Any = None
        self.recorder, self.status = recorder, status

    def wait(self) -> Status | None:
        self.recorder.steps.append(self._wait)
        return self.status

    def test(self) -> bool:
        raise ValueError("allreduce_init: an algorithm that tests requests cannot be recorded")

    def _wait(self) -> None:
        self.req.wait()
        self.req = None


class _Recorder(Recording):
    """Stands in for transport ``t`` while an algorithm runs once: notes its calls, moves nothing."""

    def __init__(self, t: Transport):
        self.t, self.rank, self.size = t, t.rank, t.size
        self.parent, self.members, self.stats = t.parent, t.members, t.stats
        self.steps: list[Callable[[], Any]] = []
        prepare = getattr(t, "prepare", None)
        self._prepare = prepare if prepare is not None else (
            lambda call, *args: functools.partial(getattr(t, call), *args))

    def send(self, buf: np.ndarray, dest: int, tag: int = 0) -> None:
        self.steps.append(self._prepare("send", buf, dest, tag))

    def recv(self, buf: np.ndarray, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> Status:
        self.steps.append(self._prepare("recv", buf, source, tag))
        return Status(source, tag, buf.nbytes)

    def sendrecv(self, sendbuf: np.ndarray, dest: int, recvbuf: np.ndarray, source: int,
                 sendtag: int = 0, recvtag: int = ANY_TAG) -> Status:
        self.steps.append(self._prepare("sendrecv", sendbuf, dest, recvbuf, source, sendtag, recvtag))
        return Status(source, recvtag, recvbuf.nbytes)

    def _start(self, call: str, pending: _Pending, *args: Any) -> Callable[[], None]:
        fn = getattr(self.t, call)

        def start() -> None:
            pending.req = fn(*args)
        return start

    def isend(self, buf: np.ndarray, dest: int, tag: int = 0) -> _Pending:
        pending = _Pending(self, None)
        self.steps.append(self._start("isend", pending, buf, dest, tag))
        return pending

    def irecv(self, buf: np.ndarray, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> _Pending:
        pending = _Pending(self, Status(source, tag, buf.nbytes))
        self.steps.append(self._start("irecv", pending, buf, source, tag))
        return pending

    def reduced(self, nbytes: int) -> None:
        self.steps.append(functools.partial(self.t.reduced, nbytes))

    def compute(self, flops: float) -> None:
        self.steps.append(functools.partial(self.t.compute, flops))

    def local(self, fn: Callable[..., None], *args: Any) -> None:
        self.steps.append(functools.partial(fn, self.t, *args))

    def reset_stats(self) -> None:
        raise ValueError("allreduce_init: an algorithm that resets counters cannot be recorded")

    def split(self, color: int | None, key: int = 0) -> None:
        raise ValueError("allreduce_init: an algorithm that splits the transport cannot be recorded")


class AllreducePlan:
    """A planned allreduce (see the module docstring); made by :func:`allreduce_init`.

    ``plan()`` (or ``plan(array)`` with the bound array) runs it and returns ``out``. Attributes:
    ``array``, ``out``, ``op``, ``algorithm`` (what runs: ``auto`` resolved), ``recorded`` (True
    when the schedule is a recorded list of steps) and ``steps`` (how many).
    """

    def __init__(self, t: Transport, array: np.ndarray, out: np.ndarray, op: str, algorithm: str):
        self.t, self.array, self.out, self.op, self.algorithm = t, array, out, op, algorithm
        self._shape, self._dtype = array.shape, array.dtype
        ufunc = check_op(op, "allreduce_init")
        w, src = out.reshape(-1), array.reshape(-1)
        if t.size == 1:
            self._steps: list[Callable[[], Any]] = [functools.partial(np.copyto, out, array)]
            self.recorded = True
        elif algorithm in RECORDED:
            rec = _Recorder(t)
            get("allreduce", algorithm).run(rec, w, ufunc, TAG_ALLREDUCE, src)
            self._steps, self.recorded = rec.steps, True
        else:
            self._steps = [functools.partial(get("allreduce", algorithm).run, t, w, ufunc, TAG_ALLREDUCE, src)]
            self.recorded = False

    @property
    def steps(self) -> int:
        """The number of recorded steps a call replays (point-to-point calls and local steps)."""
        return len(self._steps)

    def __repr__(self) -> str:
        return (f"AllreducePlan({self._dtype}[{self.array.size}], op={self.op!r}, algorithm={self.algorithm!r}, "
                f"rank={self.t.rank}, size={self.t.size})")

    def __call__(self, array: np.ndarray | None = None) -> np.ndarray:
        """Run the planned allreduce on the bound array's current values; return ``out``.

        ``array``, when given, must be the array the plan was made for (a ValueError otherwise:
        a plan does not move to another buffer; make a new plan for it).
        """
        if array is not None and array is not self.array:
            self._refuse(array)
        if self.array.shape != self._shape:   # the bound array's shape was reassigned in place
            self._refuse(self.array)
        if self.recorded and self.t.size > 1:  # a replay is one collective call (a traced run's span)
            return dispatch("allreduce", self.algorithm, self._replay, self.t, self.out)
        return self._replay()

    def _replay(self, t: Transport | None = None, out: np.ndarray | None = None) -> np.ndarray:
        for step in self._steps:
            step()
        return self.out

    run = __call__

    def _refuse(self, array: Any) -> None:
        what = (f"shape {getattr(array, 'shape', None)} and dtype {getattr(array, 'dtype', None)}"
                if isinstance(array, np.ndarray) else f"a {type(array).__name__}")
        raise ValueError(f"allreduce plan: it was made for one array of shape {self._shape} and dtype "
                         f"{self._dtype}, got {what}"
                         + (" (another buffer)" if isinstance(array, np.ndarray) and array.shape == self._shape
                            and array.dtype == self._dtype else "")
                         + "; copy the values into the planned array, or make a new plan with allreduce_init")


def allreduce_init(t: Transport, array: np.ndarray, op: str = "sum", algorithm: str = "auto", *,
                   out: np.ndarray | None = None, check: bool | None = None) -> AllreducePlan:
    """Plan an allreduce of ``array`` (collective: every rank calls it with the same arguments).

    Arguments as :func:`mpisim.comm.allreduce`; ``out`` defaults to a new array that every call
    fills and returns. The cross-rank check runs here once (unless ``check=False``, or
    ``MPISIM_CHECK=0``), and also compares the algorithm ``auto`` chose, so that ranks that
    would run different schedules fail at init with the same ValueError instead of hanging.
    """
    name = "allreduce_init"
    check_array(array, name)
    check_op(op, name)
    check_algorithm(algorithm, choices("allreduce"), name)
    if out is None:
        out = np.empty_like(array)
    else:
        check_out(out, array, name)
    chosen = choose_allreduce(array.nbytes, array.size, t.size) if algorithm == "auto" else algorithm
    # the fields of allreduce's own check (so a plan against a plain call is named as such), with auto's
    # choice in the algorithm: ranks whose tables disagree fail here, not in a hang
    consistency_check(t, name, check, length=array.size, dtype=array.dtype, op=op,
                      algorithm=f"auto:{chosen}" if algorithm == "auto" else algorithm)
    return AllreducePlan(t, array, out, op, chosen)
