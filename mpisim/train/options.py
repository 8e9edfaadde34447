"""The command-line options every trainer shares (centralized and, later, each paradigm).

``add_training_args(parser)`` adds them in groups; ``check_training_args(parser, args)`` turns a bad
combination into argparse's usage error (exit 2); ``run_config(args)`` is the part of the options
that defines a run, saved in checkpoints and compared on ``--resume``.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
from dataclasses import dataclass

from ..data import DATASETS
from ..nn import ACTIVATIONS, INITIALIZERS, OPTIMIZERS, SCHEDULES, parse_hidden
from ..nn.schedule import scaled_lr
from ..trace import check_output, output_file_problem
from ..nn.device import DEVICES, MATMUL_BACKENDS, DeviceUnavailable, make_device
from ..nn.precision import PRECISIONS, gpu_half_dtype

__all__ = ["LR_SCALINGS", "Parser", "scaled_lr", "add_training_args", "check_training_args", "check_checkpoint_dir",
           "prepare_output_file", "run_config", "RESUMABLE_CHANGES", "TrainOptions", "options_from"]

# options that may differ between a run and its --resume (everything else must match)
RESUMABLE_CHANGES = ("epochs", "metrics", "plot", "checkpoint", "resume", "stop_after", "quiet", "data_dir",
                     "download", "device", "matmul_backend", "inject_fault", "schedule_plot", "trace", "timeline", "eval")

LR_SCALINGS = ("none", "linear", "sqrt")


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error: the trainers have dozens of options, so a bad one gets what
    is wrong and a pointer to --help instead of the whole usage block; exit status 2."""

    def error(self, message: str):
        if launcher_rank() > 0:          # under mpiexec every process parses: the first one says it
            self.exit(2)
        self.exit(2, f"{self.prog}: error: {message}   (usage: {self.prog} --help)\n")


# what an MPI launcher (MPICH's hydra, Open MPI, PMIx) puts in its processes' environment
_LAUNCHER_RANK = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
_LAUNCHER_ANY = (*_LAUNCHER_RANK, "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_FD")


def under_mpiexec() -> bool:
    """True when this process was started by an MPI launcher."""
    return any(k in os.environ for k in _LAUNCHER_ANY)


def launcher_rank() -> int:
    """This process's rank as the MPI launcher told it, before MPI starts; 0 when there is none."""
    for k in _LAUNCHER_RANK:
        if os.environ.get(k, "").isdigit():
            return int(os.environ[k])
    return 0


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= minimum, described as ``what`` in the error."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v
    return parse


def _float_between(low: float, high: float, what: str):
    """An argparse type: a number v with low < v < high (so never NaN), described as ``what``."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not low < v < high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return v
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "an integer >= 0")


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return v


def _fraction(text: str) -> float:
    v = _nonneg_float(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return v


def _hidden(text: str) -> list[int]:
    if not text.strip():            # not silently logistic regression: that is --hidden none
        raise argparse.ArgumentTypeError("expected hidden sizes such as 128,64, or none; got ''")
    try:
        return parse_hidden(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_training_args(p: argparse.ArgumentParser, *, epochs: int = 10, batch_size: int = 64,
                      lr: float = 1e-3, optimizer: str = "adam", unit: str = "epoch",
                      hidden: tuple[int, ...] = (128, 64), lr_schedule_flag: str = "--schedule") -> None:
    """Add the shared options; a paradigm may pass its own defaults for epochs (or rounds, with
    ``unit="round"``, which also leaves the batch size to the paradigm), batch size, lr, optimizer and
    hidden sizes, and rename the learning-rate schedule's flag (a pipeline's ``--schedule`` is its own)."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="digits: scikit-learn's 8x8 digits, no download (default); mnist: IDX files from "
                        "--data-dir; synthetic: seeded Gaussian classes")
    g.add_argument("--data-dir", metavar="DIR", default=None,
                   help="where the MNIST IDX files are (default: $MPISIM_DATA, else ~/.cache/mpisim/mnist, "
                        "where --download puts them)")
    g.add_argument("--download", action="store_true", help="fetch MNIST from the public mirrors if missing")
    g.add_argument("--val-fraction", type=_fraction, default=0.0, metavar="F",
                   help="hold out this fraction of the training set for validation (default 0)")
    g.add_argument("--synthetic-size", type=_positive_int, default=10000, metavar="N",
                   help="examples in the synthetic dataset (default 10000)")
    g.add_argument("--synthetic-features", type=_positive_int, default=64, metavar="D",
                   help="features of the synthetic dataset (default 64)")

    g = p.add_argument_group("model")
    g.add_argument("--hidden", type=_hidden, default=list(hidden), metavar="SIZES",
                   help="hidden layer sizes, e.g. 512,256,128; 'none' for logistic regression "
                        f"(default {','.join(map(str, hidden))})")
    g.add_argument("--activation", choices=list(ACTIVATIONS), default="relu", help="(default relu)")
    g.add_argument("--dropout", type=_fraction, default=0.0, metavar="P", help="dropout after each hidden layer (default 0)")
    g.add_argument("--batchnorm", action="store_true", help="BatchNorm1d after each hidden Linear")
    g.add_argument("--init", choices=["auto", *INITIALIZERS], default="auto",
                   help="weight initializer (auto: He for ReLU-like, Xavier for tanh/sigmoid)")
    g.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="(default float32)")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp16 or bf16: mixed-precision training (Micikevicius et al. 2018): float32 master weights, "
                        "half-precision compute, dynamic loss scaling for fp16 (bf16 has float32's range and needs "
                        "none). On the CPU an EMULATION: float32 arithmetic with every layer's inputs, weights, "
                        "outputs and gradients rounded to the half format; with --device cuda real fp16 GEMMs "
                        "(default fp32)")
    g.add_argument("--device", choices=DEVICES, default="cpu",
                   help="cuda: layers on a GPU with CuPy, parameters uploaded and the gradient downloaded "
                        "every step (needs pip install -e '.[gpu]'; default cpu)")
    g.add_argument("--matmul-backend", choices=MATMUL_BACKENDS, default="auto",
                   help="with --device cuda: the kernels backend of the matrix multiplies (auto: cuBLAS)")

    g = p.add_argument_group("optimization")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=optimizer,
                   help=f"momentum and nesterov are SGD with --momentum (default {optimizer})")
    g.add_argument("--lr", type=_nonneg_float, default=lr, help=f"learning rate (default {lr:g})")
    g.add_argument("--momentum", type=_fraction, default=0.9, help="for momentum and nesterov (default 0.9)")
    g.add_argument("--weight-decay", type=_nonneg_float, default=0.0, metavar="WD",
                   help="L2 for sgd/momentum/nesterov/adam, decoupled for adamw (default 0)")
    flags = ("--schedule", "--lr-schedule") if lr_schedule_flag == "--schedule" else (lr_schedule_flag,)
    g.add_argument(*flags, dest="schedule", choices=SCHEDULES, default="constant",
                   help="learning-rate schedule (default constant)")
    units = f"{unit.upper()}S"    # a federated run's schedule counts rounds
    g.add_argument("--step-size", type=_positive_int, default=3, metavar=units,
                   help=f"step schedule: decay every this many {unit}s (default 3)")
    g.add_argument("--gamma", type=_nonneg_float, default=0.5, help="step schedule: decay factor in (0, 1] (default 0.5)")
    g.add_argument("--warmup", type=_nonneg_float, default=0.0, metavar=units,
                   help=f"linear warmup from lr/10 over this many {unit}s (default 0)"
                        + ("; under --lr-scaling from the unscaled --lr to the scaled one (Goyal et al.'s gradual "
                           "warmup)" if unit != "round" else ""))
    if unit == "round":          # federated: rounds of local training; the batch is the clients' own
        g.add_argument("--rounds", dest="epochs", type=_positive_int, default=epochs, metavar="R",
                       help=f"communication rounds (default {epochs})")
        p.set_defaults(batch_size=None)
    else:
        g.add_argument("--epochs", type=_positive_int, default=epochs, help=f"(default {epochs})")
        g.add_argument("--batch-size", type=_positive_int, default=batch_size, metavar="B",
                       help=f"(global) batch size (default {batch_size})")
        g.add_argument("--lr-scaling", choices=LR_SCALINGS, default="none",
                       help="scale --lr with the global batch B: linear, lr x B/B0 (Goyal et al. 2017; pair it with "
                            "--warmup), or sqrt, lr x sqrt(B/B0), where B0 is --base-batch, the batch --lr was "
                            "tuned for (default none)")
        g.add_argument("--base-batch", type=_positive_int, default=None, metavar="B0",
                       help=f"with --lr-scaling: the batch size --lr was tuned for (default {batch_size})")
    g.add_argument("--seed", type=_nonneg_int, default=0, help="one seed for init, shuffles and dropout (default 0)")

    g = p.add_argument_group("output")
    g.add_argument("--metrics", metavar="FILE", default=None, help=f"write one JSON object per {unit} here")
    g.add_argument("--plot", metavar="FILE.png", default=None,
                   help="loss and accuracy curves as PNG (needs matplotlib)")
    g.add_argument("--checkpoint", metavar="DIR", default=None,
                   help=f"save a checkpoint here after every {unit} (atomic, checksummed)")
    g.add_argument("--resume", action="store_true", help="continue the run saved in --checkpoint DIR")
    g.add_argument("--stop-after", type=_positive_int, default=None, metavar="K",
                   help=f"stop after {unit} K as if interrupted (to try --resume)")
    g.add_argument("--quiet", action="store_true", help="print nothing but errors: no progress lines, table or summary (files are still written)")
    g.add_argument("--trace", metavar="FILE.json", default=None,
                   help="write what every rank did when, in the Chrome trace event format (open it in Perfetto, "
                        "ui.perfetto.dev, or chrome://tracing): a track per rank, spans for forward, backward, the "
                        "optimizer, each collective and each message; virtual time with --network. The closing "
                        "table then adds each role's compute, communication, overlap and idle seconds")
    g.add_argument("--timeline", metavar="FILE.png", default=None,
                   help="the same spans as a Gantt chart, ranks by time (needs matplotlib)")


def check_training_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (exit 2) for values and combinations argparse cannot see on its own; creates the
    missing folders of --metrics and --plot once they are known to be writable."""
    if args.resume and not args.checkpoint:
        p.error("--resume needs --checkpoint DIR (the run to continue)")
    if args.device == "cpu" and args.matmul_backend != "auto":
        p.error("--matmul-backend is for --device cuda (on the CPU the MLP multiplies with BLAS)")
    try:
        device = make_device(args.device, matmul_backend=args.matmul_backend)
    except DeviceUnavailable as e:
        p.error(str(e))
    if args.precision != "fp32":
        if args.dtype != "float32":
            p.error(f"--precision {args.precision} keeps float32 master weights and computes in half precision: "
                    f"it needs --dtype float32 (the default), not {args.dtype}")
        if args.device == "cuda":
            if args.matmul_backend not in ("auto", "cublas"):
                p.error(f"--precision {args.precision} on the GPU multiplies with cuBLAS's half GEMM; "
                        f"--matmul-backend {args.matmul_backend} is float32/float64 only")
            try:
                gpu_half_dtype(args.precision, device.xp)
            except ValueError as e:
                p.error(str(e))
    for flag in ("plot", "timeline"):
        if getattr(args, flag) and importlib.util.find_spec("matplotlib") is None:
            p.error(f"--{flag} needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')")
    if not 0 < args.gamma <= 1:
        p.error(f"--gamma must be in (0, 1], got {args.gamma}")
    if args.optimizer == "nesterov" and args.momentum <= 0:
        p.error("--optimizer nesterov needs --momentum > 0")
    if args.dataset != "mnist" and (args.data_dir or args.download):
        p.error(f"--data-dir and --download are for --dataset mnist, not {args.dataset}")
    if getattr(args, "base_batch", None) is not None and args.lr_scaling == "none":
        p.error("--base-batch is the batch size --lr was tuned for: it needs --lr-scaling linear or sqrt")
    if getattr(args, "lr_scaling", "none") != "none" and args.base_batch is None:
        args.base_batch = p.get_default("batch_size")
    if args.batchnorm and args.batch_size is not None and args.batch_size < 2:
        p.error("--batchnorm needs --batch-size of at least 2")
    for name in ("metrics", "plot", "trace", "timeline"):
        if getattr(args, name) == "":          # not silently ignored: an empty name is a slip
            p.error(f"--{name} needs a file name")
    if args.checkpoint == "":
        p.error("--checkpoint needs a directory name")
    if args.data_dir == "":
        p.error("--data-dir needs a directory name")
    if args.plot and not args.plot.lower().endswith(".png"):
        p.error(f"--plot writes a PNG: give a file name ending in .png, not {args.plot}")
    for name, suffix in (("trace", ".json"), ("timeline", ".png")):
        path = getattr(args, name)
        why = path and check_output(path, suffix, folder=False)   # the folder: prepare_output_file, below
        if why:
            p.error(f"--{name}: {why}")
    same = same_file([(f"--{name}", getattr(args, name)) for name in ("metrics", "plot", "trace", "timeline")])
    if same:
        p.error(same)
    for name in ("metrics", "plot", "trace", "timeline"):
        if getattr(args, name):
            prepare_output_file(p, f"--{name}", getattr(args, name))
    if args.checkpoint:
        check_checkpoint_dir(p, args.checkpoint)


def check_checkpoint_dir(p: argparse.ArgumentParser, directory: str) -> None:
    """Usage error unless ``--checkpoint directory`` is a directory (or can be made one) whose checkpoint and
    lock files, where they exist, are regular files: a FIFO or a device there would block the run or swallow it."""
    from . import checkpoint
    ck = os.path.abspath(directory)
    if os.path.lexists(ck) and not os.path.isdir(ck):
        kind = "a file" if os.path.isfile(ck) else "not a directory"
        p.error(f"--checkpoint {directory} is {kind}; give a directory")
    _check_creatable(p, f"--checkpoint {directory}", ck)
    for name in (checkpoint.CHECKPOINT_NAME, getattr(checkpoint, "LOCK_NAME", None)):
        f = os.path.join(ck, name) if name else None
        if f and os.path.lexists(f) and not os.path.isfile(f):
            p.error(f"--checkpoint {directory}: {f} exists and is not a regular file (a FIFO, socket, device, "
                    f"directory or broken link): remove it or choose another directory")


def same_file(outputs: list[tuple[str, str | None]]) -> str | None:
    """'--a and --b name the same file F' for the first two of ``(option, path)`` that do (symlinks followed;
    None paths skipped), or None: two outputs of one run never share a file."""
    seen: dict[str, str] = {}
    for option, path in outputs:
        if path:
            real = os.path.realpath(path)
            if real in seen:
                return f"{seen[real]} and {option} name the same file {path}"
            seen[real] = option
    return None


def prepare_output_file(p: argparse.ArgumentParser, option: str, path: str) -> None:
    """Usage error unless ``path`` can be written as a file; creates its missing folders."""
    why = output_file_problem(path)
    if why:
        p.error(f"{option} {why}")
    parent = os.path.dirname(os.path.abspath(path))
    _check_creatable(p, f"{option} {path}", parent)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        p.error(f"{option} {path}: cannot create {parent}: {e.strerror or e}")


def _check_creatable(p: argparse.ArgumentParser, option: str, directory: str) -> None:
    """Usage error unless ``directory`` exists or can be created: its nearest existing ancestor
    must be a writable directory."""
    existing = directory
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        p.error(f"{option}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK):
        p.error(f"{option}: cannot write in {existing}")


@dataclass(frozen=True)
class TrainOptions:
    """The options every trainer shares, parsed once (see :func:`add_training_args` for each one's
    meaning and default); a paradigm's own options are a frozen dataclass of its own."""
    # data
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = 0.0
    synthetic_size: int = 10000
    synthetic_features: int = 64
    # model
    hidden: list = dataclasses.field(default_factory=lambda: [128, 64])
    activation: str = "relu"
    dropout: float = 0.0
    batchnorm: bool = False
    init: str = "auto"
    dtype: str = "float32"
    precision: str = "fp32"        # fp16 | bf16: mixed precision (emulated on the CPU)
    device: str = "cpu"
    matmul_backend: str = "auto"
    # optimization
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    step_size: int = 3
    gamma: float = 0.5
    warmup: float = 0.0
    epochs: int = 10               # or rounds, for federated paradigms
    batch_size: int | None = 64    # None where the paradigm's clients choose their own batches
    lr_scaling: str = "none"       # linear | sqrt: lr for base_batch, scaled to the global batch at the start
    base_batch: int | None = None
    per_rank_batch: int | None = None   # data parallel: the global batch is this times the workers
    base_lr: float | None = None   # with lr_scaling: --lr as given (lr is then the scaled rate)
    seed: int = 0
    # output
    metrics: str | None = None
    plot: str | None = None
    checkpoint: str | None = None
    resume: bool = False
    stop_after: int | None = None
    quiet: bool = False
    trace: str | None = None       # Chrome trace JSON (mpisim.trace)
    timeline: str | None = None    # Gantt chart PNG (mpisim.timeline)
    # cluster (absent from the centralized trainer)
    sim: int | None = None
    sim_timeout: float = 120.0
    network: object = None         # a mpisim.comm.network.Network, or None
    inject_fault: tuple | None = None
    eval: str = "rank0"            # or distributed: every rank scores a shard of the test set


def options_from(cls, args: argparse.Namespace):
    """An instance of the dataclass ``cls`` from the same-named attributes of ``args`` (fields the
    parser does not have keep their defaults)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def run_config(*options, exclude: tuple[str, ...] = (), **extra) -> dict:
    """The options that define a run (JSON-able: as a checkpoint stores them), for checkpoints and
    for the metrics file: the fields of the option dataclasses (or Namespaces), less those that may
    change on a resume, plus ``extra``."""
    skip = {*RESUMABLE_CHANGES, *exclude}
    cfg = {}
    for o in options:
        items = dataclasses.asdict(o) if dataclasses.is_dataclass(o) else vars(o)
        cfg.update({k: v for k, v in items.items() if k not in skip and not k.startswith("_")})
    cfg.update(extra)
    return json.loads(json.dumps(dict(sorted(cfg.items())), default=str))
