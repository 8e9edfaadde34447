"""Layers with hand-written forward and backward passes.

One contract for every layer (numpy-ml's): ``param_shapes`` and ``buffer_shapes`` say what the layer
needs; the model hands it views into its flat vectors with :meth:`Layer.bind`; ``forward(x, train)``
returns the output and keeps what backward needs; ``backward(dY)`` writes the parameter gradients
(it overwrites them, it never accumulates) and returns ``dX``.

Outputs live in buffers the layer owns and reuses from step to step, so a training step allocates
no activation-sized array: the array a layer returns is valid until its next forward. ``backward`` may overwrite the
``dY`` it is given (it belongs to the layer above, which is done with it).
"""
from __future__ import annotations

import numpy as np

from .device import CPU

__all__ = [
    "Layer", "Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "Dropout", "BatchNorm1d",
    "ACTIVATIONS", "cached_buffer",
]


def cached_buffer(cache: dict, key, shape: tuple[int, ...], dtype, *, limit: int = 16, xp=np) -> np.ndarray:
    """The array kept in ``cache`` under ``key`` (allocated on first use, by ``xp``): an owned output buffer.

    Shapes come and go (the last batch of an epoch, evaluation), so past ``limit`` entries the
    cache starts over rather than hoarding.
    """
    b = cache.get(key)
    if b is None:
        if len(cache) > limit:
            cache.clear()
        b = cache[key] = xp.empty(shape, dtype=dtype)
    return b


class Layer:
    """Base class: no parameters, no buffers, per-shape output buffers; ``ops`` is the device
    (mpisim.nn.device) whose array module and fused steps the layer computes with."""

    param_shapes: dict[str, tuple[int, ...]] = {}
    buffer_shapes: dict[str, tuple[int, ...]] = {}

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.dtype = np.dtype(np.float32)
        self.need_dx = True     # False for the first layer: nobody wants the gradient of the input
        self._bufs: dict[tuple, np.ndarray] = {}
        self.ops = CPU

    def bind(self, params: dict, grads: dict, buffers: dict, dtype, ops=CPU) -> None:
        """Take views into the model's flat parameter, gradient and buffer vectors (on device ``ops``)."""
        self.params, self.grads, self.buffers = params, grads, buffers
        self.dtype = np.dtype(dtype)
        self.ops = ops
        self._bufs.clear()

    @property
    def xp(self):
        """The array module of the layer's device: numpy, or cupy on a GPU."""
        return self.ops.xp

    def _buf(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        return cached_buffer(self._bufs, (name, shape), shape, self.dtype, xp=self.xp)

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dY: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Linear(Layer):
    """y = x @ W + b, with W stored (d_in, d_out) so the forward is one row-major GEMM."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.param_shapes = {"W": (d_in, d_out), "b": (d_out,)}

    def forward(self, x, train=True):
        self.x = x
        y = self._buf("y", (x.shape[0], self.d_out))
        self.ops.matmul(x, self.params["W"], y)         # (B, d_in) @ (d_in, d_out) -> (B, d_out)
        y += self.params["b"]
        return y

    def backward(self, dY):
        self.ops.matmul(self.x.T, dY, self.grads["W"])   # (d_in, B) @ (B, d_out) -> dW
        self.xp.sum(dY, axis=0, out=self.grads["b"])
        if not self.need_dx:
            return None
        dX = self._buf("dX", self.x.shape)
        self.ops.matmul(dY, self.params["W"].T, dX)      # (B, d_out) @ (d_out, d_in) -> (B, d_in)
        return dX

    def __repr__(self):
        return f"Linear({self.d_in}, {self.d_out})"


class ReLU(Layer):
    def forward(self, x, train=True):
        self.y = self._buf("y", x.shape)
        self.ops.relu_fwd(x, self.y)
        return self.y

    def backward(self, dY):
        self.ops.relu_bwd(dY, self.y)
        return dY


class LeakyReLU(Layer):
    def __init__(self, slope: float = 0.01) -> None:
        super().__init__()
        self.slope = float(slope)

    def forward(self, x, train=True):
        self.x = x
        y = self._buf("y", x.shape)
        self.ops.leaky_fwd(x, y, self.slope)
        return y

    def backward(self, dY):
        self.ops.leaky_bwd(dY, self.x, self.slope)
        return dY

    def __repr__(self):
        return f"LeakyReLU({self.slope})"


class Sigmoid(Layer):
    def forward(self, x, train=True):
        y = self.y = self._buf("y", x.shape)
        xp = self.xp
        xp.multiply(x, 0.5, out=y)                      # sigma(x) = (1 + tanh(x/2)) / 2: no overflow
        xp.tanh(y, out=y)
        y += 1
        y *= 0.5
        return y

    def backward(self, dY):
        t = self._buf("t", dY.shape)
        self.xp.subtract(1, self.y, out=t)
        t *= self.y
        dY *= t                                         # dX = dY * y * (1 - y)
        return dY


class Tanh(Layer):
    def forward(self, x, train=True):
        self.y = self._buf("y", x.shape)
        return self.xp.tanh(x, out=self.y)

    def backward(self, dY):
        t = self._buf("t", dY.shape)
        xp = self.xp
        xp.multiply(self.y, self.y, out=t)
        xp.subtract(1, t, out=t)
        dY *= t                                         # dX = dY * (1 - y^2)
        return dY


class GELU(Layer):
    """Exact GELU, x * Phi(x) (Hendrycks and Gimpel 2016), PyTorch's default form."""

    def forward(self, x, train=True):
        self.x = x
        y = self._buf("y", x.shape)
        self.ops.gelu_fwd(x, y)
        return y

    def backward(self, dY):
        self.ops.gelu_bwd(dY, self.x)
        return dY


class Dropout(Layer):
    """Inverted dropout (Srivastava et al. 2014): train scales kept units by 1/(1-p); eval is identity.

    The random draws come from ``self.rng``, a ``numpy.random.Generator`` the model sets from its seed.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = np.random.default_rng(0)
        self.active = False

    def forward(self, x, train=True):
        self.active = train and self.p > 0
        if not self.active:
            return x
        self.u = self._buf("u", x.shape)
        if self.ops.on_host:
            self.rng.random(out=self.u, dtype=self.dtype.type)
        else:               # drawn on the host: the same masks as on the CPU, from the same seed
            u = cached_buffer(self._bufs, ("u_host", x.shape), x.shape, self.dtype)
            self.rng.random(out=u, dtype=self.dtype.type)
            self.ops.from_host(u, out=self.u)
        y = self._buf("y", x.shape)
        self.ops.dropout_fwd(x, self.u, y, self.p, 1.0 / (1.0 - self.p))
        return y

    def backward(self, dY):
        if self.active:
            self.ops.dropout_bwd(dY, self.u, self.p, 1.0 / (1.0 - self.p))
        return dY

    def __repr__(self):
        return f"Dropout({self.p})"


class BatchNorm1d(Layer):
    """Batch normalization over the batch axis (Ioffe and Szegedy 2015), PyTorch's conventions.

    Train mode normalizes with the batch mean and biased variance and updates the running statistics
    (with the unbiased variance); eval mode normalizes with the running statistics.

    Synchronized BatchNorm: set ``sum_across`` to a function that sums a small vector in place over
    all replicas (an allreduce). The batch statistics are then those of the global batch, and backward
    sums the two reductions of dX over the replicas too, so N replicas compute what one process would
    on the union of their batches. The layer itself knows nothing of ranks.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.C, self.momentum, self.eps = num_features, float(momentum), float(eps)
        self.param_shapes = {"gamma": (num_features,), "beta": (num_features,)}
        self.buffer_shapes = {"running_mean": (num_features,), "running_var": (num_features,)}
        self.sum_across = None

    def _sum_across(self, v) -> None:
        """sum_across(v) in place, through the host when the layer computes on a GPU."""
        if self.ops.on_host:
            self.sum_across(v)
            return
        h = self.ops.to_host(v)
        self.sum_across(h)
        self.ops.from_host(h, out=v)

    def _batch_stats(self, x, xh):
        """Mean and biased variance over the (global) batch; x - mean is left in xh. Returns (mean, var, B)."""
        B = x.shape[0]
        if self.sum_across is None:
            mean = self.xp.mean(x, axis=0, dtype=self.dtype)
            self.xp.subtract(x, mean, out=xh)
            return mean, self.xp.mean(self._sq(xh), axis=0, dtype=self.dtype), B
        s = self._buf("s", (self.C + 1,))                                 # [sum x, count]
        self.xp.sum(x, axis=0, dtype=self.dtype, out=s[:-1])
        s[-1] = B
        self._sum_across(s)
        B = int(round(float(s[-1])))
        if B < 2:
            raise ValueError("BatchNorm1d: a training batch needs at least 2 examples over all replicas")
        mean = s[:-1] / self.dtype.type(B)
        self.xp.subtract(x, mean, out=xh)
        q = self._buf("q", (self.C,))                                     # sum (x - mean)^2: two passes,
        self.xp.sum(self._sq(xh), axis=0, dtype=self.dtype, out=q)              # as accurate as the local path
        self._sum_across(q)
        return mean, q / self.dtype.type(B), B

    def forward(self, x, train=True):
        xh = self.x_hat = self._buf("x_hat", x.shape)
        self.train = train
        if train:
            if x.shape[0] < 2 and self.sum_across is None:
                raise ValueError("BatchNorm1d: a training batch needs at least 2 examples")
            mean, var, B = self._batch_stats(x, xh)
            self.B = B
            m = self.dtype.type(self.momentum)
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm *= 1 - m
            rm += m * mean
            rv *= 1 - m
            rv += (m * self.dtype.type(B / (B - 1))) * var                 # unbiased, for running
        else:
            self.xp.subtract(x, self.buffers["running_mean"], out=xh)
            var = self.buffers["running_var"]
        self.inv_std = 1 / self.xp.sqrt(var + self.dtype.type(self.eps))
        xh *= self.inv_std
        y = self._buf("y", x.shape)
        self.xp.multiply(xh, self.params["gamma"], out=y)
        y += self.params["beta"]
        return y

    def _sq(self, a):
        t = self._buf("t", a.shape)
        return self.xp.multiply(a, a, out=t)

    def backward(self, dY):
        dgamma, dbeta = self.grads["gamma"], self.grads["beta"]
        self.xp.sum(dY, axis=0, out=dbeta)
        t = self._buf("t", dY.shape)
        self.xp.multiply(dY, self.x_hat, out=t)
        self.xp.sum(t, axis=0, out=dgamma)
        if not self.need_dx:
            return None
        if not self.train:          # eval: the statistics are constants, the layer is affine
            dY *= self.params["gamma"] * self.inv_std
            return dY
        sum_dy, sum_dyx = dbeta, dgamma
        if self.sum_across is not None:     # the sums of dX run over the global batch; the parameter
            g = self._buf("g", (2 * self.C,))   # gradients stay local (the gradient allreduce sums them)
            g[:self.C], g[self.C:] = dbeta, dgamma
            self._sum_across(g)
            sum_dy, sum_dyx = g[:self.C], g[self.C:]
        B = self.B
        # dX = gamma * inv_std / B * (B * dY - sum(dY) - x_hat * sum(dY * x_hat))
        self.xp.multiply(self.x_hat, sum_dyx, out=t)
        dY *= B
        dY -= sum_dy
        dY -= t
        dY *= self.params["gamma"] * self.inv_std * self.dtype.type(1.0 / B)
        return dY

    def __repr__(self):
        return f"BatchNorm1d({self.C})"


ACTIVATIONS = {"relu": ReLU, "leaky_relu": LeakyReLU, "sigmoid": Sigmoid, "tanh": Tanh, "gelu": GELU}
