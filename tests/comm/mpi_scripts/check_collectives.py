"""Run under mpiexec: every collective over a fixed matrix, checked against MPI's own results.

Each rank counts mismatches; rank 0 prints one summary line and the job exits 1 on any failure.
Data are integer-valued so every reduction order gives the same exact result.
"""
import hashlib
import sys

import numpy as np
from mpi4py import MPI

from mpisim.comm import (
    ALLGATHER_ALGORITHMS,
    ALLREDUCE_ALGORITHMS,
    BCAST_ALGORITHMS,
    REDUCE_SCATTER_ALGORITHMS,
    allgather,
    allreduce,
    barrier,
    bcast,
    gather,
    mpi_transport,
    reduce,
    reduce_scatter,
    scatter,
)

world = MPI.COMM_WORLD
ref = world.Dup()  # MPI's own collectives run here, apart from mpisim's communicator
t = mpi_transport()
p, rank = t.size, t.rank
MPI_OPS = {"sum": MPI.SUM, "prod": MPI.PROD, "max": MPI.MAX, "min": MPI.MIN}
SIZES = [int(s) for s in sys.argv[1].split(",")] if len(sys.argv) > 1 else [0, 1, 5, 1000, 70000]
DTYPES = [np.float32, np.float64, np.int32, np.int64]
checks = failures = 0


def data(n, dtype, op, case):
    rng = np.random.default_rng([case, rank])
    if op == "prod":
        return rng.choice(np.array([-2, -1, 1, 2]), size=n).astype(dtype)
    return rng.integers(-1000, 1001, size=n).astype(dtype)


def expect(name, got, want):
    global checks, failures
    checks += 1
    if got is None or want is None:
        ok = got is None and want is None
    else:
        ok = got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    if not ok:
        failures += 1
        print(f"rank {rank}: MISMATCH {name}", flush=True)


case = 0
for n in SIZES:
    for dtype in DTYPES:
        for op, mop in MPI_OPS.items():
            case += 1
            x = data(n, dtype, op, case)
            want = np.empty_like(x)
            ref.Allreduce(x, want, op=mop)
            for algo in ALLREDUCE_ALGORITHMS:
                got = allreduce(t, x, op, algo)
                expect(f"allreduce n={n} {np.dtype(dtype)} {op} {algo}", got, want)
                # bit-identical on every rank
                mine = np.frombuffer(hashlib.sha256(got.tobytes()).digest(), dtype=np.uint8)
                digests = np.empty((p, mine.size), dtype=np.uint8)
                ref.Allgather(mine, digests)
                expect(f"allreduce identical n={n} {algo}", np.array([len({d.tobytes() for d in digests})]),
                       np.array([1]))
            counts = [len(b) for b in np.array_split(np.arange(n), p)]
            want_rs = np.empty(counts[rank], dtype=dtype)
            ref.Reduce_scatter(x, want_rs, counts, op=mop)
            for algo in REDUCE_SCATTER_ALGORITHMS:
                expect(f"reduce_scatter n={n} {np.dtype(dtype)} {op} {algo}",
                       reduce_scatter(t, x, op, algo), want_rs)
            for root in sorted({0, p - 1}):
                want_r = np.empty_like(x) if rank == root else None
                ref.Reduce(x, want_r, op=mop, root=root)
                expect(f"reduce n={n} {op} root={root}", reduce(t, x, op, root), want_r)
        x = data(n, dtype, "sum", case)
        for root in sorted({0, p // 2, p - 1}):
            want_b = x.copy()
            ref.Bcast(want_b, root=root)
            for algo in BCAST_ALGORITHMS:
                expect(f"bcast n={n} {np.dtype(dtype)} root={root} {algo}", bcast(t, x, root, algo), want_b)
            want_g = np.empty((p, n), dtype=dtype) if rank == root else None
            ref.Gather(x, want_g, root=root)
            expect(f"gather n={n} root={root}", gather(t, x, root), want_g)
            full = np.stack([x + i for i in range(p)])
            want_s = np.empty(n, dtype=dtype)
            ref.Scatter(full, want_s, root=root)
            expect(f"scatter n={n} root={root}", scatter(t, full, root), want_s)
        want_ag = np.empty((p, n), dtype=dtype)
        ref.Allgather(x, want_ag)
        for algo in ALLGATHER_ALGORITHMS:
            expect(f"allgather n={n} {np.dtype(dtype)} {algo}", allgather(t, x, algo), want_ag)
barrier(t)

sums = np.array([failures, checks], dtype=np.int64)
ref.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)            # buffer calls only: nothing is pickled
total, nchecks = int(sums[0]), int(sums[1])
if rank == 0:
    print(f"mpi collectives: {nchecks} checks, {total} failures on {p} ranks", flush=True)
sys.exit(1 if total else 0)
