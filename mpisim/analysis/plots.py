"""Log-log plots of the allreduce algorithms: time against p and against the message size."""
from __future__ import annotations

import os

from ..comm.costs import ALGORITHMS, cost
from ..comm.network import TICK, Network
from .measure import Row, crossover

__all__ = ["plot_all"]

MARK = dict(zip(ALGORITHMS["allreduce"], "osD^v"))


def _formula(alg: str, p: int, nbytes: int, net: Network) -> float:
    return float(cost("allreduce", alg, p, max(nbytes // 4, 1), 4).ticks(net)) * TICK


def plot_all(rows: list[Row], net: Network, out_dir: str, *, size: int = 1 << 20, p_fixed: int = 16) -> dict[str, str]:
    """Write the PNGs into ``out_dir``; return {title: path}. Lines: formulas; markers: simulated runs."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install -e '.[plot]'") from None
    os.makedirs(out_dir, exist_ok=True)
    ar = [r for r in rows if r.coll == "allreduce"]
    out = {}

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ps = list(range(2, 65))
    for alg in ALGORITHMS["allreduce"]:
        line, = ax.plot(ps, [_formula(alg, p, size, net) for p in ps], label=alg, lw=1.2)
        pts = [r for r in ar if r.algorithm == alg and r.nbytes == size]
        ax.plot([r.p for r in pts], [r.seconds for r in pts], MARK[alg], color=line.get_color(), ms=5)
    ax.set(xscale="log", yscale="log", xlabel="ranks p", ylabel="time (s)",
           title=f"allreduce of {size // 1024} KiB, {net.name}: formula (lines), simulated (markers)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    path = os.path.join(out_dir, "allreduce_vs_p.png")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    out["allreduce time against p"] = path

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    sizes = [2 ** k for k in range(3, 27)]
    for alg in ALGORITHMS["allreduce"]:
        line, = ax.plot(sizes, [_formula(alg, p_fixed, n, net) for n in sizes], label=alg, lw=1.2)
        pts = [r for r in ar if r.algorithm == alg and r.p == p_fixed]
        ax.plot([r.nbytes for r in pts], [r.seconds for r in pts], MARK[alg], color=line.get_color(), ms=5)
    n_star = crossover(p_fixed, net)
    if n_star:
        ax.axvline(n_star, color="grey", ls="--", lw=1)
        ax.text(n_star, ax.get_ylim()[0] * 2, f" tree/ring\n crossover\n {n_star / 1024:.3g} KiB", fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="message size (bytes)", ylabel="time (s)",
           title=f"allreduce on {p_fixed} ranks, {net.name}: formula (lines), simulated (markers)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    path = os.path.join(out_dir, "allreduce_vs_size.png")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    out["allreduce time against the message size"] = path
    return out
