"""The multilayer perceptron, with every parameter in ONE flat vector.

``model.params`` is one contiguous array (float32 unless asked) and every layer's W, b, gamma, beta is
a view into it; ``model.grads`` is laid out the same way. A paradigm therefore moves one buffer per
step (one allreduce, one push, one pull, one average), as DDP's buckets and Horovod's fusion do.
BatchNorm's running statistics are not trained; they live in a third flat vector, ``model.buffers``.

``device="cuda"`` computes on a GPU with CuPy (mpisim.nn.device): the three flat vectors stay on the
host, where optimizers and paradigms use them, and the device keeps a mirror. Each forward uploads
the parameters; backward downloads the gradient (layer by layer when a hook asks for it).

``precision="fp16"`` or ``"bf16"``: mixed-precision training (Micikevicius et al. 2018). ``params`` stays
the float32 master copy, which the optimizer updates; each forward rounds it into a half copy that the layers
compute with. On the CPU this is an EMULATION (NumPy has no fast half GEMM): the arithmetic is float32,
but every layer's input, weights and output, and in backward the incoming gradient and the gradients it
produces, are rounded to the half format (mpisim.nn.precision), so the numerics are those of half storage
with float32 accumulation, as tensor cores accumulate (a layer's internals, BatchNorm's normalized input and
Dropout's random draws, stay float32, as cuDNN's batch norm computes in float32 from its half input); the
arrays stay float32 (4 bytes a value).
``kept_activations`` says what a real half implementation would store. With ``device="cuda"`` the matrix
multiplies are real half GEMMs (cuBLAS through CuPy) on the same rounded values. fp32 costs nothing extra.
Loss scaling (``train_step(loss_scale=...)``) is the trainer's, with mpisim.nn.precision.LossScaler.

Hidden block: Linear -> [BatchNorm1d] -> activation -> [Dropout]; the last Linear gives the logits.
``MLP([64, 10])`` has no hidden layer: multinomial logistic regression.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np

from ..trace import span
from .device import make_device
from .init import INITIALIZERS, init_weight
from .layers import ACTIVATIONS, GELU, BatchNorm1d, Dropout, Layer, LeakyReLU, Linear, cached_buffer
from .loss import SoftmaxCrossEntropy
from .precision import BYTES_PER_VALUE, PRECISIONS, gpu_half_dtype, half_matmul, rounder

EVAL_BATCH = 1024       # rows per forward pass when evaluating (--eval distributed shards in whole such batches)

__all__ = ["MLP", "dropout_generator", "parse_hidden"]

_INIT_PURPOSE, _DROPOUT_PURPOSE = 1, 2


def _views(vector, slices) -> dict[int, dict[str, np.ndarray]]:
    """{layer: {name: view of ``vector``}}, as ``slices`` (layer, name, offset, shape) lays them out."""
    views: dict[int, dict[str, np.ndarray]] = {}
    for li, name, off, shape in slices:
        views.setdefault(li, {})[name] = vector[off:off + int(np.prod(shape))].reshape(shape)
    return views


def dropout_generator(seed: int, key: tuple, layer: int) -> np.random.Generator:
    """The generator of Dropout layer ``layer`` of a model seeded ``seed``, for ``key`` (e.g. (epoch,))."""
    return np.random.default_rng(np.random.SeedSequence([seed, _DROPOUT_PURPOSE, *key, layer]))


def parse_hidden(text: str) -> list[int]:
    """``"512,256,128"`` -> [512, 256, 128]; ``""`` or ``"none"`` -> [] (logistic regression)."""
    text = text.strip()
    if text in ("", "none"):
        return []
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"hidden sizes must be comma-separated integers, got {text!r}") from None
    if any(s <= 0 for s in sizes):
        raise ValueError(f"hidden sizes must be positive, got {text!r}")
    return sizes


class MLP:
    """An MLP over flat parameter/gradient vectors; see the module docstring."""

    def __init__(self, sizes: Sequence[int], *, activation: str = "relu", dropout: float = 0.0,
                 batchnorm: bool = False, init: str = "auto", leaky_slope: float = 0.01,
                 dtype=np.float32, seed: int = 0, device="cpu", precision: str = "fp32") -> None:
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s <= 0 for s in sizes):
            raise ValueError(f"MLP needs at least [inputs, outputs], all positive; got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
        if init == "auto":      # He for the ReLU family, Xavier for saturating activations
            init = "xavier_uniform" if activation in ("tanh", "sigmoid") else "he_uniform"
        if init not in INITIALIZERS:
            raise ValueError(f"unknown initializer {init!r}; choose from auto, {', '.join(INITIALIZERS)}")
        self.sizes, self.activation, self.dropout, self.batchnorm = sizes, activation, dropout, batchnorm
        self.init, self.seed, self.dtype = init, seed, np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"MLP dtype must be float32 or float64, got {self.dtype}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        if precision != "fp32" and self.dtype != np.float32:
            raise ValueError(f"mixed precision ({precision}) keeps float32 master weights: the MLP's dtype must "
                             f"be float32, got {self.dtype}")
        self.precision = precision

        layers: list[Layer] = []
        for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Linear(d_in, d_out))
            if i < len(sizes) - 2:
                if batchnorm:
                    layers.append(BatchNorm1d(d_out))
                act = ACTIVATIONS[activation]
                layers.append(LeakyReLU(leaky_slope) if act is LeakyReLU else act())
                if dropout > 0:
                    layers.append(Dropout(dropout))
        self.layers = layers
        layers[0].need_dx = False
        self.ops = make_device(device) if isinstance(device, str) else device
        self._round = rounder(precision, self.ops.xp)     # in-place rounding to the half format; None in fp32
        if self._round is not None and not self.ops.on_host:  # a GPU: real half GEMMs
            self.ops = copy.copy(self.ops)
            self.ops.matmul = half_matmul(self.ops.xp, gpu_half_dtype(precision, self.ops.xp))
        self._inputs: dict[tuple, np.ndarray] = {}          # the rounded copy of each input shape
        self.loss_fn = SoftmaxCrossEntropy(self.ops)

        # One flat vector each; every layer gets views. `slices` records (layer, name, offset, shape).
        self.slices: list[tuple[int, str, int, tuple[int, ...]]] = []
        self.buffer_slices: list[tuple[int, str, int, tuple[int, ...]]] = []
        n_p = n_b = 0
        for li, layer in enumerate(layers):
            for name, shape in layer.param_shapes.items():
                self.slices.append((li, name, n_p, shape))
                n_p += int(np.prod(shape))
            for name, shape in layer.buffer_shapes.items():
                self.buffer_slices.append((li, name, n_b, shape))
                n_b += int(np.prod(shape))
        self.params = np.zeros(n_p, dtype=self.dtype)
        self.grads = np.zeros(n_p, dtype=self.dtype)
        self.buffers = np.zeros(n_b, dtype=self.dtype)
        if self.ops.on_host:        # the layers compute in the model's own vectors (mixed precision: their
            #                         parameters are a rounded copy of the float32 master, made by _upload)
            work = self.params if self._round is None else np.zeros(n_p, dtype=self.dtype)
            self._dev = (work, self.grads, self.buffers)
        else:                       # a mirror of each on the device
            self._dev = tuple(self.ops.xp.zeros(n, dtype=self.dtype) for n in (n_p, n_p, n_b))
        self._grad_range = [[n_p, 0] for _ in layers]      # layer -> [lo, hi) of its gradients
        for li, _, off, shape in self.slices:
            r = self._grad_range[li]
            r[0], r[1] = min(r[0], off), max(r[1], off + int(np.prod(shape)))
        p, g = _views(self._dev[0], self.slices), _views(self._dev[1], self.slices)
        b = _views(self._dev[2], self.buffer_slices)
        for li, layer in enumerate(layers):
            layer.bind(p.get(li, {}), g.get(li, {}), b.get(li, {}), self.dtype, self.ops)
        self.reset_parameters()
        self.seed_dropout(0)

    # -- set-up ------------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Weights from the initializer (seeded by ``seed``), biases 0, BatchNorm gamma 1 / beta 0."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _INIT_PURPOSE]))
        p, b = _views(self.params, self.slices), _views(self.buffers, self.buffer_slices)
        for li, layer in enumerate(self.layers):       # in the host vectors; a device copies them at forward
            if isinstance(layer, Linear):
                init_weight(p[li]["W"], self.init, rng)
                p[li]["b"][...] = 0
            elif isinstance(layer, BatchNorm1d):
                p[li]["gamma"][...] = 1
                p[li]["beta"][...] = 0
                b[li]["running_mean"][...] = 0
                b[li]["running_var"][...] = 1

    def seed_dropout(self, *key: int) -> None:
        """Give every Dropout layer its own generator from (seed, key..., layer): e.g. key = (epoch,)
        or (epoch, rank), so that a resumed run draws the same masks as an uninterrupted one."""
        for li, layer in enumerate(self.layers):
            if isinstance(layer, Dropout):
                layer.rng = dropout_generator(self.seed, key, li)

    # -- compute -----------------------------------------------------------------------------------
    def _check_input(self, x: np.ndarray) -> np.ndarray:
        xp = self.ops.xp
        x = xp.asarray(x)                              # to the device, if the model computes there
        if x.ndim != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"MLP expects input of shape (batch, {self.sizes[0]}), got {x.shape}")
        return xp.ascontiguousarray(x, dtype=self.dtype)

    def _upload(self) -> None:
        """Device mirror <- host parameters and buffers (the optimizer and the paradigms change those);
        mixed precision: the layers' half copy <- the float32 master parameters, rounded."""
        if not self.ops.on_host:
            self.ops.from_host(self.params, out=self._dev[0])
            self.ops.from_host(self.buffers, out=self._dev[2])
        if self._round is not None:
            self._round(self.params if self.ops.on_host else self._dev[0], out=self._dev[0])

    def _forward(self, x, train: bool):
        h = self._check_input(x)
        if self._round is not None:                    # a rounded copy: the caller's array stays as it was
            h_in = cached_buffer(self._inputs, h.shape, h.shape, self.dtype, xp=self.ops.xp)
            self._round(h, out=h_in)
            h = h_in
        for layer in self.layers:
            out = layer.forward(h, train)
            if self._round is not None and out is not h:
                self._round(out)                       # stored in the half format
            h = out
        if train and not self.ops.on_host and self.buffers.size:
            self.ops.to_host(self._dev[2], out=self.buffers)   # BatchNorm's running statistics
        return h

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        """Logits (B, classes), on the model's device. The returned array is reused by the next forward."""
        with span("forward" if train else "evaluate"):      # a traced run's span (mpisim.trace); else nothing
            self._upload()
            return self._forward(x, train)

    def backward(self, dlogits: np.ndarray, hook: Callable[[int], None] | None = None) -> None:
        """Fill ``self.grads`` (overwriting it). ``hook(i)`` runs after layer i's gradients are
        final, from the last layer down: a data-parallel trainer can start sending them early.
        On a GPU each layer's gradients reach ``self.grads`` before its hook runs."""
        with span("backward"):
            self._backward(dlogits, hook)

    def _backward(self, dlogits, hook: Callable[[int], None] | None) -> None:
        d, rnd = dlogits, self._round
        staged = not self.ops.on_host
        if rnd is not None:                            # mixed precision: gradients in the half format too
            rnd(d)
        for i in range(len(self.layers) - 1, -1, -1):
            d = self.layers[i].backward(d)
            if rnd is not None:
                lo, hi = self._grad_range[i]
                if lo < hi:
                    rnd(self._dev[1][lo:hi])
                if d is not None:
                    rnd(d)
            if staged and hook is not None:
                lo, hi = self._grad_range[i]
                if lo < hi:
                    self.ops.to_host(self._dev[1][lo:hi], out=self.grads[lo:hi])
            if hook is not None:
                hook(i)
        if staged and hook is None:
            self.ops.to_host(self._dev[1], out=self.grads)

    def train_step(self, x: np.ndarray, y: np.ndarray, *, scale: float | None = None, loss_scale: float = 1.0,
                   hook: Callable[[int], None] | None = None) -> tuple[float, int]:
        """Forward, loss, backward in train mode. Returns (mean loss, number correct); the gradient
        is that of the mean loss, or of the loss summed with weight ``scale`` per example, times
        ``loss_scale`` (fp16 loss scaling: the trainer divides it out, mpisim.nn.precision.LossScaler)."""
        logits = self.forward(x, train=True)
        y = self.ops.xp.asarray(y)
        correct = int(self.ops.xp.count_nonzero(logits.argmax(axis=1) == y))
        loss = self.loss_fn.forward(logits, y)
        if loss_scale != 1.0:
            scale = (1.0 / max(len(y), 1) if scale is None else scale) * loss_scale
        self.backward(self.loss_fn.backward(scale), hook)
        return loss, correct

    def evaluate(self, x: np.ndarray, y: np.ndarray, *, batch_size: int = EVAL_BATCH) -> tuple[float, float]:
        """(mean loss, accuracy) in eval mode, in batches."""
        n = len(y)
        if n == 0:
            return float("nan"), float("nan")
        total_loss, correct = 0.0, 0
        with span("evaluate"):
            self._upload()
            xp = self.ops.xp
            for s in range(0, n, batch_size):
                logits = self._forward(x[s:s + batch_size], train=False)
                yb = xp.asarray(y[s:s + batch_size])
                correct += int(xp.count_nonzero(logits.argmax(axis=1) == yb))
                total_loss += self.loss_fn.forward(logits, yb) * len(yb)
        return total_loss / n, correct / n

    def predict(self, x: np.ndarray, *, batch_size: int = EVAL_BATCH) -> np.ndarray:
        """Predicted classes in eval mode."""
        self._upload()
        return np.concatenate([self.ops.to_host(self._forward(x[s:s + batch_size], train=False).argmax(axis=1))
                               for s in range(0, len(x), batch_size)] or [np.zeros(0, np.int64)])

    # -- description -------------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return self.params.size

    def train_flops(self, batch: int) -> int:
        """Floating-point operations of one forward and backward pass over ``batch`` examples: 2 per
        multiply-add, three matmuls per Linear (forward, dX, dW; the first Linear needs no dX);
        activations and biases left out."""
        macs = [a * b for a, b in zip(self.sizes, self.sizes[1:])]
        return batch * (6 * sum(macs) - 2 * macs[0])

    def kept_activations(self, batch: int) -> dict:
        """What one training step over ``batch`` examples keeps for backward, from the layer widths: the
        arrays a real implementation stores in the compute format (each Linear's input, the activation's
        output or input, BatchNorm's normalized input, Dropout's mask) and in float32 whatever the precision
        (the loss's softmax; BatchNorm's 1/std, per feature). Returns the values of each, the formula as
        text, and ``bytes`` per precision (2 bytes a value in fp16 and bf16)."""
        B, widths, f32, f32_text = int(batch), [], 0, []
        kept, width = False, self.sizes[0]             # kept: the current activation is stored already
        for layer in self.layers:
            if isinstance(layer, Linear):              # keeps its input, for dW
                if not kept:
                    widths.append(width)
                kept, width = False, layer.d_out
            elif isinstance(layer, (LeakyReLU, GELU)):     # keep their input
                if not kept:
                    widths.append(width)
                kept = False
            elif isinstance(layer, Dropout):           # the mask (activation-sized)
                if layer.p > 0:
                    widths.append(width)
                    kept = False
            elif isinstance(layer, BatchNorm1d):       # x_hat, and 1/std per feature
                widths.append(width)
                f32 += width
                f32_text.append(f"{width}")
                kept = False
            else:                                      # ReLU, Sigmoid, Tanh keep their output
                widths.append(width)
                kept = True
        half, classes = B * sum(widths), self.sizes[-1]
        f32 += B * classes
        formula = (f"{B}·({' + '.join(map(str, widths))}) values in the compute format + {B}·{classes} (softmax)"
                   + "".join(f" + {w}" for w in f32_text) + " in float32")
        return {"batch": B, "values": half, "float32_values": f32, "formula": formula,
                "bytes": {p: BYTES_PER_VALUE[p] * half + 4 * f32 for p in PRECISIONS}}

    def stored_activation_bytes(self) -> int:
        """Bytes of the arrays the layers and the loss hold for backward after the last training forward,
        as this model stores them (float32 in the CPU emulation, whatever the precision): measured, next to
        the formula of :meth:`kept_activations`."""
        arrays = {}                                    # by identity: a ReLU's output is the next Linear's input
        for holder in (*self.layers, self.loss_fn):
            if isinstance(holder, Dropout) and not holder.active:
                continue                               # no mask this step (a stale one from training)
            for v in vars(holder).values():
                if isinstance(v, self.ops.xp.ndarray) and v.dtype.kind == "f":
                    arrays[id(v)] = v
        return sum(int(v.nbytes) for v in arrays.values())

    def config(self) -> dict:
        """What defines the architecture (checked when a checkpoint is loaded)."""
        return {"sizes": self.sizes, "activation": self.activation, "dropout": self.dropout,
                "batchnorm": self.batchnorm, "init": self.init, "dtype": self.dtype.name}

    def describe(self) -> str:
        kind = "logistic regression" if len(self.sizes) == 2 else f"MLP, {self.activation}"
        extra = (", batchnorm" if self.batchnorm else "") + (f", dropout {self.dropout}" if self.dropout else "")
        half = "" if self.precision == "fp32" else (
            f", {self.precision} mixed precision" + (" (emulated: float32 rounded)" if self.ops.on_host else ""))
        return (f"{'-'.join(map(str, self.sizes))} ({kind}{extra}): {self.num_params:,} parameters, "
                f"{self.params.nbytes / 2**20:.2f} MiB {self.dtype.name}" + half
                + ("" if self.ops.on_host else f", on {self.ops.name}"))

    def __repr__(self) -> str:
        return f"MLP({self.sizes}, layers=[{', '.join(map(repr, self.layers))}])"
