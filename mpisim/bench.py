"""OSU-style allreduce benchmark: mpisim's algorithms next to MPI's own Allreduce.

    mpiexec -n 2 python -m mpisim.bench
    mpiexec -n 4 python -m mpisim.bench --min-size 1M --max-size 64M --algorithms ring,rabenseifner

For every message size (bytes per rank) and algorithm it prints the time per call (the slowest
rank's average), algbw = size / time and busbw = algbw * 2(p-1)/p (the definitions of
nccl-tests: busbw is what each link carries in a ring, comparable across rank counts), and the
ratio of the time to MPI's own ``MPI_Allreduce`` measured in the same run on the same buffers.
Each algorithm is timed twice: the plain call ``allreduce(t, x, op, algorithm, out=...)`` and, as
``plan:<algorithm>``, a persistent plan (``allreduce_init`` once, then ``plan()`` per call;
:mod:`mpisim.comm.plan`) whose argument and cross-rank checks run once, at init. Rank 0 prints;
each size's rows are printed as soon as they are measured, a progress line goes to stderr before
each size once the sweep has run for a few seconds, and the run ends with the small-message
targets (4 KiB and 64 KiB, where measured) next to their figures. Only buffer calls are used.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time

import numpy as np

from .comm import ALLREDUCE_ALGORITHMS, allreduce, choose_allreduce, mpi_transport
from .comm.allreduce import load_allreduce_table
from .comm.plan import allreduce_init

# the small-message targets: a planned allreduce at most this many times MPI_Allreduce's time
TARGETS = {4 << 10: 3.0, 64 << 10: 1.5}
PROGRESS_AFTER = 5.0  # seconds into the sweep before progress lines start
BUFFERS = 4           # message-sized buffers a rank holds at the largest size: input, MPI's output, mpisim's, scratch

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


def parse_size(text: str) -> int:
    """'4', '64K', '1M', '64MiB' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 4, 64K, 1M, 64M)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def fmt_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def build_parser() -> argparse.ArgumentParser:
    from .train.options import Parser        # a usage error is one line (said by rank 0 alone under mpiexec)
    ap = Parser(
        prog="python -m mpisim.bench",
        description="Allreduce benchmark: mpisim's hand-written algorithms next to MPI_Allreduce. "
                    "Run it under mpiexec, e.g. 'mpiexec -n 2 python -m mpisim.bench'.")
    ap.add_argument("--min-size", type=parse_size, default=4, help="smallest message, bytes per rank (default 4)")
    ap.add_argument("--max-size", type=parse_size, default=64 << 20, help="largest message (default 64M)")
    ap.add_argument("--factor", type=int, default=2, help="size step factor (default 2)")
    ap.add_argument("--algorithms", default=",".join(a for a in ALLREDUCE_ALGORITHMS),
                    help="comma-separated mpisim algorithms to time (default: all, with auto)")
    ap.add_argument("--iters", type=int, default=100,
                    help="timed calls per size at most; large sizes use fewer, down to --min-iters (default 100)")
    ap.add_argument("--min-iters", type=int, default=5, help="timed calls per size at least (default 5)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved measurements per size and contender; the median is reported (default 3)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls before each measurement (default 3)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "int32", "int64"])
    ap.add_argument("--op", default="sum", choices=["sum", "prod", "max", "min"])
    ap.add_argument("--check", action="store_true",
                    help="keep mpisim's cross-rank argument check on in the plain calls (off by default: it adds "
                         "log2 p small messages per call; a plan runs it once, at init, whatever this says)")
    ap.add_argument("--plan", action=argparse.BooleanOptionalAction, default=True,
                    help="also time each algorithm as a persistent plan, rows plan:<algorithm> (default: on)")
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="how the --repeats measurements combine; min suits a shared, noisy machine (default median)")
    ap.add_argument("--csv", metavar="FILE", help="also write the rows to FILE as CSV (rank 0)")
    ap.add_argument("--trace", metavar="FILE.json",
                    help="write every rank's collective calls and messages as a Chrome trace (open in Perfetto or "
                         "chrome://tracing; gathered to rank 0, clocks aligned); a full sweep makes a large file")
    ap.add_argument("--timeline", metavar="FILE.png", help="draw the same as a Gantt chart, ranks by time")
    ap.add_argument("--save-table", metavar="FILE",
                    help="write the fastest algorithm per size for this rank count into FILE (JSON, merged with "
                         "the other rank counts already there); MPISIM_ALLREDUCE_TABLE=FILE makes auto use it")
    return ap


def sizes_between(lo: int, hi: int, factor: int) -> list[int]:
    """lo, lo*factor, lo*factor**2, ... up to hi."""
    out, s = [], lo
    while s <= hi:
        out.append(s)
        s *= factor
    return out


def save_table(path: str, p: int, rows: list) -> None:
    """Merge this run's fastest algorithm per size (plans where timed, else plain calls) into ``path``."""
    table = load_allreduce_table(path) if os.path.exists(path) else {}
    best: dict[int, tuple[float, str]] = {}
    planned = any(r[1].startswith("plan:") for r in rows)
    for size, name, _, tt in rows:
        if name == "MPI_Allreduce" or "auto" in name or name.startswith("plan:") != planned:
            continue
        alg = name.removeprefix("plan:")
        if size not in best or tt < best[size][0]:
            best[size] = (tt, alg)
    table[p] = sorted((size, alg) for size, (_, alg) in best.items())
    with open(path + ".tmp", "w") as fh:
        json.dump({str(k): [list(e) for e in v] for k, v in sorted(table.items())}, fh)
    os.replace(path + ".tmp", path)
    print(f"# fastest algorithm per size for {p} ranks written to {path}; "
          f"MPISIM_ALLREDUCE_TABLE={path} makes auto use it", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    algos = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    bad = [a for a in algos if a not in ALLREDUCE_ALGORITHMS]
    if bad:
        ap.error(f"unknown algorithm(s) {', '.join(bad)}; choose from {', '.join(ALLREDUCE_ALGORITHMS)}")
    if not algos:
        ap.error(f"--algorithms names none; choose from {', '.join(ALLREDUCE_ALGORITHMS)}")
    itemsize = np.dtype(args.dtype).itemsize
    for opt, value, low in (("--factor", args.factor, 2), ("--iters", args.iters, 1),
                            ("--min-iters", args.min_iters, 1), ("--warmup", args.warmup, 0),
                            ("--repeats", args.repeats, 1)):
        if value < low:
            ap.error(f"{opt} must be >= {low}, got {value}")
    if args.min_size < itemsize or args.min_size % itemsize:
        ap.error(f"--min-size must be a positive multiple of the {args.dtype} size ({itemsize} B), "
                 f"got {args.min_size}")
    if args.max_size < args.min_size:
        ap.error(f"--max-size ({args.max_size} B) is below --min-size ({args.min_size} B)")
    from .comm.sim import _available_memory
    have = _available_memory()
    if have is not None and BUFFERS * args.max_size > have:   # not a MemoryError after the small sizes' sweep
        ap.error(f"--max-size {fmt_size(args.max_size)} needs about {BUFFERS} x that per rank, more than the "
                 f"{have / (1 << 30):.1f} GiB of memory available here")
    from .trace import output_file_problem
    from .train.options import same_file
    for opt, path in (("--csv", args.csv), ("--save-table", args.save_table), ("--trace", args.trace),
                      ("--timeline", args.timeline)):
        if path == "":                       # never silently ignored
            ap.error(f"{opt} needs a file name")
    for opt, path in (("--csv", args.csv), ("--save-table", args.save_table)):
        if path:                             # checked now, not after the whole sweep
            why = output_file_problem(path)
            if why:
                ap.error(f"{opt} {why}")
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
                ap.error(f"{opt}: cannot write in {folder} (no such folder, or not writable)")
    from .trace import Tracer, check_output, finish
    for flag, path, suffix in (("--trace", args.trace, ".json"), ("--timeline", args.timeline, ".png")):
        why = path and check_output(path, suffix)
        if why:
            ap.error(f"{flag}: {why}")
    same = same_file([("--csv", args.csv), ("--save-table", args.save_table), ("--trace", args.trace),
                      ("--timeline", args.timeline)])
    if same:
        ap.error(same)
    if args.save_table and os.path.exists(args.save_table):
        try:                      # a table to merge into is read now, not after the sweep
            load_allreduce_table(args.save_table)
        except (OSError, ValueError) as e:
            ap.error(f"--save-table {args.save_table}: {e}")
    if args.save_table and all(a == "auto" for a in algos):
        ap.error("--save-table needs algorithms to compare: --algorithms names only auto")

    from mpi4py import MPI

    base = mpi_transport()
    tracer = Tracer(base) if args.trace or args.timeline else None
    t = tracer.wrap(base) if tracer else base
    ref = MPI.COMM_WORLD.Dup()  # MPI's own Allreduce runs on its own communicator
    p, rank = t.size, t.rank
    dtype = np.dtype(args.dtype)
    mpi_op = {"sum": MPI.SUM, "prod": MPI.PROD, "max": MPI.MAX, "min": MPI.MIN}[args.op]
    sizes = sizes_between(args.min_size, args.max_size, args.factor)
    say = print if rank == 0 else (lambda *a, **k: None)

    say(f"# mpisim.bench: allreduce, {p} ranks, {args.dtype} {args.op}, "
        f"check {'on' if args.check else 'off'}; MPI: {MPI.Get_library_version().splitlines()[0].strip()}")
    say(f"# time: {args.stat} over {args.repeats} interleaved runs of the slowest rank's mean per call; algbw = size/time; busbw = algbw*2(p-1)/p; "
        "vs MPI = time / MPI_Allreduce time (lower is better)")
    header = f"{'size':>10} {'algorithm':>28} {'iters':>6} {'time_us':>11} {'algbw_GB/s':>11} {'busbw_GB/s':>11} {'vs_MPI':>7}"
    say(header, flush=True)
    rows = []
    bus = 2 * (p - 1) / p if p > 1 else 0.0

    def timed(fn, iters: int) -> float:
        for _ in range(args.warmup):
            fn()
        ref.Barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        mine = np.array([(time.perf_counter() - t0) / iters])
        ref.Allreduce(MPI.IN_PLACE, mine, op=MPI.MAX)  # the slowest rank's mean, by a buffer call
        return float(mine[0])

    start = time.perf_counter()
    for step, size in enumerate(sizes):
        count = size // dtype.itemsize
        if rank == 0 and time.perf_counter() - start > PROGRESS_AFTER:
            print(f"# mpisim.bench: size {step + 1} of {len(sizes)} ({fmt_size(size)}), "
                  f"{time.perf_counter() - start:.0f} s so far", file=sys.stderr, flush=True)
        # Small integers (+-1 for prod): the result is exact, so each algorithm is checked against MPI's.
        x = ((np.arange(count) + rank) % 2 * 2 - 1).astype(dtype) if args.op == "prod" else \
            (np.arange(count) % 7 + rank).astype(dtype)
        want = np.empty_like(x)
        got = np.zeros_like(x)  # like MPI_Allreduce(sendbuf, recvbuf): one reused output buffer
        iters = max(args.min_iters, min(args.iters, (256 << 20) // max(size, 1)))
        calls = {"MPI_Allreduce": lambda: ref.Allreduce(x, want, op=mpi_op)}
        for algo in algos:
            calls[algo] = lambda algo=algo: allreduce(t, x, args.op, algo, out=got, check=args.check)
        if args.plan:
            for algo in algos:  # collective: every rank plans the same algorithms in the same order
                calls["plan:" + algo] = allreduce_init(t, x, args.op, algo, out=got)
        calls["MPI_Allreduce"]()
        for name in calls:
            if name == "MPI_Allreduce":
                continue
            got.fill(-99)  # so a result left partly unwritten cannot pass on an earlier one's values
            calls[name]()
            if not np.array_equal(got, want):
                raise RuntimeError(f"mpisim.bench: {name} gave a wrong result at {size} bytes on rank {rank}")
        # Interleave the contenders, --repeats times, and keep each one's median: a burst of
        # noise from the shared machine then hits one sample, not one contender.
        samples: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.repeats):
            for name, fn in calls.items():
                samples[name].append(timed(fn, iters))
        stat = np.min if args.stat == "min" else np.median
        t_mpi = float(stat(samples["MPI_Allreduce"]))
        for i, (name, ts) in enumerate(samples.items()):
            tt = float(stat(ts))
            if name in ("auto", "plan:auto"):
                name = f"{name}:{choose_allreduce(size, count, p)}"
            rows.append([size, name, iters, tt])
            say(f"{fmt_size(size) if i == 0 else '':>10} {name:>28} {iters:>6} {tt * 1e6:>11.1f} "
                f"{size / tt / 1e9:>11.3f} {size / tt / 1e9 * bus:>11.3f} {tt / t_mpi:>7.2f}", flush=True)

    if tracer:  # every rank: the spans are gathered to rank 0
        finish(tracer, args.trace, args.timeline, title=f"mpisim.bench, {p} ranks")
        for flag, path in (("trace", args.trace), ("timeline", args.timeline)):
            if path:
                say(f"# {flag} written to {path}", flush=True)
    if rank == 0:
        for s, most in TARGETS.items():
            if s not in sizes:
                continue
            mpi_t = next(r[3] for r in rows if r[0] == s and r[1] == "MPI_Allreduce")
            for r in rows:
                if r[0] == s and (r[1].startswith("plan:auto") or r[1].startswith("auto")):
                    ratio = r[3] / mpi_t
                    say(f"# {fmt_size(s)}: {r[1]} {r[3] * 1e6:.1f} us = {ratio:.2f}x MPI_Allreduce "
                        f"({mpi_t * 1e6:.1f} us); target at most {most:g}x: {'met' if ratio <= most else 'missed'}",
                        flush=True)
        big = [s for s in sizes if s >= 1 << 20]
        if big:
            say("# best mpisim algorithm per size >= 1 MiB (time / MPI_Allreduce time):")
            for s in big:
                cands = [r for r in rows if r[0] == s and r[1] != "MPI_Allreduce"
                         and not r[1].startswith(("auto", "plan:auto"))]
                mpi_t = next(r[3] for r in rows if r[0] == s and r[1] == "MPI_Allreduce")
                if cands:
                    best = min(cands, key=lambda r: r[3])
                    say(f"#   {fmt_size(s):>8}: {best[1]:<19} {best[3] / mpi_t:.2f}x", flush=True)
        if args.csv:
            with open(args.csv + ".tmp", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["ranks", "size_bytes", "algorithm", "iters", "time_s", "algbw_GBps", "busbw_GBps",
                            "vs_mpi", "variant"])   # variant: call (allreduce per call) or plan
                for size, name, iters, tt in rows:
                    mpi_t = next(r[3] for r in rows if r[0] == size and r[1] == "MPI_Allreduce")
                    variant = "plan" if name.startswith("plan:") else "call"
                    w.writerow([p, size, name.removeprefix("plan:"), iters, f"{tt:.9f}", f"{size / tt / 1e9:.4f}",
                                f"{size / tt / 1e9 * bus:.4f}", f"{tt / mpi_t:.4f}", variant])

            os.replace(args.csv + ".tmp", args.csv)
        if args.save_table:
            save_table(args.save_table, p, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
