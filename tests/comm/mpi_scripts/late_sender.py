"""Run under mpiexec with 3 ranks: not a failure. Rank 1 sends rank 0 its message and exits at once;
rank 2 sends its own 3 s later; rank 0 receives both from ANY_SOURCE, then works 3 s more without
communicating while both others have exited. The watch must not end this job: rank 2 could still send
while rank 0 waited, and a rank that exited is no loss to a rank that no longer waits for it.
"""
import time

import numpy as np

from mpisim.comm import mpi_transport

t = mpi_transport()
if t.rank == 0:
    got = np.zeros(1, dtype=np.int64)
    senders = sorted(t.recv(got, source=-1).source for _ in range(2))
    time.sleep(3.0)
    print(f"rank 0: received from {senders}", flush=True)
else:
    if t.rank == 2:
        time.sleep(3.0)
    t.send(np.array([t.rank], dtype=np.int64), 0)
