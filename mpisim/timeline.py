"""A run's trace as a Gantt chart: ranks down the page, time across, a colour per kind of span.

Drawn from the spans :mod:`mpisim.trace` gathers on rank 0 (the same ones its Chrome trace holds), with
matplotlib's Agg backend: one :class:`~matplotlib.collections.PolyCollection` per kind, so thousands of
spans draw at once. Computation fills a rank's row; collectives fill it too and the messages inside them
are drawn as a narrower bar on top; light grey is idle. A rank with a communication thread gets its row
split: the main thread above, the other threads below. Readable up to about 16 ranks; more are drawn thinner.
"""
from __future__ import annotations

from typing import IO

__all__ = ["KINDS", "draw_timeline", "kind_of"]

# kind: (legend label, colour); the order is the legend's and the drawing's (later on top)
KINDS = {
    "compute": ("other compute", "#a6cee3"),      # first: the runtime's compute blocks hold the named ones
    "forward": ("forward", "#4c72b0"),
    "backward": ("backward", "#8172b3"),
    "optimizer": ("optimizer", "#55a868"),
    "evaluate": ("evaluate", "#937860"),
    "collective": ("collective", "#dd8452"),
    "message": ("message (send, recv)", "#c44e52"),
}


def kind_of(cat: str, name: str) -> str:
    """The legend kind of a span."""
    if cat == "compute":
        return name if name in KINDS else "compute"
    return cat


def draw_timeline(ranks: list[dict], out: str | IO[bytes], *, virtual: bool = False, title: str = "") -> None:
    """Draw ``ranks`` (each ``{"start", "end", "threads", "events"}``, seconds on one axis) as a PNG to ``out``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    n = len(ranks)
    split = any(d["threads"] > 1 for d in ranks)
    verts: dict[str, list] = {k: [] for k in KINDS}
    for r, d in enumerate(ranks):
        for cat, name, tid, s, e, _ in d["events"]:
            k = kind_of(cat, name)
            lo, hi = (r - 0.4, r + 0.4)
            if split:
                lo, hi = (r - 0.4, r + 0.05) if tid == 0 else (r + 0.1, r + 0.4)
            if k == "message":                     # narrower, on top of its collective
                mid, half = (lo + hi) / 2, (hi - lo) / 4
                lo, hi = mid - half, mid + half
            verts[k].append(((s, lo), (s, hi), (e, hi), (e, lo)))
    height = min(max(2.2, 0.42 * n + 1.6), 24.0)
    fig, ax = plt.subplots(figsize=(12, height))
    for r, d in enumerate(ranks):                  # each rank's window, so idle shows as white in a frame
        ax.add_patch(matplotlib.patches.Rectangle((d["start"], r - 0.45), d["end"] - d["start"], 0.9,
                                                  facecolor="#f4f4f4", edgecolor="#cccccc", linewidth=0.5))
    used = []
    for k, (label, colour) in KINDS.items():
        if any(v[2][0] > v[0][0] for v in verts[k]):       # drawn, and in the legend, if any has a length
            ax.add_collection(PolyCollection(verts[k], facecolors=colour, edgecolors=colour, linewidths=0.3,
                                             antialiaseds=False))
            used.append(Patch(facecolor=colour, label=label))
    used.append(Patch(facecolor="#f4f4f4", edgecolor="#cccccc", label="idle"))
    t_end = max((d["end"] for d in ranks), default=1.0) or 1.0
    ax.set_xlim(0, t_end * 1.01)
    ax.set_ylim(n - 0.5, -0.5)                     # rank 0 at the top
    step = max(1, -(-n // 32))
    ax.set_yticks(range(0, n, step))
    ax.set_yticklabels([f"rank {r}" for r in range(0, n, step)])
    ax.set_xlabel("virtual time (s)" if virtual else "wall time (s)")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(handles=used, loc="lower center", ncol=min(len(used), 8), frameon=False, fontsize=9)
    ax.set_title((title or "timeline") + ("\neach row: the main thread above, the communication thread below"
                                          if split else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.4 / height, 1, 1))      # room for the legend below
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
