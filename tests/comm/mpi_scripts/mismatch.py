"""Run under mpiexec: ranks pass different lengths; every rank must raise the same ValueError."""
import sys

import numpy as np

from mpisim.comm import allreduce, mpi_transport

t = mpi_transport(abort_on_error=False)
try:
    allreduce(t, np.ones(10 + t.rank, dtype=np.float32))
except ValueError as exc:
    print(f"rank {t.rank}: ValueError: {exc}", flush=True)
    sys.exit(0)
print(f"rank {t.rank}: no error", flush=True)
sys.exit(3)
