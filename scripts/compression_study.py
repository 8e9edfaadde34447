"""Gradient compression and mixed precision, measured: the table and the plot of docs/compression.md.

Every scheme of ``mpisim.allreduce --compress`` at 2 and 4 simulated ranks on the MNIST recipe (784-512-256-128-10,
dropout 0.2, Adam 1e-3, weight decay 1e-5, step schedule, batch 64, 5 epochs; digits with 64-128-64-10 for 10
epochs when the MNIST files are absent), each under two network models (``10gbe`` and ``wan``, with computation
charged at 10 GFLOP/s): payload bytes per step, the compression ratio, final test accuracy, and the virtual time
to reach a target test accuracy. Then ``--precision fp32|fp16|bf16`` at 2 ranks.

    python scripts/compression_study.py --out docs/compression      # the full study (MNIST: tens of minutes)
    python scripts/compression_study.py --quick --out /tmp/cs       # a small version (digits, a few schemes)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mpisim import allreduce  # noqa: E402
from mpisim.comm import SimCluster  # noqa: E402

SCHEMES = [("none", []), ("fp16", []), ("bf16", []), ("topk:0.01", ["--error-feedback"]),
           ("randomk:0.01", ["--error-feedback"]), ("powersgd:2", []), ("signsgd", ["--error-feedback"])]
PRECISIONS = ("fp32", "fp16", "bf16")
NETWORKS = ("10gbe", "wan")
COMPUTE = "compute=10GFLOP/s"
MNIST = ["--dataset", "mnist", "--hidden", "512,256,128", "--dropout", "0.2", "--optimizer", "adam", "--lr", "1e-3",
         "--weight-decay", "1e-5", "--schedule", "step", "--step-size", "3", "--gamma", "0.5", "--batch-size", "64",
         "--epochs", "5"]
DIGITS = ["--epochs", "10"]


def run(n: int, argv: list[str]) -> tuple[list[dict], dict]:
    """The metrics records of ``mpisim.allreduce`` on n simulated ranks, and rank 0's result."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.jsonl")
        cfg = allreduce.PARADIGM.parse([*argv, "--sim", str(n), "--quiet", "--metrics", path])
        result = SimCluster(n, network=cfg.train.network, timeout=600).run(allreduce.PARADIGM.run_rank, cfg)[0]
        with open(path) as f:
            return [json.loads(line) for line in f], result


def time_to(records: list[dict], target: float) -> float | None:
    """Virtual seconds until the first epoch whose test accuracy reaches ``target``."""
    for r in records:
        if r["test_acc"] >= target:
            return r["virtual_s"]
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                      "mnist"), help="the MNIST IDX files (digits if absent)")
    p.add_argument("--out", metavar="DIR", required=True, help="write table.md and compression.png here")
    p.add_argument("--quick", action="store_true", help="digits, 2 epochs, 2 ranks, four schemes")
    p.add_argument("--only", choices=["compression", "precision"], default=None,
                   help="run one half of the study (its table is written alone)")
    p.add_argument("--target", type=float, default=None, help="test accuracy for the time-to-accuracy column "
                                                              "(default 0.96 on MNIST, 0.90 on digits)")
    a = p.parse_args(argv)
    mnist = not a.quick and os.path.exists(os.path.join(a.data_dir, "t10k-labels-idx1-ubyte.gz"))
    base = [*MNIST, "--data-dir", a.data_dir] if mnist else DIGITS
    schemes, ranks = (SCHEMES[:2] + SCHEMES[3:4] + SCHEMES[5:6], [2]) if a.quick else (SCHEMES, [2, 4])
    if a.quick:
        base = ["--epochs", "2"]
    target = a.target or (0.96 if mnist else 0.90)
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for n in ranks if a.only != "precision" else ():
        for scheme, extra in schemes:
            res = {}
            for net in NETWORKS:
                recs, result = run(n, [*base, "--compress", scheme, *extra, "--network", f"{net},{COMPUTE}"])
                res[net] = recs
                print(f"  {scheme} {' '.join(extra)} on {n} ranks, {net}: test {100 * recs[-1]['test_acc']:.2f}%",
                      file=sys.stderr, flush=True)
            recs = res[NETWORKS[-1]]                  # the same training under either network
            rows.append({"ranks": n, "scheme": scheme + (" +EF" if extra else ""),
                         "bytes_per_step": sum(r["payload_bytes"] for r in recs) / result["steps"],
                         "ratio": recs[-1].get("compression"), "test_acc": recs[-1]["test_acc"],
                         **{f"t_{net}": time_to(res[net], target) for net in NETWORKS}})
    prec = []
    for precision in PRECISIONS if a.only != "compression" else ():
        recs, _ = run(2, [*base, "--precision", precision])
        prec.append({"precision": precision, "test_acc": recs[-1]["test_acc"],
                     "skipped": recs[-1].get("skipped_steps"), "scale": recs[-1].get("loss_scale")})
        print(f"  --precision {precision}: test {100 * recs[-1]['test_acc']:.2f}%", file=sys.stderr, flush=True)
    write(a.out, rows, prec, target, mnist)
    return 0


def write(out: str, rows: list[dict], prec: list[dict], target: float, mnist: bool) -> None:
    data = "MNIST recipe, 5 epochs" if mnist else "digits"
    lines = [f"Data: {data}; networks {', '.join(NETWORKS)} with {COMPUTE}; time to {100 * target:.0f}% test "
             "accuracy in virtual seconds (- : not reached).", "",
             "| ranks | scheme | bytes per step | compression | test accuracy | " +
             " | ".join(f"time to target, {net}" for net in NETWORKS) + " |",
             "|---|---|---|---|---|" + "---|" * len(NETWORKS)]
    for r in rows:
        times = " | ".join("-" if r[f"t_{n}"] is None else f"{r[f't_{n}']:.2f} s" for n in NETWORKS)
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.1f}x"
        lines.append(f"| {r['ranks']} | {r['scheme']} | {r['bytes_per_step']:,.0f} | {ratio} | "
                     f"{100 * r['test_acc']:.2f}% | {times} |")
    if not rows:
        lines = lines[:1]
    if prec:
        lines += ["", "| precision (2 ranks) | test accuracy | skipped steps | final loss scale |", "|---|---|---|---|"]
    for r in prec:
        lines.append(f"| {r['precision']} | {100 * r['test_acc']:.2f}% | {r['skipped'] if r['skipped'] is not None else '-'} | "
                     f"{r['scale'] if r['scale'] is not None else '-'} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    print(text)
    if rows:
        plot(out, rows)


def plot(out: str, rows: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n, marker in ((2, "o"), (4, "s")):
        mine = [r for r in rows if r["ranks"] == n]
        ax.scatter([r["bytes_per_step"] for r in mine], [100 * r["test_acc"] for r in mine], marker=marker,
                   label=f"{n} ranks")
        for r in mine:
            ax.annotate(r["scheme"], (r["bytes_per_step"], 100 * r["test_acc"]), fontsize=7,
                        xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set(xlabel="payload bytes per step (all ranks)", ylabel="final test accuracy (%)",
           title="gradient compression: bytes against accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "compression.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
