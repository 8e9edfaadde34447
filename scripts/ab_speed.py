"""Time one paradigm command on two checkouts side by side, alternating, to compare their speed.

    python scripts/ab_speed.py --old ../old --new . --repeats 3 -- \\
        mpiexec -n 2 python -m mpisim.allreduce --dataset mnist --data-dir ../shared/data/mnist --epochs 2

Each repeat runs the command once in each checkout (order alternating), with OMP_NUM_THREADS=1 and
``--metrics`` added; it prints the median over repeats of the whole run's wall time and of each epoch's
``seconds`` (rank 0's training time of the epoch), and the ratio new / old.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def run(repo: str, cmd: list[str]) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory() as d:
        metrics = os.path.join(d, "m.jsonl")
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.abspath(repo))
        t0 = time.perf_counter()
        r = subprocess.run([*cmd, "--quiet", "--metrics", metrics], cwd=repo, env=env, capture_output=True,
                           text=True, timeout=1800)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"failed in {repo}: {' '.join(cmd)}\n{r.stderr[-2000:]}")
        with open(metrics) as f:
            return wall, [json.loads(line)["seconds"] for line in f]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="the checkout to compare against")
    p.add_argument("--new", default=".", help="the checkout to measure (default: here)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("give the command after --")
    res = {"old": [], "new": []}
    for k in range(a.repeats):
        for which in (("old", "new") if k % 2 == 0 else ("new", "old")):
            res[which].append(run(getattr(a, which), cmd))
            print(f"repeat {k + 1} {which}: {res[which][-1][0]:.2f} s, epochs "
                  + ", ".join(f"{s:.2f}" for s in res[which][-1][1]), file=sys.stderr, flush=True)
    med = {w: (statistics.median(x[0] for x in r), [statistics.median(e) for e in zip(*(x[1] for x in r))])
           for w, r in res.items()}
    print(f"command: {' '.join(cmd)}  ({a.repeats} repeats each, alternating, OMP_NUM_THREADS=1)")
    print(f"{'':6} {'wall s':>8}  epoch s (median per epoch)")
    for w in ("old", "new"):
        print(f"{w:6} {med[w][0]:8.2f}  " + "  ".join(f"{s:.3f}" for s in med[w][1]))
    print(f"new/old: wall {med['new'][0] / med['old'][0]:.3f}, last epoch {med['new'][1][-1] / med['old'][1][-1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
