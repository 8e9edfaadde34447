"""The report's sections as text or Markdown: tables, and the prose a student reads beside them."""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Iterable, Sequence

from ..bench import fmt_size
from ..comm import registry
from ..comm.network import PRESETS, TICK, Network, format_seconds
from .measure import Row, crossover, tree_ring_rounds

__all__ = ["Doc"]


def _cell(x) -> str:
    return x if isinstance(x, str) else f"{x:,}"


class Doc:
    """Collects the report as Markdown (``md``) or aligned plain text."""

    def __init__(self, md: bool):
        self.md = md
        self.parts: list[str] = []

    def __str__(self) -> str:
        return "\n".join(self.parts).rstrip() + "\n"

    def h(self, level: int, title: str) -> None:
        self.parts += [("#" * level + " " + title) if self.md else f"{title}\n{'=-'[level > 1] * len(title)}", ""]

    def p(self, text: str) -> None:
        self.parts += [text, ""]

    def code(self, text: str) -> None:
        self.parts += (["```", text.rstrip(), "```", ""] if self.md else
                       ["    " + line for line in text.rstrip().splitlines()] + [""])

    def table(self, head: Sequence[str], rows: Iterable[Sequence], right: Sequence[bool] | None = None) -> None:
        rows = [[_cell(c) for c in r] for r in rows]
        right = right or [i > 0 for i in range(len(head))]
        if self.md:
            self.parts.append("| " + " | ".join(head) + " |")
            self.parts.append("|" + "|".join("---:" if r else ":---" for r in right) + "|")
            self.parts += ["| " + " | ".join(r) + " |" for r in rows]
        else:
            w = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
            fmt = lambda cells: "  ".join(c.rjust(w[i]) if right[i] else c.ljust(w[i]) for i, c in enumerate(cells))
            self.parts += [fmt(head), "  ".join("-" * x for x in w)] + [fmt(r) for r in rows]
        self.parts.append("")

    @contextlib.contextmanager
    def details(self, summary: str):
        """A collapsed block in Markdown (GitHub's <details>), a plain sub-heading in text."""
        self.parts += [f"<details><summary>{summary}</summary>", ""] if self.md else [summary, ""]
        yield
        if self.md:
            self.parts += ["</details>", ""]


def _t(seconds: float) -> str:
    return format_seconds(seconds)


def _gbs(ticks_per_byte: int) -> str:
    return "free" if not ticks_per_byte else f"{1 / (ticks_per_byte * TICK) / 1e9:.4g} GB/s"


def _link(net: Network, show) -> str:
    """``show(alpha, beta)`` of the one link, or 'intra / inter' (oversubscription included) with nodes."""
    if not net.topology:
        return show(net.alpha, net.beta)
    return f"{show(net.alpha, net.beta)} / {show(*net.inter)}"


# -- sections ----------------------------------------------------------------------------------------------
def model_section(doc: Doc, net: Network) -> None:
    doc.h(2, "The model")
    doc.p("The simulated transport keeps a virtual clock per rank (Hockney's model, with one port per rank as in "
          "Thakur, Rabenseifner and Gropp 2005). A message of n bytes sent at virtual time t keeps its sender busy "
          "until t + α + nβ and arrives then; a receive completes at max(the receiver's clock, the arrival); adding "
          "n bytes of vector costs nγ. A run's time is the largest finish time over the ranks: the length of the "
          "longest chain of dependent messages and additions. Clocks count femtoseconds in integers, so the sums "
          "are exact and a formula either matches to the last digit or it does not.")
    doc.p(f"Tables below use **{net}** (`--network {net.spec()}`). The presets (with nodes: intra-node / "
          "inter-node link, see *Nodes* below):")
    doc.table(["preset", "ranks per node", "α", "bandwidth 1/β", "1/γ", "what it stands for"],
              [[k, v.ppn or "-", _link(v, lambda a, b: _t(a * TICK)), _link(v, lambda a, b: _gbs(b)),
                _gbs(v.gamma), v.description] for k, v in PRESETS.items()],
              right=[False, True, True, True, True, False])
    doc.p("Notation: p ranks, n bytes (for gather, scatter and allgather n is the whole result, p blocks), lg the "
          "base-2 logarithm; for p not a power of two, p2 is the largest power of two below p. *Rounds* is the "
          "simulator's logical clock (one per send, a receive waits for its send's round): the depth of the "
          "schedule, and the α coefficient of the formula.")


def formulas_section(doc: Doc, rows: list[Row]) -> None:
    doc.h(2, "The formulas, one by one")
    seen = {}
    for r in rows:
        if r.p > 1 and (r.p & (r.p - 1)) == 0:
            seen.setdefault((r.coll, r.algorithm), r.cost.text)
    for r in rows:
        seen.setdefault((r.coll, r.algorithm), r.cost.text)
    for (coll, alg), text in seen.items():
        doc.p(f"**{coll} / {alg}**: `{text}`. {registry.get(coll, alg).explain}")


def summary_section(doc: Doc, rows: list[Row]) -> None:
    doc.h(2, "Measured against the formulas")
    by = defaultdict(list)
    for r in rows:
        by[(r.coll, r.algorithm)].append(r)
    out = []
    for (coll, alg), rs in by.items():
        pow2 = [r for r in rs if r.p & (r.p - 1) == 0 and r.cost.kind == "exact"]
        other = [r for r in rs if r not in pow2]
        worst = max((abs(r.deviation) for r in other), default=0.0)
        out.append([coll, alg, len(rs), f"{sum(r.counts_agree for r in rs)}/{len(rs)}",
                    f"{sum(r.ticks == r.formula_ticks for r in pow2)}/{len(pow2)}",
                    f"{sum(r.ticks == r.formula_ticks for r in other)}/{len(other)}",
                    f"{worst:.2%}" if other else "-", "yes" if all(r.ok for r in rs) else "NO"])
    doc.table(["collective", "algorithm", "runs", "messages & bytes exact", "time exact (p = 2^k, equal blocks)",
               "time exact (other runs)", "largest deviation (other)", "as promised"], out,
              right=[False, False, True, True, True, True, True, True])
    doc.p("*As promised*: messages and bytes equal their closed forms in every run; the time equals its formula "
          "exactly where the formula is exact (p a power of two with equal blocks, and the other cases marked "
          "exact below), stays under it where it is a bound, and is near it where it is approximate.")
    doc.h(3, "Where p is not a power of two")
    doc.p("* **Exact anyway**: the fold of recursive doubling and Rabenseifner adds whole steps in front and behind "
          "(the r extra ranks hand their vector to a partner, α + nβ + nγ, and get the result back, α + nβ), and "
          "those steps lie on the longest chain, so TRG's forms (⌊lg p⌋ + 2 steps) are exact; so are the ring "
          "algorithms when the count divides by p, the binomial broadcast, the naive allreduce and the barrier.\n"
          "* **bound**: a binomial tree on p ranks, p not a power of two, is lopsided. The root's last child "
          "heads a smaller subtree than ⌈lg p⌉ levels assume, so its partial result arrives before the formula "
          "says it does; the measured time is below TRG's ⌈lg p⌉ form (p = 3: one level on the longest chain of "
          "the reduce, not two).\n"
          "* **approx** (±x%): the vector does not split into equal blocks (8 B are 2 floats: on 64 ranks most "
          "blocks are empty but each empty message still costs α), or the fold's virtual ranks stand for one or two "
          "blocks; the rank with the larger blocks sets the pace, so the time lies between the formula taken with "
          "⌊n/p⌋ and with ⌈n/p⌉. The formula uses n/p.")


def detail_section(doc: Doc, rows: list[Row]) -> None:
    doc.h(2, "Every run")
    by = defaultdict(list)
    for r in rows:
        by[(r.coll, r.algorithm)].append(r)
    for (coll, alg), rs in by.items():
        exact = sum(r.ticks == r.formula_ticks for r in rs)
        with doc.details(f"{coll} / {alg}: {len(rs)} runs, {exact} exactly on the formula"):
            doc.table(["p", "size", "messages", "formula", "bytes sent", "formula", "rounds", "virtual time",
                       "formula time", "agree"],
                      [[r.p, fmt_size(r.nbytes), r.messages, r.traffic[0], r.bytes, r.traffic[1], r.rounds,
                        _t(r.seconds), _t(r.formula_seconds), r.agree] for r in rs])


def crossover_section(doc: Doc, ranks: list[int], checks: dict, plots: dict[str, str]) -> None:
    doc.h(2, "Tree against ring")
    doc.p("The tree allreduce needs 2⌈lg p⌉ rounds, the ring 2(p-1); the tree moves the whole vector in each, the "
          "ring one block of n/p. So the tree wins for short vectors (α dominates) and the ring for long ones "
          "(β dominates). Setting the two formulas equal gives the crossover size n* = α(2(p-1) - 2⌈lg p⌉) / "
          "((2⌈lg p⌉ - 2(p-1)/p)β + (⌈lg p⌉ - (p-1)/p)γ).")
    doc.table(["p", "tree rounds", "ring rounds"], [[p, *tree_ring_rounds(p)] for p in ranks if p > 1])
    flat = {k: v for k, v in PRESETS.items() if not v.topology}
    head = ["p"] + [f"n* {k}" for k in flat]
    body = []
    for p in ranks:
        if p < 2:
            continue
        cells = [p]
        for k, net in flat.items():
            n = crossover(p, net)
            cells.append("never" if n is None else ("ring always" if n == 0 else _bytes(n)))
        body.append(cells)
    doc.table(head, body)
    if checks:
        doc.p("Checked on the simulated cluster (the faster of the two at half and at twice n*, under each preset):")
        doc.table(["p", "network", "n*", "faster at n*/2", "faster at 2n*"],
                  [[p, k, _bytes(n), a, b] for (p, k), (n, a, b) in checks.items()],
                  right=[True, False, True, False, False])
    for title, path in plots.items():
        doc.p(f"![{title}]({path})" if doc.md else f"plot: {path} ({title})")


def _bytes(n: float) -> str:
    for unit, f in (("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= f:
            return f"{n / f:.3g} {unit}"
    return f"{n:.0f} B"


def paradigm_section(doc: Doc, runs: list, ranks: int, net: Network) -> None:
    doc.h(2, "How many bytes does each paradigm move?")
    doc.p("P parameters of b bytes, N ranks, S steps, R rounds, m clients per round, W = N - 1 workers, "
          "H steps between local SGD's averages, tau between EASGD's exchanges, d neighbours in gossip. Each "
          f"paradigm below ran for real on {ranks} simulated ranks with a 64-32-10 MLP on the digits dataset; "
          "its own table counts every message and sets the payload beside the closed form.")
    doc.table(["paradigm", "payload formula", "measured = formula", "virtual time"],
              [[r.name, r.formula, "yes" if r.agrees else "NO", _t(r.vtime)] for r in runs],
              right=[False, False, False, True])
    for r in runs:
        with doc.details(f"{r.name}: <code>{r.command}</code>" if doc.md else f"{r.name}: {r.command}"):
            doc.code(r.table)


def scale_section(doc: Doc, rows: list[Row]) -> None:
    doc.h(2, "What a simulated run costs")
    doc.p("Wall time of one simulated allreduce (the ranks are greenlets of one thread in one process: a switch "
          "between ranks costs about 1 µs; the data is copied and added for real). A run costs about a fixed time "
          "per message (the switches and the bookkeeping of a send and its receive, about 8 µs, the "
          "µs-per-message column) plus a time per byte moved (numpy copies and additions at memory speed): "
          "linear in the messages and in the bytes, never worse. Many small messages (the ring on 64 ranks "
          "sends 8,064 of n/64 bytes) cost their count; few large ones cost their bytes.")
    doc.table(["algorithm", "p", "size", "messages", "bytes moved", "wall time", "ns per byte", "µs per message"],
              [[r.algorithm, r.p, fmt_size(r.nbytes), r.messages, r.bytes, f"{r.wall:.3f} s",
                f"{r.wall / max(r.bytes, 1) * 1e9:.2f}", f"{r.wall / max(r.messages, 1) * 1e6:.0f}"] for r in rows],
              right=[False] + [True] * 7)


def _hockney_error(res: dict, v: dict) -> float:
    """measured / Hockney's formula with the calibrated α, β, γ (no per-call term) - 1."""
    from ..comm.costs import cost
    from ..comm.network import parse_network
    formula = cost("allreduce", v["algorithm"], res["ranks"], v["bytes"] // 4, 4).seconds(parse_network(res["network"]))
    return v["measured_s"] / formula - 1


def _spread(xs: Sequence[float], fmt) -> str:
    lo, hi = min(xs), max(xs)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)} to {fmt(hi)}"


def validation_section(doc: Doc, results: list[dict]) -> None:
    """The model of :mod:`mpisim.calibrate` against the real machine, from its JSON per rank count (a result
    with ``failed`` did not complete; one with more ranks than ``cores`` is informational)."""
    from ..calibrate import BIG
    from ..comm.loggp import Model
    doc.h(2, "Against the real machine")
    doc.p("`python -m mpisim.calibrate --validate` builds a cost model on the real machine under `mpiexec` and "
          "times every allreduce algorithm against it. Hockney's α + nβ + nγ, the simulator's model, leaves out "
          "what dominates a collective written in Python on one shared-memory machine, so the calibrated model "
          "(`mpisim.comm.loggp`, in the spirit of LogGP) measures it instead:\n\n"
          "    time(alg, n) = overhead[alg] + T(n) - T(tiny)\n"
          "    T = max(a·one_way(b/a), (M/p)·exchange(B/M)) + k·reduce(c/k) + nans(N) + copy(C)\n\n"
          "* **overhead[alg]**: one real call of that algorithm on all ranks on a 4-byte vector, where the bytes "
          "cost nothing: the Python path of the call and of each of its steps (argument checks, block offsets, "
          "scratch, the registry's dispatch, sendrecv's Python) and its messages' latency; LogP's o, summed over "
          "the call.\n"
          "* **one_way, exchange, reduce, nans, copy**: step times measured at every power of two from 1 B to "
          "16 MiB in the shape the algorithms use them (half a round trip; a sendrecv into scratch; `combine` of "
          "what arrived into the vector; the NaN pass; a copy), each a piecewise line: MPICH changes protocol "
          "near 16 KiB and the caches change the per-byte cost again (LogGP's G, per size range).\n"
          "* **the counts**: a, b, c (messages, bytes, reduced bytes on the critical path) and M, B (all ranks' "
          "messages and bytes) from each algorithm's closed form; k = ac/b reductions; N and C the NaN-pass and "
          "copy bytes, counted by running the algorithm's own code on a recorder. The busiest rank's work "
          "(M/p exchanges) bounds a chain of exchanges from below (LogP's g). A step of m bytes out of an n-byte "
          "vector costs at least m/n of a step of n bytes: when the vector spills out of a cache that one step's "
          "bytes would fit in, every byte pays the vector's price.\n"
          "* **check**: the cross-rank consistency check each call makes unless `check=False`, a fixed cost.\n\n"
          "Every sample, step or call, starts after a barrier and counts the slowest rank's time; steps, tiny "
          "calls and the validated calls are interleaved sample by sample in several rounds on the same "
          "buffers, so all see the same moments of the machine. Each timed run is the last of two back-to-back runs "
          "of its kind (settled, as a collective repeated in a training loop: timed right after something else, two "
          "identical schedules on 2 ranks measured up to 2x apart, as the buffers sat in one core's cache or the "
          "other's). Every figure is the minimum over all samples (load only adds time, in bursts). Nothing is fitted on the validated calls. The bound: within 25 % from "
          "64 KiB, within 50 % below. Error = measured / model - 1; *Hockney* is the same measurement against "
          "the closed form with the calibrated α, β, γ, for comparison.")
    for res in results:
        p, cores = res["ranks"], res.get("cores")
        over = cores is not None and p > cores
        doc.h(3, f"{p} ranks" + (f" on {cores} cores: oversubscribed, informational" if over else ""))
        if over:
            doc.p(f"{p} ranks on this machine's {cores} cores: MPICH's waiting ranks spin and take the cores from the "
                  "ones with work, so these figures measure the scheduler as much as the machine. They are shown, "
                  "not held to the bounds, which are set for ranks that each have a core.")
        if "failed" in res:
            doc.p(f"The run did not complete ({res['failed']}).")
            continue
        model, val = Model.from_dict(res["model"]), res["validation"]
        doc.p(f"`--network {res['network']}` (the simulator's line through the one-way times). The model's "
              f"terms, minimum of {res['rounds']} rounds of {res['reps']} samples:")
        steps = {r["bytes"]: r for r in res["steps"]}
        shown = [n for n in (4096, 65536, 1 << 20, 16 << 20) if n in steps]
        doc.table(["term"] + [fmt_size(n) for n in shown],
                  [[k] + [_t(steps[n][f"{k}_min_s"]) for n in shown] for k in ("one_way", "exchange", "reduce",
                                                                             "nans", "copy")],
                  right=[False] + [True] * len(shown))
        doc.p("overhead (a call on 4 bytes): " + ", ".join(f"{a} {_t(s)}" for a, s in model.overhead.items())
              + f"; check {_t(model.check)} per call.")
        doc.table(["algorithm", "size", "measured", "model", "of which overhead", "error", "Hockney", "bound"],
                  [[v["algorithm"], fmt_size(v["bytes"]), _t(v["measured_s"]), _t(v["model_s"]), _t(v["overhead_s"]),
                    f"{v['error']:+.0%}", f"{_hockney_error(res, v):+.0%}",
                    f"{v['bound']:.0%}" + ("" if v["ok"] else " NOT within")] for v in val],
                  right=[False] + [True] * 7)
        if not val:
            continue
        big = [v for v in val if v["bytes"] >= BIG]
        small = [v for v in val if v["bytes"] < BIG]
        bad = sum(not v["ok"] for v in val)
        text = [f"{len(val) - bad} of {len(val)} points within their bound"
                + (" (not held to it: oversubscribed)." if over else ".")]
        for label, part in ((f"from {fmt_size(BIG)}", big), (f"below {fmt_size(BIG)}", small)):
            if part:
                worst = max(part, key=lambda v: abs(v["error"]))
                hock = max(abs(_hockney_error(res, v)) for v in part)
                text.append(f"Largest |error| {label}: **{abs(worst['error']):.0%}** ({worst['algorithm']}, "
                            f"{fmt_size(worst['bytes'])}; bound {worst['bound']:.0%}); Hockney's formula: {hock:.0%}.")
        first, last = min(v["bytes"] for v in val), max(v["bytes"] for v in val)
        share = lambda n: [v["overhead_s"] / v["measured_s"] for v in val if v["bytes"] == n]  # noqa: E731
        pct = lambda x: f"{x:.0%}"  # noqa: E731
        text.append(f"The overhead is {_spread(share(first), pct)} of the measured time at {fmt_size(first)}"
                    + (f", {_spread(share(BIG), pct)} at {fmt_size(BIG)}"
                       if share(BIG) else "")
                    + f" and {_spread(share(last), pct)} at {fmt_size(last)}.")
        rd = [v for v in val if v["algorithm"] == "recursive_doubling" and v["bytes"] == last]
        if rd and model.nans(last) > 0:
            text.append(f"The NaN pass recursive doubling makes over its result costs {_t(model.nans(last))} at "
                        f"{fmt_size(last)}, {model.nans(last) / rd[0]['measured_s']:.0%} of that call.")
        text.append(f"The consistency check adds {_t(model.check)} to a call that makes it "
                    f"({model.check / min(model.overhead.values()):.1f}x the cheapest tiny call).")
        doc.p(" ".join(text))
    doc.p("The simulated tables above are unaffected: they test the algorithms against the formulas, not the "
          "machine. The --network line gives the simulator Hockney's α, β, γ of this machine; the per-call overhead "
          "and the per-size step tables are what a Python collective on real MPI adds to it.")


def topology_section(doc: Doc, cells: list, plots: dict[str, str]) -> None:
    from .topology import COMPARED, clusters
    doc.h(2, "Nodes: where the hierarchical allreduce wins")
    doc.p("`--network` can describe nodes: `nodes=4x8` (4 nodes of 8 ranks) or `ppn=8` (8 ranks per node, as many "
          "nodes as the ranks fill), an intra-node link (`intra=LINK`, or `alpha`, `beta`; shared memory by default) "
          "and an inter-node link (`inter=LINK`, or `inter-alpha`, `inter-beta`), LINK one of the flat presets; "
          "`oversub=S` makes the fabric S:1 oversubscribed (an inter-node byte costs S·βₑ), and `contention` makes "
          "a node's ranks share its uplink and downlink. World rank w sits on node w // L.")
    doc.p("The flat algorithms pay for the slow links on their critical path: the ring's every step has a message "
          "crossing nodes, 2(p-1)(αₑ + n/p·βₑ); Rabenseifner's first lg M halving steps cross nodes, 2 lg M·αₑ + "
          "2(M-1)/M·nβₑ plus the rest inside nodes. The hierarchical allreduce reduce-scatters inside each node, "
          "allreduces each rank's n/L block across the nodes (L of them side by side), and allgathers inside: "
          "2(L-1)(α + n/L·β) + (L-1)/L·nγ + the allreduce of n/L bytes on M ranks (one per node) in αₑ, βₑ. Without contention "
          "each rank has its own way out of the node (a NIC per GPU, as in rail-optimized GPU clusters): the "
          "hierarchical algorithm moves L times fewer bytes across nodes per rank than Rabenseifner. With "
          "`contention` a node's L ranks share one uplink and that advantage goes.")
    for name, net in clusters().items():
        mine = [c for c in cells if c.net == name]
        if not mine:
            continue
        doc.h(3, f"{name}: {net.description}")
        sizes = sorted({c.nbytes for c in mine})
        rows = []
        for N in sorted({c.nodes for c in mine}):
            by = {c.nbytes: c for c in mine if c.nodes == N}
            rows.append([N, by[sizes[0]].p] + [f"{by[n].winner} ({by[n].speedup:.2f}x)" for n in sizes])
        doc.table(["nodes", "p"] + [_bytes(n) for n in sizes], rows, right=[True, True] + [False] * len(sizes))
        doc.p("Each cell: the fastest of ring, Rabenseifner and hierarchical by the formulas, and in brackets the "
              "best flat formula time over the hierarchical one (above 1x the hierarchical allreduce wins).")
    checked = [c for c in cells if c.runs]
    if checked:
        rows = []
        for c in checked:
            rows.append([c.net, c.nodes, c.p, _bytes(c.nbytes)] + [c.runs[a].agree for a in COMPARED]
                        + [c.winner, c.sim_winner])
        with doc.details(f"Checked on the simulated cluster: {len(checked)} cells, formula and simulated winner "
                         f"agree in {sum(c.winner == c.sim_winner for c in checked)}"):
            doc.table(["cluster", "nodes", "p", "n"] + [f"{a}: simulated vs formula" for a in COMPARED]
                      + ["formula winner", "simulated winner"], rows,
                      right=[False, True, True, True] + [False] * (len(COMPARED) + 2))
    for title, path in plots.items():
        doc.p(f"![{title}]({path})" if doc.md else f"plot: {path} ({title})")
