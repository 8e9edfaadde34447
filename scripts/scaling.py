"""Strong scaling of ``mpisim.allreduce``: speedup at N ranks over 1 rank at FIXED global batch.

    python scripts/scaling.py                                  # ranks 1,2; global batch 64 128 256 512; 2 epochs
    python scripts/scaling.py --batches 512 --epochs 1 --repeats 3 --markdown

Each configuration is one real MPI job, ``mpiexec -n N python -m mpisim.allreduce`` on the MNIST MLP
784-512-256-128-10 with Adam, one BLAS thread per rank (falls back to a synthetic 784-feature set of 24,000
examples when the MNIST files are missing, and says so). Only the LAST epoch is reported (the first pays
for warm-up): its wall time on rank 0 (the metrics' ``seconds``), throughput = samples in the epoch /
seconds, and the per-rank means of compute and communication time from the metrics. With ``--repeats K``
the ranks alternate within each repeat and every figure is the median over the K runs, so machine noise
hits all rank counts alike.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MODEL = ["--hidden", "512,256,128", "--optimizer", "adam"]               # 784-512-256-128-10
SYNTHETIC = ["--dataset", "synthetic", "--synthetic-features", "784", "--synthetic-size", "24000"]
TARGET = (2, 512, 1.8)                                                   # ranks, global batch, speedup


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int_list, default=[1, 2], help="rank counts (default 1,2)")
    p.add_argument("--batches", type=int_list, default=[64, 128, 256, 512], 
                   help="global batch sizes (default 64,128,256,512)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run, the last one is reported (default 2)")
    p.add_argument("--algorithm", default="auto", help="passed to mpisim.allreduce --algorithm (default auto)")
    p.add_argument("--repeats", type=int, default=1, 
                   help="runs per configuration, ranks alternating; median (default 1)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"),
                   help="MNIST IDX files (default ../shared/data/mnist from the repository root)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--timeout", type=float, default=600.0, 
                   help="seconds per run before it counts as failed (default 600)")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.repeats < 1:
        p.error("--epochs and --repeats must be >= 1")
    if not 0 < args.timeout < float("inf"):
        p.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    return args


def mpiexec() -> str:
    """The mpiexec beside this Python (the mpich wheel's), else $MPIEXEC, else the one on PATH."""
    found = os.environ.get("MPIEXEC") or shutil.which(
        "mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if not found:
        sys.exit("scaling.py: mpiexec not found: pip install -e '.[test]' (brings the mpich wheel) or set MPIEXEC")
    return found


def has_mnist(d: Path) -> bool:
    return all((d / f).is_file() or (d / f"{f}.gz").is_file() for f in MNIST_FILES)


def run_once(ranks: int, batch: int, data: list[str], args: argparse.Namespace) -> dict:
    """One MPI job; returns the last epoch's metrics record. Exits non-zero on failure or timeout."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        metrics = Path(tmp) / "metrics.jsonl"
        cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpisim.allreduce", *MODEL, *data,
               "--batch-size", str(batch), "--epochs", str(args.epochs), "--algorithm", args.algorithm,
               "--quiet", "--metrics", str(metrics)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)     # own group: a timeout kills every rank
        try:
            out, err = proc.communicate(timeout=args.timeout)
            why = f"exit status {proc.returncode}" if proc.returncode else ""
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            why = f"timed out after {args.timeout:g} s"
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] \
            if metrics.is_file() else []
        if not why and len(records) < args.epochs:
            why = f"wrote {len(records)} metrics records, expected {args.epochs}"
        if why:
            tail = "\n".join((err or out or "").strip().splitlines()[-20:]) or "(empty)"
            sys.exit(f"scaling.py: run failed ({why}): {shlex.join(cmd)}\n--- stderr tail ---\n{tail}")
    return records[-1]


def summarize(runs: list[dict]) -> dict:
    """Median over repeats of the last epoch's time, throughput, compute and communication per rank."""
    seconds = statistics.median(r["seconds"] for r in runs)
    samples = runs[0]["samples_per_s"] * runs[0]["seconds"]           # examples trained on in the epoch
    return {"seconds": seconds, "samples_per_s": samples / seconds,
            "compute_s": statistics.median(r["compute_s"] for r in runs),
            "comm_s": statistics.median(r["comm_s"] for r in runs)}


def table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = [header, ["---:"] * len(header), *rows]
        return "\n".join("| " + " | ".join(r) + " |" for r in lines)
    w = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w[i]) for i, c in enumerate(r)) for r in [header, *rows])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = Path(args.data_dir).resolve()
    if has_mnist(data_dir):
        data, dataset = ["--dataset", "mnist", "--data-dir", str(data_dir)], f"MNIST from {data_dir}"
    else:
        data, dataset = SYNTHETIC, f"SYNTHETIC 784 features x 24,000 (MNIST files not found in {data_dir})"
        print(f"scaling.py: MNIST not found in {data_dir}; falling back to {' '.join(SYNTHETIC)}", file=sys.stderr)
    runs: dict[tuple[int, int], list[dict]] = {}
    for batch in args.batches:
        for k in range(args.repeats):
            for ranks in args.ranks:                                    # alternate ranks within a repeat
                rec = run_once(ranks, batch, data, args)
                runs.setdefault((batch, ranks), []).append(rec)
                print(f"batch {batch:5d}  ranks {ranks}  repeat {k + 1}/{args.repeats}: epoch {rec['epoch']} "
                      f"{rec['seconds']:.2f} s, {rec['samples_per_s']:,.0f} samples/s, "
                      f"compute {rec['compute_s']:.2f} s, comm {rec['comm_s']:.2f} s/rank, "
                      f"test acc {rec['test_acc']:.3f}",
                      file=sys.stderr, flush=True)
    header = ["global batch", "ranks", "epoch s", "samples/s", "speedup vs 1 rank",
              "compute s/rank", "comm s/rank", "comm share %"]
    rows, speedups = [], {}
    for (batch, ranks), rs in runs.items():
        s = summarize(rs)
        base = summarize(runs[(batch, 1)])["seconds"] if (batch, 1) in runs else None
        speedups[(batch, ranks)] = base / s["seconds"] if base else None
        busy = s["compute_s"] + s["comm_s"]
        rows.append([str(batch), str(ranks), f"{s['seconds']:.2f}", f"{s['samples_per_s']:,.0f}",
                     f"{speedups[(batch, ranks)]:.2f}x" if base else "-", f"{s['compute_s']:.2f}",
                     f"{s['comm_s']:.2f}", f"{100 * s['comm_s'] / busy:.1f}" if busy > 0 else "-"])
    print(table(header, rows, args.markdown))
    repro = ["python", "scripts/scaling.py", "--ranks", ",".join(map(str, args.ranks)),
             "--batches", ",".join(map(str, args.batches)), "--epochs", str(args.epochs),
             "--algorithm", args.algorithm, "--repeats", str(args.repeats), "--data-dir", args.data_dir,
             "--timeout", f"{args.timeout:g}"] + (["--markdown"] if args.markdown else [])
    cpus = os.cpu_count() or 1
    ranks_t, batch_t, want = TARGET
    got = speedups.get((batch_t, ranks_t))
    verdict = "not measured" if got is None else f"measured {got:.2f}x, {'met' if got >= want else 'NOT met'}"
    notes = [f"reproduce: {shlex.join(repro)}",
             f"dataset: {dataset}; model 784-512-256-128-10, Adam, allreduce {args.algorithm}, "
             f"one BLAS thread per rank; last of {args.epochs} epoch(s), median of {args.repeats} run(s)",
             "epoch s = rank 0's wall time of the epoch (metrics 'seconds'); samples/s = samples in the epoch / "
             "epoch s; compute and comm are per-rank means; comm share = comm / (compute + comm)",
             f"CPUs: {cpus} (os.cpu_count()); more than {cpus} ranks on this {cpus}-core machine would be "
             "oversubscribed, so their timings say little",
             f"the target: >= {want}x at {ranks_t} ranks for global batch {batch_t} ({verdict})"]
    print("\n" + "\n".join(("- " if args.markdown else "") + n for n in notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
