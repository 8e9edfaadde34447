"""``python -m mpisim.centralized``: one process trains the MLP on the whole training set (HW "Q1").

The baseline every paradigm is compared with: same options, same metrics, same checkpoints.

    python -m mpisim.centralized                                  # digits, a few seconds
    python -m mpisim.centralized --dataset mnist --data-dir DIR --hidden 512,256,128 --dropout 0.2 \\
        --optimizer adam --lr 1e-3 --weight-decay 1e-5 --schedule step --step-size 3 --gamma 0.5 \\
        --batch-size 64 --epochs 5 --metrics run.jsonl --plot run.png
"""
from __future__ import annotations

import argparse
import sys

from .data import DataError
from .train import CheckpointError, add_training_args, check_training_args, train_centralized
from .train.checkpoint import checkpoint_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mpisim.centralized",
                                description="Train the NumPy MLP in one process (the centralized baseline).",
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(p)
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check_training_args(p, args)
    try:
        train_centralized(args)
    except (DataError, CheckpointError, FloatingPointError, OSError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"{p.prog}: error: out of memory for this model and dataset (--hidden {args.hidden}, "
              f"--batch-size {args.batch_size})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        saved = args.checkpoint and checkpoint_path(args.checkpoint).exists()
        print(f"{p.prog}: interrupted" + (f"; the last finished epoch is in {args.checkpoint}, continue with "
                                          f"--resume" if saved else ""), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
