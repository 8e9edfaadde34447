"""The measured tables of docs/parallelism.md: the pipeline bubble against (p-1)/(M+p-1) and ZeRO's memory per
rank, all on simulated ranks; and the two schedule pictures (GPipe and 1F1B at p = 4, M = 8).

    python scripts/parallelism_tables.py                          # the tables, as Markdown (about 15 s)
    python scripts/parallelism_tables.py --plots docs/parallelism # and the schedule pictures
    python scripts/parallelism_tables.py --quick           # a small version (for the tests)

The bubble is measured in virtual time: each rank charges its FLOPs at 1 GFLOP/s and messages are free
(``--network alpha=0s,beta=0s,gamma=0s,compute=1GFLOP/s``), then again with 10 GbE messages. "Equal stages"
runs the pipeline engine on stages that all cost the same; "MLP" runs ``mpisim.pipeline`` on digits with a
64-64-...-64-10 MLP of 8 Linear layers cut by FLOPs, whose stages are not equal (the first has no input
gradient to compute, the last is narrow).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mpisim import pipeline, zero  # noqa: E402
from mpisim.comm import SimCluster  # noqa: E402

FREE = "alpha=0s,beta=0s,gamma=0s,compute=1GFLOP/s"
LAN = "10gbe,compute=1GFLOP/s"
MLP = ["--hidden", "64,64,64,64,64,64,64", "--epochs", "1", "--quiet"]


def run(module, n: int, argv: list[str]) -> dict:
    cfg = module.PARADIGM.parse([*argv, "--sim", str(n)])
    return SimCluster(n, network=cfg.train.network).run(module.PARADIGM.run_rank, cfg)[0]


def bubble_rows(cases, quick: bool) -> list[str]:
    out = ["| schedule | p | M | formula | equal stages | MLP, free messages (min..max over stages) | MLP, 10 GbE |",
           "|---|---|---|---|---|---|---|"]
    for kind, p, m in cases:
        busy, span = pipeline.equal_stage_bubble(kind, p, m)
        equal = {round(1 - b / span, 6) for b in busy}
        cells = [kind, str(p), str(m), f"{pipeline.bubble_formula(p, m):.4f}",
                 " / ".join(f"{v:.4f}" for v in sorted(equal))]
        for net in (FREE, LAN):
            got = run(pipeline, p, [*MLP, "--schedule", kind, "--micro-batches", str(m), "--network", net,
                                    *(["--synthetic-size", "600", "--dataset", "synthetic"] if quick else [])])
            b = got["bubble_virtual"]
            cells.append(f"{min(b):.4f}..{max(b):.4f}")
        out.append("| " + " | ".join(cells) + " |")
        print(f"  bubble {kind} p={p} M={m} done", file=sys.stderr, flush=True)
    return out


def memory_rows(ranks, quick: bool) -> list[str]:
    out = ["| ranks | stage | params | grads | optimizer | total | of stage 0 | transient (apart) | rank 0's eval copy "
           "(apart) | formula agrees on every rank |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n in ranks:
        base = None
        for stage in range(4):
            got = run(zero, n, ["--stage", str(stage), "--epochs", "1", "--quiet",
                                *(["--synthetic-size", "600", "--dataset", "synthetic"] if quick else [])])
            m = got["memory"][0]                         # rank 0's arrays
            total = sum(m[k] for k in zero.HELD)
            base = base or total
            out.append(f"| {n} | {stage} | {m['params']:,} | {m['grads']:,} | {m['optimizer']:,} | {total:,} | "
                       f"{total / base:.3f} | {m['transient']:,} | {m['eval copy']:,} | "
                       f"{'yes' if got['memory_agrees'] else 'NO'} |")
        print(f"  memory N={n} done", file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few cases on a small dataset")
    p.add_argument("--plots", metavar="DIR", default=None, help="also draw the GPipe and 1F1B schedules here")
    a = p.parse_args(argv)
    if a.quick:
        sweep_p = [("gpipe", 2, 4), ("1f1b", 3, 4)]
        sweep_m, ranks = [("1f1b", 4, 2)], [2]
    else:
        sweep_p = [(k, q, 8) for k in pipeline.SCHEDULES for q in range(2, 9)]
        sweep_m = [("1f1b", 4, m) for m in (1, 2, 4, 8, 16, 32)]
        ranks = [2, 4, 8]
    lines = ["### Bubble against p" + ("" if a.quick else " (M = 8)"), "", *bubble_rows(sweep_p, a.quick), "",
             "### Bubble against M" + ("" if a.quick else " (p = 4)"), "", *bubble_rows(sweep_m, a.quick), "",
             "### ZeRO: memory per rank (bytes of the arrays rank 0 holds, Adam, digits, 64-128-64-10)", "",
             *memory_rows(ranks, a.quick)]
    print("\n".join(lines))
    if a.plots:
        for kind in pipeline.SCHEDULES:
            path = os.path.join(a.plots, f"{kind}_p4_m8.png")
            code = pipeline.main([*MLP, "--schedule", kind, "--micro-batches", "8", "--network", FREE,
                                  "--sim", "4", "--schedule-plot", path])
            if code:
                return code
            print(f"  {path} written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
