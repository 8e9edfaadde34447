"""Sub-communicators: what ``t.split(color, key=0)`` computes, and how a group's counters roll up.

``split`` is MPI's ``Comm_split`` on a transport, collective over all of its ranks: ranks that
pass the same ``color`` (an int >= 0) form one group, ordered inside it by ``(key, rank)``; a
rank that passes ``color=None`` (MPI_UNDEFINED) takes part in the call and gets None. A group is
a transport of its own (the whole :class:`~mpisim.comm.transport.Transport` protocol, so every
collective runs on it unchanged) with ``parent`` (the transport it was split from) and
``members`` (the parent ranks of group ranks 0..size-1); it can be split again.

Counters roll up: each count is added to the group's ``stats`` and to its parent's, and so on
up to the world transport, so a world transport's counters say what its rank moved in all. The
chain holds the transports, never their :class:`~mpisim.comm.transport.Stats`: ``reset_stats``
replaces a Stats object and the next count must land in the new one. The split's own exchange
is not counted anywhere (MPI's Comm_split messages are invisible to mpisim too).
"""
from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any, Iterator, Sequence

import numpy as np

__all__ = ["check_split", "count_received", "count_reduced", "count_sent", "count_time", "group_of",
           "uncounted"]

C_INT = 2**31  # MPI takes color and key as C ints


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_split(color: Any, key: Any) -> None:
    """Raise ValueError unless ``color`` is None or an int in [0, 2**31) and ``key`` an int in [0, 2**31)."""
    if color is not None and not (_is_int(color) and 0 <= color < C_INT):
        raise ValueError(f"split: color must be an int in [0, 2**31) or None (MPI_UNDEFINED), got {color!r}")
    if not (_is_int(key) and 0 <= key < C_INT):
        raise ValueError(f"split: key must be an int in [0, 2**31), got {key!r}")


def group_of(table: Sequence[tuple[int | None, int]], rank: int) -> tuple[int, ...] | None:
    """The ranks in ``rank``'s group, ordered by (key, rank), from every rank's (color, key); None for color None."""
    color = table[rank][0]
    if color is None:
        return None
    return tuple(sorted((r for r, (c, _) in enumerate(table) if c == color), key=lambda r: (table[r][1], r)))


# -- roll-up: ``chain`` is (transport, its parent, ..., the world transport) ----------------------------
def count_sent(chain: Sequence[Any], nbytes: int) -> None:
    """One message of ``nbytes`` sent, on every level."""
    for t in chain:
        s = t.stats
        s.messages_sent += 1
        s.bytes_sent += nbytes


def count_received(chain: Sequence[Any], nbytes: int) -> None:
    """One message of ``nbytes`` received, on every level."""
    for t in chain:
        s = t.stats
        s.messages_received += 1
        s.bytes_received += nbytes


def count_time(chain: Sequence[Any], seconds: float) -> None:
    """``seconds`` spent inside a transport call, on every level."""
    for t in chain:
        t.stats.comm_time += seconds


def count_reduced(chain: Sequence[Any], nbytes: int) -> None:
    """A reduction over ``nbytes`` bytes, on every level."""
    for t in chain:
        t.stats.bytes_reduced += nbytes


@contextlib.contextmanager
def uncounted(t: Any) -> Iterator[None]:
    """Leave the counters of ``t`` and its ancestors as they were before the block (same Stats objects)."""
    chain = []
    while t is not None:
        chain.append((t, replace(t.stats)))
        t = t.parent
    try:
        yield
    finally:
        for t, before in chain:
            t.stats.__dict__.update(vars(before))
