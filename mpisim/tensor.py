"""``mpisim.tensor``: tensor (intra-layer) model parallelism of the MLP (Shoeybi et al. 2019, "Megatron-LM:
Training Multi-Billion Parameter Language Models Using Model Parallelism").

The T ranks of the tensor group all see the same full batch; each holds a slice of every split layer.
The MLP's Linear layers go in pairs. Linear 2k is **column-parallel**: rank r holds W[:, cols_r] and
b[cols_r], cols_r being block r of ``numpy.array_split(range(d_out), T)``, and its activation and dropout
act on those columns alone. Linear 2k+1 is **row-parallel**: rank r holds W[rows_r, :] (the same blocks),
multiplies its columns of the activation by it, and the partial outputs are summed over the ranks; its
bias is replicated and added once, after the sum. Megatron's two conjugate operators:

* g (after a pair): forward, an allreduce (sum) of the (B, d) partial output; backward, nothing: the
  gradient of the summed output is already whole on every rank.
* f (before a pair): forward, nothing: every rank holds the whole input; backward, an allreduce of the
  column-parallel layer's (B, d_in) input gradient, a sum of the ranks' partial products. The very first
  layer's input gradient is wanted by nobody, so its f is skipped.

So a step of K pairs costs 2K - 1 allreduces of B x d activations (K forward, K - 1 backward), and
nothing on the parameters: each rank trains its own slices. An odd last Linear (no partner: an even
number of hidden layers, e.g. --hidden 128,64) is **replicated**: every rank computes it on the whole,
already summed activation, gets the identical gradient and takes the identical step. Replicated
parameters (row-parallel biases, the odd last layer) are trained on every rank and owned by rank 0, so
the runtime's gathered model and checkpoint take rank 0's copy.

Dropout computes what the centralized trainer computes: every rank draws the whole (B, d) mask from the
layer's own generator (seeded per epoch as mpisim.centralized does) and keeps its columns. The loss is
computed on every rank from the replicated logits. The checks in float64: the gathered model equals the
centralized one to rounding, for any T and unequal splits.

:class:`TensorParallelMLP` is the core: Linear layers [a, b) of the MLP on a given transport (the world
here; a group of ranks inside a pipeline stage for a hybrid), activations in and out, pairing from a.

    python -m mpisim.tensor --sim 4                    # 4 simulated ranks, digits, 64-128-64-32-10: two pairs
    python -m mpisim.tensor --sim 3 --hidden 96,64,32 --algorithm ring --dropout 0.2
    mpiexec -n 2 python -m mpisim.tensor
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass

import numpy as np

from .comm import ALLREDUCE_ALGORITHMS, allreduce, choose_allreduce
from .comm.costs import allreduce_formula, allreduce_traffic, times
from .comm.hierarchical import known_ranks_per_node
from .nn import MLP
from .nn.device import CPU
from .nn.layers import BatchNorm1d, Dropout, Layer, LeakyReLU, Linear
from .nn.loss import SoftmaxCrossEntropy
from .trace import span
from .train import gather_batch
from .train.distributed import Formula, Meter
from .train.runtime import Paradigm, Part, Payload, Role, Run

__all__ = ["PARADIGM", "Shard", "Tape", "TensorParallel", "TensorParallelMLP", "block", "kinds", "plan",
           "split_problem"]

@dataclass(frozen=True)
class Options:
    algorithm: str = "auto"        # the allreduce of the f and g operators


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tensor parallel")
    g.add_argument("--algorithm", choices=ALLREDUCE_ALGORITHMS, default="auto",
                   help="the allreduce of the activations and their gradients (default auto)")


def check(p: argparse.ArgumentParser, train, o: Options) -> None:
    if train.device != "cpu":
        p.error("--device cuda is not supported by tensor: it computes its slices with NumPy on the host")


# -- the split ----------------------------------------------------------------------------------------------
def block(d: int, T: int, r: int) -> tuple[int, int]:
    """Block r of ``numpy.array_split(range(d), T)`` as [lo, hi): the first d % T blocks are one longer."""
    q, m = divmod(d, T)
    lo = r * q + min(r, m)
    return lo, lo + q + (r < m)


def kinds(a: int, b: int) -> list[str]:
    """How Linear layers a..b-1 are held: pairs (column, row) from a, an odd last one replicated."""
    return ["replicated" if (j - a) % 2 == 0 and j + 1 == b else ("column", "row")[(j - a) % 2]
            for j in range(a, b)]


def split_problem(hidden, T: int, layers: tuple[int, int] | None = None) -> str | None:
    """Why T ranks cannot split these layers (a column-parallel layer narrower than T), or None.
    ``hidden`` are the hidden sizes; Linear j maps size j to size j + 1 of [inputs, *hidden, classes]."""
    a, b = layers or (0, len(hidden) + 1)
    for j, kind in zip(range(a, b), kinds(a, b)):
        if kind == "column" and hidden[j] < T:      # Linear j's outputs are hidden size j
            return (f"tensor parallelism splits Linear {j}'s {hidden[j]} outputs (--hidden size {j + 1}) over the "
                    f"ranks: {T} ranks is more than its width; use at most {hidden[j]} ranks or a wider layer")
    return None


@dataclass(frozen=True)
class Shard:
    """Linear layer ``linear`` of the MLP (``d_in`` -> ``d_out``) as one rank holds it: ``kind`` column
    (W[:, lo:hi], b[lo:hi]), row (W[lo:hi, :], b whole) or replicated (W, b whole); ``offset``: where its
    W, then its b, start in the rank's flat part."""
    linear: int
    kind: str
    d_in: int
    d_out: int
    lo: int
    hi: int
    offset: int

    @property
    def w_shape(self) -> tuple[int, int]:
        n = self.hi - self.lo
        return {"column": (self.d_in, n), "row": (n, self.d_out)}.get(self.kind, (self.d_in, self.d_out))

    @property
    def b_size(self) -> int:
        return self.hi - self.lo if self.kind == "column" else self.d_out

    @property
    def size(self) -> int:
        return self.w_shape[0] * self.w_shape[1] + self.b_size


def plan(sizes, T: int, r: int, layers: tuple[int, int] | None = None) -> list[Shard]:
    """Rank r's shards of Linear layers [a, b) of an MLP with layer sizes ``sizes``, on T ranks."""
    a, b = layers or (0, len(sizes) - 1)
    if not 0 <= a < b <= len(sizes) - 1:
        raise ValueError(f"layers must be a range [a, b) of the MLP's {len(sizes) - 1} Linear layers, got [{a}, {b})")
    out, off = [], 0
    for j, kind in zip(range(a, b), kinds(a, b)):
        d_in, d_out = sizes[j], sizes[j + 1]
        lo, hi = block(d_out if kind == "column" else d_in, T, r) if kind != "replicated" else (0, 0)
        s = Shard(j, kind, d_in, d_out, lo, hi, off)
        out.append(s)
        off += s.size
    return out


@dataclass
class Tape:
    """What one forward keeps for its backward: per shard its input, its activation layer (a fresh one per
    forward, so several forwards may be in flight, as microbatches in a pipeline) and its dropout draws."""
    inputs: list
    acts: list
    masks: list
    batch: int


# -- the core -------------------------------------------------------------------------------------------------
class TensorParallelMLP:
    """Linear layers [a, b) of ``model`` (default: all), tensor-parallel over the ranks of transport ``t``.

    This rank's slices lie in one flat ``params`` vector (``grads`` alike), at positions ``index`` of
    ``model.params``; ``owned`` marks the ones it answers for (its slices, and the replicas on rank 0 of
    ``t``). Make an optimizer over ``params``/``grads`` and hand ``Part(index, opt, owned)`` to the runtime.
    :meth:`forward` takes the whole (B, d_a) input, replicated on the ranks, and returns the whole (B, d_b)
    output (after the last layer's activation and dropout, unless it is the MLP's last layer) and a
    :class:`Tape`; :meth:`backward` takes the output's gradient and fills ``grads``. The trailing block of
    each Linear (activation, dropout) belongs to it. ``model`` supplies the sizes, the initial values (via
    the runtime's attach), the activation and the dropout generators; its own vectors are not touched.
    """

    def __init__(self, t, model: MLP, *, layers: tuple[int, int] | None = None, algorithm: str = "auto",
                 meter: Meter | None = None) -> None:
        self.t, self.T, self.rank = t, t.size, t.rank
        self.algorithm, self.meter = algorithm, meter
        self.a, self.b = layers or (0, len(model.sizes) - 1)
        self.sizes, self.dtype = model.sizes, model.dtype
        problem = split_problem(model.sizes[1:-1], self.T, (self.a, self.b))
        if problem:
            raise ValueError(problem)
        self.shards = plan(model.sizes, self.T, self.rank, (self.a, self.b))
        n = sum(s.size for s in self.shards)
        self.params = np.zeros(n, dtype=model.dtype)
        self.grads = np.zeros(n, dtype=model.dtype)
        self.index = np.zeros(n, dtype=np.int64)
        self.owned = np.zeros(n, dtype=bool)
        self.allreduces = 0                 # calls so far (the f and g operators), for the tests and the table
        linears = [li for li, layer in enumerate(model.layers) if isinstance(layer, Linear)]
        where = {(li, name): off for li, name, off, _ in model.slices}
        self.W, self.bias, self.gW, self.gb, self.act, self.drop = [], [], [], [], [], []
        for s in self.shards:
            li = linears[s.linear]
            full = np.arange(s.d_in * s.d_out).reshape(s.d_in, s.d_out) + where[li, "W"]   # W's flat positions
            w_idx = {"column": full[:, s.lo:s.hi], "row": full[s.lo:s.hi, :]}.get(s.kind, full)
            b_idx = where[li, "b"] + (np.arange(s.lo, s.hi) if s.kind == "column" else np.arange(s.d_out))
            o, nw = s.offset, w_idx.size
            self.index[o:o + nw], self.index[o + nw:o + s.size] = w_idx.ravel(), b_idx
            self.owned[o:o + nw] = s.kind != "replicated" or self.rank == 0
            self.owned[o + nw:o + s.size] = s.kind == "column" or self.rank == 0      # replicated biases: rank 0
            self.W.append(self.params[o:o + nw].reshape(s.w_shape))
            self.bias.append(self.params[o + nw:o + s.size])
            self.gW.append(self.grads[o:o + nw].reshape(s.w_shape))
            self.gb.append(self.grads[o + nw:o + s.size])
            tail = model.layers[li + 1:linears[s.linear + 1]] if s.linear + 1 < len(linears) else []
            if any(isinstance(x, BatchNorm1d) for x in tail):
                raise ValueError("tensor parallelism does not split BatchNorm (its statistics need the whole column "
                                 "over the batch; Megatron uses LayerNorm, replicated)")
            acts = [x for x in tail if not isinstance(x, Dropout)]
            self.act.append(acts[0] if acts else None)
            drops = [x for x in tail if isinstance(x, Dropout)]
            self.drop.append(drops[0] if drops else None)

    # -- helpers ----------------------------------------------------------------------------------------
    def _fresh_act(self, i: int) -> Layer | None:
        """A new instance of shard i's activation, computing on the host (a forward's own state)."""
        proto = self.act[i]
        if proto is None:
            return None
        act = LeakyReLU(proto.slope) if isinstance(proto, LeakyReLU) else type(proto)()
        act.bind({}, {}, {}, self.dtype, CPU)
        return act

    def _sum(self, a: np.ndarray) -> None:
        """The allreduce (sum) of f or g, in place, counted as payload."""
        self.allreduces += 1
        ctx = self.meter.comm("payload") if self.meter else contextlib.nullcontext()
        with ctx:
            allreduce(self.t, a, algorithm=self.algorithm, out=a, check=False)

    def _computing(self):
        return self.meter.computing() if self.meter else contextlib.nullcontext()

    def _flops(self, B: int, i: int, passes: int) -> None:
        m, n = self.shards[i].w_shape
        self.t.compute(2 * B * m * n * passes)           # virtual time: this rank's share of the matmuls

    # -- forward and backward ---------------------------------------------------------------------------
    def forward(self, x: np.ndarray, *, train: bool = True) -> tuple[np.ndarray, Tape]:
        """(B, d_a) -> (B, d_b), both whole on every rank; one allreduce (g) per pair. The tape keeps ``x``:
        leave it unchanged until :meth:`backward`."""
        with span("forward" if train else "evaluate"):          # a traced run's span (mpisim.trace)
            return self._forward(x, train)

    def _forward(self, x: np.ndarray, train: bool) -> tuple[np.ndarray, Tape]:
        B = x.shape[0]
        tape = Tape([], [], [], B)
        h = x
        for i, s in enumerate(self.shards):
            tape.inputs.append(h)
            with self._computing():
                y = np.empty((B, s.w_shape[1]), dtype=self.dtype)
                np.matmul(h, self.W[i], out=y)   # column (B, d_in)@(d_in, c); row (B, r)@(r, d_out); repl. whole
                self._flops(B, i, 1)
                if s.kind != "row":
                    y += self.bias[i]
            if s.kind == "row":
                self._sum(y)                     # g: the partial outputs summed, (B, d_out) whole on every rank
                y += self.bias[i]                # the replicated bias, once, after the sum
            with self._computing():
                act = self._fresh_act(i)
                h = act.forward(y, train) if act else y
                h, u = self._dropout(i, h, train)
                tape.acts.append(act)
                tape.masks.append(u)
        return h, tape

    def _dropout(self, i: int, h: np.ndarray, train: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Shard i's dropout of ``h``: the whole (B, d) draws from the layer's generator, as one process
        draws them, then this rank's columns. Returns (output, the draws kept; None without dropout)."""
        drop, s = self.drop[i], self.shards[i]
        if drop is None or not train or drop.p == 0:
            return h, None
        u = np.empty((h.shape[0], s.d_out), dtype=self.dtype)
        drop.rng.random(out=u, dtype=self.dtype.type)
        if s.kind == "column":
            u = np.ascontiguousarray(u[:, s.lo:s.hi])
        out = np.empty_like(h)                   # not in place: tanh's and sigmoid's backward read h
        CPU.dropout_fwd(h, u, out, drop.p, 1.0 / (1.0 - drop.p))
        return out, u

    def backward(self, tape: Tape, dy: np.ndarray, *, need_dx: bool = False,
                 accumulate: bool = False) -> np.ndarray | None:
        """Fill ``grads`` (or add to them, ``accumulate``) from the (B, d_b) gradient ``dy`` of the output
        (whole, the same on every rank; it may be overwritten). One allreduce (f) per pair, except the first
        layer's when ``need_dx`` is False; returns the (B, d_a) input gradient, whole, if ``need_dx``."""
        with span("backward"):
            return self._backward(tape, dy, need_dx, accumulate)

    def _backward(self, tape: Tape, dy: np.ndarray, need_dx: bool, accumulate: bool) -> np.ndarray | None:
        B, d = tape.batch, dy
        for i in range(len(self.shards) - 1, -1, -1):
            s, x, first = self.shards[i], tape.inputs[i], i == 0
            with self._computing():
                if tape.masks[i] is not None:
                    p = self.drop[i].p
                    CPU.dropout_bwd(d, tape.masks[i], p, 1.0 / (1.0 - p))
                if tape.acts[i] is not None:
                    d = tape.acts[i].backward(d)
                if accumulate:                   # dW: (d_in, B) @ (B, d_out) in the shard's shape
                    self.gW[i] += x.T @ d
                    self.gb[i] += d.sum(axis=0)
                else:
                    np.matmul(x.T, d, out=self.gW[i])
                    np.sum(d, axis=0, out=self.gb[i])
                skip = first and not need_dx
                self._flops(B, i, 1 if skip else 2)
                if skip:
                    return None
                dx = np.empty((B, s.w_shape[0]), dtype=self.dtype)
                np.matmul(d, self.W[i].T, out=dx)   # (B, c)@(c, d_in) partial; row: (B, d_out)@(d_out, r) mine
            if s.kind == "column":
                self._sum(dx)                    # f: the partial input gradients summed
            d = dx
        return d

    # -- what it sends -----------------------------------------------------------------------------------
    def allreduce_widths(self, *, need_dx: bool = False) -> list[int]:
        """The d of each (B, d) allreduce of one step, forward then backward."""
        fwd = [s.d_out for s in self.shards if s.kind == "row"]
        bwd = [s.d_in for i, s in enumerate(self.shards) if s.kind == "column" and (i > 0 or need_dx)]
        return fwd + bwd[::-1]

    def traffic(self, batch: int, *, need_dx: bool = False) -> tuple[int, int]:
        """(messages, bytes) all ranks of ``t`` send in one step on ``batch`` examples, in closed form."""
        m = b = 0
        for d in self.allreduce_widths(need_dx=need_dx):
            dm, db = allreduce_traffic(self.algorithm, batch * d, self.dtype.itemsize, self.T,
                                       ppn=known_ranks_per_node(self.t))
            m, b = m + dm, b + db
        return m, b

    def describe(self) -> list[str]:
        """How each layer is held, one phrase each."""
        T, out = self.T, []
        for s in self.shards:
            name = f"Linear {s.linear} ({s.d_in}->{s.d_out})"
            if s.kind == "replicated":
                out.append(f"{name} replicated")
                continue
            d = s.d_out if s.kind == "column" else s.d_in
            widths = [hi - lo for lo, hi in (block(d, T, r) for r in range(T))]
            each = "/".join(map(str, widths)) if len(set(widths)) > 1 else str(widths[0])
            what = "columns" if s.kind == "column" else "rows, bias replicated"
            out.append(f"{name} {s.kind}-parallel ({each} {what})")
        return out


# -- one rank --------------------------------------------------------------------------------------------------
class TensorParallel(Role):
    """A rank of the tensor group: the whole batch, its slices of every split layer."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        o, tr, T = run.opts, run.train, run.size
        self.core = TensorParallelMLP(run.t, run.model, algorithm=o.algorithm, meter=run.meter)
        self.opt = run.optimizer(self.core.params, self.core.grads)
        run.attach(Part(self.core.index, self.opt, self.core.owned))
        self.loss_fn = SoftmaxCrossEntropy()
        self.xbuf = np.empty((min(tr.batch_size, run.ds.num_train), run.ds.num_features), dtype=run.model.dtype)
        self.done_steps = 0
        widths = self.core.allreduce_widths()
        counts = [sum(s.size for s in plan(run.model.sizes, T, r)) for r in range(T)]
        self.title = f"tensor parallel, {T} ranks, {run.ds.name}, {run.model.describe()}"
        run.say(f"tensor: {T} rank{'s' if T > 1 else ''} ({run.where()}), {run.ds.describe()}")
        run.say(f"model {run.model.describe()}; {tr.optimizer} lr {tr.lr:g}, batch {tr.batch_size} (the whole "
                f"batch on every rank), {tr.epochs} epoch{'s' if tr.epochs != 1 else ''}; allreduce {o.algorithm}"
                + run.resuming())
        run.say("split: " + "; ".join(self.core.describe()))
        run.say(f"parameters per rank: {min(counts):,}" + (f"..{max(counts):,}" if max(counts) != min(counts) else "")
                + f" of {run.model.num_params:,} (replicas included); {len(widths)} allreduce"
                + ("s" if len(widths) != 1 else "") + f" of B x d per step, d = {', '.join(map(str, widths)) or '-'}")

    def epoch(self, epoch: int) -> dict | None:
        run, core, opt = self.run, self.core, self.opt
        y_train = run.ds.y_train
        run.model.seed_dropout(epoch)                   # the centralized trainer's masks, on every rank
        sums = np.zeros(3, dtype=np.float64)            # loss sum, correct, seen (rank 0 only: all ranks agree)
        for i, batch, lr in run.batches(epoch):
            opt.lr = lr
            xb = gather_batch(run.x_train, batch, self.xbuf)
            run.maybe_fail(self.done_steps + 1, xb)
            with np.errstate(all="ignore"):          # a diverging run is caught just below
                logits, tape = core.forward(xb)
                with run.meter.computing():
                    loss = self.loss_fn.forward(logits, y_train[batch])
                    correct = int(np.count_nonzero(logits.argmax(axis=1) == y_train[batch]))
                    dlogits = self.loss_fn.backward()    # of the mean loss over the batch, as centralized
                core.backward(tape, dlogits)
            run.check_finite(loss, f"at epoch {epoch + 1}, step {i + 1} on rank {run.rank}")
            with run.meter.computing():
                opt.step()
            if run.rank == 0:
                sums += (loss * len(batch), correct, len(batch))
            self.done_steps += 1
        tot = run.totals(sums)
        return run.figures(tot, opt.lr) if run.rank == 0 else None

    def payload(self) -> Payload:
        """Per step 2K-1 allreduces of (B, d) activations; the last batch of an epoch is smaller."""
        run, T, alg, core = self.run, self.run.size, self.run.opts.algorithm, self.core
        n, B, S = run.ds.num_train, run.train.batch_size, run.steps
        epochs = self.done_steps // S if S else 0
        last = n - (S - 1) * B
        m_full, b_full = core.traffic(B)
        m_last, b_last = core.traffic(last)
        m, b = epochs * ((S - 1) * m_full + m_last), epochs * ((S - 1) * b_full + b_last)
        widths = core.allreduce_widths()
        w = run.model.dtype.itemsize
        per = allreduce_formula(alg, B * (widths[0] if widths else 1), w, T, n="b·B·d",
                                ppn=known_ranks_per_node(core.t))
        picked = ""
        if alg == "auto" and widths and T > 1:
            names = sorted({choose_allreduce(bb * d * w, bb * d, T) for d in widths for bb in (B, last)})
            picked = f" ({', '.join(names)})"
            if len(names) > 1:              # auto picks by size: no one expression
                per = "AR_auto(b·B·d)"
        formula = Formula(times("Σ_steps Σ_d", per).replace("Σ_d·", "Σ_d "), m, b, m, b)
        legend = (f"communication in this run: N = {T} ranks (the tensor group), b = {w} bytes, {epochs} epochs of "
                  f"{S} steps, B = {B} (the last {last}); per step {len(widths)} allreduce(s) of B x d, d = "
                  f"{', '.join(map(str, widths)) or '-'} (K forward g, K-1 backward f); algorithm {alg}{picked}")
        return Payload({"rank": list(range(T))}, {"rank": formula}, legend)

    def result(self) -> dict:
        return {"steps": self.done_steps, "allreduces": self.core.allreduces,
                "allreduces_per_step": len(self.core.allreduce_widths())}


def check_world(train, o: Options, N: int) -> str | None:
    return split_problem(train.hidden, N)


PARADIGM = Paradigm(name="tensor", doc=__doc__, setup=TensorParallel, options=Options, add_args=add_args,
                    check=check, check_world=check_world, parts=True,
                    no_batchnorm="a BatchNorm after a column-parallel layer needs whole columns over the batch, "
                                 "which the ranks hold in slices (Megatron normalizes with a replicated LayerNorm)",
                    defaults={"hidden": (128, 64, 32), "epochs": 10, "lr": 1e-3, "optimizer": "adam"},   # two pairs
                    description="Tensor (Megatron) model parallelism: each Linear pair split by columns, then rows.")
build_parser, main = PARADIGM.build_parser, PARADIGM.main


if __name__ == "__main__":
    sys.exit(main())
