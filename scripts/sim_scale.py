"""How far the simulated cluster scales: wall time, messages and microseconds per message of an allreduce.

    python scripts/sim_scale.py                        # 1 MiB float32, ring and rabenseifner, p = 64 .. 4096
    python scripts/sim_scale.py --ranks 1024 --algorithms ring --repeat 2   # the same virtual time twice?
    python scripts/sim_scale.py --quick                # a few seconds (the tests run it)

Each row runs one allreduce on p simulated ranks (greenlets of one thread) under a network model and prints
the wall time of the whole run (start-up included), the messages all ranks sent, the wall time per message,
the virtual time of the allreduce under the model, and, with ``--repeat 2``, whether every rank's virtual
clock came out the same in every run. Runs that would send more than ``--max-messages`` messages are
listed with their message count and skipped (ring at 4,096 ranks sends 33.5 million).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from mpisim.comm import allreduce
from mpisim.comm.network import format_seconds, parse_network
from mpisim.comm.registry import get
from mpisim.comm.formulas import Call
from mpisim.comm.sim import SimCluster, _available_memory, _gib, memory_estimate

SIZE_UNITS = {"": 1, "K": 2**10, "KiB": 2**10, "M": 2**20, "MiB": 2**20}


def parse_size(text: str) -> int:
    """'1M', '256K', '4096' -> bytes (a multiple of 4: float32 elements)."""
    for unit in sorted(SIZE_UNITS, key=len, reverse=True):
        if unit and text.endswith(unit):
            number, scale = text[: -len(unit)], SIZE_UNITS[unit]
            break
    else:
        number, scale = text, 1
    try:
        n = int(float(number) * scale)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected a size such as 1M, 256K or 4096, got {text!r}") from None
    if n < 4 or n % 4 or n > 2**30:
        raise argparse.ArgumentTypeError(f"size must be a multiple of 4 bytes between 4 B and 1 GiB, got {text!r}")
    return n


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"rank counts must be >= 2, got {text!r}")
    return values


def one_run(p: int, algorithm: str, nbytes: int, network: str) -> tuple[float, int, list[int]]:
    """(wall seconds, messages sent by all ranks, every rank's virtual clock in ticks)."""
    n = nbytes // 4

    def rank(t):
        a = np.ones(n, np.float32)
        allreduce(t, a, algorithm=algorithm, out=a, check=False)
        if a[0] != p:  # ones summed over p ranks
            raise AssertionError(f"rank {t.rank}: allreduce gave {a[0]}, expected {p}")
        return t.stats.messages_sent, t.clock

    start = time.perf_counter()
    out = SimCluster(p, network=network, rank_bytes=3 * nbytes).run(rank)
    wall = time.perf_counter() - start
    return wall, sum(m for m, _ in out), [c for _, c in out]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sim_scale", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int_list, default=[64, 256, 1024, 4096], metavar="P,P,...",
                    help="simulated rank counts (default 64,256,1024,4096)")
    ap.add_argument("--algorithms", default="ring,rabenseifner", metavar="A,A,...",
                    help="allreduce algorithms (default ring,rabenseifner)")
    ap.add_argument("--size", type=parse_size, default=2**20, metavar="BYTES",
                    help="bytes per rank, float32 (default 1M)")
    ap.add_argument("--network", default="10gbe", help="network model of the virtual clocks (default 10gbe)")
    ap.add_argument("--repeat", type=int, default=1, metavar="R",
                    help="run each case R times and check the virtual clocks are identical (default 1)")
    ap.add_argument("--max-messages", type=float, default=5e6, metavar="M",
                    help="skip cases that send more messages than this (default 5e6, about 45 s)")
    ap.add_argument("--quick", action="store_true", help="p = 16, 64 at 64 KiB, twice each: a few seconds")
    args = ap.parse_args(argv)
    if args.quick:
        args.ranks, args.size, args.repeat = [16, 64], 2**16, 2
    if args.repeat < 1:
        ap.error(f"--repeat must be >= 1, got {args.repeat}")
    try:
        net = parse_network(args.network)
        for p in args.ranks:
            net.check_size(p)
    except ValueError as e:
        ap.error(str(e))
    algorithms = [a.strip() for a in args.algorithms.split(",")]
    for a in algorithms:
        try:
            get("allreduce", a)
        except ValueError as e:
            ap.error(str(e))
    have = _available_memory()
    print(f"allreduce of {args.size:,} B float32 per rank on simulated ranks, network {args.network}; "
          f"wall time of the whole run on this machine", flush=True)
    print(f"{'ranks':>6} {'algorithm':<14} {'messages':>12} {'wall':>9} {'us/msg':>8} {'virtual time':>14}"
          f"{'  same in ' + str(args.repeat) + ' runs' if args.repeat > 1 else ''}")
    failed = False
    for p in args.ranks:
        for a in algorithms:
            msgs, _ = get("allreduce", a).traffic(Call(p=p, count=args.size // 4, itemsize=4,
                                                       contention=net.contention, ppn=net.ranks_per_node(p)))
            need = memory_estimate(p, 3 * args.size)
            if msgs > args.max_messages:
                print(f"{p:>6} {a:<14} {msgs:>12,} {'skipped: more than --max-messages':>34}", flush=True)
                continue
            if have is not None and need > have:
                print(f"{p:>6} {a:<14} {msgs:>12,}   skipped: needs about {_gib(need)}, {_gib(have)} available",
                      flush=True)
                continue
            runs = [one_run(p, a, args.size, args.network) for _ in range(args.repeat)]
            wall, sent, clocks = min(runs, key=lambda r: r[0])
            same = all(r[2] == runs[0][2] for r in runs)
            failed |= not same or sent != msgs
            note = f"  {'yes' if same else 'NO'}" if args.repeat > 1 else ""
            if sent != msgs:
                note += f"  (sent {sent:,}, the formula says {msgs:,})"
            print(f"{p:>6} {a:<14} {sent:>12,} {wall:>8.2f}s {wall / sent * 1e6:>8.1f} "
                  f"{format_seconds(max(clocks) * 1e-15):>14}{note}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
