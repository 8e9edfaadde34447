"""A calibrated cost model that predicts real collectives: a measured call plus measured step times.

Hockney's alpha + n*beta (and gamma for reductions) is what the simulator runs, but on one
shared-memory machine driven from Python it misses by factors: a collective pays a Python path
per call and per step (argument checks, block offsets, the fold, scratch, the registry's
dispatch, sendrecv's Python) that is larger than the whole modelled time up to tens of KiB; MPI
changes protocol near 16 KiB and the cache changes beta again; data that just arrived sits in
the other core's cache when it is reduced; and some algorithms make passes the closed forms do
not count (recursive doubling's NaN pass, the copy of the input into the output). This model
keeps the closed forms' counts (:mod:`mpisim.comm.costs`: messages ``a``, bytes ``b`` and
reduced bytes ``c`` on the critical path; messages ``M`` and bytes ``B`` of all ranks) and
measures the rest, in the spirit of LogGP (Alexandrov et al. 1995, "LogGP: incorporating long
messages into the LogP model"), whose o and G depend on the message size:

* ``overhead[alg]`` (LogP's o for the whole call): one real call of ``alg`` on ``ranks`` ranks on
  a vector of ``tiny`` bytes, where the bytes cost nothing: every per-call and per-step Python
  cost and the latency of that algorithm's messages, whatever their number.
* ``one_way(m)``: one message of m bytes to a waiting receiver.
* ``exchange(m)``: one ``sendrecv`` step in which both ranks send and receive m bytes.
* ``reduce(m)``: reducing m just-received bytes into the vector (``combine`` after the exchange).
* ``nans(m)``: the NaN pass over an m-byte result (``canonical_nans``: a dot product).
* ``copy(m)``: copying m bytes of the input into the output (none when they are one buffer).

Each step is a :class:`Piecewise` line through minima measured at powers of two, timed the way
a call is timed (after a barrier, the slowest rank's time, the same buffers). One call of an
algorithm on n bytes then costs its tiny call plus what the larger vector adds on its path:

    overhead[alg] + T(n) - T(tiny),     T = max(chain, work) + k*reduce(c/k) + nans(N) + copy(C)
    chain = a * one_way(b / a)          the dependent messages, one after another,
    work  = (M/p) * exchange(B / M)     the busiest rank's own sends and receives (LogP's g),

with k = a*c/b reductions on the path, and N and C the NaN-pass and copy bytes of the busiest
rank, counted by running the algorithm's own code on a recorder (:func:`local_passes`). A step
of m bytes out of an n-byte vector costs max(step(m), step(n)*m/n): where the vector spills out
of a cache that one step's bytes alone would fit in (a ring's half-vector steps at 16 MiB on a
32 MiB L3), every byte costs what it costs at the vector's size. The
consistency check (on by default) is a fixed ``check`` per call. Nothing is fitted on the
collectives' timings; per algorithm only the tiny call is measured.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._common import Recording, _canonical_nans, _copy
from .formulas import Call
from .registry import get
from .transport import Status

__all__ = ["Model", "Piecewise", "STEPS", "local_passes", "piecewise_fit"]

STEPS = ("one_way", "exchange", "reduce", "nans", "copy")   # the measured step tables, in this order


@dataclass(frozen=True)
class Piecewise:
    """t(m): linear between the measured ``sizes`` (bytes), flat below the first, the last slope beyond."""

    sizes: tuple[float, ...]
    seconds: tuple[float, ...]

    def __call__(self, m: float) -> float:
        s, t = self.sizes, self.seconds
        if m <= s[0]:
            return t[0]
        if m >= s[-1]:
            return t[-1] + (m - s[-1]) * self.segments()[-1][3]
        return float(np.interp(m, s, t))

    def segments(self) -> list[tuple[float, float, float, float]]:
        """(lo, hi, alpha_i, beta_i) per segment: t(m) = alpha_i + m*beta_i for lo <= m <= hi."""
        out = []
        for (lo, t0), (hi, t1) in zip(zip(self.sizes, self.seconds), zip(self.sizes[1:], self.seconds[1:])):
            beta = (t1 - t0) / (hi - lo)
            out.append((lo, hi, t0 - lo * beta, beta))
        return out

    def to_dict(self) -> dict:
        return {"sizes": list(self.sizes), "seconds": list(self.seconds)}


def piecewise_fit(sizes, seconds, *, floor: float = 0.0) -> Piecewise:
    """The piecewise line through the minima ``seconds`` at ``sizes``, made non-decreasing.

    Noise can make a larger size look faster than a smaller one; a time can only grow with the
    bytes, so a size that dips below the sizes before it is lifted to the larger of the two
    (pool-adjacent-violators would average them; the maximum keeps the minima's meaning: the
    least disturbed time seen). Values below ``floor`` are raised to it. Slopes are >= 0.
    """
    s = np.asarray(sizes, np.float64)
    t = np.asarray(seconds, np.float64)
    if s.ndim != 1 or s.shape != t.shape or len(s) < 2:
        raise ValueError(f"piecewise_fit: needs 1-D sizes and seconds of equal length >= 2, got {s.shape}, {t.shape}")
    if np.any(np.diff(s) <= 0) or not np.all(np.isfinite(t)):
        raise ValueError("piecewise_fit: sizes must increase and times be finite")
    t = np.maximum.accumulate(np.maximum(t, floor))
    return Piecewise(tuple(float(x) for x in s), tuple(float(x) for x in t))


class _Request:
    def wait(self) -> None:
        return None

    def test(self) -> bool:
        return True


class _Counter(Recording):
    """Stands in for one rank's transport while an algorithm runs once: moves nothing, counts the bytes
    of its NaN passes and of its copies between distinct buffers. One node (``network`` None), as on
    the machine the model describes."""

    parent = members = network = None

    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size
        self.nans = self.copies = 0

    def send(self, buf: np.ndarray, dest: int, tag: int = 0) -> None:
        pass

    def recv(self, buf: np.ndarray, source: int = -1, tag: int = -1) -> Status:
        return Status(source, tag, buf.nbytes)

    def sendrecv(self, sendbuf, dest, recvbuf, source, sendtag=0, recvtag=-1) -> Status:
        return Status(source, recvtag, recvbuf.nbytes)

    def isend(self, *args: Any) -> _Request:
        return _Request()

    def irecv(self, *args: Any) -> _Request:
        return _Request()

    def reduced(self, nbytes: int) -> None:
        pass

    def compute(self, flops: float) -> None:
        pass

    def split(self, color, key: int = 0):
        raise ValueError("local_passes: an algorithm that splits the transport on one node cannot be counted")

    def local(self, fn, *args: Any) -> None:
        if fn is _canonical_nans:
            self.nans += args[0].nbytes
        elif fn is _copy:
            dst, src = args
            if dst.__array_interface__["data"][0] != src.__array_interface__["data"][0]:
                self.copies += dst.nbytes   # NumPy skips a copy of a buffer onto itself


@functools.lru_cache(maxsize=4096)
def local_passes(algorithm: str, p: int, count: int, itemsize: int, in_place: bool = True) -> tuple[int, int]:
    """(NaN-pass bytes, copy bytes) of the busiest rank in one allreduce of ``count`` float elements of
    ``itemsize`` bytes on ``p`` ranks (``in_place``: out is the input), counted by running the registered
    algorithm's code on a recorder that moves nothing."""
    dtype = np.dtype(f"f{itemsize}")
    w = np.empty(count, dtype)   # never touched: the recorder only looks at the views' sizes and addresses
    src = w if in_place else np.empty(count, dtype)
    run = get("allreduce", algorithm).run
    nans = copies = 0
    for r in range(p):
        rec = _Counter(r, p)
        run(rec, w, np.add, 0, src)
        nans, copies = max(nans, rec.nans), max(copies, rec.copies)
    return nans, copies


@dataclass(frozen=True)
class Model:
    """The measured terms (see the module docstring); :meth:`predict` is one call's time in seconds."""

    ranks: int                     # the ranks the overheads were measured on
    tiny: int                      # bytes of the vector the overheads were measured on (float32)
    overhead: dict[str, float]     # algorithm -> seconds of one call on the tiny vector
    one_way: Piecewise
    exchange: Piecewise
    reduce: Piecewise
    nans: Piecewise
    copy: Piecewise
    check: float = 0.0             # the consistency check's seconds, added to a call with check=True

    def transfer(self, collective: str, algorithm: str, p: int, count: int, itemsize: int, *,
                 in_place: bool = True) -> float:
        """T: the step tables along the algorithm's critical path (no per-call overhead), in seconds."""
        if p < 2:
            return 0.0
        alg = get(collective, algorithm)
        c = Call(p, count, itemsize)
        n = float(count * itemsize)

        def step(table: Piecewise, m: float) -> float:
            # a step of m bytes out of an n-byte vector: its own time, or the vector's per-byte time when the
            # vector spills out of a cache the step alone would fit in (the caches see the vector, not the step)
            return max(table(m), table(n) * m / n) if 0 < m < n else table(m)

        M, B = alg.traffic(c)
        work = (M / p) * step(self.exchange, B / M) if M else 0.0
        best = 0.0
        for form in alg.cost(c).forms:
            # (a, b, c), or (a, b, c, ae, be) on a topology: one machine has one kind of link, so ae and be add
            a, b, cc = float(form[0] + sum(form[3:4])), float(form[1] + sum(form[4:5])), float(form[2])
            chain = a * step(self.one_way, b / a) if a else 0.0
            k = a * cc / b if b else (a if cc else 0.0)   # reductions on the path: one per reduced step
            red = k * step(self.reduce, cc / k) if k else 0.0
            best = max(best, max(chain, work) + red)
        if collective == "allreduce":
            nan_bytes, copy_bytes = local_passes(algorithm, p, count, itemsize, in_place)
            best += (self.nans(nan_bytes) if nan_bytes else 0.0) + (self.copy(copy_bytes) if copy_bytes else 0.0)
        return best

    def predict(self, collective: str, algorithm: str, p: int, count: int, itemsize: int, *,
                in_place: bool = True, check: bool = False) -> float:
        """Seconds one call of ``algorithm`` on ``count`` elements of ``itemsize`` on ``p`` ranks takes.

        ValueError when the algorithm's overhead was not measured on ``p`` ranks (the Python path of a
        call depends on p; the model does not extrapolate it).
        """
        if p < 2:
            return 0.0
        if p != self.ranks or algorithm not in self.overhead:
            raise ValueError(f"the model has no measured overhead for {collective} {algorithm!r} on {p} ranks "
                             f"(measured: {', '.join(self.overhead) or 'none'} on {self.ranks})")
        tiny = max(1, self.tiny // itemsize)
        grow = (self.transfer(collective, algorithm, p, count, itemsize, in_place=in_place)
                - self.transfer(collective, algorithm, p, tiny, itemsize, in_place=in_place))
        return self.overhead[algorithm] + grow + (self.check if check else 0.0)

    def terms(self) -> list[tuple[str, str]]:
        """(name, what it stands for), for the report."""
        return [("overhead", f"one real call on {self.ranks} ranks on a {self.tiny}-byte vector, per algorithm: "
                             "the Python path of the call and of each of its steps, and its messages' latency "
                             "(LogP's o, summed over the call)"),
                ("one_way", "one message to a waiting receiver: the closed form's α + mβ"),
                ("exchange", "one sendrecv step, both ranks sending and receiving m bytes: the busiest rank's "
                             "work (LogP's g)"),
                ("reduce", "reducing m just-received bytes into the vector: combine's call and the addition on "
                           "data that arrived through the other core"),
                ("nans", "the NaN pass over an m-byte result (recursive doubling's, so ranks end bit-identical)"),
                ("copy", "copying m bytes of the input into the output (none in place)"),
                ("check", "the cross-rank consistency check a call makes unless check=False")]

    def to_dict(self) -> dict:
        return {"ranks": self.ranks, "tiny_bytes": self.tiny, "overhead_s": dict(self.overhead),
                "check_s": self.check, **{name: getattr(self, name).to_dict() for name in STEPS}}

    @classmethod
    def from_dict(cls, d: dict) -> "Model":
        pw = lambda x: Piecewise(tuple(x["sizes"]), tuple(x["seconds"]))  # noqa: E731
        return cls(int(d["ranks"]), int(d["tiny_bytes"]), {k: float(v) for k, v in d["overhead_s"].items()},
                   *(pw(d[name]) for name in STEPS), check=float(d["check_s"]))
