"""Run under ``mpiexec -disable-auto-cleanup``, each rank through ``sh -c`` (so that the launcher does
not end the job itself when rank 1 is killed): rank 1 starts sending rank 0 a large message and is then
killed (SIGKILL); rank 0 receives it afterwards, so MPI fails the transfer there (what a survivor sees
when the launcher is slower than it). Rank 0 must say that rank 1 is gone, not that it failed itself.
argv[1]: "script" (a plain script: the abort hook reports) or "launch" (inside mpisim's launcher).
"""
import os
import signal
import sys
import time

import numpy as np

from mpisim.comm import mpi_transport

how = sys.argv[1]
# with -disable-auto-cleanup MPICH's launcher tells the survivors of a dead process by SIGUSR1 (whose
# default action ends them before they reach the receive): this test is about what MPI itself reports
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
BIG = np.ones(8_000_000, dtype=np.float32)      # 32 MB: sent by rendezvous, read from the sender's memory


def body(t):
    if t.rank == 1:
        t.isend(BIG, 0)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(2.0)                             # rank 1 is dead by now
    t.recv(np.empty_like(BIG), 1)
    print(f"rank {t.rank}: unreachable", flush=True)


if how == "launch":
    from mpisim.train.distributed import launch
    from mpisim.train.options import TrainOptions
    sys.exit(launch("killed-peer test", TrainOptions(), body))
body(mpi_transport())
