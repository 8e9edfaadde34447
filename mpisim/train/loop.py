"""The shared training pieces: build the run from the options, save and resume it.

The runtime (:mod:`mpisim.train.runtime`) builds every paradigm's dataset, model, optimizer and
schedule with the same ``build_*`` functions and saves and restores with ``save_state``/``restore_state``.

With ``--precision fp16`` the run's optimizer carries the dynamic loss scaler (``opt.loss_scaler``, a
:class:`~mpisim.nn.precision.LossScaler`; None otherwise), as apex's FP16_Optimizer wraps one: the scaler
decides whether the optimizer steps, and its state is saved and resumed with the optimizer's.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..data import Dataset, load_dataset
from ..nn import MLP, Optimizer, make_optimizer, make_schedule
from ..nn.device import make_device
from ..nn.precision import LossScaler
from .checkpoint import CheckpointError, checkpoint_path, load_checkpoint, save_checkpoint
from .options import TrainOptions

__all__ = ["build_dataset", "build_model", "build_optimizer", "build_schedule", "restore_state",
           "save_state", "RunState", "gather_batch", "data_fingerprint", "activation_memory", "activation_text",
           "loss_scaling_figures", "loss_scaling_note"]


def build_dataset(args: TrainOptions) -> Dataset:
    """The dataset the options name (normalized, with the validation split if asked)."""
    return load_dataset(args.dataset, data_dir=args.data_dir, download=args.download,
                        val_fraction=args.val_fraction, seed=args.seed,
                        synthetic_size=args.synthetic_size, synthetic_features=args.synthetic_features)


def build_model(args: TrainOptions, ds: Dataset) -> MLP:
    return MLP([ds.num_features, *args.hidden, ds.num_classes], activation=args.activation,
               dropout=args.dropout, batchnorm=args.batchnorm, init=args.init, dtype=args.dtype, seed=args.seed,
               device=make_device(args.device, matmul_backend=args.matmul_backend), precision=args.precision)


def build_optimizer(args: TrainOptions, model: MLP | None, params: np.ndarray | None = None,
                    grads: np.ndarray | None = None) -> Optimizer:
    """The optimizer the options name, over the model's vectors (or over ``params`` and ``grads``: a part).
    ``opt.loss_scaler``: with ``--precision fp16`` the run's loss scaler (for the whole model's optimizer;
    a part's gets None), else None."""
    opt = make_optimizer(args.optimizer, model.params if params is None else params,
                         model.grads if grads is None else grads, lr=args.lr,
                         weight_decay=args.weight_decay, momentum=args.momentum)
    opt.loss_scaler = LossScaler() if args.precision == "fp16" and model is not None and params is None else None
    return opt


def build_schedule(args: TrainOptions) -> Callable[[float], float]:
    """The run's learning rate by fractional epoch. The warmup starts from a tenth of the rate; under
    --lr-scaling from the rate the command line gave, the unscaled one (Goyal et al. 2017's gradual warmup),
    so at or below --base-batch there is nothing to warm."""
    start = 0.1
    if args.lr_scaling != "none" and args.base_lr is not None and args.lr > 0:
        start = min(1.0, args.base_lr / args.lr)
    return make_schedule(args.schedule, args.lr, epochs=args.epochs, step_size=args.step_size,
                         gamma=args.gamma, warmup=args.warmup, warmup_start=start)


@dataclass
class RunState:
    """Where a run stands: the next epoch to train, the records of the ones done, and the per-rank
    arrays of the checkpoint (``rank{r}.NAME``), if it holds any."""
    start_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    per_rank: dict = field(default_factory=dict)
    opt_steps: int = 0              # the optimizer's step count in the checkpoint (for model-parallel parts)


def save_state(directory, model: MLP, opt: Optimizer, *, epoch: int, epochs: int, config: dict,
               history: list[dict], per_rank: dict | None = None) -> None:
    """Checkpoint after ``epoch`` of ``epochs`` epochs: parameters, BatchNorm buffers, optimizer state (and
    its loss scaler's, ``scaler.NAME``), the run's options and the metrics so far; ``per_rank`` adds each
    rank's own arrays (``rank{r}.NAME``)."""
    scaler = opt.loss_scaler
    arrays = {"params": model.params, "buffers": model.buffers,
              **{f"opt.{k}": v for k, v in opt.state_dict().items()},
              **({f"scaler.{k}": v for k, v in scaler.state_dict().items()} if scaler else {}), **(per_rank or {})}
    save_checkpoint(directory, arrays, {"epoch": epoch, "epochs": epochs, "config": config, "history": history,
                                        "model": model.config(), "optimizer": opt.name})


def restore_state(args: TrainOptions, model: MLP, opt: Optimizer, config: dict,
                  flags: dict[str, str] | None = None) -> RunState:
    """With ``--resume``, load ``--checkpoint DIR`` into model and optimizer and check it is this run.
    ``flags`` names the option of each config key (``{"schedule": "--lr-schedule"}``) for the messages.

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
    if where.exists() and not where.is_file():      # reading a FIFO would block until someone writes to it
        raise CheckpointError(f"{where} is not a regular file (a FIFO, socket, device or directory): "
                              f"not a checkpoint to resume")
    arrays, meta = load_checkpoint(args.checkpoint)
    if (not isinstance(meta.get("epoch"), int) or isinstance(meta["epoch"], bool) or meta["epoch"] < 0
            or not isinstance(meta.get("config"), dict)):
        raise CheckpointError(f"{where}: the metadata has no valid epoch and run options (a file from another tool?)")
    history = meta.get("history", [])
    why = history_problem(history, meta["epoch"])
    if why:
        raise CheckpointError(f"{where}: the metadata's history is malformed: {why} (a file from another tool, or "
                              f"edited?)")
    # checkpoints from before --precision were fp32, and from before --lr-scaling unscaled
    saved = {"precision": "fp32", "lr_scaling": "none", **meta["config"]}
    if saved.get("paradigm") == "fedavg":           # FedAvg checkpoints from before --aggregate averaged
        saved.setdefault("aggregate", "mean")
    old_epochs = meta.get("epochs")
    if saved.get("schedule") == "cosine" and old_epochs is not None and old_epochs != args.epochs:
        raise CheckpointError(f"{where} was a run of {old_epochs} epochs with the cosine learning-rate schedule, whose learning "
                              f"rate depends on the number of epochs: resume it with --epochs {old_epochs}")
    if saved.get("paradigm") != config.get("paradigm"):
        raise CheckpointError(f"{where} is a checkpoint of python -m mpisim.{saved.get('paradigm')}, not of "
                              f"mpisim.{config.get('paradigm')}: resume it with that tool, or choose another "
                              f"--checkpoint directory")
    flags = flags or {}
    diffs = [f"{_SET_BY.get(k) or flags.get(k) or '--' + k.replace('_', '-')}: checkpoint has {saved.get(k)!r}, this run has "
             f"{config.get(k)!r}" for k in sorted(set(saved) | set(config)) if saved.get(k) != config.get(k)]
    if diffs:
        raise CheckpointError(f"{where} is from a different run; resume with the same options:\n  "
                              + "\n  ".join(diffs))
    for name, target in (("params", model.params), ("buffers", model.buffers)):
        a = arrays.get(name)
        if a is None or a.shape != target.shape or a.dtype != target.dtype:
            got = "nothing" if a is None else f"{a.shape} {a.dtype}"
            raise CheckpointError(f"{where}: {name} should be {target.shape} {target.dtype}, found {got}")
    for k, a in arrays.items():           # a NaN loaded here would pass for a diverging run ("lower --lr")
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise CheckpointError(f"{where}: {k} holds non-finite values (NaN or inf): not a state to resume from")
    for name, target in (("params", model.params), ("buffers", model.buffers)):
        target[...] = arrays[name]
    scaler = opt.loss_scaler
    try:
        opt.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("opt.")})
        if scaler is not None:
            scaler.load_state_dict({k[7:]: v for k, v in arrays.items() if k.startswith("scaler.")})
    except (ValueError, TypeError) as e:            # TypeError: int() of an array that is not one number
        raise CheckpointError(f"{where}: {e}") from None
    return RunState(start_epoch=meta["epoch"], history=list(history),
                    per_rank={k: v for k, v in arrays.items() if k.startswith("rank")})


# the figures of a record that the resumed run reads back (curves, best accuracy): numbers or null
_RECORD_FIGURES = ("loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "seconds")


def history_problem(history, epochs_done: int) -> str | None:
    """What is wrong with a checkpoint's metrics history, or None: it must be a list of ``epochs_done`` JSON
    objects, record i numbered i+1 by its ``epoch`` (or, for a federated run, ``round``) key, with numbers
    (or null) for the figures a resumed run reads back."""
    if not isinstance(history, list):
        return f"expected a list of records, found {type(history).__name__}"
    if len(history) != epochs_done:
        return (f"it holds {len(history)} record{'' if len(history) == 1 else 's'}, but the checkpoint was saved "
                f"after epoch (or round) {epochs_done}")
    for i, rec in enumerate(history):
        if not isinstance(rec, dict):
            return f"record {i + 1} is {type(rec).__name__}, not an object"
        unit = "epoch" if "epoch" in rec else "round"
        n = rec.get(unit)
        if not isinstance(n, int) or isinstance(n, bool) or n != i + 1:
            return (f"record {i + 1} has no epoch or round number" if unit not in rec
                    else f"record {i + 1} has {unit} {n!r}, expected {i + 1}")
        for k in _RECORD_FIGURES:
            v = rec.get(k)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                return f"record {i + 1} has {k} {v!r}, not a number"
    return None


# what sets the run-defining values that are not options of their own
_SET_BY = {"ranks": "the rank count (--sim N, or mpiexec -n N)", "data": "the data (--dataset and its options)",
           "base_lr": "--lr (before --lr-scaling)", "batch_size": "the global batch (--batch-size or --per-rank-batch)"}


def data_fingerprint(ds: Dataset) -> str:
    """A short description plus a checksum of the labels, so a resume on other data is caught."""
    crc = zlib.crc32(ds.y_train.tobytes()) ^ zlib.crc32(ds.y_test.tobytes())
    return f"{ds.describe()} labels crc32 {crc:08x}"


def gather_batch(x: np.ndarray, idx: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of ``x``, written into the first ``len(idx)`` rows of ``buf`` (allocated once for
    the largest batch): no allocation per step, also for a smaller last batch."""
    return np.take(x, idx, axis=0, out=buf[:len(idx)], mode="clip")   # 'raise' would buffer a copy


# -- mixed precision (--precision) ------------------------------------------------------------------------
def loss_scaling_figures(opt: Optimizer) -> dict:
    """The record's fp16 loss-scaling figures: the scale now and the steps skipped over the run so far
    (``{}`` without a loss scaler)."""
    scaler = opt.loss_scaler
    return {"loss_scale": scaler.scale, "skipped_steps": scaler.skipped} if scaler else {}


def loss_scaling_note(record: dict) -> str | None:
    """The line after an epoch's progress line with fp16 loss scaling (None without)."""
    if record.get("loss_scale") is None:
        return None
    n = record["skipped_steps"]
    return (f"  fp16 loss scale {record['loss_scale']:g}; {n} step{'' if n == 1 else 's'} skipped so far "
            f"(gradient overflow)")


def activation_memory(model: MLP, batch: int) -> dict:
    """After a training step of ``batch`` examples: what it keeps for backward, from the formula
    (``MLP.kept_activations``: values, bytes per precision) and ``measured`` in this model's arrays."""
    return dict(model.kept_activations(batch), measured=model.stored_activation_bytes())


def activation_text(kept: dict, precision: str) -> str:
    """Two lines on the activation memory of one step, ``kept`` from :func:`activation_memory`."""
    b = kept["bytes"]
    return (f"activations kept for backward, one step of batch {kept['batch']}: {kept['formula']}\n"
            f"  = {b['fp32']:,} B in fp32, {b[precision]:,} B in {precision} (2 bytes a value); measured here "
            f"{kept['measured']:,} B (the CPU emulation stores float32)")
