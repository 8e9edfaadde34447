"""Run under mpiexec: persistent plans against MPI's Allreduce and mpisim's allreduce, then a mismatched init.

Integer-valued data make every reduction order exact, so a plan must equal MPI's result; a plan
must also equal allreduce() with the same algorithm bit for bit (float data, any order), count
the same messages, and refuse a second array. Rank 0 prints 'plans ok on N ranks' at the end.
"""
import sys

import numpy as np
from mpi4py import MPI

from mpisim.comm import ALLREDUCE_ALGORITHMS, DTYPES, allreduce, mpi_transport
from mpisim.comm.plan import allreduce_init

ref = MPI.COMM_WORLD.Dup()
t = mpi_transport(abort_on_error=False)
rank, p = t.rank, t.size
MPI_OPS = {"sum": MPI.SUM, "prod": MPI.PROD, "max": MPI.MAX, "min": MPI.MIN}
failures = 0


def fail(what: str) -> None:
    global failures
    failures += 1
    print(f"rank {rank}: MISMATCH {what}", flush=True)


for n in (0, 1, 5, 1000, 16384):
    for dtype in DTYPES:
        for op, mop in MPI_OPS.items():
            rng = np.random.default_rng([n, rank])
            base = (rng.choice(np.array([-2, -1, 1, 2]), size=n) if op == "prod"
                    else rng.integers(-1000, 1001, size=n)).astype(dtype)
            x = base.copy()
            want = np.empty_like(x)
            ref.Allreduce(x, want, op=mop)
            for algo in ALLREDUCE_ALGORITHMS:
                x[...] = base
                plan = allreduce_init(t, x, op, algo)
                if not np.array_equal(plan(), want):
                    fail(f"plan n={n} {np.dtype(dtype)} {op} {algo} vs MPI")
                if np.dtype(dtype).kind == "f" and op == "sum":   # order-sensitive values: same bits as allreduce
                    x[...] = rng.standard_normal(n)
                    t.reset_stats()
                    plain = allreduce(t, x, op, algo, check=False)
                    counts = t.stats.messages_sent, t.stats.bytes_sent, t.stats.bytes_reduced
                    t.reset_stats()
                    if plan().tobytes() != plain.tobytes():
                        fail(f"plan n={n} {np.dtype(dtype)} {algo} vs allreduce")
                    if (t.stats.messages_sent, t.stats.bytes_sent, t.stats.bytes_reduced) != counts:
                        fail(f"plan n={n} {algo} counts {t.stats} vs {counts}")
                try:
                    plan(x.copy())
                    fail("a second array was accepted")
                except ValueError:
                    pass

# a mismatched init raises the same ValueError on every rank
try:
    allreduce_init(t, np.ones(8, np.float32), "max" if rank == 1 else "sum")
    print(f"rank {rank}: no error", flush=True)
    failures += 1
except ValueError as exc:
    print(f"rank {rank}: ValueError: {exc}", flush=True)

total = np.array([failures])
ref.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
if rank == 0:
    print(f"plans {'ok' if total[0] == 0 else f'FAILED ({total[0]})'} on {p} ranks", flush=True)
sys.exit(1 if total[0] else 0)
