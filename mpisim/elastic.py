"""``python -m mpisim.elastic --max-restarts K -- COMMAND...``: run a training job, and when it fails, run it
again from its last checkpoint, up to K times (torchrun's ``--max-restarts``, for MPI jobs).

Under mpiexec one failed rank ends the whole job, so the job cannot restart itself: this supervisor runs the
command (typically ``mpiexec -n N python -m mpisim.<paradigm> ... --checkpoint DIR``), and when it exits with
a failure (status 1, or killed by a signal other than Ctrl-C and SIGTERM) after a checkpoint was saved, it
runs it again with ``--resume`` and without ``--inject-fault`` (the fault it injects stands for a transient
one). Usage errors (status 2) and interruptions (130, 143) end it at once. Since a resume is exact, a
synchronous run that fails and restarts ends with the parameters of an uninterrupted one.

    python -m mpisim.elastic --max-restarts 2 -- mpiexec -n 2 python -m mpisim.allreduce --checkpoint ck --epochs 20
"""
from __future__ import annotations

import argparse
import subprocess
import sys

from .train.checkpoint import CheckpointError, saved_progress
from .train.options import Parser

USAGE, INTERRUPTED = 2, (130, 143, -2, -15)


def _option(cmd: list[str], name: str) -> str | None:
    """The value of ``name`` in ``cmd`` (``--name VALUE`` or ``--name=VALUE``), or None."""
    for i, a in enumerate(cmd):
        if a == name and i + 1 < len(cmd):
            return cmd[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _without(cmd: list[str], name: str) -> list[str]:
    out, skip = [], False
    for a in cmd:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def restarted(cmd: list[str]) -> list[str]:
    """The command of a restart: with --resume, without --inject-fault."""
    cmd = _without(cmd, "--inject-fault")
    return cmd if "--resume" in cmd else [*cmd, "--resume"]


def saved(directory: str) -> tuple[str, int] | None:
    """("epoch" or "round", how many) saved in ``directory``'s checkpoint, or None without a readable one."""
    try:
        return saved_progress(directory)
    except CheckpointError:
        return None


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m mpisim.elastic", description=__doc__.split("\n\n")[0],
               epilog=__doc__.rsplit("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-restarts", type=int, default=3, metavar="K", help="restarts at most (default 3)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the job's command line, with --checkpoint DIR")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.max_restarts < 0:
        p.error(f"--max-restarts must be >= 0, got {args.max_restarts}")
    if not cmd:
        p.error("give the job's command after --")
    ck = _option(cmd, "--checkpoint")
    if not ck:
        p.error("the job needs --checkpoint DIR: a restart continues from its last checkpoint")
    attempt = 0
    while True:
        try:
            status = subprocess.run(cmd).returncode
        except FileNotFoundError:
            print(f"python -m mpisim.elastic: error: cannot run {cmd[0]!r}: not found", file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt:
            return 130
        if status == 0 or status == USAGE or status in INTERRUPTED:
            return 0 if status == 0 else (130 if status in (130, -2) else 143 if status in (143, -15) else status)
        done = saved(ck)
        why = f"exit status {status}" if status > 0 else f"killed by signal {-status}"
        if attempt >= args.max_restarts:
            print(f"python -m mpisim.elastic: the job failed ({why}); no restarts left ({args.max_restarts} made)",
                  file=sys.stderr, flush=True)
            return 1
        attempt += 1
        where = f"from {done[0]} {done[1]}, the last one saved in {ck}" if done else \
            f"from the start (nothing saved in {ck} yet)"
        print(f"python -m mpisim.elastic: the job failed ({why}); restarting {where} ({attempt} of "
              f"{args.max_restarts})", file=sys.stderr, flush=True)
        if done:
            cmd = restarted(cmd)
        else:
            cmd = _without(cmd, "--inject-fault")


if __name__ == "__main__":
    sys.exit(main())
