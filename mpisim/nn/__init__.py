"""The NumPy MLP: layers with hand-written backward passes, a fused softmax cross-entropy loss,
initializers, optimizers and schedules. Parameters and gradients are one flat vector each.

>>> from mpisim.nn import MLP, make_optimizer
>>> model = MLP([64, 128, 10], activation="relu")
>>> opt = make_optimizer("adam", model.params, model.grads, lr=1e-3)
>>> loss, correct = model.train_step(x, y); opt.step()      # doctest: +SKIP
"""
from .fpenv import flush_denormals
from .init import INITIALIZERS, init_weight
from .layers import (ACTIVATIONS, GELU, BatchNorm1d, Dropout, Layer, LeakyReLU, Linear, ReLU, Sigmoid,
                     Tanh)
from .loss import SoftmaxCrossEntropy
from .model import MLP, parse_hidden
from .optim import OPTIMIZERS, SGD, Adam, AdamW, Optimizer, make_optimizer
from .schedule import SCHEDULES, linear_scaling, make_schedule

__all__ = [
    "ACTIVATIONS", "Adam", "AdamW", "BatchNorm1d", "Dropout", "GELU", "INITIALIZERS", "Layer",
    "LeakyReLU", "Linear", "MLP", "OPTIMIZERS", "Optimizer", "ReLU", "SCHEDULES", "SGD", "Sigmoid",
    "SoftmaxCrossEntropy", "Tanh", "flush_denormals", "init_weight", "linear_scaling", "make_optimizer", "make_schedule",
    "parse_hidden",
]
