"""Optimizers on the flat parameter and gradient vectors, with PyTorch's update rules.

* SGD, with momentum (Polyak) or Nesterov momentum (Sutskever et al. 2013), L2 weight decay.
* Adam (Kingma and Ba 2015) with L2 weight decay added to the gradient.
* AdamW (Loshchilov and Hutter 2019): decoupled weight decay, p <- p * (1 - lr * wd).

State is flat too (one vector per moment), so it saves and restores as a few arrays:
``state_dict()`` / ``load_state_dict()``. Each step is one fused Numba pass over the vectors.
"""
from __future__ import annotations

import numpy as np

from ..trace import span
from . import _kernels as K

__all__ = ["OPTIMIZERS", "Optimizer", "SGD", "Adam", "AdamW", "make_optimizer"]


class Optimizer:
    """Updates ``params`` in place from ``grads``; both are flat vectors of the same dtype and size."""

    name = "optimizer"
    state_names: tuple[str, ...] = ()
    loss_scaler = None      # mixed precision: the run's LossScaler (mpisim.train.loop.build_optimizer sets it)

    def __init__(self, params: np.ndarray, grads: np.ndarray, *, lr: float, weight_decay: float = 0.0):
        if params.ndim != 1 or grads.shape != params.shape or grads.dtype != params.dtype:
            raise ValueError(f"{self.name}: params and grads must be flat vectors of one shape and dtype, "
                             f"got {params.shape} {params.dtype} and {grads.shape} {grads.dtype}")
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"{self.name}: lr and weight_decay must be >= 0, got {lr}, {weight_decay}")
        self.params, self.grads = params, grads
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.steps = 0
        self.state = {k: np.zeros_like(params) for k in self.state_names}

    def step(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the state (moments and step count), as a freshly made optimizer; lr stays."""
        for v in self.state.values():
            v[...] = 0
        self.steps = 0

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state as arrays (copies): step count and each flat moment vector."""
        return {"steps": np.array(self.steps, dtype=np.int64), **{k: v.copy() for k, v in self.state.items()}}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what ``state_dict`` returned; sizes and dtypes must match."""
        missing = {"steps", *self.state_names} - set(state)
        if missing:
            raise ValueError(f"{self.name} state is missing {sorted(missing)}")
        for k in self.state_names:
            v = np.asarray(state[k])
            if v.shape != self.params.shape or v.dtype != self.params.dtype:
                raise ValueError(f"{self.name} state {k!r}: expected {self.params.shape} {self.params.dtype}, "
                                 f"got {v.shape} {v.dtype}")
            self.state[k][...] = v
        self.steps = int(state["steps"])


class SGD(Optimizer):
    """SGD with optional (Nesterov) momentum and L2 weight decay."""

    name = "sgd"
    state_names = ("momentum_buffer",)

    def __init__(self, params, grads, *, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        if nesterov and momentum <= 0:
            raise ValueError("sgd: nesterov needs momentum > 0")
        super().__init__(params, grads, lr=lr, weight_decay=weight_decay)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def step(self) -> None:
        self.steps += 1
        with span("optimizer"):         # a traced run's span (mpisim.trace); else nothing
            K.sgd_step(self.params, self.grads, self.state["momentum_buffer"], self.lr, self.momentum,
                       self.nesterov, self.weight_decay)


class Adam(Optimizer):
    """Adam; ``weight_decay`` is L2 (added to the gradient), as torch.optim.Adam."""

    name = "adam"
    state_names = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, params, grads, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, grads, lr=lr, weight_decay=weight_decay)
        self.beta1, self.beta2 = map(float, betas)
        self.eps = float(eps)

    def step(self) -> None:
        self.steps += 1
        bc1 = 1.0 - self.beta1 ** self.steps
        bc2 = 1.0 - self.beta2 ** self.steps
        with span("optimizer"):
            K.adam_step(self.params, self.grads, self.state["exp_avg"], self.state["exp_avg_sq"], self.lr,
                        self.beta1, self.beta2, self.eps, bc1, bc2, self.weight_decay, self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay, as torch.optim.AdamW (default weight_decay 0.01)."""

    name = "adamw"
    decoupled = True

    def __init__(self, params, grads, *, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, grads, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")


def make_optimizer(name: str, params: np.ndarray, grads: np.ndarray, *, lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> Optimizer:
    """An optimizer by name: sgd, momentum (SGD with momentum), nesterov, adam, adamw."""
    if name == "sgd":
        return SGD(params, grads, lr=lr, weight_decay=weight_decay)
    if name in ("momentum", "nesterov"):
        return SGD(params, grads, lr=lr, momentum=momentum, nesterov=name == "nesterov",
                   weight_decay=weight_decay)
    if name == "adam":
        return Adam(params, grads, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return AdamW(params, grads, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
