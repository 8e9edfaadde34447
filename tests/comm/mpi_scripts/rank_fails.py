"""Run under mpiexec: rank 1 raises inside allreduce (a bad dtype) while the others wait in it.

The job must end at once with a non-zero exit and a message naming rank 1.
"""
import numpy as np

from mpisim.comm import allreduce, mpi_transport

t = mpi_transport()
x = np.ones(1000, dtype=np.float16 if t.rank == 1 else np.float32)
allreduce(t, x)
print(f"rank {t.rank}: unreachable", flush=True)
