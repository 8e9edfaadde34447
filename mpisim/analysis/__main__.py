"""``python -m mpisim.analysis``: every collective and algorithm on simulated ranks, measured next to its
closed-form cost; the paradigms' data volume; tree against ring; what a simulated run costs; and, with
``--validate``, the model against real ``mpiexec`` runs.

    python -m mpisim.analysis --quick                      # a small grid, in seconds
    python -m mpisim.analysis --network wan --ranks 4,16 --sizes 1K,1M
    python -m mpisim.analysis --markdown --validate 2,4 --plot docs/complexity --output docs/complexity.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from ..bench import parse_size
from ..comm.costs import ALGORITHMS
from ..comm.network import PRESETS, parse_network
from ..train.checkpoint import atomic_write_bytes
from ..train.distributed import _network
from ..train.options import _int_at_least, prepare_output_file
from . import report
from .measure import crossover, grid, measure, sim_winner
from .paradigms import PARADIGMS, run_paradigm

PROG = "python -m mpisim.analysis"
SECTIONS = ("collectives", "crossover", "topology", "paradigms", "scale")
DEFAULT_RANKS = "2,3,4,8,16,32,64"
DEFAULT_SIZES = "8,512,32K,2M,64M"


def _list(kind, text: str, what: str):
    try:
        items = [kind(x) for x in text.split(",")]
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise argparse.ArgumentTypeError(f"{what}: {e}") from None
    return items


def _ranks(text: str) -> list[int]:
    items = _list(int, text, "rank counts")
    if any(p < 1 or p > 1024 for p in items):
        raise argparse.ArgumentTypeError(f"rank counts must be in 1..1024, got {text!r}")
    return items


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].replace("``", "'"),
                                epilog=__doc__.rsplit("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", type=_network, default=parse_network("10gbe"), metavar="SPEC",
                   help=f"the network model: {', '.join(PRESETS)} or alpha=5us,beta=1GB/s,gamma=0.2ns[,contention], "
                        "with nodes: nodes=4x8 or ppn=8, intra=LINK, inter=LINK, inter-alpha=, inter-beta=, "
                        "oversub=S (default 10gbe)")
    p.add_argument("--ranks", type=_ranks, default=None, metavar="LIST",
                   help=f"simulated rank counts (default {DEFAULT_RANKS})")
    p.add_argument("--sizes", type=lambda s: _list(parse_size, s, "sizes"), default=None, metavar="LIST",
                   help=f"message sizes in bytes, 8 to 64M (default {DEFAULT_SIZES})")
    p.add_argument("--collectives", type=lambda s: _list(str, s, "collectives"), default=list(ALGORITHMS),
                   metavar="LIST", help=f"which of {', '.join(ALGORITHMS)} (default all)")
    p.add_argument("--sections", type=lambda s: _list(str, s, "sections"), default=list(SECTIONS), metavar="LIST",
                   help=f"which of {', '.join(SECTIONS)} (default all)")
    p.add_argument("--paradigm-ranks", type=_int_at_least(2, "a rank count >= 2 (a server and a worker)"),
                   default=4, metavar="N", help="ranks for the paradigms (default 4)")
    p.add_argument("--validate", type=_ranks, default=None, metavar="LIST", nargs="?", const=[2, 4],
                   help="also run 'mpiexec -n N python -m mpisim.calibrate --validate' for each N (default 2,4) "
                        "and report the model's error against the real machine")
    p.add_argument("--plot", metavar="DIR", help="write log-log plots (PNG) into DIR (needs matplotlib)")
    p.add_argument("--markdown", action="store_true", help="print Markdown (docs/complexity.md is made this way)")
    p.add_argument("--output", metavar="FILE", help="write the report to FILE (atomically) instead of stdout")
    p.add_argument("--quick", action="store_true", help="a small grid: ranks 2,3,4,8 and sizes 8,4K,256K")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.quick:
        args.ranks = args.ranks or [2, 3, 4, 8]
        args.sizes = args.sizes or [8, 4096, 256 * 1024]
    args.ranks = args.ranks or _ranks(DEFAULT_RANKS)
    if args.network.compute != "none":
        p.error("--network: the report compares the collectives with formulas that leave computation out: "
                "drop compute=...")
    args.sizes = args.sizes or _list(parse_size, DEFAULT_SIZES, "sizes")
    for ranks in args.ranks:
        try:
            args.network.check_size(ranks)
        except ValueError as e:
            p.error(f"--ranks {ranks}: {str(e).removeprefix('--network: ')}")
    bad = [c for c in args.collectives if c not in ALGORITHMS]
    if bad:
        p.error(f"unknown collective {bad[0]!r}; choose from {', '.join(ALGORITHMS)}")
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        p.error(f"unknown section {bad[0]!r}; choose from {', '.join(SECTIONS)}")
    if any(s < 1 or s > 1 << 30 for s in args.sizes):
        p.error("--sizes must be between 1 byte and 1 GiB")
    if args.output:
        prepare_output_file(p, "--output", args.output)
    if args.plot:
        if os.path.exists(args.plot) and not os.path.isdir(args.plot):
            p.error(f"--plot {args.plot} is a file; give a directory")
        prepare_output_file(p, "--plot", os.path.join(args.plot, "allreduce_vs_p.png"))
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib: pip install -e '.[plot]'")


def _mpiexec() -> str | None:
    return os.environ.get("MPIEXEC") or shutil.which(
        "mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))


def run_validation(n: int, say) -> dict:
    """``mpiexec -n n python -m mpisim.calibrate --validate --json F``; its JSON (``within_bounds`` says whether
    every point was within its bound: calibrate exits 1, after writing the JSON, when one is not).

    A run that writes no JSON is an error (RuntimeError), except on more ranks than this machine has cores:
    such a run is oversubscribed and only informational, and comes back as {"ranks", "cores", "failed"}.
    """
    exe = _mpiexec()
    if not exe:
        raise RuntimeError("--validate needs mpiexec: install the project (the mpich wheel brings it) or set MPIEXEC")
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "calibrate.json")
        cmd = [exe, "-n", str(n), sys.executable, "-m", "mpisim.calibrate", "--validate", "--quiet", "--json", out]
        say(f"validating on {n} real ranks: {' '.join(cmd[:3])} python -m mpisim.calibrate --validate"
            + (f" (oversubscribed: {cores} cores; informational)" if n > cores else ""))
        env = dict(os.environ, OMP_NUM_THREADS="1")
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            if n > cores:
                return {"ranks": n, "cores": cores, "failed": "it ran past 900 s"}
            raise
        if proc.returncode in (0, 1) and os.path.exists(out):
            with open(out) as f:
                return {**json.load(f), "cores": cores}
        why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        if n > cores:
            return {"ranks": n, "cores": cores, "failed": f"exit {proc.returncode}: {why}"}
        raise RuntimeError(f"mpiexec -n {n} python -m mpisim.calibrate failed (exit {proc.returncode}): {why}")


def build_report(args: argparse.Namespace, say) -> str:
    net = args.network
    doc = report.Doc(args.markdown)
    cmd = " ".join(["python -m mpisim.analysis", *sys.argv[1:]]) if args.command is None else args.command
    doc.h(1, "Complexity: the cost formulas, measured")
    doc.p(f"Generated by `{cmd}`; do not edit by hand. Every number below was printed by that command: "
          "the simulated runs are deterministic (virtual time does not depend on the machine), the wall times "
          "and the validation against real MPI are this machine's.")
    # the real machine first: after the simulations below its memory and caches are in another state
    validations = [run_validation(n, say) for n in args.validate] if args.validate else []
    report.model_section(doc, net)
    colls = {c: ALGORITHMS[c] for c in args.collectives}
    rows = []
    if "collectives" in args.sections or args.plot:
        t0 = time.perf_counter()
        last = [None]

        def progress(line):
            key = line.split(" p=")[0].split("] ", 1)[1]
            if key != last[0]:
                last[0] = key
                say(f"{line.split(' p=')[0]} ({time.perf_counter() - t0:.0f} s)")
        rows = grid(colls, args.ranks, args.sizes, net, progress)
    if "collectives" in args.sections:
        report.formulas_section(doc, rows)
        report.summary_section(doc, rows)
        report.detail_section(doc, rows)
    plots = {}
    if args.plot:
        done = {(r.coll, r.algorithm, r.p, r.nbytes) for r in rows}   # the grid's runs are not run again
        want = [(a, p, 1 << 20) for a in ALGORITHMS["allreduce"] for p in args.ranks]
        want += [(a, 16, s) for a in ALGORITHMS["allreduce"] for s in (8, 512, 32768, 1 << 21, 1 << 24)]
        extra = [measure("allreduce", a, p, s, net) for a, p, s in want if ("allreduce", a, p, s) not in done]
        from .plots import plot_all
        plots = plot_all(rows + extra, net, args.plot)
        say(f"plots written to {args.plot}")
        if args.output:   # paths relative to the Markdown file, so the images show beside it
            base = os.path.dirname(os.path.abspath(args.output))
            plots = {k: os.path.relpath(os.path.abspath(v), base) for k, v in plots.items()}
    if "crossover" in args.sections:
        say("tree against ring")
        checks = {}
        for p in (4, 16, 64):
            if p in args.ranks:
                for k, pnet in PRESETS.items():
                    if pnet.topology:
                        continue
                    n = crossover(p, pnet)
                    if n and n != float("inf") and n * 2 <= 1 << 28:
                        checks[(p, k)] = (n, sim_winner(p, int(n / 2), pnet), sim_winner(p, int(2 * n), pnet))
        report.crossover_section(doc, [p for p in args.ranks], checks, plots)
    if "topology" in args.sections:
        say("nodes: hierarchical against ring and Rabenseifner")
        from .topology import topology_grid
        quick = {"nodes": (2, 4), "sizes": (1 << 10, 1 << 20, 1 << 28)} if args.quick else {}
        cells = topology_grid(progress=say, **quick)
        tplots = {}
        if args.plot:
            from .plots import plot_topology
            tplots = plot_topology(cells, args.plot)
            if args.output:
                base = os.path.dirname(os.path.abspath(args.output))
                tplots = {k: os.path.relpath(os.path.abspath(v), base) for k, v in tplots.items()}
        report.topology_section(doc, cells, tplots)
    if "paradigms" in args.sections:
        runs = []
        for name in PARADIGMS:
            say(f"paradigm {name} on {args.paradigm_ranks} simulated ranks")
            runs.append(run_paradigm(name, args.paradigm_ranks, net))
        report.paradigm_section(doc, runs, args.paradigm_ranks, net)
    if "scale" in args.sections:
        say("what a simulated run costs")
        ps = [p for p in (8, 16, 32, 64) if p <= max(args.ranks)] or [max(args.ranks)]
        srows = [measure("allreduce", a, ps[-1], 1 << 20, net) for a in ALGORITHMS["allreduce"]]
        srows += [measure("allreduce", "ring", p, 1 << 20, net) for p in ps[:-1]]
        srows += [measure("allreduce", "ring", ps[-1], s, net) for s in (1 << 16, 1 << 24)]
        report.scale_section(doc, srows)
    if args.validate:
        report.validation_section(doc, validations)
    return str(doc)


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    args.command = None if argv is None else " ".join([PROG, *argv])
    say = (lambda s: None) if args.quiet else (lambda s: print(f"analysis: {s}", file=sys.stderr, flush=True))
    try:
        text = build_report(args, say)
        if args.output:
            atomic_write_bytes(args.output, text.encode())
            say(f"report written to {args.output}")
        else:
            sys.stdout.write(text)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
