"""Run under mpiexec -n 3 or 4 (any n >= 2 works): split into two groups, run collectives in each,
check their results and counters.

Ranks split by parity with keys that reverse their order, so group rank and world rank differ.
Expected values are computed from the world rank alone. Any failure raises (the abort hook ends
the job naming the rank); rank 0 prints one line when every rank passed.
"""
import numpy as np
from mpi4py import MPI

from mpisim.comm import ALLREDUCE_ALGORITHMS, allgather, allreduce, bcast, mpi_transport

t = mpi_transport()
p, rank = t.size, t.rank
color = rank % 2
mates = [r for r in range(p) if r % 2 == color]
want_members = tuple(sorted(mates, key=lambda r: -r))  # key p - r: the highest world rank first

t.reset_stats()
g = t.split(color, key=p - rank)
assert t.stats.messages_sent == 0, "the split's own messages are not counted"
assert g.parent is t and g.members == want_members, (g.members, want_members)
assert (g.rank, g.size) == (want_members.index(rank), len(mates))

x = np.arange(6, dtype=np.int64) + rank
for algo in ALLREDUCE_ALGORITHMS:
    got = allreduce(g, x, "sum", algo)
    assert np.array_equal(got, sum(np.arange(6) + r for r in mates)), (algo, got)
root_world = want_members[-1]
got = bcast(g, x, root=g.size - 1)
assert np.array_equal(got, np.arange(6) + root_world), got
got = allgather(g, x)
assert np.array_equal(got, np.stack([np.arange(6) + r for r in want_members])), got

# the world's counters hold the group's traffic (the world moved nothing of its own yet) ...
for name in ("messages_sent", "bytes_sent", "messages_received", "bytes_received", "bytes_reduced"):
    assert getattr(t.stats, name) == getattr(g.stats, name), name
assert (g.stats.messages_sent > 0) == (g.size > 1)
# ... and then its own on top; resetting the group's counters leaves the world's
before = t.stats.messages_sent
g.reset_stats()
allreduce(t, x, "sum", "ring")
assert t.stats.messages_sent > before and g.stats.messages_sent == 0

# MPI_UNDEFINED, and a nested split of a group
lone = t.split(None if rank == p - 1 else 0)
assert (lone is None) == (rank == p - 1)
if lone is not None:
    assert lone.size == p - 1 and lone.members == tuple(range(p - 1))
sub = g.split(0)
assert sub.parent is g and sub.members == tuple(range(g.size))
sent = t.stats.messages_sent
assert np.array_equal(allreduce(sub, np.ones(3)), np.full(3, float(g.size)))
assert t.stats.messages_sent - sent == sub.stats.messages_sent == g.stats.messages_sent

MPI.COMM_WORLD.Barrier()
if rank == 0:
    print(f"split groups ok on {p} ranks", flush=True)
