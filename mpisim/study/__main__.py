"""``python -m mpisim.study NAME [--quick] [--out DIR]``: run one course experiment, print its tables and
write NAME.md (tables, plots, conclusions) with its PNGs and NAME.json (the figures) in DIR."""
from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
import tempfile

from . import STUDIES, Study, StudyError, load_study
from ..train.options import Parser


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<12} {what}" for name, (_, what) in STUDIES.items())
    p = Parser(prog="python -m mpisim.study", formatter_class=argparse.RawDescriptionHelpFormatter,
               description="Run one of the course experiments: it prints its tables and writes NAME.md with its "
                           "tables, plots and conclusions (and NAME.json with the figures) in --out.",
               epilog=f"studies:\n{listing}\n\nexamples:\n  python -m mpisim.study --list\n"
                      "  python -m mpisim.study batch-size --quick            # about a minute or less\n"
                      "  python -m mpisim.study scaling --out results/studies   # the full run (docs/studies: ours)")
    p.add_argument("name", nargs="?", metavar="NAME", help="the study to run (see --list)")
    p.add_argument("--list", action="store_true", help="name the studies and what each measures")
    p.add_argument("--quick", action="store_true",
                   help="a small version of the study (fewer and smaller runs): seconds, at most about a minute")
    p.add_argument("--out", metavar="DIR", default="results/studies",
                   help="where NAME.md, its plots and NAME.json go (created; default results/studies)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (the files are still written)")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.list:
        if args.name:
            p.error("--list takes no study name")
        for name, (_, what) in STUDIES.items():
            print(f"{name:<12} {what}")
        return 0
    if not args.name:
        p.error("name a study (python -m mpisim.study --list names them)")
    if args.name not in STUDIES:
        p.error(f"unknown study {args.name!r}; the studies are {', '.join(STUDIES)}")
    if importlib.util.find_spec("matplotlib") is None:
        p.error("the studies draw their plots with matplotlib: pip install matplotlib (or pip install -e '.[plot]')")
    if not args.out:
        p.error("--out needs a folder")
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        p.error(f"--out {args.out} is a file; give a directory")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        p.error(f"--out {args.out}: cannot create it: {e.strerror or e}")
    try:                                    # os.access says yes to root even where nothing can be written
        tempfile.TemporaryFile(dir=out).close()
    except OSError as e:
        p.error(f"--out {args.out}: cannot write there: {e.strerror or e}")
    command = "python -m mpisim.study " + shlex.join([args.name, *(["--quick"] if args.quick else []),
                                                        "--out", args.out])
    study = Study(args.name, quick=args.quick, out=out, command=command, quiet=args.quiet)
    try:
        study.say(f"{study.question}\n")
        load_study(args.name).run(study)
        study.write()
    except StudyError as e:
        print(f"python -m mpisim.study {args.name}: error: {e}", file=sys.stderr, flush=True)
        return 1
    except OSError as e:                    # writing a plot or the report
        print(f"python -m mpisim.study {args.name}: error: cannot write {e.filename or args.out}: {e.strerror or e}",
              file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"python -m mpisim.study {args.name}: interrupted; the report was not written", file=sys.stderr, flush=True)
        return 130
    finally:
        study.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
