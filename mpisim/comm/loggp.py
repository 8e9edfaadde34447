"""A calibrated cost model that predicts real collectives: measured step times, piecewise in the size.

Hockney's alpha + n*beta (and gamma for reductions) is what the simulator runs, but on one
shared-memory machine driven from Python it misses by factors (a collective pays a Python path
per call, MPI changes protocol near 16 KiB, the cache changes beta again near the L2 size, and
data that just arrived sits in the other core's cache when it is reduced). This model keeps the
closed forms' counts (:mod:`mpisim.comm.costs`: messages ``a``, bytes ``b`` and reduced bytes
``c`` on the critical path; messages ``M`` and bytes ``B`` of all ranks) and replaces the three
constants by measured step times, in the spirit of LogGP (Alexandrov et al. 1995, "LogGP:
incorporating long messages into the LogP model"), whose o and G depend on the message size:

* ``front``: the fixed Python path of one collective call (argument checks, dispatch),
  measured on a one-rank group, where it sends nothing.
* ``one_way(m)``: one message of m bytes from a sender to a waiting receiver (half a ping-pong).
* ``exchange(m)``: one ``sendrecv`` step in which both ranks send and receive m bytes.
* ``reduce(m)``: what reducing m just-received bytes adds to a step (the exchange-then-reduce
  step minus the exchange): combine's Python call plus the addition on data still in the
  sender's cache.

Each is a :class:`Piecewise` line through the minima measured at powers of two: a separate
intercept and slope (alpha_i, beta_i) between consecutive sizes, never decreasing. One call of
an algorithm then costs

    front + max(chain, work) + k * reduce(c / k)      with k = a*c/b reductions on the path,
    chain = a * one_way(b / a)                        the dependent messages, one after another,
    work  = (M/p) * exchange(B / M)                   the busiest rank's own sends and receives,

the larger of the latency chain (what the closed form counts) and the per-rank work (LogP's o
and g: a rank's CPU handles its messages one at a time, and on shared memory it copies them).
For every registered allreduce the counts come from its registry entry; nothing is fitted per
algorithm.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .formulas import Call
from .registry import get

__all__ = ["Model", "Piecewise", "piecewise_fit"]


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


@dataclass(frozen=True)
class Model:
    """The fitted terms (see the module docstring); :meth:`predict` is one call's time in seconds."""

    front: float
    one_way: Piecewise
    exchange: Piecewise
    reduce: Piecewise

    def predict(self, collective: str, algorithm: str, p: int, count: int, itemsize: int) -> float:
        """Seconds one call of ``algorithm`` on ``count`` elements of ``itemsize`` on ``p`` ranks takes."""
        if p < 2:
            return self.front
        alg = get(collective, algorithm)
        c = Call(p, count, itemsize)
        M, B = alg.traffic(c)
        work = (M / p) * self.exchange(B / M) if M else 0.0
        best = 0.0
        for form in alg.cost(c).forms:
            # (a, b, c), or (a, b, c, ae, be) on a topology: one machine has one kind of link, so ae and be add
            a, b, cc = float(form[0] + sum(form[3:4])), float(form[1] + sum(form[4:5])), float(form[2])
            chain = a * self.one_way(b / a) if a else 0.0
            k = a * cc / b if b else (a if cc else 0.0)   # reductions on the path: one per reduced step
            red = k * self.reduce(cc / k) if k else 0.0
            best = max(best, max(chain, work) + red)
        return self.front + best

    def terms(self) -> list[tuple[str, str]]:
        """(name, what it stands for), for the report."""
        return [("front", "the Python path of one collective call (checks, dispatch), measured on a one-rank group"),
                ("one_way", "one message to a waiting receiver, half a ping-pong: the closed form's α + mβ"),
                ("exchange", "one sendrecv step, both ranks sending and receiving m bytes: the busiest rank's work"),
                ("reduce", "what reducing m just-received bytes adds to a step: combine's call and the addition "
                           "on data still in the other core's cache")]

    def to_dict(self) -> dict:
        return {"front_s": self.front, "one_way": self.one_way.to_dict(), "exchange": self.exchange.to_dict(),
                "reduce": self.reduce.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Model":
        pw = lambda x: Piecewise(tuple(x["sizes"]), tuple(x["seconds"]))  # noqa: E731
        return cls(float(d["front_s"]), pw(d["one_way"]), pw(d["exchange"]), pw(d["reduce"]))
