"""Which backends exist on this machine, why the others do not, and which one ``auto`` picks.

Nothing optional is imported until it is asked for: ``import kernels`` needs only NumPy and Numba.
A GPU backend is *available* when its package imports and finds a CUDA device (for ``numba_cuda``,
the CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``, counts as a device: slow, but it runs the kernels).
"""
from __future__ import annotations

import functools
import importlib

import numpy as np

__all__ = ["BACKENDS", "GPU_BACKENDS", "OPS", "BackendUnavailable", "available_backends", "backend_status",
           "is_device_array", "to_device", "to_host"]

#: every backend, in the order the tables list them
BACKENDS = ("python", "numpy", "numba", "numba_cuda", "cupy", "cublas")
#: backends that take and return arrays in GPU memory
GPU_BACKENDS = ("numba_cuda", "cupy", "cublas")
#: what each operation can run on (cuBLAS is a matrix library: it has no grayscale)
OPS = {"grayscale": ("python", "numpy", "numba", "numba_cuda", "cupy"),
       "matmul": BACKENDS}

GPU_INSTALL = "pip install -e '.[gpu]' (numba-cuda and cupy-cuda12x; needs an NVIDIA driver for CUDA 12)"


class BackendUnavailable(RuntimeError):
    """The backend asked for is not installed, or needs a GPU this machine does not have."""


@functools.cache
def _numba_cuda_problem() -> str | None:
    try:
        from numba import cuda
    except Exception as e:                       # pragma: no cover - numba is a dependency
        return f"numba.cuda does not import ({e}): {GPU_INSTALL}"
    try:
        if cuda.is_available():
            return None
    except Exception as e:                       # a broken driver install raises instead of saying False
        return f"numba.cuda finds no usable CUDA driver ({e})"
    return ("numba.cuda finds no CUDA GPU (no NVIDIA driver or device here); on a machine without one, "
            "NUMBA_ENABLE_CUDASIM=1 runs the kernels in Numba's CUDA simulator (slow: small inputs only)")


@functools.cache
def _cupy_problem() -> str | None:
    try:
        cp = importlib.import_module("cupy")
    except ImportError:
        return f"CuPy is not installed: {GPU_INSTALL}"
    except Exception as e:                       # e.g. a CuPy wheel for another CUDA version
        return f"CuPy does not import ({type(e).__name__}: {e})"
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        return f"CuPy is installed but finds no CUDA GPU ({type(e).__name__}: {e})"
    return None if n > 0 else "CuPy is installed but finds no CUDA GPU"


def _problem(name: str) -> str | None:
    if name in ("python", "numpy", "numba"):
        return None
    if name == "numba_cuda":
        return _numba_cuda_problem()
    return _cupy_problem()


def backend_status() -> dict[str, str]:
    """``{backend: "available" or the reason it is not}`` for every backend."""
    return {name: _problem(name) or "available" for name in BACKENDS}


def available_backends(op: str | None = None) -> list[str]:
    """The backends that run here, for ``op`` ("grayscale" or "matmul") or for either."""
    names = BACKENDS if op is None else _check_op(op)
    return [n for n in names if _problem(n) is None]


def _check_op(op: str) -> tuple[str, ...]:
    if op not in OPS:
        raise ValueError(f"unknown operation {op!r}; choose from {', '.join(OPS)}")
    return OPS[op]


def require(name: str, op: str) -> None:
    """Raise a clear error unless backend ``name`` can run ``op`` here."""
    names = _check_op(op)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from auto, {', '.join(names)}")
    if name not in names:
        raise ValueError(f"backend {name!r} has no {op}; choose from auto, {', '.join(names)}")
    problem = _problem(name)
    if problem:
        raise BackendUnavailable(f"backend {name!r} is not available: {problem}")


def array_kind(x) -> str:
    """Where ``x`` lives and who reads it: "numba" (a Numba device array, also the simulator's),
    "cupy" (a CuPy array, or another library's GPU array, which CuPy wraps without a copy) or "host"."""
    if hasattr(x, "copy_to_host"):
        return "numba"
    if hasattr(x, "__cuda_array_interface__"):
        return "cupy"
    return "host"


def is_device_array(x) -> bool:
    """True for arrays in GPU memory: CuPy arrays, Numba device arrays (also the simulator's)."""
    return array_kind(x) != "host"


def choose(op: str, device: bool) -> str:
    """The backend ``auto`` means for ``op`` on an array on the GPU (``device``) or on the host: the
    fastest available in the measurements of docs/kernels.md (at every size measured)."""
    if not device:      # numba beat numpy on every image size from 4 x 4 to 1080p; BLAS beats numba
        return "numba" if op == "grayscale" else "numpy"
    order = ("cublas", "cupy", "numba_cuda") if op == "matmul" else ("cupy", "numba_cuda")
    for name in order:
        if _problem(name) is None:
            return name
    raise BackendUnavailable(f"{op} got a GPU array but no GPU backend is available: "
                             f"{_problem('cupy')}; numba_cuda: {_problem('numba_cuda')}")


def to_device(x, backend: str = "auto"):
    """Copy a host array to the GPU, as a CuPy array (``backend`` "cupy"/"cublas", or "auto" when CuPy
    works) or a Numba device array ("numba_cuda", or "auto" without CuPy). Device arrays pass through."""
    if is_device_array(x):
        return x
    if backend == "auto":
        backend = "cupy" if _problem("cupy") is None else "numba_cuda"
    if backend not in GPU_BACKENDS:
        raise ValueError(f"to_device: {backend!r} is not a GPU backend; choose from auto, {', '.join(GPU_BACKENDS)}")
    problem = _problem(backend)
    if problem:
        raise BackendUnavailable(f"to_device({backend!r}): {problem}")
    x = np.ascontiguousarray(x)
    if backend == "numba_cuda":
        from numba import cuda
        return cuda.to_device(x)
    import cupy
    return cupy.asarray(x)


def to_host(x) -> np.ndarray:
    """A NumPy copy of a device array (host arrays are returned as they are)."""
    kind = array_kind(x)
    if kind == "numba":
        return x.copy_to_host()
    if kind == "cupy":
        import cupy
        return cupy.asarray(x).get()
    return np.asarray(x)
