"""Numba-fused elementwise kernels for the layers and optimizers.

Each kernel makes one pass over flat, contiguous arrays and writes in place or into a given output,
so no activation-sized temporary is allocated. They compile once per dtype (float32, float64) and are cached
on disk. Scalars arrive as Python floats; the arithmetic is done in the array's own dtype where it
matters for matching PyTorch (the optimizer), and nothing is ever stored as float64 by accident.
"""
import math

import numba
import numpy as np

# error_model='numpy': no ZeroDivisionError check inside loops, so LLVM can vectorize them
_jit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")

SQRT_HALF = 0.7071067811865476
INV_SQRT_2PI = 0.3989422804014327


@_jit
def relu_fwd(x, y):
    for i in range(x.size):
        v = x[i]
        y[i] = v if not v <= 0 else 0       # NaN stays NaN, as in PyTorch


@_jit
def relu_bwd(dy, y):
    """dy <- dy * (y > 0), in place (y is the forward output)."""
    for i in range(dy.size):
        if not y[i] > 0:
            dy[i] = 0


@_jit
def leaky_fwd(x, y, slope):
    s = x.dtype.type(slope)
    for i in range(x.size):
        v = x[i]
        y[i] = v if v > 0 else v * s


@_jit
def leaky_bwd(dy, x, slope):
    s = dy.dtype.type(slope)
    for i in range(dy.size):
        if not x[i] > 0:
            dy[i] = dy[i] * s


@_jit
def gelu_fwd(x, y):
    """Exact GELU, x * Phi(x), as PyTorch's default."""
    t = x.dtype.type                        # constants in the array's dtype: float32 math stays float32
    half, one, c = t(0.5), t(1.0), t(SQRT_HALF)
    for i in range(x.size):
        v = x[i]
        y[i] = half * v * (one + math.erf(v * c))


@_jit
def gelu_bwd(dy, x):
    """dy <- dy * (Phi(x) + x * phi(x)), in place."""
    t = x.dtype.type
    half, one, c, k = t(0.5), t(1.0), t(SQRT_HALF), t(INV_SQRT_2PI)
    for i in range(dy.size):
        v = x[i]
        cdf = half * (one + math.erf(v * c))
        pdf = k * math.exp(-half * v * v)
        dy[i] = dy[i] * (cdf + v * pdf)


@_jit
def dropout_fwd(x, u, y, p, scale):
    """y = x * scale where the uniform draw u >= p, else 0."""
    pp = u.dtype.type(p)
    sc = x.dtype.type(scale)
    for i in range(x.size):
        y[i] = x[i] * sc if u[i] >= pp else 0


@_jit
def dropout_bwd(dy, u, p, scale):
    pp = u.dtype.type(p)
    sc = dy.dtype.type(scale)
    for i in range(dy.size):
        dy[i] = dy[i] * sc if u[i] >= pp else 0


@_jit
def sgd_step(p, g, buf, lr, momentum, nesterov, weight_decay):
    """PyTorch's SGD: g += wd*p; buf = momentum*buf + g; p -= lr * (g + momentum*buf | buf)."""
    t = p.dtype.type
    lr_, mu, wd = t(lr), t(momentum), t(weight_decay)
    for i in range(p.size):
        d = g[i] + wd * p[i]
        if mu != 0:
            b = mu * buf[i] + d
            buf[i] = b
            d = d + mu * b if nesterov else b
        p[i] -= lr_ * d


@_jit
def adam_step(p, g, m, v, lr, beta1, beta2, eps, bc1, bc2, weight_decay, decoupled):
    """PyTorch's Adam (L2 added to the gradient) or AdamW (decoupled: p *= 1 - lr*wd)."""
    t = p.dtype.type
    b1, b2, e, wd = t(beta1), t(beta2), t(eps), t(weight_decay)
    step_size = t(lr / bc1)
    sqrt_bc2 = t(math.sqrt(bc2))
    decay = t(1.0 - lr * weight_decay)
    one = t(1.0)
    for i in range(p.size):
        gi = g[i]
        if decoupled:
            p[i] *= decay
        else:
            gi = gi + wd * p[i]
        mi = b1 * m[i] + (one - b1) * gi
        vi = b2 * v[i] + (one - b2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (np.sqrt(vi) / sqrt_bc2 + e)


def flat(a: np.ndarray) -> np.ndarray:
    """A 1-D view of a C-contiguous array (never a copy)."""
    return a.reshape(-1)
