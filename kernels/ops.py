"""``grayscale`` and ``matmul``: check the arguments once, pick a backend, hand it plain views.

Every backend module implements the same three functions on already-checked arrays:
``gray_hwc(src (P, 3), dst (P,))``, ``gray_chw(src (N, 3, Q), dst (N, Q))`` and
``matmul2d(a (M, K), b (K, N), out (M, N))``; batches, vectors and broadcasting are handled here.
NumPy and cuBLAS take batches themselves (``matmul``).
"""
from __future__ import annotations

import importlib

import numpy as np

from ._backends import GPU_BACKENDS, array_kind, choose, is_device_array, require

__all__ = ["grayscale", "matmul", "LAYOUTS"]

LAYOUTS = ("hwc", "chw")
_MODULES = {"python": "_python", "numpy": "_numpy", "numba": "_numba_cpu", "numba_cuda": "_numba_cuda",
            "cupy": "_cupy", "cublas": "_cupy"}


def _module(name: str):
    return importlib.import_module(f"kernels.{_MODULES[name]}")


def _pick(op: str, backend: str, device: bool, what: str) -> str:
    """The backend to run (resolving auto), after checking it exists and suits where the data is."""
    if not isinstance(backend, str):
        raise TypeError(f"{op}: backend must be a name, got {type(backend).__name__}")
    name = choose(op, device) if backend == "auto" else backend
    require(name, op)
    if device and name not in GPU_BACKENDS:
        raise TypeError(f"{op}(backend={name!r}) got a GPU array for {what}: copy it to the host with "
                        f"kernels.to_host(x), or use a GPU backend ({', '.join(GPU_BACKENDS)})")
    if not device and name in GPU_BACKENDS:
        raise TypeError(f"{op}(backend={name!r}) got a host (NumPy) array for {what}: GPU backends take GPU "
                        f"arrays and return GPU arrays; copy it there with kernels.to_device(x, {name!r}) "
                        f"and back with kernels.to_host(result)")
    return name


# -- device arrays: CuPy's or Numba's, seen by each GPU backend as its own kind --------------------------
def _c_contiguous(x) -> bool:
    if array_kind(x) == "numba":
        return x.is_c_contiguous()
    return bool(x.flags.c_contiguous)


def _for_backend(x, name: str, op: str = "", contiguous: bool = True):
    """``x`` as the array type of GPU backend ``name``, C-contiguous (a device copy if it was not)
    unless ``contiguous`` is False. Host arrays pass through."""
    if name not in GPU_BACKENDS:
        return x
    if array_kind(x) == "cupy":
        import cupy
        x = cupy.asarray(x)
        if contiguous:
            x = cupy.ascontiguousarray(x)
        if name == "numba_cuda":
            from numba import cuda
            return cuda.as_cuda_array(x)
        return x
    if not x.is_c_contiguous():                        # a Numba device array: no strided copy on the device
        raise ValueError(f"{op}: backend {name!r} needs C-contiguous Numba device arrays; make one with "
                         f"numba.cuda.to_device(np.ascontiguousarray(kernels.to_host(x))), or pass CuPy arrays")
    if name == "numba_cuda":
        return x
    import cupy
    return cupy.asarray(x)


def _empty_like_kind(x, shape: tuple[int, ...], dtype):
    """A new array for the result, where ``x`` lives and of its kind (NumPy, CuPy or Numba)."""
    kind = array_kind(x)
    if kind == "host":
        return np.empty(shape, dtype)
    if kind == "numba":
        from numba import cuda
        return cuda.device_array(shape, dtype)
    import cupy
    return cupy.empty(shape, dtype)


def _device_span(x) -> tuple[int, int]:
    """[first, last) byte addresses a device array can touch (for the overlap check)."""
    cai = x.__cuda_array_interface__
    ptr, itemsize = cai["data"][0], np.dtype(cai["typestr"]).itemsize
    if 0 in cai["shape"]:
        return ptr, ptr
    strides = cai.get("strides") or [itemsize * int(np.prod(cai["shape"][i + 1:])) for i in range(len(cai["shape"]))]
    lo = ptr + sum((n - 1) * s for n, s in zip(cai["shape"], strides) if s < 0)
    hi = ptr + itemsize + sum((n - 1) * s for n, s in zip(cai["shape"], strides) if s > 0)
    return lo, hi


def _overlaps(a, b) -> bool:
    if not is_device_array(a):
        return np.may_share_memory(a, b)
    if hasattr(a, "_ary") and hasattr(b, "_ary"):     # the CUDA simulator's arrays wrap NumPy arrays
        return np.may_share_memory(a._ary, b._ary)
    (a0, a1), (b0, b1) = _device_span(a), _device_span(b)
    return a0 < b1 and b0 < a1


def _prepare_out(op: str, out, like, shape: tuple[int, ...], dtype, inputs: tuple):
    if out is None:
        return _empty_like_kind(like, shape, dtype)
    if not (isinstance(out, np.ndarray) or is_device_array(out)):
        raise TypeError(f"{op}: out must be an array (NumPy, CuPy or Numba), got {type(out).__name__}")
    if is_device_array(out) != is_device_array(like):
        where = "GPU" if is_device_array(out) else "host"
        raise TypeError(f"{op}: out is a {where} array but the inputs are not; out must live where the inputs do")
    if tuple(out.shape) != shape:
        raise ValueError(f"{op}: out has shape {tuple(out.shape)}, the result has shape {shape}")
    if np.dtype(out.dtype) != dtype:
        raise TypeError(f"{op}: out has dtype {np.dtype(out.dtype)}, the result is {dtype}")
    if not _c_contiguous(out):
        raise ValueError(f"{op}: out must be C-contiguous")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError(f"{op}: out is read-only")
    if any(_overlaps(out, x) for x in inputs):
        raise ValueError(f"{op}: out overlaps an input; give it its own memory")
    return out


# -- grayscale ---------------------------------------------------------------------------------------
def grayscale(images, backend: str = "auto", out=None, *, layout: str = "hwc"):
    """Luma of RGB images with the ITU-R BT.601 weights (0.299, 0.587, 0.114).

    ``images``: (H, W, 3) or (N, H, W, 3); with ``layout="chw"``, (3, H, W) or (N, 3, H, W).
    uint8 in -> uint8 out (the exact weighted sum rounded half up; it cannot exceed 255);
    float32 in -> float32 out. Result (H, W) or (N, H, W), where the input lives (host or GPU).
    ``backend``: auto, python, numpy, numba, numba_cuda, cupy (see ``available_backends()``).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"grayscale: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    device = is_device_array(images)
    if not device:
        images = np.asarray(images)
    shape, dtype = tuple(images.shape), np.dtype(images.dtype)
    if dtype not in (np.uint8, np.float32):
        raise TypeError(f"grayscale takes uint8 or float32 images, got {dtype}; convert with "
                        f"images.astype(np.float32) (or np.uint8 for 0..255 values)")
    if layout == "hwc":
        fits, expected, out_shape = len(shape) in (3, 4) and shape[-1] == 3, "(H, W, 3) or (N, H, W, 3)", shape[:-1]
        other = len(shape) in (3, 4) and shape[-3] == 3 and "; for channels-first images pass layout='chw'"
    else:
        fits, expected = len(shape) in (3, 4) and shape[-3] == 3, "(3, H, W) or (N, 3, H, W)"
        out_shape = shape[:-3] + shape[-2:]
        other = len(shape) in (3, 4) and shape[-1] == 3 and "; for channels-last images use layout='hwc'"
    if not fits:
        raise ValueError(f"grayscale(layout={layout!r}) expects {expected}, got shape {shape}{other or ''}")
    pixels = int(np.prod(out_shape))
    name = _pick("grayscale", backend, device, "images")
    out = _prepare_out("grayscale", out, images, out_shape, dtype, (images,))
    if pixels == 0:
        return out
    mod = _module(name)
    src, dst = _for_backend(images, name, "grayscale"), _for_backend(out, name, "grayscale")
    if layout == "hwc":
        mod.gray_hwc(src.reshape(pixels, 3), dst.reshape(pixels))
    else:
        n = shape[0] if len(shape) == 4 else 1
        q = shape[-1] * shape[-2]
        mod.gray_chw(src.reshape(n, 3, q), dst.reshape(n, q))
    return out


# -- matmul ------------------------------------------------------------------------------------------
def _operand_index(idx: tuple[int, ...], batch_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The batch index of an operand with ``batch_shape`` for result batch index ``idx`` (broadcast)."""
    idx = idx[len(idx) - len(batch_shape):]
    return tuple(i if s != 1 else 0 for i, s in zip(idx, batch_shape))


def matmul(a, b, backend: str = "auto", out=None):
    """``a @ b`` for float32 or float64 arrays of any shapes that multiply, as ``np.matmul``:
    (M, K) @ (K, N) -> (M, N); a 1-D operand is a row (a) or column (b) vector; leading batch
    dimensions broadcast, (..., M, K) @ (..., K, N) -> (..., M, N).
    ``backend``: auto, python, numpy, numba, numba_cuda, cupy, cublas (see ``available_backends()``).
    The result lives where the inputs do (host or GPU).
    """
    device = is_device_array(a)
    if device != is_device_array(b):
        raise TypeError("matmul: one operand is on the GPU and the other in host memory; move one with "
                        "kernels.to_device(x) or kernels.to_host(x)")
    if not device:
        a, b = np.asarray(a), np.asarray(b)
    da, db = np.dtype(a.dtype), np.dtype(b.dtype)
    if da != db or da not in (np.float32, np.float64):
        raise TypeError(f"matmul takes two float32 or two float64 arrays, got {da} and {db}; convert with "
                        f".astype(np.float32)")
    sa, sb = tuple(a.shape), tuple(b.shape)
    if not sa or not sb:
        raise ValueError(f"matmul: a scalar is not a matrix (shapes {sa} and {sb}); use multiplication")
    a_vec, b_vec = len(sa) == 1, len(sb) == 1
    sa2 = (1, sa[0]) if a_vec else sa
    sb2 = (sb[0], 1) if b_vec else sb
    (M, K), (Kb, N) = sa2[-2:], sb2[-2:]
    if K != Kb:
        raise ValueError(f"matmul: shapes {sa} and {sb} do not multiply: a has {K} columns, b has {Kb} rows")
    try:
        batch = tuple(np.broadcast_shapes(sa2[:-2], sb2[:-2]))
    except ValueError:
        raise ValueError(f"matmul: the batch dimensions of {sa} and {sb} do not broadcast") from None
    shape = batch + ((M,) if not a_vec else ()) + ((N,) if not b_vec else ())
    name = _pick("matmul", backend, device, "a and b")
    out = _prepare_out("matmul", out, a, shape, da, (a, b))
    if int(np.prod(shape)) == 0:
        return out
    mod = _module(name)
    if name == "numpy":
        mod.matmul(a, b, out)
        return out
    if name == "cublas":                              # cuBLAS takes strided operands as they are
        mod.cublas_matmul(*(_for_backend(x, name, "matmul", contiguous=False) for x in (a, b, out)))
        return out
    if name == "python":
        mod.check_size(int(np.prod(batch)) * M * N * K)
    a2 = _for_backend(a, name, "matmul").reshape(sa2)
    b2 = _for_backend(b, name, "matmul").reshape(sb2)
    o = _for_backend(out, name, "matmul").reshape(batch + (M, N))
    if not batch:
        mod.matmul2d(a2, b2, o)
        return out
    for idx in np.ndindex(*batch):
        mod.matmul2d(a2[_operand_index(idx, sa2[:-2])], b2[_operand_index(idx, sb2[:-2])], o[idx])
    return out
