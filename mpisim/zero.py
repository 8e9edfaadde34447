"""``mpisim.zero``: ZeRO, data parallelism that shards the training state over the ranks (Rajbhandari et
al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models").

The data are split as in :mod:`mpisim.allreduce`: rank r takes its strided share ``batch[r::N]`` of every
global batch of B examples, with weight 1/B per example, so N ranks take the centralized trainer's step
(the tests check it in float64). What changes is who keeps what. Every Linear layer's flat range (W, then
b) is cut into N blocks as ``numpy.array_split`` cuts it (the block layout of mpisim's reduce_scatter);
rank r owns block r of every layer, its *shard*: Psi_r parameters, about Psi/N. Its optimizer runs over
the shard only, one optimizer per layer over that layer's block: in stages 1 and 2 the parameters it
updates are the block of the full replica itself (a view), so nothing is held twice.

* ``--stage 0``: plain data parallelism, for comparison: parameters, gradients and optimizer state all
  replicated; one allreduce of the gradient per step.
* ``--stage 1`` (P_os): the optimizer state sharded. After backward each layer's gradient is
  reduce-scattered (summed): rank r gets block r, written back into its block of the full gradient; it
  updates its shard; an allgather per layer brings every rank the updated parameters.
* ``--stage 2`` (P_os+g): the gradients sharded too. Backward writes each layer's gradient into a scratch
  buffer the size of the largest layer and, as soon as the layer is done, reduce-scatters it into the
  rank's gradient shard. The model's own full gradient vector, never written, is released once the rank
  has taken its part (an empty vector stays in its place): no rank holds a full gradient vector.
* ``--stage 3`` (P_os+g+p): the parameters sharded too. Before a layer's forward, and again before its
  backward, its parameters are allgathered into a scratch buffer the size of the largest layer, and
  dropped after: 1.5 times the bytes of stages 0-2 (two allgathers and one reduce_scatter per layer).
  Once the runtime has copied each rank's shard out of the model it built from the seed (or received on
  a resume), the ranks other than 0 release the model's full parameter vector; rank 0 keeps it, filled
  from the shards after every epoch, to evaluate and checkpoint the model: an *evaluation copy*.

Memory per rank, with Psi parameters of b bytes and K optimizer moments (Adam 2, SGD 1): stage 0
(2 + K)·Psi·b; stage 1 2·Psi·b + K·Psi_r·b; stage 2 Psi·b + (1 + K)·Psi_r·b; stage 3 (2 + K)·Psi_r·b.
The run measures the arrays each rank holds, the model's own vectors included, and prints them beside
these formulas. With Adam on 2 ranks stage 1 holds 0.75 of stage 0's bytes, stage 2 0.625, stage 3 0.5.
Reported apart, not in these totals: the scratch buffers (transient) and, in stage 3, rank 0's evaluation
copy (Psi·b). Not measured: activations, the data, the collectives' temporaries, the shard's positions
(int64) and, with ``--checkpoint``, rank 0's full optimizer state, gathered there to be saved.

``--algorithm`` picks the collectives: auto (each collective's own choice by size, as MPICH) or ring.
The allgather takes equal blocks, so each rank's block of a layer is padded to ceil(n_l/N) for it
(PyTorch FSDP pads its flat parameter the same way).

    python -m mpisim.zero --sim 4                                      # stage 1, digits
    python -m mpisim.zero --sim 4 --stage 3 --algorithm ring
    mpiexec -n 2 python -m mpisim.zero --stage 2
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .comm import allgather, allreduce, gather, reduce_scatter
from .comm.allgather import choose_allgather
from .comm.costs import allreduce_formula, allreduce_traffic, times, traffic
from .comm.hierarchical import known_ranks_per_node
from .comm.reduce_scatter import choose_reduce_scatter
from .nn import Linear
from .train import gather_batch
from .train.distributed import Formula, Meter
from .train.runtime import Paradigm, Part, Payload, Role, Run
from .train.metrics import plural, share

STAGES = (0, 1, 2, 3)
ALGORITHMS = ("auto", "ring")
HELD = ("params", "grads", "optimizer")                 # memory, by kind (see Zero.memory): the total,
KINDS = (*HELD, "transient", "eval copy")               # then apart: scratch buffers, rank 0's model to evaluate


@dataclass(frozen=True)
class Options:
    stage: int = 1                 # 0: plain data parallel, 1: optimizer state, 2: + gradients, 3: + parameters
    algorithm: str = "auto"        # the collectives' algorithm: auto (by size) or ring


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ZeRO")
    g.add_argument("--stage", type=int, choices=STAGES, default=1,
                   help="what is sharded over the ranks: 0 nothing (plain data parallel), 1 the optimizer state, "
                        "2 the optimizer state and the gradients, 3 those and the parameters (default 1)")
    g.add_argument("--algorithm", choices=ALGORITHMS, default="auto",
                   help="algorithm of the reduce_scatter, allgather (and stage 0's allreduce): auto, each "
                        "collective's own choice by size, or ring (default auto)")


def check(p: argparse.ArgumentParser, train, o: Options) -> None:
    if o.stage >= 2 and train.device != "cpu":
        p.error(f"--stage {o.stage} binds the layers' gradients (and parameters) to host scratch buffers: "
                f"use --device cpu, or --stage 0 or 1")


# -- the shards --------------------------------------------------------------------------------------------
def split_offsets(n: int, N: int) -> list[int]:
    """Offsets (N + 1) of ``numpy.array_split(range(n), N)``: the first n % N blocks one longer."""
    q, rem = divmod(n, N)
    return [k * q + min(k, rem) for k in range(N + 1)]


@dataclass
class LayerShard:
    """One Linear layer's flat range [lo, lo + n) cut into N blocks (``offs``, relative to lo); this rank's
    block sits at ``at`` in its shard vector. ``views(v)``: {name: view} of the layer's W and b in the
    first n elements of a scratch vector v."""
    layer: int
    lo: int
    n: int
    offs: list[int]
    at: int
    slices: list[tuple[str, int, tuple[int, ...]]]      # (name, offset from lo, shape)
    fwd_flops: int = 0                                  # per example: 2·d_in·d_out
    bwd_flops: int = 0                                  # per example: dW and, except the first layer, dX

    def views(self, v: np.ndarray) -> dict[str, np.ndarray]:
        return {name: v[off:off + int(np.prod(shape))].reshape(shape) for name, off, shape in self.slices}


def plan_shards(model, N: int, r: int) -> tuple[list[LayerShard], list[int]]:
    """Every Linear layer's blocks, and the shard size Psi_q of each rank q."""
    ranges: dict[int, list] = {}
    for li, name, off, shape in model.slices:
        ranges.setdefault(li, []).append((name, off, shape))
    shards, at, sizes = [], 0, [0] * N
    for li in sorted(ranges):
        layer = model.layers[li]
        if not isinstance(layer, Linear):
            raise ValueError(f"ZeRO shards Linear layers only; layer {li} is {layer!r}")
        lo = min(off for _, off, _ in ranges[li])
        n = sum(int(np.prod(shape)) for _, _, shape in ranges[li])
        offs = split_offsets(n, N)
        mac = layer.d_in * layer.d_out
        shards.append(LayerShard(li, lo, n, offs, at, [(nm, off - lo, shape) for nm, off, shape in ranges[li]],
                                 fwd_flops=2 * mac, bwd_flops=(4 if layer.need_dx else 2) * mac))
        at += offs[r + 1] - offs[r]
        for q in range(N):
            sizes[q] += offs[q + 1] - offs[q]
    if sum(s.n for s in shards) != model.num_params:
        raise ValueError("ZeRO: the Linear layers do not cover the parameter vector")
    return shards, sizes


def pick(collective: str, algorithm: str, count: int, itemsize: int, N: int) -> str:
    """The algorithm a collective runs on ``count`` elements (the whole result's, for allgather): ``auto``
    resolved by the collective's own rule (mpisim.comm, MPICH's thresholds), for the closed forms."""
    if algorithm != "auto" or collective == "allreduce":
        return algorithm
    nbytes = count * itemsize
    if collective == "reduce_scatter":
        return choose_reduce_scatter(nbytes)
    return choose_allgather(nbytes, N)


def memory_formula(stage: int, *, P: int, shard: int, K: int, b: int, largest: int, pad: int,
                   rank: int) -> dict[str, int]:
    """Bytes per kind rank ``rank`` holds in ``stage`` (Rajbhandari et al. 2020, Fig. 1, with the exact shard
    Psi_r = ``shard``): params, grads, optimizer moments; apart, ``transient``: scratch buffers, and ``eval
    copy``: the full parameters rank 0 keeps in stage 3 to evaluate the model."""
    full_p, full_g = stage <= 2, stage <= 1
    return {"params": (P if full_p else shard) * b,
            "grads": (P if full_g else shard) * b,
            "optimizer": K * (P if stage == 0 else shard) * b,
            "transient": {0: 0, 1: pad, 2: largest + pad, 3: 2 * largest + pad}[stage] * b,
            "eval copy": P * b if stage == 3 and rank == 0 else 0}


# -- one rank's ZeRO, on any transport -----------------------------------------------------------------------
class Zero:
    """One rank of ZeRO ``stage`` on transport ``t`` (the world, or later a group of it): the shards, the
    optimizers over this rank's shard (``make_optimizer(params, grads)``: in stages 1-3 one per layer, over
    the layer's block), and one training step.

    Payload collectives are counted under ``meter``'s "payload". ``index`` (positions in the flat vector),
    ``opts`` and ``owned`` describe the rank's part for the runtime's checkpoints. Once the runtime has
    copied the shard's parameters out of the model, :meth:`release` drops the model's full vectors the
    stage does not use.
    """

    def __init__(self, t, model, *, stage: int, algorithm: str, meter: Meter,
                 make_optimizer: Callable[[np.ndarray, np.ndarray], object]) -> None:
        if stage not in STAGES:
            raise ValueError(f"ZeRO stage must be one of {STAGES}, got {stage}")
        self.t, self.model, self.stage, self.alg, self.meter = t, model, stage, algorithm, meter
        N, r, dt = t.size, t.rank, model.dtype
        self.P, self.b = model.num_params, model.params.itemsize   # kept: release() may empty model.params
        self.shards, self.sizes = plan_shards(model, N, r)
        self.by_layer = {s.layer: s for s in self.shards}
        self.largest = max(s.n for s in self.shards)            # elements of the largest layer
        self.pad = max(s.offs[1] for s in self.shards)          # the largest block: ceil(n_l / N)
        s = self.sizes[r]
        self.index = np.concatenate([np.arange(L.lo + L.offs[r], L.lo + L.offs[r + 1]) for L in self.shards])
        self.comm_s = 0.0                                       # wall seconds in payload collectives
        self.where = ""                                         # the step, for error messages
        self.steps = 0
        held: dict[str, list[np.ndarray]] = {k: [] for k in KINDS}
        if stage == 0:                   # everything replicated: the optimizer over the model's own vectors
            self.opts = [make_optimizer(model.params, model.grads)]
            self.owned = np.zeros(model.num_params, dtype=bool)
            self.owned[self.index] = True                      # own the shard positions, for checkpoints
            self.index = np.arange(model.num_params)
            held["params"], held["grads"] = [model.params], [model.grads]
        else:
            # this rank's block of each layer, (Psi_r,) in all: views of the full replica where the stage
            # keeps one (params in stages 1-2, grads in stage 1), else of the shard vectors
            mine = [slice(L.lo + L.offs[r], L.lo + L.offs[r + 1]) for L in self.shards]
            at = [slice(L.at, L.at + L.offs[r + 1] - L.offs[r]) for L in self.shards]
            if stage >= 2:
                self.shard_g = np.zeros(s, dtype=dt)           # the gradient shard
            if stage == 3:
                self.shard_p = np.zeros(s, dtype=dt)           # the parameter shard
            p = [model.params[k] for k in mine] if stage <= 2 else [self.shard_p[k] for k in at]
            g = [model.grads[k] for k in mine] if stage == 1 else [self.shard_g[k] for k in at]
            self.block_p = {L.layer: v for L, v in zip(self.shards, p)}
            self.block_g = {L.layer: v for L, v in zip(self.shards, g)}
            self.opts = [make_optimizer(pv, gv) for pv, gv in zip(p, g)]   # their vectors lie as index
            self.owned = True
            self.send = np.zeros(self.pad, dtype=dt)           # one block, padded for the allgather
            held["transient"].append(self.send)
            held["params"] = [model.params] if stage <= 2 else [self.shard_p]
            held["grads"] = [model.grads] if stage == 1 else [self.shard_g]
        held["optimizer"] = [v for o in self.opts for v in o.state.values()]
        if stage >= 2:                   # every Linear writes its gradient into one scratch: the largest layer
            self.gscratch = np.zeros(self.largest, dtype=dt)
            held["transient"].append(self.gscratch)
            for L in self.shards:
                model.layers[L.layer].grads.update(L.views(self.gscratch))
        if stage == 3:                   # and reads its parameters from another, gathered just before
            self.pscratch = np.zeros(self.largest, dtype=dt)
            held["transient"].append(self.pscratch)
            self.own_views: dict | None = {L.layer: dict(model.layers[L.layer].params) for L in self.shards}
            self.gathered_views = {L.layer: L.views(self.pscratch) for L in self.shards}
        self.held = held

    def release(self) -> None:
        """Drop the model's full vectors this stage never uses, once the runtime has copied this rank's
        shard out of them (:meth:`Run.attach <mpisim.train.runtime.Run.attach>`): in stages 2 and 3 the
        gradient (the layers write theirs into the scratch), in stage 3 also the parameters on the ranks
        other than 0 (their layers keep pointing at the gathered scratch; rank 0 keeps the full vector, filled
        from the shards after each epoch, to evaluate the model). Each becomes an empty vector of the
        model's dtype, so ``.size`` and ``.dtype`` still answer."""
        m = self.model
        if self.stage < 2:
            return
        if not m.ops.on_host:
            raise ValueError(f"ZeRO stage {self.stage} binds the layers to host scratch buffers: use device cpu")
        m.grads = np.zeros(0, dtype=m.dtype)
        if self.stage == 3 and self.t.rank != 0:
            self._bind(self.gathered_views)                     # for good: no view of the full vector is left
            self.own_views = None
            m.params = np.zeros(0, dtype=m.dtype)
        m._dev = (m.params, m.grads, m.buffers)                  # on the host, the model's own vectors

    # -- what the rank holds --------------------------------------------------------------------------------
    def memory(self) -> dict[str, int]:
        """Measured: the bytes of the arrays this rank holds for training, by kind (see memory_formula), and
        as ``eval copy`` the model's own full vectors that are none of them (after :meth:`release`, rank 0's
        parameters in stage 3; a vector not released would show here, and differ from the formula)."""
        got = {k: int(sum(a.nbytes for a in v)) for k, v in self.held.items()}
        mine = {id(a) for v in self.held.values() for a in v}
        got["eval copy"] = int(sum(a.nbytes for a in (self.model.params, self.model.grads) if id(a) not in mine))
        return got

    def formula(self) -> list[dict[str, int]]:
        """:func:`memory_formula` for every rank of the group."""
        return [memory_formula(self.stage, P=self.P, shard=s, K=len(self.opts[0].state_names), b=self.b,
                               largest=self.largest, pad=self.pad, rank=q) for q, s in enumerate(self.sizes)]

    # -- the collectives ------------------------------------------------------------------------------------
    def _reduce(self, L: LayerShard, g: np.ndarray) -> None:
        """Block r of the sum of every rank's layer gradient ``g`` (n,) -> this rank's block of the gradient
        (in stage 1 a view of ``g`` itself: the collective reads a copy of it)."""
        if not np.isfinite(g).all():
            raise FloatingPointError(f"non-finite gradient in layer {L.layer} {self.where}: lower --lr")
        t0 = time.perf_counter()
        with self.meter.comm("payload"):
            mine = reduce_scatter(self.t, g, algorithm=self.alg, check=False)
        self.block_g[L.layer][...] = mine
        self.comm_s += time.perf_counter() - t0

    def _gather(self, L: LayerShard, dest: np.ndarray) -> None:
        """Every rank's block of layer L's parameters, from the shards, -> ``dest`` (n,) in place."""
        t, off = self.t, L.offs
        c = off[t.rank + 1] - off[t.rank]
        send = self.send[:off[1]]                               # (ceil(n/N),): the block and 0 or 1 pad
        send[:c] = self.block_p[L.layer]
        send[c:] = 0
        t0 = time.perf_counter()
        with self.meter.comm("payload"):
            blocks = allgather(t, send, algorithm=self.alg, check=False)      # (N, ceil(n/N))
        for q in range(t.size):
            dest[off[q]:off[q + 1]] = blocks[q, :off[q + 1] - off[q]]
        self.comm_s += time.perf_counter() - t0

    # -- one step -------------------------------------------------------------------------------------------
    def step(self, xb: np.ndarray, yb: np.ndarray, *, scale: float, lr: float, where: str) -> tuple[float, int]:
        """Forward, backward, the collectives of the stage and the optimizer on this rank's share ``xb``
        (examples weighted ``scale``); returns the local (mean loss, correct)."""
        for o in self.opts:
            o.lr = lr
        self.where = where
        self.comm_s = 0.0
        t0 = time.perf_counter()
        with np.errstate(all="ignore"):                         # a diverging run is caught by the checks
            if self.stage == 3:
                self._bind(self.gathered_views)
                try:
                    loss, correct = self._sharded_pass(xb, yb, scale, where)
                finally:                                        # rank 0 evaluates the model's own vector
                    if self.own_views is not None:             # (released on the others: see release)
                        self._bind(self.own_views)
            else:
                loss, correct = self._replica_pass(xb, yb, scale, where)
        for o in self.opts:
            o.step()
        if 1 <= self.stage <= 2:                                # every rank <- the updated shards
            for L in self.shards:
                self._gather(L, self.model.params[L.lo:L.lo + L.n])
        self.meter.compute += time.perf_counter() - t0 - self.comm_s
        self.steps += 1
        return loss, correct

    def _forward_loss(self, logits, yb, where: str) -> tuple[float, int]:
        model = self.model
        yb = model.ops.xp.asarray(yb)
        correct = int(model.ops.xp.count_nonzero(logits.argmax(axis=1) == yb))
        loss = model.loss_fn.forward(logits, yb)
        if not np.isfinite(loss):                               # before any payload leaves this rank
            raise FloatingPointError(f"loss became {loss} {where}: lower --lr")
        return loss, correct

    def _replica_pass(self, xb, yb, scale, where) -> tuple[float, int]:
        """Stages 0-2: the full parameters on every rank, so the model's own forward and backward."""
        model, t, B = self.model, self.t, len(xb)
        loss, correct = self._forward_loss(model.forward(xb, train=True), yb, where)
        dlogits = model.loss_fn.backward(scale)
        if self.stage == 2:
            t.compute(B * sum(L.fwd_flops for L in self.shards))

            def hook(i: int) -> None:      # layer i's gradient is in the scratch: reduce-scatter it now
                L = self.by_layer.get(i)
                if L is not None:
                    t.compute(B * L.bwd_flops)
                    self._reduce(L, self.gscratch[:L.n])
            model.backward(dlogits, hook)
            return loss, correct
        model.backward(dlogits)
        t.compute(model.train_flops(B))                          # virtual time, with --network ...,compute=RATE
        if self.stage == 0:
            if not np.isfinite(model.grads).all():
                raise FloatingPointError(f"non-finite gradient {where}: lower --lr")
            t1 = time.perf_counter()
            with self.meter.comm("payload"):
                allreduce(t, model.grads, algorithm=self.alg, out=model.grads, check=False)
            self.comm_s += time.perf_counter() - t1
        else:
            for L in reversed(self.shards):
                self._reduce(L, model.grads[L.lo:L.lo + L.n])
        return loss, correct

    def _sharded_pass(self, xb, yb, scale, where) -> tuple[float, int]:
        """Stage 3: each Linear's parameters gathered into the scratch before its forward and its backward."""
        model, t, B = self.model, self.t, len(xb)
        h = xb
        for i, layer in enumerate(model.layers):
            L = self.by_layer.get(i)
            if L is not None:
                self._gather(L, self.pscratch)
                t.compute(B * L.fwd_flops)
            h = layer.forward(h, True)                          # (B, d_in) -> (B, d_out)
        loss, correct = self._forward_loss(h, yb, where)
        d = model.loss_fn.backward(scale)                       # (B, classes)
        for i in range(len(model.layers) - 1, -1, -1):
            L = self.by_layer.get(i)
            if L is not None:
                self._gather(L, self.pscratch)
                t.compute(B * L.bwd_flops)
            d = model.layers[i].backward(d)
            if L is not None:
                self._reduce(L, self.gscratch[:L.n])
        return loss, correct

    def _bind(self, views: dict[int, dict[str, np.ndarray]]) -> None:
        """Stage 3: point the Linear layers' parameters at the gathered scratch (during a step) or, on rank 0,
        back at the model's own vector (which it evaluates, filled by the runtime from the shards)."""
        for li, v in views.items():
            self.model.layers[li].params.update(v)

    # -- the closed form ------------------------------------------------------------------------------------
    def calls(self) -> list[tuple[str, str, int]]:
        """One step's payload collectives: (collective, algorithm, count), count being the whole result's
        for an allgather."""
        N, w = self.t.size, self.b
        if self.stage == 0:
            return [("allreduce", self.alg, self.P)]
        out = []
        for L in self.shards:
            m = N * L.offs[1]
            out.append(("reduce_scatter", pick("reduce_scatter", self.alg, L.n, w, N), L.n))
            out += [("allgather", pick("allgather", self.alg, m, w, N), m)] * (2 if self.stage == 3 else 1)
        return out

    def traffic(self) -> tuple[int, int]:
        """(messages, bytes) all the group's ranks send in one step."""
        N, w = self.t.size, self.b
        ppn = known_ranks_per_node(self.t)
        per = [allreduce_traffic(alg, n, w, N, ppn=ppn) if c == "allreduce" else traffic(c, alg, N, n, w)
               for c, alg, n in self.calls()]
        return sum(m for m, _ in per), sum(b for _, b in per)

    def formula_text(self) -> str:
        """The closed form of one step's bytes, as text."""
        N, w, P = self.t.size, self.b, self.P
        if self.stage == 0:
            return allreduce_formula(self.alg, P, w, N, n="b·P", ppn=known_ranks_per_node(self.t))
        gathers = "2N" if self.stage == 3 else "N"
        if all(alg == "ring" for _, alg, _ in self.calls()):
            return f"(N-1)·b·(P + {gathers}·Σm_l)"
        return f"Σ_l[RS(b·n_l) + {'2·' if self.stage == 3 else ''}AG(b·N·m_l)]"


# -- one rank ----------------------------------------------------------------------------------------------
NOTES = {
    0: "stage 0 keeps everything on every rank: parameters, gradients and optimizer state (plain data parallel)",
    1: "stage 1 keeps full parameters and gradients on every rank, the optimizer state of the rank's shard only",
    2: "stage 2 keeps full parameters on every rank, the gradients and optimizer state of the rank's shard only "
       "(the model's full gradient vector is released)",
    3: "stage 3 keeps only the rank's shard of parameters, gradients and optimizer state; a layer's full "
       "parameters are gathered into a scratch buffer for its forward and its backward (the model's full "
       "vectors are released, but for rank 0's parameters, kept to evaluate the model)",
}
MODEL_VECTORS = ("params", "grads")                     # the model's own vectors, elements, reported per rank


class ZeroRank(Role):
    """A data-parallel rank of ZeRO: its strided share of every global batch, then the stage's collectives."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        o, tr, N, model = run.opts, run.train, run.size, run.model
        self.zero = Zero(run.t, model, stage=o.stage, algorithm=o.algorithm, meter=run.meter,
                         make_optimizer=run.optimizer)
        run.attach(Part(self.zero.index, self.zero.opts, self.zero.owned))   # the shard <- model.params
        self.zero.release()
        self.xbuf = np.empty((-(-min(tr.batch_size, run.ds.num_train) // N), run.ds.num_features), dtype=model.dtype)
        self.model_vectors: list[dict[str, int]] | None = None     # rank 0: every rank's, set by the gather
        self.measured = self._gather_memory()
        self.title = f"ZeRO stage {o.stage}, {N} ranks, {run.ds.name}, {model.describe()}"
        z = self.zero
        run.say(f"zero: stage {o.stage}, {N} rank{'s' if N > 1 else ''} ({run.where()}), {run.ds.describe()}")
        run.say(f"model {model.describe()}; {tr.optimizer} lr {tr.lr:g}, global batch {tr.batch_size} "
                f"({share(tr.batch_size, N)} per rank), {plural(tr.epochs, 'epoch')}; "
                + ("allreduce" if o.stage == 0 else "reduce_scatter and allgather") + f" {o.algorithm}"
                + run.resuming())
        run.say(f"shards: each of {len(z.shards)} Linear layers cut into {N} blocks (numpy.array_split); rank r "
                f"owns block r of each: {_list(z.sizes)} parameters per rank")
        run.say(NOTES[o.stage])
        if tr.batch_size < N:
            run.say(f"note: global batch {tr.batch_size} < {N} ranks: some ranks get no examples per step")

    def _gather_memory(self) -> list[dict[str, int]] | None:
        """Every rank's measured memory and the sizes of its model's own vectors (elements), on rank 0
        (control)."""
        mine, model = self.zero.memory(), self.run.model
        row = [*(mine[k] for k in KINDS), model.params.size, model.grads.size]
        with self.run.meter.comm("control"):
            got = gather(self.run.t, np.array(row, dtype=np.int64), root=0)
        if got is None:
            return None
        self.model_vectors = [dict(zip(MODEL_VECTORS, map(int, r[len(KINDS):]))) for r in got]
        return [dict(zip(KINDS, map(int, r[:len(KINDS)]))) for r in got]

    def epoch(self, epoch: int) -> dict | None:
        run, r, N, z = self.run, self.run.rank, self.run.size, self.zero
        run.model.seed_dropout(epoch, r)
        sums = np.zeros(3, dtype=np.float64)            # loss sum, correct, seen (this rank)
        for i, batch, lr in run.batches(epoch):
            mine = batch[r::N]
            xb = gather_batch(run.x_train, mine, self.xbuf)
            run.maybe_fail(z.steps + 1, xb)
            loss, c = z.step(xb, run.ds.y_train[mine], scale=1.0 / len(batch), lr=lr,
                             where=f"at epoch {epoch + 1}, step {i + 1}")
            sums += (loss * len(mine), c, len(mine))
        tot = run.totals(sums)                          # the epoch's loss, accuracy and ledger, over all ranks
        return run.figures(tot, z.opts[0].lr) if r == 0 else None

    def payload(self) -> Payload:
        """S steps of the stage's collectives: the measured traffic next to the closed form."""
        z, N = self.zero, self.run.size
        P, w, S = z.P, z.b, z.steps
        m, b = z.traffic()
        formula = Formula(times("S", z.formula_text()), m * S, b * S, m * S, b * S)
        algs = sorted({(c, a) for c, a, _ in z.calls()})
        legend = (f"communication in this run: P = {P:,} parameters, b = {w} bytes, N = {N} ranks, S = {S} steps, "
                  f"stage {z.stage}: "
                  + ("one allreduce of the gradient per step" if z.stage == 0 else
                     f"per step and Linear layer l (n_l = {_list([L.n for L in z.shards])} parameters, m_l = "
                     f"⌈n_l/N⌉ = {_list([L.offs[1] for L in z.shards])}, the allgather's padded block): a "
                     f"reduce_scatter (RS) of the gradient and "
                     + ("an allgather (AG) of the updated parameters" if z.stage < 3 else
                        "two allgathers (AG) of the parameters, before forward and before backward"))
                  + "; algorithm " + ", ".join(f"{c} {a}" for c, a in algs))
        return Payload({"rank": list(range(N))}, {"rank": formula}, legend)

    def epilogue(self) -> str:
        """The memory table, after the communication table (rank 0)."""
        return self.memory_table()

    def memory_table(self) -> str:
        z = self.zero
        want = z.formula()
        P, b, K = z.P, z.b, len(z.opts[0].state_names)
        base = (2 + K) * P * b                                  # stage 0's (and mpisim.allreduce's) total
        head = (f"{'rank':>4} {'shard Ψ_r':>10} {'params':>12} {'grads':>12} {'optimizer':>12} "
                f"{'total':>12} {'vs stage 0':>10} {'transient':>12} {'eval copy':>12}  formula")
        lines = [f"memory per rank, stage {z.stage} (measured: bytes of the arrays each rank holds, the model's "
                 f"own vectors included, by kind):", head, "-" * len(head)]
        for q, (got, f) in enumerate(zip(self.measured, want)):
            total = sum(got[k] for k in HELD)
            lines.append(f"{q:>4} {z.sizes[q]:>10,} " + " ".join(f"{got[k]:>12,}" for k in HELD)
                         + f" {total:>12,} {total / base:>10.3f} {got['transient']:>12,} {got['eval copy']:>12,}  "
                         + ("agrees" if got == f else f"DIFFERS: {f}"))
        form = {0: "Ψb + Ψb + KΨb", 1: "Ψb + Ψb + KΨ_r·b", 2: "Ψb + Ψ_r·b + KΨ_r·b",
                3: "Ψ_r·b + Ψ_r·b + KΨ_r·b"}[z.stage]
        scratch = {0: "none", 1: "one padded block (⌈n_l/N⌉·b) to send to the allgather",
                   2: "one layer's gradient (the largest layer) and the allgather's padded block",
                   3: "one layer's parameters and one layer's gradient (the largest layer each), the allgather's "
                      "padded block"}[z.stage]
        released = {0: "nothing (the model's full vectors are the params and grads above)",
                    1: "nothing (the model's full vectors are the params and grads above)",
                    2: "the model's full gradient vector, on every rank (the params above are its full parameters)",
                    3: "the model's full gradient vector on every rank, its full parameter vector on every rank "
                       "but 0, once the rank's shard was copied out of it"}[z.stage]
        lines += [f"formula (Rajbhandari et al. 2020): params + grads + optimizer = {form}, with Ψ = {P:,} "
                  f"parameters, b = {b} bytes, K = {K} optimizer moment{'s' if K > 1 else ''}, Ψ_r = rank r's shard",
                  "vs stage 0: total / (2+K)·Ψ·b, stage 0's and mpisim.allreduce's; the optimizers update the "
                  "arrays above in place" + (" (the shard's parameters are its blocks of the full replica)"
                                             if z.stage in (1, 2) else ""),
                  f"transient (not in the total): {scratch}",
                  "eval copy (not in the total): " + ("rank 0's full parameters (Ψ·b), filled from the shards after "
                                                      "each epoch to evaluate and checkpoint the model" if z.stage == 3
                                                      else "none (rank 0 evaluates the params above)"),
                  f"released after set-up: {released}",
                  "not counted: activations, data, the collectives' own temporaries, the shard's positions (int64)"
                  + (", and rank 0's full optimizer state (K·Ψ·b), gathered from the shards to be checkpointed"
                     if self.run.opt is not None else "")]
        return "\n".join(lines)

    def memory_agrees(self) -> bool:
        return self.measured == self.zero.formula()

    def result(self) -> dict:
        return {"steps": self.zero.steps, "stage": self.zero.stage, "shards": list(self.zero.sizes),
                "memory": self.measured, "memory_formula": self.zero.formula(), "memory_agrees": self.memory_agrees(),
                "model_vectors": self.model_vectors}


def _list(values) -> str:
    return " / ".join(f"{v:,}" for v in values)


PARADIGM = Paradigm(name="zero", doc=__doc__, setup=ZeroRank, options=Options, add_args=add_args, check=check,
                    parts=True, workers=lambda o, N: N,
                    no_batchnorm="ZeRO here shards the Linear layers only (BatchNorm's parameters and running "
                                 "statistics are not sharded); use mpisim.allreduce --sync-bn",
                    description="ZeRO: data parallel with optimizer state, gradients, parameters sharded (stages 1-3).")
build_parser, main = PARADIGM.build_parser, PARADIGM.main


if __name__ == "__main__":
    sys.exit(main())
