"""Fingerprints of fixed-seed training runs, to prove that a restructuring changed no result.

Each configuration runs as a user would run it (``python -m mpisim.<paradigm> ...`` with ``--sim N``
or under ``mpiexec -n N``), with ``--metrics`` and ``--checkpoint``; its fingerprint is the SHA-256
of every array in the final checkpoint (parameters, BatchNorm buffers, optimizer state) and the
metrics records without their timing fields. Run it on two checkouts and compare:

    python scripts/fingerprint_runs.py --repo ../old --out old.json
    python scripts/fingerprint_runs.py --repo .      --out new.json
    python scripts/fingerprint_runs.py --compare old.json new.json     # exit 1 if anything differs

``--repo`` is the checkout whose ``mpisim`` runs (it is put first on PYTHONPATH, and the commands
run in it). Configurations marked ``racy`` (asynchronous parameter servers, whose order of pushes
is decided by thread or process timing) are fingerprinted on what does not depend on that order:
the number of records and the payload bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

# timing fields differ between any two runs; everything else must be bit-identical
TIMING = {"seconds", "samples_per_s", "compute_s", "comm_s", "eval_s"}
COMMON = ["--quiet", "--seed", "3"]

# name: (launcher ranks or None for --sim given in the options, module, options, racy)
CONFIGS = {
    "centralized": (None, "centralized", ["--epochs", "2", "--dropout", "0.1"], False),
    "allreduce-auto-sim4": (None, "allreduce", ["--sim", "4", "--epochs", "2"], False),
    "allreduce-ring-buckets-overlap-syncbn-sim3": (
        None, "allreduce", ["--sim", "3", "--epochs", "2", "--algorithm", "ring", "--bucket-mb", "0.01",
                            "--overlap", "--batchnorm", "--sync-bn"], False),
    "allreduce-tree-momentum-cosine-dropout-sim4": (
        None, "allreduce", ["--sim", "4", "--epochs", "2", "--algorithm", "tree", "--optimizer", "momentum",
                            "--lr", "0.05", "--schedule", "cosine", "--warmup", "1", "--dropout", "0.1"], False),
    "allreduce-rabenseifner-float64-sim5": (
        None, "allreduce", ["--sim", "5", "--epochs", "2", "--algorithm", "rabenseifner", "--dtype", "float64",
                            "--batch-size", "50", "--val-fraction", "0.1"], False),
    "paramserver-sync-2servers-sim4": (None, "paramserver", ["--sim", "4", "--servers", "2", "--epochs", "2"], False),
    "paramserver-async-sim4": (None, "paramserver", ["--sim", "4", "--mode", "async", "--epochs", "2"], True),
    "paramserver-ssp-sim5": (None, "paramserver", ["--sim", "5", "--servers", "2", "--mode", "ssp",
                                                   "--staleness", "1", "--epochs", "2"], True),
    "fedavg-iid-sim3": (None, "fedavg", ["--sim", "3", "--rounds", "3"], False),
    "fedavg-secagg-dp-sim3": (None, "fedavg", ["--sim", "3", "--rounds", "3", "--secure-agg", "--dp-clip", "1",
                                               "--dp-noise", "0.5"], False),
    "fedavg-dp-shards-sim4": (None, "fedavg", ["--sim", "4", "--rounds", "3", "--dp-clip", "1", "--dp-noise", "0.5",
                                               "--partition", "shards"], False),
    "fedavg-secagg-dirichlet-sim3": (None, "fedavg", ["--sim", "3", "--rounds", "3", "--secure-agg",
                                                      "--partition", "dirichlet", "--local-batch", "inf"], False),
    "fedavg-badclient-sim3": (None, "fedavg", ["--sim", "3", "--rounds", "3", "--clients", "10", "--fraction",
                                               "0.5", "--bad-client", "6:nan"], False),
    "fedavg-secagg-badclient-sim3": (None, "fedavg", ["--sim", "3", "--rounds", "2", "--clients", "10", "--fraction",
                                                      "0.5", "--secure-agg", "--bad-client", "6:size"], False),
    "mpi2-allreduce-ring-buckets-overlap": (2, "allreduce", ["--epochs", "2", "--algorithm", "ring",
                                                             "--bucket-mb", "0.01", "--overlap"], False),
    "mpi2-allreduce-mpi": (2, "allreduce", ["--epochs", "2", "--algorithm", "mpi"], False),
    "mpi2-paramserver-sync": (2, "paramserver", ["--epochs", "2"], False),
    "mpi3-paramserver-sync-2servers": (3, "paramserver", ["--epochs", "1", "--servers", "2"], False),
    "mpi2-fedavg-secagg-dp": (2, "fedavg", ["--rounds", "3", "--secure-agg", "--dp-clip", "1",
                                            "--dp-noise", "0.5"], False),
    "mpi3-fedavg-iid": (3, "fedavg", ["--rounds", "2"], False),
    "localsgd-sim4": (None, "localsgd", ["--sim", "4", "--epochs", "2", "--sync-every", "3"], False),
    "easgd-sync-sim3": (None, "easgd", ["--sim", "3", "--epochs", "2"], False),
    "gossip-ring-sim4": (None, "gossip", ["--sim", "4", "--epochs", "2"], False),
    "pipeline-gpipe-dropout-sim4": (None, "pipeline", ["--sim", "4", "--epochs", "2", "--schedule", "gpipe",
                                                      "--micro-batches", "5", "--dropout", "0.1"], False),
    "tensor-sim3": (None, "tensor", ["--sim", "3", "--epochs", "2", "--dropout", "0.1"], False),
    "zero-stage3-sim3": (None, "zero", ["--sim", "3", "--epochs", "2", "--stage", "3"], False),
    "hybrid-2x2x2-sim8": (None, "hybrid", ["--sim", "8", "--epochs", "1", "--dp", "2", "--pp", "2", "--tp", "2"],
                          False),
    "mpi2-pipeline": (2, "pipeline", ["--epochs", "1"], False),
}
# resumed runs: stop after the first epoch/round, then --resume to the end
RESUMED = {"allreduce-resume-sim2": ("allreduce", ["--sim", "2", "--epochs", "3", "--optimizer", "adamw"]),
           "fedavg-resume-sim3": ("fedavg", ["--sim", "3", "--rounds", "3"]),
           "pipeline-resume-sim3": ("pipeline", ["--sim", "3", "--epochs", "3"])}


def _run(repo: str, cmd: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.abspath(repo))
    r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


def _fingerprint(repo: str, workdir: str, racy: bool) -> dict:
    sys.path.insert(0, os.path.abspath(repo))
    from mpisim.train.checkpoint import load_checkpoint
    arrays, _ = load_checkpoint(os.path.join(workdir, "ck"))
    with open(os.path.join(workdir, "m.jsonl")) as f:
        records = [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]
    if racy:
        return {"records": len(records), "payload_bytes": [r.get("payload_bytes") for r in records]}
    return {"arrays": {k: hashlib.sha256(v.tobytes()).hexdigest() + f" {v.dtype} {v.shape}"
                       for k, v in sorted(arrays.items())},
            "metrics": records}


def collect(repo: str, only: list[str] | None) -> dict:
    out = {}
    mpiexec = shutil.which("mpiexec") or "mpiexec"
    todo = [(k, v) for k, v in {**CONFIGS, **RESUMED}.items() if not only or any(o in k for o in only)]
    for i, (name, spec) in enumerate(todo, 1):
        t0 = time.perf_counter()
        module = spec[0] if name in RESUMED else spec[1]
        if not os.path.exists(os.path.join(repo, "mpisim", f"{module}.py")):    # an older checkout
            print(f"[{i}/{len(todo)}] {name}: skipped, no mpisim.{module} in {repo}", file=sys.stderr, flush=True)
            continue
        with tempfile.TemporaryDirectory() as d:
            files = ["--metrics", os.path.join(d, "m.jsonl"), "--checkpoint", os.path.join(d, "ck")]
            if name in RESUMED:
                _, opts = spec
                base = [sys.executable, "-m", f"mpisim.{module}", *COMMON, *opts, *files]
                _run(repo, base + ["--stop-after", "1"])
                _run(repo, base + ["--resume"])
                racy = False
            else:
                ranks, _, opts, racy = spec
                launch = [mpiexec, "-n", str(ranks)] if ranks else []
                _run(repo, [*launch, sys.executable, "-m", f"mpisim.{module}", *COMMON, *opts, *files])
            out[name] = _fingerprint(repo, d, racy)
        print(f"[{i}/{len(todo)}] {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    return out


def compare(a: dict, b: dict) -> int:
    bad = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name}: only in {'the first' if name in a else 'the second'} file")
            bad += 1
        elif a[name] != b[name]:
            print(f"{name}: DIFFERS")
            for key in sorted(set(a[name]) | set(b[name])):
                if a[name].get(key) != b[name].get(key):
                    print(f"    {key}: {str(a[name].get(key))[:200]}\n    != {str(b[name].get(key))[:200]}")
            bad += 1
        else:
            what = "payload bytes and record count" if "arrays" not in a[name] else \
                f"{len(a[name]['arrays'])} arrays and {len(a[name]['metrics'])} records"
            print(f"{name}: identical ({what})")
    print(f"{len(set(a) | set(b)) - bad} identical, {bad} differ")
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=".", help="the checkout to run (default: the current folder)")
    p.add_argument("--out", help="write the fingerprints here (JSON)")
    p.add_argument("--only", default=None, help="comma-separated substrings of the configurations to run")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="compare two fingerprint files")
    args = p.parse_args(argv)
    if args.compare:
        with open(args.compare[0]) as fa, open(args.compare[1]) as fb:
            return compare(json.load(fa), json.load(fb))
    if not args.out:
        p.error("give --out FILE (or --compare A B)")
    res = collect(args.repo, args.only.split(",") if args.only else None)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
