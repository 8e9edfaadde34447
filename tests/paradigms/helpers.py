"""Run a paradigm on simulated ranks from Python and get rank 0's result (its last record and model)."""
import numpy as np

from mpisim import centralized
from mpisim.comm import run_simulated
from mpisim.nn import flush_denormals
from mpisim.train import train_centralized

# a small float64 problem where equivalence must hold to rounding: 40 training examples, so batches
# of 12 leave a last batch of 4 (unequal shares on 3 ranks)
SMALL = ["--dataset", "synthetic", "--synthetic-size", "50", "--synthetic-features", "8", "--hidden", "6",
         "--dtype", "float64", "--quiet"]


def parse(module, argv):
    p = module.build_parser()
    args = p.parse_args([str(a) for a in argv])
    module.check_args(p, args)
    return args


def run_sim(module, n, argv):
    """rank 0's return value of ``module.run_rank`` on ``n`` simulated ranks."""
    args = parse(module, [*argv, "--sim", n])

    def body(t, a):
        was_on = flush_denormals()
        try:
            return module.run_rank(t, a)
        finally:
            if was_on is False:
                flush_denormals(False)     # n = 1 runs on the test's own thread
    return run_simulated(n, body, args)[0]


def run_centralized(argv):
    p = centralized.build_parser()
    args = p.parse_args([str(a) for a in argv])
    return train_centralized(args)["model"]


def assert_close(a, b, rtol=1e-9, atol=1e-12):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
