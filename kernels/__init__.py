"""kernels: the hot paths of a GPU course, grayscale conversion and matrix multiply, on every backend.

    >>> import numpy as np, kernels
    >>> img = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    >>> kernels.grayscale(img).shape                     # auto: the fastest backend for a host image
    (1080, 1920)
    >>> a = np.ones((3, 5), np.float32); b = np.ones((5, 2), np.float32)
    >>> float(kernels.matmul(a, b, backend="numba")[0, 0])
    5.0
    >>> kernels.available_backends()                     # doctest: +SKIP
    ['python', 'numpy', 'numba']

Backends: ``python`` (plain loops, small inputs only), ``numpy`` (vectorized, BLAS), ``numba``
(compiled, parallel CPU), ``numba_cuda`` (CUDA kernels in Python), ``cupy`` (CUDA kernels of our own
through CuPy), ``cublas`` (``cupy.matmul``, matmul only). The GPU backends take and return GPU arrays
(CuPy or Numba); ``to_device`` and ``to_host`` move data when you ask. ``python -m kernels`` says
which backends run here and why the others do not; ``python -m kernels.bench`` measures them.
"""
from ._backends import (BACKENDS, GPU_BACKENDS, OPS, BackendUnavailable, available_backends, backend_status,
                        is_device_array, to_device, to_host)
from .ops import LAYOUTS, grayscale, matmul

__all__ = ["BACKENDS", "GPU_BACKENDS", "LAYOUTS", "OPS", "BackendUnavailable", "available_backends",
           "backend_status", "grayscale", "is_device_array", "matmul", "to_device", "to_host"]
