"""``python -m mpisim``: what can be run, one line each, with the command that runs it."""
import sys

TOOLS = [
    ("mpisim.centralized", "train the MLP in one process: the baseline for every paradigm",
     "python -m mpisim.centralized"),
    ("mpisim.allreduce", "data-parallel SGD: the gradient summed by an allreduce (ring, tree, ..., mpi)",
     "mpiexec -n 2 python -m mpisim.allreduce   (or: python -m mpisim.allreduce --sim 4)"),
    ("mpisim.paramserver", "parameter server: sync, async or stale-synchronous (--mode), sharded (--servers)",
     "mpiexec -n 3 python -m mpisim.paramserver   (or: python -m mpisim.paramserver --sim 4)"),
    ("mpisim.fedavg", "federated averaging: 100 clients, IID or non-IID, secure aggregation, DP",
     "mpiexec -n 3 python -m mpisim.fedavg   (or: python -m mpisim.fedavg --sim 3)"),
    ("mpisim.bench", "allreduce algorithms next to MPI's own Allreduce (OSU-style table)",
     "mpiexec -n 2 python -m mpisim.bench"),
    ("mpisim.analysis", "complexity report: every collective simulated next to its alpha-beta-gamma formula",
     "python -m mpisim.analysis --quick   (docs/complexity.md: see its first line)"),
    ("mpisim.calibrate", "measure this machine's alpha, beta, gamma and print them as a --network spec",
     "mpiexec -n 2 python -m mpisim.calibrate --validate"),
    ("kernels", "grayscale and matmul backends (numpy, numba, numba_cuda, cupy): which run here",
     "python -m kernels"),
    ("kernels.bench", "the kernels' GB/s and GFLOP/s next to memcpy, BLAS and cuBLAS",
     "python -m kernels.bench"),
]


def main() -> int:
    print("mpisim: a simulated cluster for distributed ML on pure message passing\n")
    width = max(len(name) for name, _, _ in TOOLS)
    for name, what, cmd in TOOLS:
        print(f"  {name:<{width}}  {what}\n  {'':<{width}}  $ {cmd}")
    print("\nLibrary: mpisim.comm (transports and collectives), mpisim.run_simulated(n, fn). "
          "Add --help to any tool for its options.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
