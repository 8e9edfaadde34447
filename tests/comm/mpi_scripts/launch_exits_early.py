"""Run under mpiexec: a run started by mpisim's launcher (as every trainer is) in which rank 1 leaves
before the collective the others wait in: ``sys.exit(3)`` inside the run, or its part of the run returns
early (a bug in a paradigm). The job must end with status 1 naming rank 1.
"""
import sys

import numpy as np

from mpisim.comm import allreduce
from mpisim.train.distributed import launch
from mpisim.train.options import TrainOptions

how = sys.argv[1]


def body(t):
    if t.rank == 1:
        if how == "sys.exit(3)":
            sys.exit(3)
        return None                     # "return": this rank's part ends early
    allreduce(t, np.ones(1000, dtype=np.float32))
    print(f"rank {t.rank}: unreachable", flush=True)


sys.exit(launch("early-exit test", TrainOptions(), body))
