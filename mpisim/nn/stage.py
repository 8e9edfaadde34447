"""A contiguous piece of an MLP: the unit of pipeline parallelism.

An MLP is a chain of blocks, one per Linear: ``Linear -> [BatchNorm] -> activation -> [Dropout]`` (the last
block is the Linear that gives the logits). :func:`balance` cuts the blocks into contiguous stages of about
equal FLOPs; :class:`Stage` is one of them with parameter and gradient vectors of its own, laid out as the
full model's slice ``params[lo:hi]``, so a stage moves and updates one flat vector as the whole model does.

A pipeline keeps several micro-batches in flight on a stage (GPipe all M of them, 1F1B up to p), and a
layer keeps the state of one forward only. So a stage runs each micro-batch in a **slot**: a copy of its
layers that shares the parameters and the dropout generators but keeps its own activations. Every slot
writes the gradient of its micro-batch into one shared buffer, which :meth:`Stage.backward` adds to the
stage's gradient: the gradient of the batch is the sum over its micro-batches.
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np

from .layers import Dropout, Layer, Linear
from .loss import SoftmaxCrossEntropy
from .model import MLP, _views, dropout_generator

__all__ = ["Slot", "SlotPool", "Stage", "balance", "block_flops", "blocks_of"]


def blocks_of(model: MLP) -> list[tuple[int, int]]:
    """Each block's layer range [start, end) in ``model.layers``: one block per Linear."""
    starts = [i for i, layer in enumerate(model.layers) if isinstance(layer, Linear)]
    return list(zip(starts, starts[1:] + [len(model.layers)]))


def block_flops(model: MLP) -> list[tuple[int, int]]:
    """Per block, the (forward, backward) FLOPs of one example: 2 per multiply-add; forward one matmul,
    backward two (dW and dX), one for the first block (no dX). As ``MLP.train_flops`` counts them."""
    out = []
    for i, (a, b) in enumerate(zip(model.sizes, model.sizes[1:])):
        out.append((2 * a * b, (2 if i == 0 else 4) * a * b))
    return out


def balance(costs: Sequence[float], p: int) -> list[int]:
    """Block counts of ``p`` contiguous non-empty stages that minimize the largest stage's cost (exact, by
    dynamic programming; ties go to the split with earlier stages smaller)."""
    n = len(costs)
    if not 1 <= p <= n:
        raise ValueError(f"cannot cut {n} block{'s' if n != 1 else ''} into {p} non-empty stage{'s' if p != 1 else ''}")
    pre = np.concatenate([[0.0], np.cumsum(costs)])
    best = {(0, 0): (0.0, ())}                       # (stages, blocks) -> (max cost, counts)
    for k in range(1, p + 1):
        for j in range(k, n - (p - k) + 1):
            cands = []
            for i in range(k - 1, j):
                if (k - 1, i) in best:
                    m, counts = best[(k - 1, i)]
                    cands.append((max(m, pre[j] - pre[i]), counts + (j - i,)))
            best[(k, j)] = min(cands, key=lambda c: (c[0], c[1]))
    return list(best[(p, n)][1])


class Slot:
    """One micro-batch's copy of a stage's layers (shared parameters, own activations), or its tape."""

    def __init__(self, layers: list[Layer] | None = None) -> None:
        self.layers = layers
        self.tape = None                          # what a stage without layers of its own keeps for backward
        self.x: np.ndarray | None = None          # the received input (stages after the first)
        self.dlogits: np.ndarray | None = None    # the last stage: the loss gradient, kept for backward
        self.act_bytes = 0                        # what the micro-batch keeps until its backward
        self.pending: list = []                   # sends out of this slot's buffers not yet complete

    def wait(self) -> None:
        for req in self.pending:
            req.wait()
        self.pending.clear()


class SlotPool:
    """Slots lent to micro-batches and given back, so a stage holds as many as were ever in flight at once."""

    def __init__(self) -> None:
        self.slots: list[Slot] = []
        self.free: list[Slot] = []

    def _new_slot(self) -> Slot:
        return Slot()

    def take_slot(self) -> Slot:
        """A free slot (its earlier sends complete), or a new one."""
        if self.free:
            slot = self.free.pop()
            slot.wait()
            return slot
        slot = self._new_slot()
        self.slots.append(slot)
        return slot

    def release(self, slot: Slot) -> None:
        slot.act_bytes, slot.tape = 0, None
        self.free.append(slot)

    def in_flight(self) -> int:
        return len(self.slots) - len(self.free)

    def stored_bytes(self) -> int:
        """Bytes of activations the in-flight micro-batches keep now."""
        return sum(s.act_bytes for s in self.slots)


class Stage(SlotPool):
    """Blocks ``[first, last)`` of ``model``, with flat ``params``/``grads`` of their own (``params[j]`` is
    ``model.params[lo + j]``). The model is only read: its values are copied, its layers copied.
    ``flops=(f, b)`` declares f forward and b backward FLOPs per example instead of the layers' own (to model
    stages of equal cost)."""

    def __init__(self, model: MLP, first: int, last: int, *, flops: tuple[int, int] | None = None) -> None:
        blocks = blocks_of(model)
        if not 0 <= first < last <= len(blocks):
            raise ValueError(f"a stage needs blocks in [0, {len(blocks)}), got [{first}, {last})")
        self.first, self.last, self.nblocks = first, last, len(blocks)
        self.layer_lo, self.layer_hi = blocks[first][0], blocks[last - 1][1]
        self.is_first, self.is_last = first == 0, last == len(blocks)
        mine = [sl for sl in model.slices if self.layer_lo <= sl[0] < self.layer_hi]
        self.lo = min(off for _, _, off, _ in mine)
        self.hi = max(off + int(np.prod(shape)) for _, _, off, shape in mine)
        self.slices = [(li, name, off - self.lo, shape) for li, name, off, shape in mine]
        self.dtype, self.seed = model.dtype, model.seed
        self.params = model.params[self.lo:self.hi].copy()
        self.grads = np.zeros_like(self.params)     # the batch's gradient: the micro-batches' sum
        self.mgrads = np.zeros_like(self.params)    # one micro-batch's gradient (every slot writes here)
        self.d_in, self.d_out = model.sizes[first], model.sizes[last]
        self.flops = [flops] if flops else block_flops(model)[first:last]
        self._template = [copy.deepcopy(layer) for layer in model.layers[self.layer_lo:self.layer_hi]]
        self.dropout_rngs = {li: None for li in range(self.layer_lo, self.layer_hi)
                             if isinstance(model.layers[li], Dropout)}
        self.loss_fn = SoftmaxCrossEntropy() if self.is_last else None
        super().__init__()

    # -- slots ----------------------------------------------------------------------------------------
    def _new_slot(self) -> Slot:
        layers = [copy.deepcopy(layer) for layer in self._template]
        p, g = _views(self.params, self.slices), _views(self.mgrads, self.slices)
        for k, layer in enumerate(layers):
            li = self.layer_lo + k
            layer.bind(p.get(li, {}), g.get(li, {}), {}, self.dtype)
            if li in self.dropout_rngs:
                layer.rng = self.dropout_rngs[li]
        return Slot(layers)

    def seed_dropout(self, *key: int) -> None:
        """The full model's dropout generators for ``key`` (as ``MLP.seed_dropout``), shared by the slots,
        so the micro-batches of a batch, run in order, draw the masks one pass over the batch draws."""
        for li in self.dropout_rngs:
            self.dropout_rngs[li] = dropout_generator(self.seed, key, li)
        for slot in self.slots:
            for k, layer in enumerate(slot.layers):
                if self.layer_lo + k in self.dropout_rngs:
                    layer.rng = self.dropout_rngs[self.layer_lo + k]

    # -- compute --------------------------------------------------------------------------------------
    def forward(self, slot: Slot, x: np.ndarray, train: bool = True) -> np.ndarray:
        """The stage's layers on micro-batch ``x`` (rows, d_in) -> (rows, d_out), in ``slot``."""
        h, kept = x, 0 if self.is_first else x.nbytes
        for layer in slot.layers:
            out = layer.forward(h, train)
            if out is not h:
                kept += out.nbytes
            if isinstance(layer, Dropout) and layer.active:
                kept += layer.u.nbytes                  # the mask, kept for backward
            h = out
        slot.act_bytes = kept
        return h

    def loss(self, slot: Slot, logits: np.ndarray, y: np.ndarray, scale: float) -> tuple[float, int]:
        """The last stage: mean loss and correct count of the micro-batch; its gradient (each example
        weighted ``scale``) is kept in the slot for backward."""
        loss = self.loss_fn.forward(logits, y)
        correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
        d = self.loss_fn.backward(scale)
        if slot.dlogits is None or slot.dlogits.shape != d.shape:
            slot.dlogits = np.empty_like(d)
        slot.dlogits[...] = d
        slot.act_bytes += slot.dlogits.nbytes
        return loss, correct

    def backward(self, slot: Slot, dy: np.ndarray | None = None) -> np.ndarray | None:
        """Backward of the slot's micro-batch (``dy`` from the next stage, or the kept loss gradient);
        adds its parameter gradient to ``grads``; returns dX for the previous stage (None on the first)."""
        d = slot.dlogits if dy is None else dy
        for layer in reversed(slot.layers):
            d = layer.backward(d)
        self.grads += self.mgrads
        return d

    def zero_grad(self) -> None:
        self.grads[...] = 0

    def forward_flops(self, rows: int) -> int:
        return rows * sum(f for f, _ in self.flops)

    def backward_flops(self, rows: int) -> int:
        return rows * sum(b for _, b in self.flops)

    def describe(self) -> str:
        widths = "-".join(str(s) for s in [self.d_in, *[int(np.prod(sh[1:])) for _, n, _, sh in self.slices
                                                         if n == "W"]])
        return f"blocks {self.first}..{self.last - 1} ({widths}), {self.params.size:,} parameters"
