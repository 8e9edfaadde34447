"""``mpisim.pipeline``: pipeline parallelism, the MLP's layers cut into stages, one stage per rank.

Stage s holds a contiguous run of the MLP's blocks (one block per Linear; :mod:`mpisim.nn.stage`), cut to
balance their FLOPs (or ``--stages 2,1,1``). Each global batch of B examples is split into M micro-batches
(``--micro-batches M``, contiguous rows); activations go forward from stage s to s+1 and their gradients
back by send/recv; each stage adds up the gradients of the M micro-batches and takes one optimizer step
per batch. So the pipeline computes what the centralized trainer computes (the tests check it in float64,
with Adam and momentum, dropout included: the micro-batches, run in order, draw the masks the whole batch
draws). BatchNorm is refused: it would normalize each micro-batch by its own statistics.

Two schedules (``--schedule``):

* ``gpipe`` (Huang et al. 2019, "GPipe"): all M forwards, then all M backwards. A stage keeps the
  activations of all M micro-batches until their backwards.
* ``1f1b`` (Narayanan et al. 2019, "PipeDream", and 2021, "Efficient Large-Scale Language Model Training",
  PipeDream-Flush): stage s runs p-s-1 forwards to fill the pipe, then alternates one forward and one
  backward, then drains. Same bubble, but at most min(M, p-s) micro-batches in flight.

Either way each stage idles for a fraction (p-1)/(M+p-1) of the time (the bubble) when the stages take
equal time. The run measures it per stage: in virtual time with ``--network ...,compute=RATE`` (each rank
charges its FLOPs; exact), and in wall time; and the peak memory of stored activations, next to their
formulas. ``--schedule-plot FILE.png`` draws the run's first step as it happened (ranks x time).

    python -m mpisim.pipeline --sim 4                                    # 4 stages, 1F1B, M = 4
    python -m mpisim.pipeline --sim 4 --schedule gpipe --micro-batches 8 \\
        --network alpha=0s,beta=0s,gamma=0s,compute=1GFLOP/s --schedule-plot results/gpipe.png
    mpiexec -n 2 python -m mpisim.pipeline --stages 5,3
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import dataclass

import numpy as np

from .comm import allreduce, gather
from .nn import SCHEDULES as LR_SCHEDULES
from .nn.stage import Slot, Stage, balance, block_flops
from .trace import span
from .train import gather_batch
from .train.distributed import Formula
from .train.options import _int_at_least, prepare_output_file
from .train.runtime import Paradigm, Part, Payload, Role, Run

SCHEDULES = ("gpipe", "1f1b")
TAG_ACT, TAG_GRAD = 601, 602          # activations forward, their gradients backward


@dataclass(frozen=True)
class Options:
    micro_batches: int = 4          # M: micro-batches per global batch
    pipeline_schedule: str = "1f1b"   # gpipe | 1f1b
    stages: tuple = ()              # blocks per stage; () = balanced by FLOPs
    schedule_plot: str | None = None


def _stage_list(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected block counts like 2,1,1; got {text!r}") from None
    if any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(f"every stage needs at least one block; got {text!r}")
    return counts


def _schedule(text: str) -> str:
    if text in SCHEDULES:
        return text
    if text in LR_SCHEDULES:
        raise argparse.ArgumentTypeError(f"{text!r} is a learning-rate schedule: here that is --lr-schedule {text} "
                                         f"(--schedule is the pipeline's: {', '.join(SCHEDULES)})")
    raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(SCHEDULES)})")


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pipeline")
    g.add_argument("--micro-batches", type=_int_at_least(1, "a number of micro-batches M >= 1"), default=4,
                   metavar="M", help="micro-batches per global batch (default 4)")
    g.add_argument("--schedule", dest="pipeline_schedule", type=_schedule, default="1f1b", metavar="{gpipe,1f1b}",
                   help="gpipe: all forwards, then all backwards; 1f1b: one forward, one backward (default 1f1b); "
                        "the learning-rate schedule is --lr-schedule here")
    g.add_argument("--stages", type=_stage_list, default=(), metavar="K,K,...",
                   help="blocks (Linear layers) per stage, one number per rank, summing to the layer count "
                        "(default: balanced by FLOPs)")
    g.add_argument("--schedule-plot", metavar="FILE.png", default=None,
                   help="draw the first step's schedule as it ran: ranks x time, forward, backward, idle")


def layer_count(train) -> int:
    return len(train.hidden) + 1


def count(n: int, what: str) -> str:
    """'1 Linear layer', '3 Linear layers'."""
    return f"{n} {what}" + ("" if n == 1 else "s")


def check(p: argparse.ArgumentParser, train, o: Options) -> None:
    n = layer_count(train)
    if o.stages and sum(o.stages) != n:
        p.error(f"--stages {','.join(map(str, o.stages))} sums to {sum(o.stages)}, but the model has "
                f"{count(n, 'Linear layer')} (--hidden {','.join(map(str, train.hidden)) or 'none'})")
    if train.device != "cpu":
        p.error("--device cuda is not supported by the pipeline: its stages compute with NumPy on the host")
    check_plot(p, o.schedule_plot)


def check_world(train, o: Options, N: int) -> str | None:
    n = layer_count(train)
    if N > n:
        return (f"{N} pipeline stages but the model has only {count(n, 'Linear layer')} (--hidden "
                f"{','.join(map(str, train.hidden)) or 'none'}): use at most {count(n, 'rank')} or a deeper model")
    if o.stages and len(o.stages) != N:
        return (f"--stages lists {count(len(o.stages), 'stage')} but there are {count(N, 'rank')}: give one count "
                f"per rank")
    return None


# -- schedules and their formulas -------------------------------------------------------------------------
def schedule(kind: str, p: int, m: int, s: int) -> list[tuple[str, int]]:
    """Stage ``s``'s order of work for one batch: ("F", j) and ("B", j) for micro-batches j."""
    if kind == "gpipe":
        return [("F", j) for j in range(m)] + [("B", j) for j in range(m)]
    warm = min(p - s - 1, m)                        # fill the pipe
    ops = [("F", j) for j in range(warm)]
    for j in range(m - warm):                       # steady state: one forward, one backward
        ops += [("F", warm + j), ("B", j)]
    return ops + [("B", j) for j in range(m - warm, m)]     # drain


def bubble_formula(p: int, m: int) -> float:
    """The idle fraction of every stage when stages take equal time: (p-1)/(m+p-1)."""
    return (p - 1) / (m + p - 1)


def in_flight_formula(kind: str, p: int, m: int, s: int) -> int:
    """Micro-batches whose activations stage ``s`` keeps at once: GPipe all m, 1F1B min(m, p-s)."""
    return m if kind == "gpipe" else min(m, p - s)


def cut(model, p: int, counts: tuple = ()) -> list[tuple[int, int]]:
    """The stages' block ranges: ``counts`` blocks each, or balanced by forward+backward FLOPs."""
    counts = list(counts) or balance([f + b for f, b in block_flops(model)], p)
    ends = np.cumsum([0, *counts])
    return list(zip(ends[:-1].tolist(), ends[1:].tolist()))


# -- one stage's engine -----------------------------------------------------------------------------------
class Engine:
    """Runs one batch through stage ``s`` of a ``p``-stage pipeline on transport ``t`` (stage s is rank s
    of ``t``): the schedule's forwards and backwards, sends and receives, in order. Measures busy time
    (virtual and wall), micro-batches in flight and the activations they keep, and records events."""

    def __init__(self, t, stage: Stage, kind: str, meter) -> None:
        self.t, self.stage, self.kind, self.meter = t, stage, kind, meter
        self.s, self.p = t.rank, t.size
        net = getattr(t, "network", None)
        self.virtual = net is not None and net.compute == "rate"
        self.busy_v = 0                 # ticks of computation (with a compute rate)
        self.busy_w = 0.0               # wall seconds of computation
        self.peak_slots = self.peak_bytes = self.slot_bytes = 0    # slot_bytes: the largest micro-batch's
        self.events: list[tuple[str, int, float, float]] | None = None   # (F|B, micro-batch, start, end)
        self._bufs: dict = {}

    def _buf(self, key, shape, dtype):
        b = self._bufs.get((key, shape))
        if b is None:
            b = self._bufs[(key, shape)] = np.empty(shape, dtype=dtype)
        return b

    def _clock(self) -> float:
        return float(self.t.clock) if self.virtual else time.time()

    def _work(self, fn, flops: int, op: str, j: int):
        """Run ``fn()`` as computation: FLOPs charged to the virtual clock, busy time and the event kept."""
        t0, c0, v0 = time.perf_counter(), self._clock(), self.t.clock if self.virtual else 0
        with span("forward" if op == "F" else "backward"):     # a traced run's span (mpisim.trace)
            out = fn()
            self.t.compute(flops)
        dt = time.perf_counter() - t0
        self.busy_w += dt
        if not getattr(self.stage, "meters_itself", False):     # a tensor-parallel stage counts its own
            self.meter.compute += dt
        if self.virtual:
            self.busy_v += self.t.clock - v0
        if self.events is not None:
            self.events.append((op, j, c0, self._clock()))
        return out

    def step(self, x: np.ndarray | None, y: np.ndarray, m: int, scale: float, on_input=None) -> np.ndarray:
        """One batch of ``len(y)`` examples in ``m`` micro-batches (contiguous rows); ``x`` on the first
        stage only. Gradients (weight ``scale`` per example) are summed into ``stage.grads``; returns the
        last stage's [loss sum, correct, seen] (zeros elsewhere). ``on_input(x)`` sees the step's first input."""
        st, t, s, p = self.stage, self.t, self.s, self.p
        st.zero_grad()
        if m == 0:                                  # no examples (a data-parallel replica's empty share)
            return np.zeros(3, dtype=np.float64)
        offs = _offsets(len(y), m)
        slots: dict[int, Slot] = {}
        sums = np.zeros(3, dtype=np.float64)
        for op, j in schedule(self.kind, p, m, s):
            rows = int(offs[j + 1] - offs[j])
            if op == "F":
                slot = slots[j] = st.take_slot()
                if st.is_first:
                    xin = x[offs[j]:offs[j + 1]]
                else:
                    if slot.x is None or slot.x.shape[0] != rows:
                        slot.x = np.empty((rows, st.d_in), dtype=st.dtype)
                    with self.meter.comm("payload"):
                        t.recv(slot.x, s - 1, TAG_ACT)
                    xin = slot.x
                if j == 0 and on_input is not None:
                    on_input(xin)
                out = self._work(lambda: st.forward(slot, xin), st.forward_flops(rows), "F", j)
                if st.is_last:
                    loss, c = st.loss(slot, out, y[offs[j]:offs[j + 1]], scale)
                    sums += (loss * rows, c, rows)
                else:
                    with self.meter.comm("payload"):
                        slot.pending.append(t.isend(out, s + 1, TAG_ACT))
                self.slot_bytes = max(self.slot_bytes, slot.act_bytes)
                self.peak_slots = max(self.peak_slots, st.in_flight())
                self.peak_bytes = max(self.peak_bytes, st.stored_bytes())
            else:
                slot = slots.pop(j)
                dy = None
                if not st.is_last:
                    dy = self._buf("dy", (rows, st.d_out), st.dtype)
                    with self.meter.comm("payload"):
                        t.recv(dy, s + 1, TAG_GRAD)
                dx = self._work(lambda: st.backward(slot, dy), st.backward_flops(rows), "B", j)
                if not st.is_first:
                    with self.meter.comm("payload"):
                        slot.pending.append(t.isend(dx, s - 1, TAG_GRAD))
                st.release(slot)
        with self.meter.comm("payload"):
            for slot in st.slots:
                slot.wait()
        return sums


def _offsets(n: int, m: int) -> np.ndarray:
    """Row offsets of ``m`` contiguous micro-batches of ``n`` rows (numpy.array_split's sizes)."""
    q, r = divmod(n, m)
    return np.array([j * q + min(j, r) for j in range(m + 1)], dtype=np.int64)


def micro_batches(n: int, M: int) -> int:
    """Micro-batches of a batch of ``n`` examples: M, or n when the batch is smaller."""
    return min(M, n)


def equal_stage_bubble(kind: str, p: int, m: int, *, steps: int = 3, rows: int = 3) -> tuple[list[int], int]:
    """Run ``steps`` batches of ``m`` micro-batches of ``rows`` examples through ``p`` stages of equal cost
    (1 kFLOP forward, 2 backward per example) on simulated ranks whose messages are free; returns each
    stage's busy virtual time and the pipeline's span (ticks): the schedule's bubble, measured."""
    from .comm import SimCluster
    from .nn import MLP
    from .train.distributed import Meter
    model = MLP([4, *[4] * (p - 1), 3], dtype=np.float64, seed=0)
    batch = m * rows
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((batch, 4)), rng.integers(0, 3, size=batch)

    def body(t):
        eng = Engine(t, Stage(model, t.rank, t.rank + 1, flops=(1000, 2000)), kind, Meter(t))
        start = t.clock
        for _ in range(steps):
            eng.step(x if t.rank == 0 else None, y, m, 1.0 / batch)
        return eng.busy_v, start, t.clock

    out = SimCluster(p, network="alpha=0s,beta=0s,gamma=0s,compute=1GFLOP/s").run(body)
    return [o[0] for o in out], max(o[2] for o in out) - min(o[1] for o in out)


# -- the schedule picture ---------------------------------------------------------------------------------
OPS = {"F": ("forward", "#4c72b0"), "B": ("backward", "#55a868"), "R": ("gradient allreduce", "#dd8452")}


def plot_schedule(events: list[list[tuple]], path: str, *, title: str, unit: str,
                  labels: list[str] | None = None) -> None:
    """Ranks x time: forward (blue), backward (green) with the micro-batch number, the replicas' gradient
    allreduce (orange, a hybrid grid's), idle left white. ``events[r]``: rank r's (op, j, start, end)."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from .train.checkpoint import atomic_write_bytes
    t0 = min(e[2] for ev in events for e in ev)
    scale, label = (1e-15 * 1e3, "virtual ms") if unit == "virtual" else (1e3, "wall ms")
    height = 0.55 * len(events) + 1.9
    fig, ax = plt.subplots(figsize=(11, height))
    for r, ev in enumerate(events):
        for op, j, a, b in ev:
            x0, w = (a - t0) * scale, (b - a) * scale
            ax.barh(r, w, left=x0, height=0.8, color=OPS[op][1], edgecolor="white")
            if op != "R":
                ax.text(x0 + w / 2, r, str(j), ha="center", va="center", color="white", fontsize=7)
    ax.set_yticks(range(len(events)), labels or [f"stage {s}" for s in range(len(events))])
    ax.invert_yaxis()
    ax.set_xlabel(label)
    ax.set_title(title)
    used = {e[0] for ev in events for e in ev}
    fig.legend(handles=[Patch(color=c, label=name) for op, (name, c) in OPS.items() if op in used]
               + [Patch(facecolor="white", edgecolor="grey", label="idle (bubble)")],
               loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.4 / height, 1, 1))          # 0.4 inch below the chart for the legend
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def draw_first_step(run, events: list[tuple], path: str, *, title: str, unit: str,
                    labels: list[str] | None = None) -> None:
    """Every rank's recorded ``events`` of a step gathered on rank 0 (control), drawn into ``path``."""
    codes = list(OPS)
    ev = np.array([(codes.index(op), j, a, b) for op, j, a, b in events], dtype=np.float64).reshape(-1, 4)
    with run.meter.comm("control"):
        counts = gather(run.t, np.array([len(ev)], dtype=np.int64), root=0)
        allev = _gather_rows(run.t, ev.reshape(-1), counts, 4)
    if run.rank == 0:
        rows = [[(codes[int(r[0])], int(r[1]), r[2], r[3]) for r in mine] for mine in allev]
        plot_schedule(rows, path, title=title, unit=unit, labels=labels)
        run.say(f"schedule plot written to {path}")


def check_plot(p: argparse.ArgumentParser, path: str | None) -> None:
    """Usage errors for --schedule-plot: matplotlib missing, not a .png, not writable."""
    if not path:
        return
    if importlib.util.find_spec("matplotlib") is None:
        p.error("--schedule-plot needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')")
    if not path.lower().endswith(".png"):
        p.error(f"--schedule-plot writes a PNG: give a file name ending in .png, not {path}")
    prepare_output_file(p, "--schedule-plot", path)


# -- one rank -----------------------------------------------------------------------------------------------
class PipelineStage(Role):
    """Stage ``rank``: its blocks, its optimizer, the schedule on every global batch."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        o, tr, p, s = run.opts, run.train, run.size, run.rank
        self.ranges = cut(run.model, p, o.stages)
        self.stage = Stage(run.model, *self.ranges[s])
        self.opt = run.optimizer(self.stage.params, self.stage.grads)
        run.attach(Part(np.arange(self.stage.lo, self.stage.hi), self.opt))
        self.engine = Engine(run.t, self.stage, o.pipeline_schedule, run.meter)
        self.xbuf = np.empty((min(tr.batch_size, run.ds.num_train), run.ds.num_features), dtype=run.model.dtype)
        self.done_steps = 0
        self.messages = 0            # micro-batches sent over each boundary, each way
        self.boundary_rows = 0       # rows sent over each boundary, each way
        self.measured: list[np.ndarray] = []     # rank 0: per epoch, every stage's figures
        self.events: list | None = None
        self.title = f"pipeline ({o.pipeline_schedule}, M={o.micro_batches}), {p} stages, {run.ds.name}, {run.model.describe()}"
        run.say(f"pipeline: {p} stage{'s' if p > 1 else ''} ({run.where()}), {run.ds.describe()}")
        run.say(f"model {run.model.describe()}; {tr.optimizer} lr {tr.lr:g}, batch {tr.batch_size} in "
                f"{o.micro_batches} micro-batches, schedule {o.pipeline_schedule}, {tr.epochs} epoch"
                f"{'s' if tr.epochs != 1 else ''}" + run.resuming())
        if o.micro_batches > tr.batch_size:
            run.say(f"note: a batch of {tr.batch_size} examples makes at most {tr.batch_size} micro-batches: "
                    f"M = {tr.batch_size}, not {o.micro_batches}")
        flops = [sum(f + b for f, b in block_flops(run.model)[a:b]) for a, b in self.ranges]
        for k, (a, b) in enumerate(self.ranges):
            run.say(f"  stage {k}: blocks {a}..{b - 1}, {flops[k]:,} FLOPs per example (forward and backward)")

    def epoch(self, epoch: int) -> dict | None:
        run, st = self.run, self.stage
        M = run.opts.micro_batches
        st.seed_dropout(epoch)                          # as the centralized trainer: one key per epoch
        sums = np.zeros(3, dtype=np.float64)
        eng = self.engine
        busy_v, busy_w = eng.busy_v, eng.busy_w
        start_v, start_w = run.t.clock if eng.virtual else 0, time.time()
        for i, idx, lr in run.batches(epoch):
            m = micro_batches(len(idx), M)
            self.opt.lr = lr
            xb = gather_batch(run.x_train, idx, self.xbuf) if st.is_first else None
            eng.events = [] if self.done_steps == 0 and run.opts.schedule_plot else None
            step = self.done_steps + 1
            got = eng.step(xb, run.ds.y_train[idx], m, 1.0 / len(idx), lambda x: run.maybe_fail(step, x))
            if st.is_last:
                run.check_finite(got[0], f"at epoch {epoch + 1}, step {i + 1} (stage {run.rank})")
            with run.meter.computing():
                self.opt.step()
            if eng.events is not None:
                self.events = eng.events
            sums += got
            self.done_steps += 1
            self.messages += m
            self.boundary_rows += len(idx)
        end_v, end_w = run.t.clock if eng.virtual else 0, time.time()
        if self.events is not None:
            self.plot()
        self._measure(eng.busy_v - busy_v, start_v, end_v, eng.busy_w - busy_w, start_w, end_w)
        tot = run.totals(sums)
        return run.figures(tot, self.opt.lr) if run.rank == 0 else None

    def _measure(self, busy_v, start_v, end_v, busy_w, start_w, end_w) -> None:
        """Every stage's busy time, span and peaks of the epoch, on rank 0 (control)."""
        run, eng = self.run, self.engine
        span = np.array([-start_v, end_v], dtype=np.int64)
        wall = np.array([-start_w, end_w])
        with run.meter.comm("control"):
            allreduce(run.t, span, op="max", out=span, check=False)
            allreduce(run.t, wall, op="max", out=wall, check=False)
            mine = np.array([busy_v, span.sum(), busy_w, wall.sum(), eng.peak_slots, eng.peak_bytes,
                             eng.slot_bytes], dtype=np.float64)
            every = gather(run.t, mine, root=0)
        if run.rank == 0:
            self.measured.append(every.reshape(run.size, -1))

    # -- what the run reports -------------------------------------------------------------------------
    def payload(self) -> Payload:
        """Each boundary carries every example's activation forward and its gradient back, in micro-batches."""
        run, p, w = self.run, self.run.size, self.run.model.params.itemsize
        widths = [run.model.sizes[b] for _, b in self.ranges]          # d_out of each stage
        roles, formulas = {}, {}
        for s in range(p):
            fwd = s < p - 1
            bwd = s > 0
            sent_m = self.messages * (fwd + bwd)
            sent_b = self.boundary_rows * w * ((widths[s] if fwd else 0) + (widths[s - 1] if bwd else 0))
            recv_b = self.boundary_rows * w * ((widths[s - 1] if bwd else 0) + (widths[s] if fwd else 0))
            text = " + ".join(([f"E·b·{widths[s]}"] if fwd else []) + ([f"E·b·{widths[s - 1]}"] if bwd else [])) or "0"
            roles[f"stage {s}"] = [s]
            formulas[f"stage {s}"] = Formula(text, sent_m, sent_b, sent_m, recv_b)
        legend = (f"communication in this run: E = {self.boundary_rows:,} examples through the pipe, b = {w} bytes, "
                  f"d = the width at a stage boundary; each boundary carries activations forward and gradients back "
                  f"in {self.messages:,} micro-batch messages each way")
        return Payload(roles, formulas, legend)

    def epilogue(self) -> str:
        """Bubble and stored activations per stage, measured next to the formulas, and why they differ."""
        o, p = self.run.opts, self.run.size
        if not self.measured:
            return ""
        tot = np.sum(self.measured, axis=0)               # over the epochs of this run
        peaks = np.max(self.measured, axis=0)
        M = min(o.micro_batches, self.run.train.batch_size)       # a batch of B examples has at most B
        f = bubble_formula(p, M)
        virtual = self.engine.virtual
        asked = f" ({o.micro_batches} asked; a batch of {M} examples has {M})" if M < o.micro_batches else ""
        lines = [f"pipeline bubble and memory ({o.pipeline_schedule}, p = {p}, M = {M}{asked}); bubble formula "
                 f"(p-1)/(M+p-1) = "
                 f"{f:.4f}; stored activations: " + ("GPipe keeps M micro-batches" if o.pipeline_schedule == "gpipe"
                                                    else "1F1B keeps min(M, p-s)") + " of a_s bytes each",
                 f"{'stage':>5} {'bubble virtual':>14} {'bubble wall':>11} {'formula':>8}  {'in flight':>9} "
                 f"{'formula':>7}  {'peak activations':>16}  {'formula':>12}"]
        worst = 0.0
        for s in range(p):
            k = in_flight_formula(o.pipeline_schedule, p, M, s)
            bv = 1 - tot[s, 0] / tot[s, 1] if virtual and tot[s, 1] else None
            bw = 1 - tot[s, 2] / tot[s, 3] if tot[s, 3] else None
            if bv is not None:
                worst = max(worst, abs(bv - f))
            lines.append(f"{s:>5} {'-' if bv is None else f'{bv:.4f}':>14} {'-' if bw is None else f'{bw:.4f}':>11} "
                         f"{f:>8.4f}  {int(peaks[s, 4]):>9} {k:>7}  "
                         f"{int(peaks[s, 5]):>14,} B  {k * int(peaks[s, 6]):>10,} B")
        if not virtual:
            lines.append("bubble virtual: needs --sim N with --network ...,compute=RATE (computation then takes "
                         "virtual time)")
        elif worst == 0:
            lines.append("the virtual bubble equals the formula on every stage")
        else:
            lines.append(f"the virtual bubble differs from the formula by up to {worst:.4f}: " + "; ".join(self._why()))
        lines.append("bubble: the fraction of the pipeline's span a stage is not computing; wall time includes "
                     "Python overhead and the messages")
        return "\n".join(lines)

    def _why(self) -> list[str]:
        """What breaks the formula's assumptions in this run."""
        run, o = self.run, self.run.opts
        why = []
        flops = [sum(f + b for f, b in block_flops(run.model)[a:b]) for a, b in self.ranges]
        if len(set(flops)) > 1:
            why.append(f"the stages' FLOPs differ (max/min {max(flops) / min(flops):.2f}; the slowest sets the pace)")
        fwd = [sum(f for f, _ in block_flops(run.model)[a:b]) for a, b in self.ranges]
        if len(set(flops)) == 1 and len(set(fwd)) > 1:
            why.append("forward and backward FLOPs are split differently over the stages")
        net = run.t.network
        if net.alpha or net.beta:
            why.append("messages take virtual time (alpha, beta), which the formula leaves out")
        B, n = run.train.batch_size, run.ds.num_train
        if B % min(o.micro_batches, B) or n % B:
            why.append("the micro-batches are not all the same size (B not a multiple of M, or a smaller last batch)")
        if not why:
            why.append("the span also holds the gaps between batches and epochs")
        return why

    def result(self) -> dict:
        out = {"steps": self.done_steps}
        if self.measured:
            tot, peaks = np.sum(self.measured, axis=0), np.max(self.measured, axis=0)
            out["bubble_virtual"] = [float(1 - a / b) if b else None for a, b in tot[:, :2]]
            out["bubble_wall"] = [float(1 - a / b) if b else None for a, b in tot[:, 2:4]]
            out["in_flight"] = peaks[:, 4].astype(int).tolist()
            out["peak_activation_bytes"] = peaks[:, 5].astype(int).tolist()
        return out

    def plot(self) -> None:
        """Draw the first step's schedule (every stage's events gathered on rank 0, control)."""
        run, o = self.run, self.run.opts
        unit = "virtual" if self.engine.virtual else "wall"
        draw_first_step(run, self.events, o.schedule_plot, unit=unit,
                        title=f"{o.pipeline_schedule}, p = {run.size}, M = {o.micro_batches}: first step ({unit} time)")
        self.events = None


def _gather_rows(t, flat: np.ndarray, counts, width: int):
    """Rank 0 receives every rank's ``flat`` (counts[r] rows of ``width``); returns a list of row arrays."""
    TAG = 603
    if t.rank != 0:
        t.send(np.ascontiguousarray(flat), 0, TAG)
        return None
    out = [flat.reshape(-1, width)]
    for r in range(1, t.size):
        buf = np.empty(int(counts.reshape(-1)[r]) * width, dtype=np.float64)
        t.recv(buf, r, TAG)
        out.append(buf.reshape(-1, width))
    return out


PARADIGM = Paradigm(name="pipeline", doc=__doc__, setup=PipelineStage, options=Options, add_args=add_args,
                    check=check, check_world=check_world, parts=True,
                    no_batchnorm="each micro-batch would be normalized by its own statistics, not the batch's",
                    defaults={"hidden": (64,) * 7, "lr_schedule_flag": "--lr-schedule"},   # 8 Linear layers
                    description="Pipeline parallelism: the MLP's layers in stages, micro-batches, GPipe or 1F1B.")
build_parser, main = PARADIGM.build_parser, PARADIGM.main


if __name__ == "__main__":
    sys.exit(main())
