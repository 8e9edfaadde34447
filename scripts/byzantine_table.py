"""FedAvg against attacking clients: test accuracy after R rounds for each attack (rows) and server-side
defence (columns), with 10% and 30% of the clients attacking, on digits (the table of docs/paradigms.md).

    python scripts/byzantine_table.py                 # the docs' table: 2 x 6 x 6 runs, about 3 minutes
    python scripts/byzantine_table.py --quick         # 10% only: each attack against its defence and the mean

Every run is ``python -m mpisim.fedavg --sim 3`` with the options printed above the table; an attack is
``--bad-clients FRACTION:KIND`` (a seeded random set of clients that attack in every round they are
sampled), a defence ``--aggregate RULE`` or ``--max-update-norm M``. The server checks each header against
the partition in every run, so a client that claims more examples than it holds is rejected whatever the
rule. ``--json FILE`` also writes the numbers (what the tests read).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import sys
import textwrap

from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mpisim import fedavg  # noqa: E402
from mpisim.comm import RankError  # noqa: E402
from mpisim.train.distributed import run_in_process  # noqa: E402

# 20 clients, all of them in every round, so 10% and 30% are exactly 2 and 6 attackers a round
SETTING = ["--dataset", "digits", "--clients", "20", "--fraction", "1", "--local-epochs", "2", "--seed", "0",
           "--sim", "3"]
ROUNDS = 20
ATTACKS = ["scale:100", "examples:1e6", "signflip", "noise:1", "labelflip"]
NORM = 1.0                        # --max-update-norm: honest updates have norms of 0.2 to 1.5 (first rounds largest)
DEFENCES = {                      # column -> the fedavg options
    "mean": [],
    f"mean, norm <= {NORM:g}": ["--max-update-norm", f"{NORM:g}"],
    "median": ["--aggregate", "median"],
    "trimmed-mean:0.3": ["--aggregate", "trimmed-mean:0.3"],
    "krum:6": ["--aggregate", "krum:6"],
    "multi-krum:6,10": ["--aggregate", "multi-krum:6,10"],
}
FRACTIONS = (0.1, 0.3)
RIGHT = {                         # attack -> the defence the quick check (and the tests) hold to 2 points
    "scale:100": f"mean, norm <= {NORM:g}",
    "examples:1e6": "mean",       # the header check rejects the claim; nothing else is needed
    "signflip": "multi-krum:6,10",
    "noise:1": "median",
    "labelflip": "trimmed-mean:0.3",
}


def command(rounds: int, defence: str, attack: str | None, fraction: float) -> list[str]:
    return [*SETTING, "--rounds", str(rounds), *DEFENCES[defence],
            *(["--bad-clients", f"{fraction:g}:{attack}"] if attack else [])]


def accuracy(argv: list[str]) -> float:
    """The final test accuracy of ``python -m mpisim.fedavg ARGV``, run in this process."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            cfg = fedavg.PARADIGM.parse([*argv, "--quiet"])
    except SystemExit:
        raise SystemExit(f"python -m mpisim.fedavg {shlex.join(argv)}: {err.getvalue().strip()}") from None
    try:
        with threadpool_limits(limits=1):      # one BLAS thread per simulated rank, as under mpiexec
            return float(run_in_process(cfg.train, fedavg.PARADIGM.run_rank, cfg)[0]["test_acc"])
    except RankError as e:
        raise SystemExit(f"python -m mpisim.fedavg {shlex.join(argv)} failed: {e.exc}") from None


def table(rounds: int, quick: bool) -> dict:
    """{"clean": accuracy without attackers, "runs": {fraction: {attack: {defence: accuracy}}}}."""
    out = {"rounds": rounds, "clean": accuracy(command(rounds, "mean", None, 0)), "runs": {}}
    for fraction in FRACTIONS[:1] if quick else FRACTIONS:
        out["runs"][f"{fraction:g}"] = {
            attack: {d: accuracy(command(rounds, d, attack, fraction))
                     for d in ((RIGHT[attack], "mean") if quick else DEFENCES)}
            for attack in ATTACKS}
    if not quick:
        out["defences_clean"] = {d: accuracy(command(rounds, d, None, 0)) for d in DEFENCES}
    return out


def _cell(a: float, clean: float) -> str:
    return f"**{100 * a:.1f}**" if a >= clean - 0.02 - 1e-9 else f"{100 * a:.1f}"


def markdown(res: dict) -> str:
    clean = res["clean"]
    if "defences_clean" not in res:        # --quick: each attack against its defence and the plain mean
        lines = [f"Without attackers: {100 * clean:.1f}% (mean). Bold: within 2 points of it.", ""]
        for fraction, rows in res["runs"].items():
            lines += [f"{100 * float(fraction):g}% of the clients attacking:", "",
                      "| attack | defence | with it | mean |", "|---|---|---|---|"]
            lines += [f"| {attack} | {RIGHT[attack]} | {_cell(accs[RIGHT[attack]], clean)} | "
                      f"{_cell(accs['mean'], clean)} |" for attack, accs in rows.items()]
        return "\n".join(lines) + "\n"
    cols = list(DEFENCES)
    lines = [textwrap.fill(f"Without attackers: {100 * clean:.1f}% (mean); each defence without attackers: "
                           + "; ".join(f"{d} {100 * a:.1f}%" for d, a in res["defences_clean"].items())
                           + ". Bold: within 2 points of the mean without attackers.", 96), ""]
    for fraction, rows in res["runs"].items():
        lines += [f"{100 * float(fraction):g}% of the clients attacking:", "",
                  "| attack | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for attack, accs in rows.items():
            cells = [_cell(accs[d], clean) for d in cols]
            lines.append(f"| {attack} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10%% attackers only, each attack against its defence "
                                                        "(RIGHT) and the plain mean")
    p.add_argument("--rounds", type=int, default=ROUNDS, help=f"R (default {ROUNDS})")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the numbers as JSON")
    a = p.parse_args(argv)
    rounds = a.rounds
    if rounds < 1:
        p.error(f"--rounds must be a positive integer, got {rounds}")
    if a.json:                                   # checked before the runs, not after them
        folder = os.path.dirname(os.path.abspath(a.json))
        if os.path.isdir(a.json) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            p.error(f"--json {a.json}: not a writable file name")
    res = table(rounds, a.quick)
    print(f"python -m mpisim.fedavg {shlex.join(SETTING)} --rounds {rounds} [DEFENCE] "
          f"[--bad-clients FRACTION:ATTACK]\n")
    print(markdown(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
