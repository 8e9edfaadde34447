"""Run under mpiexec: rank 1 leaves before an allreduce the others wait in (argv[1] says how):
sys.exit(0), sys.exit(3), os._exit(0), os._exit(3), or the end of the script (it just skips the call).

The job must end, never hang; where the process's Python runs its exit handlers (not for os._exit) the
others say which rank is gone and the job ends with status 1.
"""
import os
import sys
import time

import numpy as np

from mpisim.comm import allreduce, mpi_transport

how = sys.argv[1]
t = mpi_transport()
print(f"rank {t.rank}: started", flush=True)
if t.rank == 1:
    time.sleep(0.5)                     # the others are in the allreduce by now
    if how == "sys.exit(0)":
        sys.exit(0)
    if how == "sys.exit(3)":
        sys.exit(3)
    if how == "os._exit(0)":
        os._exit(0)
    if how == "os._exit(3)":
        os._exit(3)
    assert how == "end", how
else:
    allreduce(t, np.ones(1000, dtype=np.float32))
    print(f"rank {t.rank}: unreachable", flush=True)
