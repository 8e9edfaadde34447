"""Softmax and cross-entropy fused into one numerically stable loss.

loss = mean_i( logsumexp(z_i) - z_i[y_i] );  dL/dz = (softmax(z) - onehot(y)) * scale,
where scale is 1/B for the mean (the default) or any weight a paradigm asks for (e.g. 1/B_global when
ranks hold unequal shares of a global batch).
"""
from __future__ import annotations

import numpy as np

from .device import CPU
from .layers import cached_buffer

__all__ = ["SoftmaxCrossEntropy"]


class SoftmaxCrossEntropy:
    """``forward(logits, labels) -> mean loss``; ``backward(scale=None) -> dlogits``. Labels live where
    the logits do (on device ``ops``)."""

    def __init__(self, ops=CPU) -> None:
        self._bufs: dict[tuple, np.ndarray] = {}
        self.ops = ops

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> float:
        B, C = logits.shape
        xp = self.ops.xp
        labels = xp.asarray(labels)
        if labels.shape != (B,):
            raise ValueError(f"SoftmaxCrossEntropy: labels of shape {labels.shape} for logits {logits.shape}")
        if B and (labels.min() < 0 or labels.max() >= C):
            raise ValueError(f"SoftmaxCrossEntropy: labels must be in [0, {C}), got {labels.min()}..{labels.max()}")
        p = self.probs = cached_buffer(self._bufs, (logits.shape, logits.dtype), logits.shape, logits.dtype,
                                       limit=8, xp=xp)
        xp.subtract(logits, logits.max(axis=1, keepdims=True), out=p)    # shift: exp never overflows
        rows = xp.arange(B)
        picked = p[rows, labels]                                          # z_y - max  (B,)
        xp.exp(p, out=p)
        s = p.sum(axis=1, keepdims=True)
        p /= s                                                            # softmax, kept for backward
        self.labels, self.rows = labels, rows
        if B == 0:
            return 0.0
        return float(xp.mean(xp.log(s[:, 0]) - picked))

    def backward(self, scale: float | None = None) -> np.ndarray:
        """dL/dlogits, written into the softmax buffer (valid until the next forward)."""
        B = self.probs.shape[0]
        g = self.probs
        g[self.rows, self.labels] -= 1
        g *= g.dtype.type(1.0 / max(B, 1) if scale is None else scale)
        return g
