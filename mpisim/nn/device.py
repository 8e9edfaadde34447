"""Where the MLP computes: ``cpu`` (NumPy, BLAS and the fused Numba kernels) or ``cuda`` (CuPy).

A layer never calls NumPy's array functions by name for its math: it asks its device, ``ops.xp`` for
the array module and ``ops.relu_fwd(x, y)`` and friends for the fused elementwise steps. On the CPU
these are the Numba kernels of ``_kernels``; on a GPU they are whole-array CuPy expressions, and the
matrix multiplies go through ``kernels.matmul`` (cuBLAS by default, or our own CUDA kernels).

On a GPU the model's flat vectors stay on the host, where the optimizer and the message-passing layer
use them; the device holds a mirror. A step uploads the parameters (P values) and downloads the
gradient (P values): docs/kernels.md says what that costs. ``ArrayDevice`` with NumPy as its array
module is the same code path on the host; the tests use it to check the GPU code without a GPU.
"""
from __future__ import annotations

import os

import numpy as np

from . import _kernels as K
from ._kernels import flat

__all__ = ["DEVICES", "MATMUL_BACKENDS", "ArrayDevice", "CPU", "DeviceUnavailable", "HostDevice", "make_device"]

DEVICES = ("cpu", "cuda")
MATMUL_BACKENDS = ("auto", "cublas", "cupy", "numba_cuda")     # for --device cuda


class DeviceUnavailable(RuntimeError):
    """--device cuda on a machine without CuPy or a GPU."""


class HostDevice:
    """NumPy arrays, BLAS matmuls and the fused Numba kernels: the model computes in its own vectors."""

    name = "cpu"
    xp = np
    on_host = True

    @staticmethod
    def matmul(a, b, out):
        return np.matmul(a, b, out=out)

    relu_fwd = staticmethod(lambda x, y: K.relu_fwd(flat(x), flat(y)))
    relu_bwd = staticmethod(lambda dy, y: K.relu_bwd(flat(dy), flat(y)))
    leaky_fwd = staticmethod(lambda x, y, s: K.leaky_fwd(flat(x), flat(y), s))
    leaky_bwd = staticmethod(lambda dy, x, s: K.leaky_bwd(flat(dy), flat(x), s))
    gelu_fwd = staticmethod(lambda x, y: K.gelu_fwd(flat(x), flat(y)))
    gelu_bwd = staticmethod(lambda dy, x: K.gelu_bwd(flat(dy), flat(x)))
    dropout_fwd = staticmethod(lambda x, u, y, p, sc: K.dropout_fwd(flat(x), flat(u), flat(y), p, sc))
    dropout_bwd = staticmethod(lambda dy, u, p, sc: K.dropout_bwd(flat(dy), flat(u), p, sc))

    @staticmethod
    def to_host(a, out: np.ndarray | None = None) -> np.ndarray:
        """``a`` itself, or copied into ``out``: on the CPU host and device are one memory."""
        if out is None:
            return a
        out[...] = a
        return out

    from_host = to_host


CPU = HostDevice()


class ArrayDevice:
    """The same layer math as whole-array expressions of ``xp`` (CuPy on a GPU), with
    ``matmul(a, b, out)``, ``erf`` and the two copies between host and device given."""

    on_host = False

    def __init__(self, *, name: str, xp, matmul, erf, from_host, to_host) -> None:
        self.name, self.xp, self.matmul, self.erf = name, xp, matmul, erf
        self._from_host, self._to_host = from_host, to_host

    def from_host(self, a: np.ndarray, out=None):
        """A host array on the device (into ``out`` if given)."""
        return self._from_host(np.ascontiguousarray(a), out)

    def to_host(self, a, out: np.ndarray | None = None) -> np.ndarray:
        """A device array on the host (into ``out`` if given)."""
        return self._to_host(a, out)

    # The elementwise steps, as the Numba kernels define them (NaN handling included).
    def relu_fwd(self, x, y):
        self.xp.maximum(x, 0, out=y)                  # NaN stays NaN
        return y

    def relu_bwd(self, dy, y):
        self.xp.copyto(dy, 0, where=~(y > 0))

    def leaky_fwd(self, x, y, slope):
        self.xp.multiply(x, x.dtype.type(slope), out=y)
        self.xp.copyto(y, x, where=x > 0)

    def leaky_bwd(self, dy, x, slope):
        self.xp.copyto(dy, dy * dy.dtype.type(slope), where=~(x > 0))

    def gelu_fwd(self, x, y):
        t = x.dtype.type
        c = self.erf(x * t(0.7071067811865476))       # x Phi(x) = (x / 2) (1 + erf(x / sqrt 2))
        c += t(1)
        self.xp.multiply(x, t(0.5), out=y)              # halve first, as the kernel: no overflow near max
        y *= c

    def gelu_bwd(self, dy, x):
        t = x.dtype.type
        cdf = self.erf(x * t(0.7071067811865476))
        cdf += t(1)
        cdf *= t(0.5)
        pdf = self.xp.exp(x * x * t(-0.5))
        pdf *= t(0.3989422804014327)
        pdf *= x
        pdf += cdf
        dy *= pdf

    def dropout_fwd(self, x, u, y, p, scale):
        self.xp.multiply(x, x.dtype.type(scale), out=y)
        self.xp.copyto(y, 0, where=u < u.dtype.type(p))

    def dropout_bwd(self, dy, u, p, scale):
        dy *= dy.dtype.type(scale)
        self.xp.copyto(dy, 0, where=u < u.dtype.type(p))


LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")   # MPICH, Open MPI, SLURM


def local_rank() -> int:
    """This process's rank among the ranks on its node, from the launcher's environment (0 if none)."""
    for var in LOCAL_RANK_VARIABLES:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def _cupy_device(matmul_backend: str) -> ArrayDevice:
    import cupy
    import cupyx.scipy.special

    import kernels

    # under mpiexec, the ranks of a node take its GPUs in turn (simulated ranks share the current one)
    cupy.cuda.Device(local_rank() % cupy.cuda.runtime.getDeviceCount()).use()

    def from_host(a, out):
        if out is None:
            return cupy.asarray(a)
        out.set(a)
        return out

    def to_host(a, out):
        return a.get(out=out)

    return ArrayDevice(name="cuda", xp=cupy, erf=cupyx.scipy.special.erf, from_host=from_host, to_host=to_host,
                       matmul=lambda a, b, out: kernels.matmul(a, b, backend=matmul_backend, out=out))


def make_device(name: str = "cpu", *, matmul_backend: str = "auto"):
    """The device called ``name`` ("cpu" or "cuda"); "cuda" needs CuPy and a GPU and says so."""
    if name == "cpu":
        return CPU
    if name != "cuda":
        raise ValueError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    if matmul_backend not in MATMUL_BACKENDS:
        raise ValueError(f"unknown matmul backend {matmul_backend!r} for cuda; choose from {', '.join(MATMUL_BACKENDS)}")
    import kernels
    status = kernels.backend_status()
    if status["cupy"] != "available":
        raise DeviceUnavailable(f"--device cuda needs CuPy and an NVIDIA GPU: {status['cupy']}")
    if matmul_backend != "auto" and status[matmul_backend] != "available":
        raise DeviceUnavailable(f"--matmul-backend {matmul_backend}: {status[matmul_backend]}")
    return _cupy_device(matmul_backend)
