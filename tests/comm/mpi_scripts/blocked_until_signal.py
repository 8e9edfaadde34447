"""Run under mpiexec with 2 ranks inside mpisim's launcher: every rank waits in a receive no rank will
ever satisfy (blocked inside MPI, where Python cannot run a signal handler), after saying so. The test
then sends the launcher SIGTERM or SIGINT, which it forwards to the ranks: the job must end with 143 or
130 and say it was interrupted, not hang.
"""
import sys

import numpy as np

from mpisim.train.distributed import launch
from mpisim.train.options import TrainOptions


def body(t):
    print(f"rank {t.rank}: blocked", flush=True)
    t.recv(np.zeros(1, dtype=np.int64), source=1 - t.rank, tag=99)


sys.exit(launch("blocked test", TrainOptions(), body))
