"""``python -m mpisim.centralized``: one process trains the MLP on the whole training set.

The baseline every paradigm is compared with: same options, same metrics, same checkpoints, the same
runtime (:mod:`mpisim.train.runtime`) on one rank without a cluster.

    python -m mpisim.centralized                                  # digits, a few seconds
    python -m mpisim.centralized --dataset mnist --data-dir DIR --hidden 512,256,128 --dropout 0.2 \\
        --optimizer adam --lr 1e-3 --weight-decay 1e-5 --schedule step --step-size 3 --gamma 0.5 \\
        --batch-size 64 --epochs 5 --metrics run.jsonl --plot run.png
    python -m mpisim.centralized --precision fp16                 # mixed precision, emulated on the CPU
"""
from __future__ import annotations

import sys

import numpy as np

from .train import gather_batch
from .train.loop import activation_memory, activation_text, loss_scaling_figures, loss_scaling_note
from .train.runtime import Paradigm, Role, Run


class Centralized(Role):
    """The one rank: every batch of the whole training set, one optimizer step each."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        ds, model, tr = run.ds, run.model, run.train
        self.title = f"centralized, {ds.name}, {model.describe()}"
        self.xbuf = np.empty((min(tr.batch_size, ds.num_train), ds.num_features), dtype=model.dtype)
        run.say(f"centralized: {ds.describe()}")
        run.say(f"model {model.describe()}; {tr.optimizer} lr {tr.lr:g}, batch {tr.batch_size}, "
                f"{tr.epochs} epoch{'s' if tr.epochs != 1 else ''}"
                + (", dynamic loss scaling" if run.opt.loss_scaler else "") + run.resuming())
        self.kept = None                                # what one step keeps for backward, after the first

    def epoch(self, epoch: int) -> dict:
        run, tr, model, opt = self.run, self.run.train, self.run.model, self.run.opt
        scaler = opt.loss_scaler                        # fp16 only
        model.seed_dropout(epoch)
        loss_sum, correct, seen = 0.0, 0, 0
        for i, idx, lr in run.batches(epoch):
            if tr.batchnorm and len(idx) < 2:          # BatchNorm cannot train on one example
                continue
            opt.lr = lr
            xb = gather_batch(run.x_train, idx, self.xbuf)
            where = f"at epoch {epoch + 1}, step {i + 1} (lr {opt.lr:g})"
            with np.errstate(all="ignore"):          # a diverging run is caught just below, once
                loss, c = model.train_step(xb, run.ds.y_train[idx], loss_scale=scaler.scale if scaler else 1.0)
            run.check_finite(loss, where + (" in fp16, whose largest value is 65504" if tr.precision == "fp16" else ""))
            if scaler is None or scaler.unscale_and_check(model.grads, where=where):
                opt.step()                              # else skipped: the scaled gradient overflowed fp16
            if self.kept is None and tr.precision != "fp32":
                self.kept = activation_memory(model, len(idx))
            loss_sum += loss * len(idx)
            correct += c
            seen += len(idx)
        seconds = run.elapsed()
        return {"loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "lr": opt.lr,
                "samples_per_s": seen / seconds if seconds > 0 else None, **loss_scaling_figures(opt)}

    def note(self, record: dict) -> str | None:
        return loss_scaling_note(record)

    def epilogue(self) -> str | None:
        return activation_text(self.kept, self.run.train.precision) if self.kept else None

    def result(self) -> dict:
        return {"activations": self.kept} if self.kept else {}


PARADIGM = Paradigm(name="centralized", doc=__doc__, setup=Centralized, cluster=False, mixed_precision=True,
                    description="Train the NumPy MLP in one process (the centralized baseline).")
build_parser, main = PARADIGM.build_parser, PARADIGM.main


def train_centralized(argv) -> dict:
    """Train from a command line (a list of strings) in this thread; returns the last record, the model
    and the summary. Errors are raised, not printed."""
    from .comm import SimCluster
    cfg = PARADIGM.parse(argv)
    return SimCluster(1).run(PARADIGM.run_rank, cfg)[0]


if __name__ == "__main__":
    sys.exit(main())
