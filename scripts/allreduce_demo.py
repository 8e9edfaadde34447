"""Count what each allreduce algorithm sends, on real MPI or on simulated ranks: same code.

    mpiexec -n 4 python scripts/allreduce_demo.py            # real processes
    python scripts/allreduce_demo.py --sim 8 --count 1048576  # 8 simulated ranks, one process
"""
import argparse

import numpy as np

from mpisim import run_simulated
from mpisim.comm import ALLREDUCE_ALGORITHMS, allreduce, allgather, choose_allreduce


def demo(t, count: int):
    x = np.full(count, t.rank + 1, dtype=np.float32)
    rows = []
    for algo in ALLREDUCE_ALGORITHMS[1:]:
        t.reset_stats()
        y = allreduce(t, x, "sum", algo, check=False)
        s = t.stats
        mine = np.array([s.messages_sent, s.bytes_sent, s.rounds], dtype=np.int64)
        everyone = allgather(t, mine, check=False)  # counted after the snapshot above
        rows.append((algo, y, everyone))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sim", type=int, metavar="N", help="run on N simulated ranks instead of MPI")
    ap.add_argument("--count", type=int, default=1 << 16, help="float32 elements per rank (default 65536)")
    args = ap.parse_args()
    if args.count < 0:
        ap.error("--count must be >= 0")
    if args.sim is not None:
        if args.sim < 1:
            ap.error("--sim needs at least 1 rank")
        rows, p = run_simulated(args.sim, demo, args.count)[0], args.sim
    else:
        from mpisim.comm import mpi_transport

        t = mpi_transport()
        rows, p = demo(t, args.count), t.size
        if t.rank != 0:
            return
    want = p * (p + 1) / 2
    print(f"allreduce of {args.count} float32 ({args.count * 4} bytes) on {p} ranks; "
          f"auto picks {choose_allreduce(args.count * 4, args.count, p)}")
    print(f"{'algorithm':>20} {'result ok':>9} {'msgs/rank max':>13} {'bytes sent, all ranks':>22} {'rounds':>6}")
    for algo, y, ev in rows:
        print(f"{algo:>20} {str(bool(np.all(y == want))):>9} {ev[:, 0].max():>13} {ev[:, 1].sum():>22} "
              f"{ev[:, 2].max() if args.sim else '-':>6}")


if __name__ == "__main__":
    main()
