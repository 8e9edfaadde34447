"""Run a paradigm on simulated ranks from Python and get rank 0's result (its last record and model)."""
import numpy as np

from mpisim.centralized import train_centralized
from mpisim.comm import run_simulated
from mpisim.nn import flush_denormals

# a small float64 problem where equivalence must hold to rounding: 40 training examples, so batches
# of 12 leave a last batch of 4 (unequal shares on 3 ranks)
SMALL = ["--dataset", "synthetic", "--synthetic-size", "50", "--synthetic-features", "8", "--hidden", "6",
         "--dtype", "float64", "--quiet"]


def parse(module, argv):
    """The parsed and checked command line: ``.train`` (shared options) and ``.opts`` (the paradigm's)."""
    return module.PARADIGM.parse(argv)


def run_sim(module, n, argv):
    """rank 0's return value of the paradigm on ``n`` simulated ranks."""
    cfg = parse(module, [*argv, "--sim", n])

    def body(t, c):
        was_on = flush_denormals()
        try:
            return module.PARADIGM.run_rank(t, c)
        finally:
            if was_on is False:
                flush_denormals(False)     # n = 1 runs on the test's own thread
    return run_simulated(n, body, cfg, network=cfg.train.network)[0]


def run_centralized(argv):
    return train_centralized(argv)["model"]


def assert_close(a, b, rtol=1e-9, atol=1e-12):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
