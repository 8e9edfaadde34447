"""Shared pieces of the collectives: argument checks, reduction ops, block layouts, the fold.

Everything here works on a flat working buffer ``w`` (1-D, contiguous) and element offsets:
block ``b`` of ``w`` is ``w[offs[b]:offs[b + 1]]``. Blocks follow ``numpy.array_split``: the
first ``n % p`` blocks hold one element more than the rest, so any length works, 0 and lengths
below the rank count included (empty blocks travel as zero-byte messages).
"""
from __future__ import annotations

import os
import threading
import weakref
import zlib
from typing import Any, Sequence

import numpy as np

from .transport import Transport

OPS = {"sum": np.add, "prod": np.multiply, "max": np.maximum, "min": np.minimum}
DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32), np.dtype(np.int64))

# One tag per collective: messages of one collective never match those of another.
TAG_CHECK, TAG_BCAST, TAG_REDUCE, TAG_GATHER, TAG_SCATTER = 101, 102, 103, 104, 105
TAG_ALLGATHER, TAG_REDUCE_SCATTER, TAG_ALLREDUCE, TAG_BARRIER = 106, 107, 108, 109

_check_default = os.environ.get("MPISIM_CHECK", "1") not in ("0", "false", "no", "off")


def set_consistency_check(enabled: bool) -> bool:
    """Switch the cross-rank argument check of every collective on or off; return the old value.

    The check is one small recursive-doubling allreduce (about log2 p messages of 16 bytes per
    compared field) that compares the collective, length, dtype and, where they apply, op,
    algorithm and root across ranks, so that a mismatch raises
    the same ``ValueError`` on every rank instead of a hang or garbage. Also settable per call
    (``check=False``) or for a whole run with ``MPISIM_CHECK=0``.
    """
    global _check_default
    old, _check_default = _check_default, bool(enabled)
    return old


def block_offsets(n: int, p: int) -> list[int]:
    """Offsets (p + 1 ints) of ``numpy.array_split(range(n), p)``."""
    q, r = divmod(n, p)
    return [b * q + min(b, r) for b in range(p + 1)]


def equal_offsets(m: int, p: int) -> list[int]:
    """Offsets of p blocks of m elements each."""
    return [b * m for b in range(p + 1)]


try:  # simulated ranks are greenlets of one thread: each needs its own scratch (the main greenlet is the thread's)
    from greenlet import getcurrent as _current_task
except ImportError:  # pragma: no cover - greenlet is a dependency
    _current_task = threading.current_thread
_scratch: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # task -> {slot: buffer}


def scratch(n: int, dtype: np.dtype, slot: int = 0) -> np.ndarray:
    """A reusable temporary array of ``n`` elements (per thread or simulated rank, and slot; contents undefined).

    Collectives receive partial results into it before reducing them. Reusing one buffer per
    thread avoids a fresh allocation, and the page faults of first touch, on every call.
    """
    dtype = np.dtype(dtype)
    task = _current_task()
    pool = _scratch.get(task)
    if pool is None:
        pool = _scratch[task] = {}
    nbytes = n * dtype.itemsize
    buf = pool.get(slot)
    if buf is None or buf.nbytes < nbytes:
        buf = pool[slot] = np.empty(max(nbytes, 64), dtype=np.uint8)
    return buf[:nbytes].view(dtype)


def check_array(array: Any, name: str) -> np.ndarray:
    """A supported, C-contiguous numpy array, or a TypeError/ValueError saying what is wrong."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(array).__name__}")
    if array.dtype not in DTYPES:
        raise TypeError(f"{name}: unsupported dtype {array.dtype}; supported: "
                        + ", ".join(str(d) for d in DTYPES))
    if not array.flags.c_contiguous:
        raise ValueError(f"{name}: the array is not contiguous (strides {array.strides}, shape "
                         f"{array.shape}); pass numpy.ascontiguousarray(array)")
    return array


def check_op(op: str, name: str):
    if op not in OPS:
        raise ValueError(f"{name}: unknown op {op!r}; choose one of {', '.join(OPS)}")
    return OPS[op]


def check_algorithm(algorithm: str, choices: Sequence[str], name: str) -> None:
    if algorithm not in choices:
        raise ValueError(f"{name}: unknown algorithm {algorithm!r}; choose one of {', '.join(choices)}")


def check_root(root: Any, size: int, name: str) -> int:
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < size:
        raise ValueError(f"{name}: root must be a rank in [0, {size}), got {root!r}")
    return int(root)


class Recording:
    """Base of a transport that records a collective's schedule instead of running it.

    :mod:`mpisim.comm.plan` runs an algorithm once on such a recorder to learn its point-to-point
    calls; the local work (:func:`combine`, :func:`copy`, :func:`canonical_nans`) comes to the
    recorder as ``t.local(fn, *args)``, to be run later as ``fn(real_transport, *args)``.
    """

    def local(self, fn, *args: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


def _combine(t: Transport, ufunc, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    ufunc(a, b, out=out)
    t.reduced(out.nbytes)


def combine(t: Transport, ufunc, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out = ufunc(a, b)``, counted on the transport as a reduction of out's bytes (gamma)."""
    if isinstance(t, Recording):
        t.local(_combine, ufunc, a, b, out)
        return
    ufunc(a, b, out=out)
    t.reduced(out.nbytes)


def _copy(t: Transport, dst: np.ndarray, src: np.ndarray) -> None:
    np.copyto(dst, src)


def copy(t: Transport, dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` (a local copy, not counted; recorded by a plan like every local step)."""
    if isinstance(t, Recording):
        t.local(_copy, dst, src)
        return
    np.copyto(dst, src)


def _canonical_nans(t: Transport, w: np.ndarray) -> None:
    # w·w is NaN exactly when w holds a NaN (squares are >= 0, so no inf - inf), and BLAS's dot is
    # 2-4x cheaper than isnan(w).any(); only then is the mask built
    if w.size and np.isnan(w.dot(w)):
        w[np.isnan(w)] = np.nan


def canonical_nans(t: Transport, w: np.ndarray) -> None:
    """Make every NaN in the float vector ``w`` the canonical quiet NaN (nothing for integers)."""
    if w.dtype.kind != "f":
        return
    if isinstance(t, Recording):
        t.local(_canonical_nans, w)
        return
    _canonical_nans(t, w)


class Fold:
    """MPICH's way of running a power-of-two algorithm on any p.

    With p2 the largest power of two <= p and r = p - p2, the first 2r ranks pair up: each even
    one hands its data to the odd one above it and sits out (``newrank == -1``); the other p2
    ranks take ``newrank`` 0..p2-1 and run the power-of-two algorithm; at the end each odd rank
    hands the result back to its even partner. Virtual rank k stands for the old blocks
    ``blocks(k)``, so a virtual rank's data stays one contiguous range of the buffer.
    """

    def __init__(self, rank: int, size: int):
        self.p2 = 1 << (size.bit_length() - 1)
        self.r = size - self.p2
        if rank < 2 * self.r:
            self.newrank = -1 if rank % 2 == 0 else rank // 2
        else:
            self.newrank = rank - self.r
        self.rank = rank

    def old(self, newrank: int) -> int:
        """The real rank that plays virtual rank ``newrank``."""
        return 2 * newrank + 1 if newrank < self.r else newrank + self.r

    def group_offsets(self, offs: list[int]) -> list[int]:
        """Offsets of the p2 virtual ranks' ranges, given the p old blocks' offsets."""
        return [offs[2 * k if k < self.r else k + self.r] for k in range(self.p2)] + [offs[-1]]

    @property
    def extra(self) -> bool:
        """True on a rank that sits out (an even rank below 2r)."""
        return self.newrank == -1

    @property
    def folded(self) -> bool:
        """True on a rank that has a partner sitting out (an odd rank below 2r)."""
        return self.rank < 2 * self.r and not self.extra


def rd_allreduce(t: Transport, w: np.ndarray, ufunc, tag: int, src: np.ndarray | None = None) -> None:
    """Recursive-doubling allreduce into ``w``, with the fold for any p.

    ``src`` is this rank's input (default: ``w`` itself, reduced in place); it is only read, and
    the first reduction writes ``w``, so no copy of the input is needed. Both partners of an
    exchange compute ``ufunc(lower, higher)`` with the lower virtual rank's data first, so they
    agree where IEEE ops are not symmetric bit for bit (max(-0.0, 0.0) is -0.0, max(0.0, -0.0)
    is 0.0). Which NaN payload a float op returns is not something NumPy keeps to operand order
    (its size-1 and in-place paths differ), so NaNs in a float result are made the canonical
    quiet NaN before the result leaves the exchange: every rank ends bit-identical.
    """
    src = w if src is None else src
    if t.size == 1:
        if src is not w:
            copy(t, w, src)
        return
    f = Fold(t.rank, t.size)
    tmp = scratch(w.size, w.dtype, slot=1 if tag == TAG_CHECK else 0)
    if f.extra:
        t.send(src, t.rank + 1, tag)
    elif f.folded:
        t.recv(tmp, t.rank - 1, tag)
        combine(t, ufunc, tmp, src, w)  # the lower rank's data first, as in the exchanges below
        src = w
    if not f.extra:
        mask = 1
        while mask < f.p2:
            partner_new = f.newrank ^ mask
            partner = f.old(partner_new)
            t.sendrecv(src, partner, tmp, partner, tag, tag)
            if partner_new < f.newrank:
                combine(t, ufunc, tmp, src, w)
            else:
                combine(t, ufunc, src, tmp, w)
            src = w
            mask <<= 1
        canonical_nans(t, w)
    if f.extra:
        t.recv(w, t.rank + 1, tag)
    elif f.folded:
        t.send(w, t.rank - 1, tag)


_DTYPE_CODE = {d: i for i, d in enumerate(DTYPES)}


def consistency_check(t: Transport, name: str, check: bool | None, **fields: Any) -> None:
    """Raise the same ValueError on every rank when ranks disagree on any of ``fields``.

    ``fields`` maps a description to a value (int, dtype, or a string from a fixed set) that
    must be equal on all ranks. One recursive-doubling allreduce (max) of the values and their
    negations yields every field's maximum and minimum on every rank at once.
    """
    if t.size == 1 or not (_check_default if check is None else check):
        return
    fields = {"collective": name, **fields}
    codes = []
    for key, value in fields.items():
        if isinstance(value, np.dtype):
            value = _DTYPE_CODE.get(value, -1)
        elif isinstance(value, str):
            value = zlib.crc32(value.encode())  # a code that is the same in every process
        codes.append(int(value))
    v = np.array(codes + [-c for c in codes], dtype=np.int64)
    rd_allreduce(t, v, np.maximum, TAG_CHECK)
    k = len(codes)
    bad = [key for i, key in enumerate(fields) if v[i] != -v[k + i]]
    if "collective" in bad:
        raise ValueError(f"{name}: ranks called different collectives at the same point "
                         f"(detected on rank {t.rank} of {t.size})")
    if bad:
        detail = "; ".join(
            f"{key} differs (min {-v[k + list(fields).index(key)]}, max {v[list(fields).index(key)]})"
            if key in ("length", "root") else f"{key} differs"
            for key in bad)
        raise ValueError(f"{name}: ranks passed inconsistent arguments: {detail} "
                         f"(detected on rank {t.rank} of {t.size})")
