"""Reference results computed independently of the kernels, and the backends each test can run."""
import numpy as np

import kernels

HOST = ("python", "numpy", "numba")


def on_host_or_device(fn, backend, *arrays, **kw):
    """Run ``fn`` on ``backend``, moving the inputs to the GPU and the result back when it needs it."""
    if backend in kernels.GPU_BACKENDS:
        arrays = [kernels.to_device(a, backend) for a in arrays]
        return kernels.to_host(fn(*arrays, backend=backend, **kw))
    return fn(*arrays, backend=backend, **kw)


def luma_u8(rgb_last: np.ndarray) -> np.ndarray:
    """Exact BT.601 luma rounded half up: 1000 Y = 299 R + 587 G + 114 B is an integer."""
    k = rgb_last.astype(np.int64) @ np.array([299, 587, 114], np.int64)
    return ((k + 500) // 1000).astype(np.uint8)


def luma_f64(rgb_last: np.ndarray) -> np.ndarray:
    return rgb_last.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
