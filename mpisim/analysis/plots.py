"""Log-log plots of the allreduce algorithms: time against p and against the message size."""
from __future__ import annotations

import itertools
import os

from ..comm import registry
from ..comm.costs import cost
from ..comm.network import Network
from .measure import DTYPE, Row, _counts, crossover

__all__ = ["markers", "plot_all", "plot_topology"]

_SPARE = "PX*hp<>8dH"   # for algorithms registered without a marker


def markers(coll: str = "allreduce") -> dict[str, str]:
    """{algorithm: matplotlib marker}: each one's registered marker, else a spare one no other uses
    (once the spares run out they are used again, in turn)."""
    algs = [registry.get(coll, name) for name in registry.names(coll)]
    taken = {a.marker for a in algs}
    spare = itertools.cycle([m for m in _SPARE if m not in taken] or _SPARE)
    return {a.name: a.marker or next(spare) for a in algs}


def _formula(alg: str, p: int, nbytes: int, net: Network) -> float:
    return cost("allreduce", alg, p, _counts("allreduce", p, nbytes), DTYPE.itemsize,
                ppn=net.ranks_per_node(p) if net.topology else 0).seconds(net)


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

    def figure(xs, curve, point_x, keep, xlabel, title, name, mark=None, integer_x=False):
        """Formula lines over ``xs`` and the simulated rows ``keep`` selects as markers, log-log (``integer_x``:
        whole-number ticks, for rank counts)."""
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for alg, marker in markers().items():
            line, = ax.plot(xs, [curve(alg, x) for x in xs], label=alg, lw=1.2)
            pts = [r for r in ar if r.algorithm == alg and keep(r)]
            ax.plot([point_x(r) for r in pts], [r.seconds for r in pts], marker, color=line.get_color(), ms=5)
        if mark:
            mark(ax)
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="time (s)",
               title=f"{title}, {net.name}: formula (lines), simulated (markers)")
        if integer_x:   # 2, 4, 8, ... ranks, not 2x10^0 and overlapping minor labels
            from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter
            ticks = [x for x in (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if xs[0] <= x <= xs[-1]]
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        path = os.path.join(out_dir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path

    def crossover_line(ax):
        n_star = crossover(p_fixed, net)
        if n_star:
            ax.axvline(n_star, color="grey", ls="--", lw=1, label=f"tree/ring crossover, {n_star / 1024:.3g} KiB")

    out["allreduce time against p"] = figure(
        list(range(2, 65)), lambda alg, p: _formula(alg, p, size, net), lambda r: r.p, lambda r: r.nbytes == size,
        "ranks p", f"allreduce of {size // 1024} KiB", "allreduce_vs_p.png", integer_x=True)
    out["allreduce time against the message size"] = figure(
        [2 ** k for k in range(3, 27)], lambda alg, n: _formula(alg, p_fixed, n, net), lambda r: r.nbytes,
        lambda r: r.p == p_fixed, "message size (bytes)", f"allreduce on {p_fixed} ranks", "allreduce_vs_size.png",
        crossover_line)
    return out


def plot_topology(cells: list, out_dir: str, *, nodes: int = 4) -> dict[str, str]:
    """Allreduce time against the message size on ``nodes`` nodes of each cluster preset: formulas as lines,
    simulated runs as markers (one PNG per preset); {title: path}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .topology import COMPARED, clusters, formula_seconds
    os.makedirs(out_dir, exist_ok=True)
    out, mark = {}, markers()
    for name, net in clusters().items():
        p = nodes * net.ppn
        xs = [2 ** k for k in range(8, 29)]
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for alg in COMPARED:
            line, = ax.plot(xs, [formula_seconds(alg, net, p, n) for n in xs], label=alg, lw=1.2)
            pts = [c for c in cells if c.net == name and c.nodes == nodes and alg in c.runs]
            ax.plot([c.nbytes for c in pts], [c.runs[alg].seconds for c in pts], mark[alg], color=line.get_color(),
                    ms=5)
        ax.set(xscale="log", yscale="log", xlabel="message size (bytes)", ylabel="time (s)",
               title=f"allreduce on {nodes} nodes x {net.ppn} ranks, {name}")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        path = os.path.join(out_dir, f"allreduce_nodes_{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out[f"allreduce on {nodes} nodes of {name}"] = path
    return out
