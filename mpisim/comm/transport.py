"""The point-to-point protocol every collective is written against.

A transport is one rank's endpoint: ``rank``, ``size``, and blocking and non-blocking
send/receive on contiguous numpy buffers. Two implementations exist: :mod:`mpisim.comm.mpi`
(mpi4py, one process per rank) and :mod:`mpisim.comm.sim` (ranks as greenlets of one thread, in-process).

Semantics shared by both (they are MPI's):

* ``send`` returns once the buffer may be reused by the caller.
* Messages from one sender to one receiver with the same tag arrive in the order sent.
* ``recv`` fills a caller-owned buffer; the incoming message must have exactly the buffer's
  byte size, otherwise :class:`CommError` is raised (never a silent partial fill).
* ``source=ANY_SOURCE`` / ``tag=ANY_TAG`` match any sender / tag; ``recv`` returns a
  :class:`Status` naming the actual source, tag and byte count.

Sub-communicators (MPI's ``Comm_split``; :mod:`mpisim.comm.group`): ``t.split(color, key=0)``,
collective over every rank of ``t``, returns a transport for the ranks that passed the same
``color`` (an int >= 0), ordered by ``(key, rank)``, or None for ``color=None``. It speaks this
whole protocol in its own ranks, so every collective runs on it unchanged; its messages never
match those of ``t`` or of another group; it knows ``parent`` (``t``) and ``members`` (the ranks
in ``t`` of its ranks 0..size-1), and can be split again. Its counters roll up: what it moves is
counted in its own ``stats`` and in its parent's, up to the world transport. A world transport
has ``parent`` None and ``members`` 0..size-1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "ANY_SOURCE",
    "ANY_TAG",
    "CommError",
    "Request",
    "Stats",
    "Status",
    "Transport",
    "as_buffer",
]

ANY_SOURCE = -1
ANY_TAG = -1


class CommError(RuntimeError):
    """A message could not be delivered as asked (size mismatch, bad peer, aborted job)."""


@dataclass
class Status:
    """What a completed receive matched: the actual source, tag and size in bytes."""

    source: int
    tag: int
    nbytes: int


@dataclass
class Stats:
    """Per-rank counters. ``comm_time`` is wall seconds spent inside transport calls.

    ``rounds`` is a logical clock (simulated transport only; 0 under MPI): each send takes
    one round and a receive cannot complete before the round its message was sent in, so
    the largest ``rounds`` over all ranks is the depth of the communication schedule (for
    example ceil(log2 p) for a binomial broadcast). ``bytes_reduced`` counts the bytes of vector
    the collectives reduced (the gamma term of the cost model).
    """

    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    comm_time: float = 0.0
    rounds: int = 0
    bytes_reduced: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@runtime_checkable
class Request(Protocol):
    """A pending non-blocking operation."""

    def wait(self) -> Status | None:
        """Block until the operation is complete; a receive returns its :class:`Status`."""
        ...

    def test(self) -> bool:
        """True when the operation has completed (``wait`` will then not block)."""
        ...


@runtime_checkable
class Transport(Protocol):
    """One rank's endpoint. Collectives use only point-to-point calls, ``rank``, ``size`` and ``reduced``."""

    rank: int
    size: int
    stats: Stats
    parent: Transport | None
    members: tuple[int, ...]

    def send(self, buf: np.ndarray, dest: int, tag: int = 0) -> None: ...

    def recv(self, buf: np.ndarray, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> Status: ...

    def sendrecv(
        self,
        sendbuf: np.ndarray,
        dest: int,
        recvbuf: np.ndarray,
        source: int,
        sendtag: int = 0,
        recvtag: int = ANY_TAG,
    ) -> Status: ...

    def isend(self, buf: np.ndarray, dest: int, tag: int = 0) -> Request: ...

    def irecv(self, buf: np.ndarray, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> Request: ...

    def reset_stats(self) -> None: ...

    def reduced(self, nbytes: int) -> None:
        """Count a reduction over ``nbytes`` bytes (the simulated network charges gamma per byte)."""
        ...

    def compute(self, flops: float) -> None:
        """Declare ``flops`` of local work (charged in virtual time by a simulated network with a rate)."""
        ...

    def split(self, color: int | None, key: int = 0) -> Transport | None:
        """The group of the ranks that pass the same ``color``, ordered by (key, rank); None for color None."""
        ...


def as_buffer(buf: Any, what: str = "buffer") -> np.ndarray:
    """Check that ``buf`` is a C-contiguous numpy array usable as a message buffer."""
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{what} must be a numpy.ndarray, got {type(buf).__name__}")
    if not buf.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (got strides {buf.strides} for shape {buf.shape}); "
                         "pass numpy.ascontiguousarray(x)")
    return buf


def check_peer(peer: int, size: int, what: str, allow_any: bool = False) -> None:
    """Raise ``ValueError`` unless ``peer`` is a valid rank (or ANY_SOURCE when allowed)."""
    if allow_any and peer == ANY_SOURCE:
        return
    if not isinstance(peer, (int, np.integer)) or not 0 <= peer < size:
        raise ValueError(f"{what} must be a rank in [0, {size}), got {peer!r}")
