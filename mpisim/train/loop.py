"""The shared training pieces: build the run from the options, resume it, and the single-process loop.

A paradigm builds its dataset, model, optimizer and schedule with the same ``build_*`` functions,
saves and restores with ``save_state``/``restore_state``, and reports with ``MetricsLog`` and
``progress_line``; only how a step's gradient is computed and combined differs.
"""
from __future__ import annotations

import argparse
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..data import Dataset, epoch_permutation, load_dataset
from ..nn import MLP, Optimizer, flush_denormals, make_optimizer, make_schedule
from ..nn.device import make_device
from .checkpoint import CheckpointError, checkpoint_path, load_checkpoint, save_checkpoint
from .metrics import MetricsLog, plot_curves, progress_line
from .options import run_config

__all__ = ["build_dataset", "build_model", "build_optimizer", "build_schedule", "restore_state",
           "save_state", "RunState", "train_centralized", "gather_batch", "data_fingerprint"]


def build_dataset(args: argparse.Namespace) -> Dataset:
    """The dataset the options name (normalized, with the validation split if asked)."""
    return load_dataset(args.dataset, data_dir=args.data_dir, download=args.download,
                        val_fraction=args.val_fraction, seed=args.seed,
                        synthetic_size=args.synthetic_size, synthetic_features=args.synthetic_features)


def build_model(args: argparse.Namespace, ds: Dataset) -> MLP:
    return MLP([ds.num_features, *args.hidden, ds.num_classes], activation=args.activation,
               dropout=args.dropout, batchnorm=args.batchnorm, init=args.init, dtype=args.dtype, seed=args.seed,
               device=make_device(getattr(args, "device", "cpu"), matmul_backend=getattr(args, "matmul_backend", "auto")))


def build_optimizer(args: argparse.Namespace, model: MLP) -> Optimizer:
    return make_optimizer(args.optimizer, model.params, model.grads, lr=args.lr,
                          weight_decay=args.weight_decay, momentum=args.momentum)


def build_schedule(args: argparse.Namespace) -> Callable[[float], float]:
    return make_schedule(args.schedule, args.lr, epochs=args.epochs, step_size=args.step_size,
                         gamma=args.gamma, warmup=args.warmup)


@dataclass
class RunState:
    """Where a run stands: the next epoch to train and the records of the ones done."""
    start_epoch: int = 0
    history: list[dict] = field(default_factory=list)


def save_state(directory, model: MLP, opt: Optimizer, *, epoch: int, epochs: int, config: dict,
               history: list[dict]) -> None:
    """Checkpoint after ``epoch`` of ``epochs`` epochs: parameters, BatchNorm buffers, optimizer state,
    the run's options and the metrics so far."""
    arrays = {"params": model.params, "buffers": model.buffers,
              **{f"opt.{k}": v for k, v in opt.state_dict().items()}}
    save_checkpoint(directory, arrays, {"epoch": epoch, "epochs": epochs, "config": config, "history": history,
                                        "model": model.config(), "optimizer": opt.name})


def restore_state(args: argparse.Namespace, model: MLP, opt: Optimizer, config: dict) -> RunState:
    """With ``--resume``, load ``--checkpoint DIR`` into model and optimizer and check it is this run.

    Without ``--resume``, refuse to overwrite a checkpoint that is already there (nothing is lost).
    """
    if not args.checkpoint:
        return RunState()
    where = checkpoint_path(args.checkpoint)
    if not args.resume:
        if where.exists():
            raise CheckpointError(f"{where} already holds a run: pass --resume to continue it, or choose "
                                  f"another --checkpoint directory")
        return RunState()
    arrays, meta = load_checkpoint(args.checkpoint)
    if not isinstance(meta.get("epoch"), int) or meta["epoch"] < 0 or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{where}: the metadata has no valid epoch and run options (a file from another tool?)")
    saved = meta["config"]
    old_epochs = meta.get("epochs")
    if config.get("schedule") == "cosine" and old_epochs is not None and old_epochs != args.epochs:
        raise CheckpointError(f"{where} was a run of {old_epochs} epochs with --schedule cosine, whose learning "
                              f"rate depends on the number of epochs: resume it with --epochs {old_epochs}")
    diffs = [f"--{k.replace('_', '-')}: checkpoint has {saved.get(k)!r}, this run has {config.get(k)!r}"
             for k in sorted(set(saved) | set(config)) if saved.get(k) != config.get(k)]
    if diffs:
        raise CheckpointError(f"{where} is from a different run; resume with the same options:\n  "
                              + "\n  ".join(diffs))
    for name, target in (("params", model.params), ("buffers", model.buffers)):
        a = arrays.get(name)
        if a is None or a.shape != target.shape or a.dtype != target.dtype:
            got = "nothing" if a is None else f"{a.shape} {a.dtype}"
            raise CheckpointError(f"{where}: {name} should be {target.shape} {target.dtype}, found {got}")
        target[...] = a
    try:
        opt.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("opt.")})
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    return RunState(start_epoch=meta["epoch"], history=list(meta.get("history", [])))


def data_fingerprint(ds: Dataset) -> str:
    """A short description plus a checksum of the labels, so a resume on other data is caught."""
    crc = zlib.crc32(ds.y_train.tobytes()) ^ zlib.crc32(ds.y_test.tobytes())
    return f"{ds.describe()} labels crc32 {crc:08x}"


def gather_batch(x: np.ndarray, idx: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of ``x``, written into the first ``len(idx)`` rows of ``buf`` (allocated once for
    the largest batch): no allocation per step, also for a smaller last batch."""
    return np.take(x, idx, axis=0, out=buf[:len(idx)], mode="clip")   # 'raise' would buffer a copy


def train_centralized(args: argparse.Namespace, *, out=None) -> dict:
    """Train one process on the whole training set; returns the last epoch's record (plus the model)."""
    was_on = flush_denormals()     # subnormal floats would slow long runs several-fold (mpisim.nn.fpenv)
    try:
        return _train_centralized(args, out)
    finally:
        if was_on is False:
            flush_denormals(False)  # leave the caller's thread as it was


def _train_centralized(args: argparse.Namespace, out) -> dict:
    ds = build_dataset(args)
    model = build_model(args, ds)
    opt = build_optimizer(args, model)
    lr_at = build_schedule(args)
    config = run_config(args, paradigm="centralized", data=data_fingerprint(ds))
    state = restore_state(args, model, opt, config)
    log = MetricsLog(args.metrics, state.history)
    say = (lambda *a: None) if args.quiet else (lambda s: print(s, file=out or sys.stdout, flush=True))

    say(f"centralized: {ds.describe()}")
    say(f"model {model.describe()}; {args.optimizer} lr {args.lr:g}, batch {args.batch_size}, "
        f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}" + (f", resuming after epoch {state.start_epoch}" if state.start_epoch else ""))
    if state.start_epoch >= args.epochs:
        say(f"the checkpoint has already done {state.start_epoch} of {args.epochs} epochs: nothing to train")

    n, B = ds.num_train, args.batch_size
    x_train = ds.x_train.astype(model.dtype, copy=False)
    steps = -(-n // B)
    xbuf = np.empty((min(B, n), ds.num_features), dtype=model.dtype)
    for epoch in range(state.start_epoch, args.epochs):
        if args.stop_after is not None and epoch >= args.stop_after:
            say(f"stopping after epoch {epoch} as asked (--stop-after {args.stop_after})"
                + ("; continue with --resume" if args.checkpoint else "; nothing saved (no --checkpoint)"))
            break
        t0 = time.perf_counter()
        model.seed_dropout(epoch)
        perm = epoch_permutation(n, seed=args.seed, epoch=epoch)
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(steps):
            idx = perm[i * B:(i + 1) * B]
            if args.batchnorm and len(idx) < 2:        # BatchNorm cannot train on one example
                continue
            opt.lr = lr_at(epoch + i / steps)
            xb = gather_batch(x_train, idx, xbuf)
            with np.errstate(all="ignore"):          # a diverging run is caught just below, once
                loss, c = model.train_step(xb, ds.y_train[idx])
            if not np.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at epoch {epoch + 1}, step {i + 1}: "
                                         f"lower --lr (now {opt.lr:g})")
            opt.step()
            loss_sum += loss * len(idx)
            correct += c
            seen += len(idx)
        train_seconds = time.perf_counter() - t0
        test_loss, test_acc = model.evaluate(ds.x_test, ds.y_test)
        rec = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
               "test_loss": test_loss, "test_acc": test_acc, "lr": opt.lr,
               "samples_per_s": seen / train_seconds if train_seconds > 0 else None}
        if ds.x_val is not None:
            rec["val_loss"], rec["val_acc"] = model.evaluate(ds.x_val, ds.y_val)
        rec["seconds"] = time.perf_counter() - t0
        log.add(rec)
        say(progress_line(rec, args.epochs))
        if args.checkpoint:
            save_state(args.checkpoint, model, opt, epoch=epoch + 1, epochs=args.epochs, config=config,
                       history=log.records)
    if args.plot and log.records:
        plot_curves(log.records, args.plot, title=f"centralized, {ds.name}, {model.describe()}")
        say(f"plot written to {args.plot}")
    last = dict(log.records[-1]) if log.records else {}
    last["model"] = model
    return last
