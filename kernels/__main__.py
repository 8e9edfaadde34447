"""``python -m kernels``: which backends run on this machine, and why the others do not."""
import argparse
import sys

from . import OPS, backend_status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels",
                                 description="List the grayscale and matmul backends (python, numpy, numba, "
                                             "numba_cuda, cupy, cublas) and whether each runs on this machine, "
                                             "with the reason when it does not.",
                                 epilog="Benchmark them: python -m kernels.bench (--help for sizes and backends).")
    ap.parse_args(argv)
    status = backend_status()
    width = max(map(len, status))
    print("kernels backends on this machine (grayscale, matmul):\n")
    for name, why in status.items():
        ops = ", ".join(op for op, names in OPS.items() if name in names)
        print(f"  {name:<{width}}  [{ops}]  {why}")
    print("\nBenchmark them: python -m kernels.bench   (--help for sizes and backends)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
