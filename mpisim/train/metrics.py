"""Metrics: one JSON object per epoch (or round) in a file, a progress line, and the curves as a PNG."""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

from .checkpoint import atomic_write_bytes

__all__ = ["MetricsLog", "progress_line", "plot_curves"]


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
