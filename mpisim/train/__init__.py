"""The shared training layer: options, building a run, checkpoints, metrics, plots; the paradigm runtime
(:mod:`mpisim.train.runtime`) and the federated strategies (:mod:`mpisim.train.federated`)."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .loop import (RunState, build_dataset, build_model, build_optimizer, build_schedule, gather_batch,
                   restore_state, save_state)
from .metrics import MetricsLog, plot_curves, progress_line
from .options import TrainOptions, add_training_args, check_training_args, options_from, run_config

__all__ = [
    "CheckpointError", "MetricsLog", "RunState", "add_training_args", "build_dataset", "build_model",
    "build_optimizer", "build_schedule", "check_training_args", "gather_batch", "load_checkpoint",
    "plot_curves", "progress_line", "restore_state", "run_config", "save_checkpoint", "save_state",
    "TrainOptions", "options_from",
]
