"""Metrics: one JSON object per epoch (or round) in a file, a progress line, the curves as a PNG, and a
traced run's time per role (:func:`time_table`, from :mod:`mpisim.trace`'s totals)."""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write_bytes

__all__ = ["MetricsLog", "plural", "progress_line", "plot_curves", "share", "time_table"]


def _json_line(record: dict) -> str:
    """One record as a line of JSON; JSON has no NaN/inf, so they are written as null."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    return json.dumps(clean) + "\n"


class MetricsLog:
    """Collects records; with a path, appends each one as a JSON line as soon as it is added.

    ``history`` holds the records of earlier epochs when resuming: the file is rewritten with them
    first (atomically), so a resumed run's file reads like an uninterrupted one.
    """

    def __init__(self, path: str | os.PathLike | None = None, history: list[dict] | None = None) -> None:
        self.path = Path(path) if path else None
        self.records: list[dict] = list(history or [])
        if self.path:
            atomic_write_bytes(self.path, "".join(map(_json_line, self.records)).encode())

    def add(self, record: dict) -> None:
        self.records.append(record)
        if self.path:
            with open(self.path, "a") as f:
                f.write(_json_line(record))


def plural(n: int, noun: str) -> str:
    """'1 epoch', '10 epochs'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def share(total: int, parts: int) -> str:
    """What each of ``parts`` gets of ``total`` (a batch over ranks): '32', or '~21.3' when it does not divide."""
    return str(total // parts) if total % parts == 0 else f"~{total / parts:.1f}"


def _pct(v) -> str:
    return "   -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}%"


def progress_line(r: dict, total: int, unit: str = "epoch") -> str:
    """``epoch  3/10  loss 0.2134  train  93.1%  test  92.4%  lr 1.0e-03  0.8s``"""
    w = len(str(total))
    s = f"{unit} {r[unit]:>{w}}/{total}  loss {r['loss']:.4f}  train {_pct(r.get('train_acc'))}"
    if r.get("val_acc") is not None:
        s += f"  val {_pct(r['val_acc'])}"
    s += f"  test {_pct(r.get('test_acc'))}"
    if r.get("lr") is not None:
        s += f"  lr {r['lr']:.1e}"
    s += f"  {r['seconds']:.1f}s"
    return s


def plot_curves(records: list[dict], path: str | os.PathLike, *, title: str = "", unit: str = "epoch") -> None:
    """Loss (train, test) and accuracy (train, val, test) against epoch, as a PNG written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r[unit] for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = [("loss", "cross-entropy", 1,
               (("loss", "train loss"), ("val_loss", "val loss"), ("test_loss", "test loss"))),
              ("accuracy", "accuracy (%)", 100, (("train_acc", "train"), ("val_acc", "val"), ("test_acc", "test")))]
    for ax, (name, ylabel, scale, curves) in zip(axes, panels):
        for key, label in curves:
            ys = [r.get(key) for r in records]
            if any(y is not None for y in ys):
                ax.plot(x, [math.nan if y is None else scale * y for y in ys], marker="o", label=label)
        ax.set(xlabel=unit, ylabel=ylabel, title=name)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def time_table(per_rank: np.ndarray, keys: tuple[str, ...], roles: dict[str, list[int]], *,
               virtual: bool) -> tuple[str, dict]:
    """The closing table's time per role from each rank's trace totals (``per_rank[r]``, laid out as
    ``keys``: mpisim.trace.TOTAL_KEYS): text, and {role: figures} with the mean seconds per rank of the role
    and the payload collectives' algbw and busbw (GB/s, summed bytes over summed seconds; None without)."""
    col = {k: i for i, k in enumerate(keys)}
    clock = "virtual" if virtual else "wall"
    head = (f"{'role':<8} {'ranks':>5}  {'compute s':>10} {'comm s':>10} {'overlap s':>10} {'idle s':>10} "
            f"{'run s':>10}  {'algbw GB/s':>10} {'busbw GB/s':>10}")
    lines = [f"time per role, from the trace ({clock} seconds, mean per rank of the role):", head, "-" * len(head)]
    out = {}
    for role, ranks in roles.items():
        if not ranks:
            continue
        rows = per_rank[ranks]
        mean = {k: float(rows[:, col[k]].mean()) for k in ("compute", "comm", "overlap", "idle", "run")}
        secs = float(rows[:, col["grad_s"]].sum())
        alg = float(rows[:, col["grad_bytes"]].sum()) / secs / 1e9 if secs > 0 else None
        bus = float(rows[:, col["grad_busbytes"]].sum()) / secs / 1e9 if secs > 0 else None
        out[role] = {"ranks": len(ranks), **{f"{k}_s": v for k, v in mean.items()}, "algbw_GBps": alg,
                     "busbw_GBps": bus}
        bw = "".join(f" {'-' if v is None else f'{v:.4g}':>10}" for v in (alg, bus))
        lines.append(f"{role:<8} {len(ranks):>5}  " + " ".join(f"{mean[k]:>10.4g}" for k in
                                                               ("compute", "comm", "overlap", "idle", "run")) + " " + bw)
    lines.append("compute: forward, backward, optimizer and other computation (less the transport calls inside it); "
                 "comm: collectives and messages; overlap: both at once (a communication thread); idle: neither, "
                 "within the rank's run")
    lines.append("algbw = bytes / seconds of the payload collectives (the gradient or parameter vectors); busbw = "
                 "algbw * 2(p-1)/p for an allreduce, (p-1)/p for an allgather or reduce-scatter (NCCL's definitions)")
    return "\n".join(lines), out
