"""Calibrate a cost model on the real machine and check that it predicts the real collectives.

    mpiexec -n 2 python -m mpisim.calibrate
    mpiexec -n 2 python -m mpisim.calibrate --validate --json calib.json

What Hockney's alpha + n*beta + n*gamma misses on one machine driven from Python, and how
:mod:`mpisim.comm.loggp` models it instead:

* **The Python path of a call** (argument checks, block offsets, the fold, scratch, the
  registry's dispatch, sendrecv's Python per step, recursive doubling's NaN pass at its smallest)
  is 10-20 us on 2 ranks: more than the bytes cost up to tens of KiB. Measured per algorithm as
  LogP's o of the whole call: a real call on all ranks on a 4-byte vector (``overhead``), not on
  a one-rank group (which skips every step).
* **Steps that are not one line in n**: MPICH changes protocol near 16 KiB, the cache changes
  the per-byte cost near the L2 and L3 sizes, an exchange costs more than a one-way message, and
  reducing just-arrived data is slower than an addition in cache. Each step is measured at every
  power of two of a size range, in the shape the algorithms use it (half a round trip: a message
  into scratch and one back into the vector; a sendrecv into scratch, then ``combine`` into the
  vector and the NaN pass; a copy) and kept as a
  piecewise line (LogGP's size-dependent G). A step of m bytes out of an n-byte vector costs at
  least m/n of a step of n bytes: a vector that spills out of the L3 makes every byte pay for it.
* **How a step is timed**: each sample starts after a barrier and counts the slowest rank's
  time, exactly as a validated call is timed. (Per-rank times of back-to-back steps, the usual
  ping-pong, are biased low: a rank that arrives late finds its data already there.)
* **The machine's state**: steps, tiny calls and validated calls are interleaved in rounds,
  size by size, on the same buffers (one vector whose prefixes every size uses, and the
  collectives' own scratch), so all see the same caches, page placement and load; each sample
  takes one of every kind (and starts with another algorithm). Each timed run is the second of two
  back-to-back runs of its kind: settled, as a step or call repeated in a loop. (Timed right after
  something else, two identical schedules on 2 ranks measured up to 2x apart, ring against
  Rabenseifner at 4 MiB: what ran just before decides which core's cache holds the buffers.) Load
  only adds time, in bursts, so every figure is the MINIMUM over all samples of all rounds (a
  step's three timed parts: those of its fastest sample).
* **The consistency check** (on by default; the validated calls pass ``check=False``): a
  fixed ``check`` per call, measured, added to a call that makes it.

The simulator's network stays Hockney's (Hockney 1994, "The communication challenge for MPP"):
alpha and beta from a least-squares fit, weighted by 1/t, of the one-way minima; gamma from the
slope of the reduction from 64 KiB up. A fit with a coefficient that is not > 0, or a one-way
minimum more than ``ROUGH`` times off its line, gets another round (pooled), up to
``MAX_ROUNDS``; still not > 0 is an error that says so, never a spec.

``--validate`` times every allreduce algorithm in the same rounds (a call's time is the slowest
rank's; the minimum over calls) and compares it with the model: within 25 % from 64 KiB, within
50 % below. Nothing of the model is fitted on these timings. It exits 1 if any point is outside
its bound (the report and the JSON are written first).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from .bench import fmt_size, parse_size
from .comm import allreduce, barrier, bcast
from .comm._common import canonical_nans, combine, consistency_check, scratch
from .comm.costs import ALGORITHMS
from .comm.loggp import STEPS, Model, piecewise_fit
from .comm.network import TICK, Network, format_seconds
from .train.checkpoint import atomic_write_bytes
from .train.distributed import under_mpiexec
from .train.options import _int_at_least, prepare_output_file

__all__ = ["BIG", "CalibrationError", "TOLERANCE", "bound", "calibrate", "compare", "fit_alpha_beta", "pow2_range",
           "size_range", "to_network", "main"]

PROG = "python -m mpisim.calibrate"
USAGE_MPI = f"mpiexec -n 2 {PROG}"
WARMUP = 2           # untimed samples before each measurement
ROUNDS = 5           # rounds over all sizes (steps, tiny calls, validated calls interleaved) ...
MAX_ROUNDS = 8       # ... and up to this many until the fit is sane (pooled)
SETTLE = 2           # runs of a kind back to back; the last is timed (see "The machine's state")
ROUGH = 3.0          # sane: alpha, beta, gamma > 0 and every one-way minimum within 3x of the line
GAMMA_FROM = 64 << 10  # gamma: the slope of the reduction step from this size up
TINY = 4             # bytes of the vector a call's overhead is measured on (one float32)
BIG = 64 << 10       # validation: sizes >= this must be within TOLERANCE ...
TOLERANCE = 0.25
SMALL_TOLERANCE = 0.50   # ... and smaller ones within this
MAX_SIZE = 1 << 30   # largest message or vector a size range may ask for
_TAG = 201           # the steps' tag (the collectives use 101..109)


def fit_alpha_beta(sizes, seconds) -> tuple[float, float]:
    """Least-squares fit of t(n) = alpha + n*beta, weighted by 1/t(n); both clamped to >= 0.

    Minimizes sum(((alpha + n*beta) - t) / t)**2, the relative error, so that each size counts
    alike. A coefficient that would come out negative is set to 0 and the other refitted (the
    caller decides what a 0 means: :func:`calibrate` measures again, then fails).
    """
    n = np.asarray(sizes, dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    if n.ndim != 1 or n.shape != t.shape:
        raise ValueError(f"fit_alpha_beta: sizes and seconds must be 1-D of equal length, got {n.shape} and {t.shape}")
    if len(np.unique(n)) < 2:
        raise ValueError(f"fit_alpha_beta: needs at least 2 different sizes, got {n.tolist()}")
    if not (np.all(np.isfinite(t)) and np.all(t > 0) and np.all(n >= 0)):
        raise ValueError("fit_alpha_beta: times must be finite and > 0, sizes >= 0")
    A = np.stack([1 / t, n / t], axis=1)   # (k, 2): row i says (alpha + n_i beta) / t_i ~ 1
    scale = np.linalg.norm(A, axis=0)      # columns differ by orders of magnitude: normalize
    (alpha, beta), *_ = np.linalg.lstsq(A / scale, np.ones_like(t), rcond=None)
    alpha, beta = alpha / scale[0], beta / scale[1]
    if beta < 0:
        alpha, beta = np.sum(1 / t) / np.sum(1 / t ** 2), 0.0
    elif alpha < 0:
        alpha, beta = 0.0, np.sum(n / t) / np.sum((n / t) ** 2)
    return float(alpha), float(beta)


class CalibrationError(RuntimeError):
    """The timings could not give a network with alpha, beta and gamma > 0 (the machine was too busy)."""


def to_network(alpha_s: float, beta_s: float, gamma_s: float) -> Network:
    """The simulator's network for alpha in seconds, beta and gamma in seconds per byte."""
    return Network(round(alpha_s / TICK), round(beta_s / TICK), round(gamma_s / TICK), name="calibrated")


def size_range(lo: int, hi: int) -> list[int]:
    """lo, every power of 4 above lo up to hi, and hi: 1:16M -> 1, 4, 16, ..., 16M."""
    return _range_by(lo, hi, 4)


def pow2_range(lo: int, hi: int) -> list[int]:
    """lo, every power of 2 above lo up to hi, and hi: 1:16 -> 1, 2, 4, 8, 16."""
    return _range_by(lo, hi, 2)


def _range_by(lo: int, hi: int, base: int) -> list[int]:
    out, s = [lo], 1
    while s <= hi:
        if s > lo:
            out.append(s)
        s *= base
    return out if out[-1] == hi else out + [hi]


# -- the micro-benchmarks: one sample each, after a barrier; each rank returns its own time(s) ---------------

def _one_way(t, X: np.ndarray, nbytes: int) -> float:
    """Half a round trip of ``nbytes``: rank 1's vector into rank 0's scratch, then rank 0's vector back into
    rank 1's (the naive and tree algorithms' two messages on 2 ranks, without their reduction); rank 0's
    time is the one-way's share of the slowest rank's."""
    buf, tmp = X.view(np.uint8)[:nbytes], scratch(nbytes, np.uint8)
    barrier(t)
    t0 = time.perf_counter()
    if t.rank == 0:
        t.recv(tmp, 1, _TAG)
        t.send(buf, 1, _TAG)
    else:
        t.send(buf, 0, _TAG)
        t.recv(buf, 0, _TAG)
    return (time.perf_counter() - t0) / 2


def _step(t, X: np.ndarray, nbytes: int) -> tuple[float, float, float]:
    """Recursive doubling's step on ``nbytes`` in its three parts: the sendrecv of the vector into scratch,
    ``combine`` of what arrived into the vector, the NaN pass."""
    m = nbytes // 4
    w, buf = X[:m], X.view(np.uint8)[:nbytes]
    peer = 1 - t.rank
    barrier(t)
    t0 = time.perf_counter()
    tmp = scratch(nbytes, np.uint8)
    t.sendrecv(buf, peer, tmp, peer, _TAG, _TAG)
    t1 = time.perf_counter()
    combine(t, np.add, tmp[:4 * m].view(np.float32), w, w)   # X is zeros: the sums stay 0
    t2 = time.perf_counter()
    canonical_nans(t, w)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def _copy(X: np.ndarray, nbytes: int) -> float:
    """A copy of ``nbytes`` of the vector into another buffer (local: no barrier)."""
    m = nbytes // 4
    dst = scratch(m, np.float32, slot=2)
    t0 = time.perf_counter()
    np.copyto(dst, X[:m])
    return time.perf_counter() - t0


def _time_call(t, x: np.ndarray, algorithm: str) -> float:
    """One allreduce call on ``x`` (in place, check=False) after a barrier."""
    barrier(t)
    t0 = time.perf_counter()
    allreduce(t, x, algorithm=algorithm, out=x, check=False)
    return time.perf_counter() - t0


def _time_check(t) -> float:
    """One consistency check of an allreduce's fields (what check=True adds to a call) after a barrier."""
    barrier(t)
    t0 = time.perf_counter()
    consistency_check(t, "allreduce", True, length=4, dtype=np.dtype(np.float32), op="sum", algorithm="auto")
    return time.perf_counter() - t0


def _slowest(t, times: np.ndarray) -> np.ndarray:
    """Per sample, the slowest rank's time (every rank of ``t`` gets it)."""
    return allreduce(t, np.ascontiguousarray(times, np.float64), op="max", algorithm="recursive_doubling",
                     check=False)


def _samples(t, pair, X: np.ndarray, n: int, steps: bool, algorithms, reps: int) -> dict:
    """``reps`` samples at size ``n`` (bytes), interleaved sample by sample so that every kind sees the same
    moments of the machine: with ``steps`` the one-way, step and copy between ranks 0 and 1 (``pair``; None
    on the others), then one call of each of ``algorithms`` on ``X[:n // 4]`` on all ranks (sample i starts
    with algorithm i mod k: none always comes first); ``n == 0``: the tiny calls (on ``TINY`` bytes) and
    the check. Every timed sample is the last of ``SETTLE`` back-to-back runs of its kind (settled: the time
    of a step or call repeated in a loop, as a training step repeats its allreduce; what ran just before
    it otherwise decides where its buffers sit in the two cores' caches, and two identical schedules
    measured up to 2x apart). The first ``WARMUP`` samples are not kept. Returns
    {key: slowest-rank times}, the same on every rank that took part."""
    kinds = ([("one_way", n), ("exchange", n), ("reduce", n), ("nans", n), ("copy", n)] if steps else [])
    calls = [("overhead", a) if n == 0 else ("call", a, n) for a in algorithms] + ([("check",)] if n == 0 else [])
    x = X[:(TINY if n == 0 else n) // 4]
    pair_t = np.zeros((len(kinds), reps))
    all_t = np.zeros((len(calls), WARMUP + reps))   # the warm-up samples' columns come first, then dropped
    for i in range(-WARMUP, reps):
        if kinds and pair is not None:   # each timed run comes right after untimed ones of its kind: settled
            for _ in range(SETTLE):
                one = _one_way(pair, X, n)
            for _ in range(SETTLE):
                ex, red, nan = _step(pair, X, n)
            cp = _copy(X, n)
            if i >= 0:
                pair_t[:, i] = one, ex, red, nan, cp
        k = i % len(algorithms) if algorithms else 0
        for j in list(range(k, len(algorithms))) + list(range(k)):
            for _ in range(SETTLE):
                all_t[j, WARMUP + i] = _time_call(t, x, algorithms[j])
        if n == 0:
            all_t[-1, WARMUP + i] = _time_check(t)
    out = {}
    if kinds and pair is not None:
        pair_t[:4] = _slowest(pair, pair_t[:4])   # the copy is rank 0's own
        out.update(zip(kinds, pair_t))
    if calls:
        out.update(zip(calls, _slowest(t, all_t[:, WARMUP:])))
    return out


def _round(t, pair, X: np.ndarray, sizes: list[int], vsizes: list[int], algorithms, reps: int, got: dict) -> None:
    """One round: the tiny calls and the check, then size by size (ascending) the steps (at ``sizes``) and the
    validated calls (at ``vsizes``), interleaved sample by sample; appends each key's times to ``got``."""
    for n in [0] + sorted(set(sizes) | set(vsizes)):
        got_n = _samples(t, pair, X, n, n in sizes, algorithms if n == 0 or n in vsizes else (), reps)
        for key, times in got_n.items():
            got.setdefault(key, []).append(times)
        if t.size > 2 and n in sizes:
            barrier(t)   # ranks >= 2 wait here while ranks 0 and 1 time the steps


_PARTS = ("exchange", "reduce", "nans")   # the three timed parts of one step sample


def _stats(got: dict, keys: list, sizes: list[int]) -> dict:
    """{key: (minimum, median)} over all rounds' samples; a step's three parts are taken from its fastest
    sample as a whole (the minima of the parts, each from another sample, would add up to less than any
    step took)."""
    out = {k: (float(np.min(np.concatenate(got[k]))), float(np.median(np.concatenate(got[k])))) for k in keys}
    for n in sizes:
        parts = np.array([np.concatenate(got[k, n]) for k in _PARTS])   # (3, samples)
        best = parts[:, np.argmin(parts.sum(axis=0))]
        out.update({(k, n): (float(v), out[k, n][1]) for k, v in zip(_PARTS, best)})
    return out


def _fit(sizes, low: dict[str, np.ndarray]) -> tuple[dict[str, object], np.ndarray]:
    """The step tables and [alpha, beta, gamma, off] from the minima; off, the largest factor between a
    one-way minimum and its fitted line (either way; inf where the line is 0)."""
    n = np.asarray(sizes, np.float64)
    alpha, beta = fit_alpha_beta(n, low["one_way"])
    big = n >= min(GAMMA_FROM, n[-1] / 4)
    red = np.maximum(low["reduce"], 1e-12)
    gamma = fit_alpha_beta(n[big], red[big])[1] if big.sum() >= 2 else 0.0
    fitted = alpha + n * beta
    with np.errstate(divide="ignore"):
        off = float(np.max(np.maximum(low["one_way"] / fitted, fitted / low["one_way"])))
    tables = {k: piecewise_fit(n, low[k]) for k in STEPS}
    return tables, np.array([alpha, beta, gamma, off])


def calibrate(t, sizes: list[int], reps: int, *, vsizes=(), algorithms=None, rounds: int = ROUNDS,
              max_rounds: int = MAX_ROUNDS, say=lambda text: None) -> dict:
    """Measure the model of :mod:`mpisim.comm.loggp` and, for ``vsizes``, time every allreduce against it.

    Each round (see :func:`_round`) takes ``reps`` samples of every step at every size of ``sizes``
    (ranks 0 and 1), of every algorithm's call on a ``TINY``-byte vector and of the consistency check,
    and, at each of ``vsizes`` (bytes, multiples of 4), of every algorithm's call; sizes ascending and
    interleaved. After ``rounds`` rounds the fit needs alpha, beta, gamma > 0 and every one-way minimum
    within ``ROUGH`` times its line, else another round, up to ``max_rounds``; still not > 0 raises
    :class:`CalibrationError` (on every rank).

    Collective: every rank calls it and gets the same dict (JSON-able): ranks, network, alpha_s,
    beta_s_per_byte, gamma_s_per_byte, model (:meth:`Model.to_dict`), rounds, reps, fit_off, ``steps``
    (per size: bytes, and per step ``<step>_min_s`` and ``<step>_median_s``; exchange, reduce and nans
    are the parts of the fastest sample of the three together, see :func:`_stats`), and ``validation``
    (:func:`compare`'s rows; empty without ``vsizes``).
    """
    if t.size < 2:
        raise ValueError(f"calibrate needs at least 2 ranks, got {t.size}")
    if not 1 <= rounds <= max_rounds:
        raise ValueError(f"calibrate: needs 1 <= rounds <= max_rounds, got {rounds} and {max_rounds}")
    if len(set(sizes)) < 2:
        raise ValueError(f"calibrate needs at least 2 sizes, got {sorted(set(sizes))}")
    # the steps also at the tiny call's sizes: T(tiny) is measured, not extrapolated
    sizes, vsizes = sorted(set(sizes) | set(pow2_range(1, TINY))), sorted(set(vsizes))
    if any(n < 4 or n % 4 for n in vsizes):
        raise ValueError(f"calibrate: validation sizes must be multiples of 4 bytes (float32 vectors), got {vsizes}")
    algorithms = tuple(ALGORITHMS["allreduce"] if algorithms is None else algorithms)
    pair = t if t.size == 2 else t.split(0 if t.rank < 2 else None)
    X = np.zeros(-(-max(sizes + vsizes + [TINY]) // 4), np.float32)   # every size's buffer: a prefix of this one
    # the layout of what rank 0 broadcasts: (min, median) per step and size, overhead, check, call
    keys = ([(k, n) for k in STEPS for n in sizes] + [("overhead", a) for a in algorithms] + [("check",)]
            + [("call", a, n) for n in vsizes for a in algorithms])
    got: dict = {}
    for r in range(1, max_rounds + 1):
        say(f"round {r}: steps at {len(sizes)} sizes between ranks 0 and 1, {len(algorithms)} allreduce "
            f"algorithms on a {TINY}-byte vector" + (f" and at {len(vsizes)} sizes" if vsizes else "")
            + f", {reps} samples each")
        barrier(t)
        _round(t, pair, X, sizes, vsizes, algorithms, reps, got)
        flat = np.zeros(4 + 2 * len(keys))
        if t.rank == 0:
            stats = _stats(got, keys, sizes)
            low = {k: np.array([stats[k, n][0] for n in sizes]) for k in STEPS}
            flat[:4] = _fit(sizes, low)[1]
            flat[4:] = np.ravel([stats[k] for k in keys])
        flat = bcast(t, flat, 0, check=False)   # rank 0's verdict for everyone: all go on or stop together
        alpha, beta, gamma, off = (float(x) for x in flat[:4])
        net = to_network(alpha, beta, gamma)
        positive = net.alpha > 0 and net.beta > 0 and net.gamma > 0
        if r >= rounds and positive and off <= ROUGH:
            break
        if r >= rounds and r < max_rounds:
            say(f"round {r}: fit {'not > 0' if not positive else f'{off:.1f}x off a minimum'} "
                f"(alpha {alpha:.3g} s, beta {beta:.3g} s/B, gamma {gamma:.3g} s/B): the machine is busy; "
                "measuring again")
    stat = dict(zip(keys, flat[4:].reshape(-1, 2)))
    low = {k: np.array([stat[k, n][0] for n in sizes]) for k in STEPS}
    if not positive:
        bad = ", ".join(name for name, v in (("alpha", net.alpha), ("beta", net.beta), ("gamma", net.gamma))
                        if v <= 0)
        mins = ", ".join(f"{fmt_size(n)}: {format_seconds(float(m))}" for n, m in zip(sizes, low["one_way"]))
        raise CalibrationError(
            f"the fit came out with {bad} not > 0 (alpha {alpha:.3g} s, beta {beta:.3g} s/B, gamma "
            f"{gamma:.3g} s/B) after {r} round{'s' * (r > 1)} of {reps} samples per size; the "
            f"minimum one-way times were {mins}. The machine is too busy for the per-byte costs to show "
            "above the noise: run it on a quieter machine, with more --reps, or with larger --sizes "
            "(default 1:16M)")
    tables, _ = _fit(sizes, low)
    model = Model(t.size, TINY, {a: float(stat["overhead", a][0]) for a in algorithms}, *(tables[k] for k in STEPS),
                  check=float(stat["check",][0]))
    calls = {(a, n): tuple(float(v) for v in stat["call", a, n]) for n in vsizes for a in algorithms}
    return {
        "ranks": t.size, "network": net.spec(),
        "alpha_s": alpha, "beta_s_per_byte": beta, "gamma_s_per_byte": gamma,
        "model": model.to_dict(), "rounds": r, "reps": reps, "fit_off": off,
        "overhead_median_s": {a: float(stat["overhead", a][1]) for a in algorithms},
        "check_median_s": float(stat["check",][1]),
        "steps": [{"bytes": n, **{f"{k}_min_s": float(stat[k, n][0]) for k in STEPS},
                   **{f"{k}_median_s": float(stat[k, n][1]) for k in STEPS},
                   "one_way_fit_s": alpha + n * beta} for n in sizes],
        "validation": compare(model, t.size, calls),
    }


def bound(nbytes: int) -> float:
    """The relative error --validate allows at a vector of ``nbytes``."""
    return TOLERANCE if nbytes >= BIG else SMALL_TOLERANCE


def compare(model: Model, p: int, calls: dict) -> list[dict]:
    """Rows of measured against predicted: ``calls`` maps (algorithm, bytes) to (minimum, median) seconds of
    in-place float32 calls without the check on ``p`` ranks. Each row: algorithm, bytes, measured_s,
    median_s, model_s, overhead_s (the model's tiny call), error = measured/model - 1, bound, ok."""
    rows = []
    for (alg, n), (measured, median) in calls.items():
        model_s = model.predict("allreduce", alg, p, n // 4, 4)
        error = measured / model_s - 1
        rows.append({"algorithm": alg, "bytes": n, "measured_s": measured, "median_s": median, "model_s": model_s,
                     "overhead_s": model.overhead[alg], "error": error, "bound": bound(n),
                     "ok": bool(abs(error) <= bound(n))})
    return rows


def _range(text: str) -> tuple[int, int]:
    lo_text, sep, hi_text = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected LO:HI, e.g. 1:16M; got {text!r}")
    lo, hi = parse_size(lo_text), parse_size(hi_text)
    if not 1 <= lo <= hi <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"expected 1 <= LO <= HI <= {fmt_size(MAX_SIZE)}, got {text!r}")
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure this machine's point-to-point steps and each allreduce's call on a tiny vector,\n"
                    "build a cost model (piecewise in the message size), print alpha, beta and gamma as a\n"
                    "--network spec for the simulator, and with --validate check the model against\n"
                    f"every allreduce algorithm: within {TOLERANCE:.0%} from {fmt_size(BIG)}, "
                    f"{SMALL_TOLERANCE:.0%} below (exit 1 if not).",
        epilog=f"example:\n  {USAGE_MPI} --validate --json calib.json\n"
               "  -> --network alpha=2.1us,beta=5.3GB/s,gamma=4.8GB/s")
    ap.add_argument("--sizes", type=_range, metavar="LO:HI",
                    help="step message sizes: LO, the powers of 2 between, HI (default 1:16M; --quick 1:1M); "
                         "the model extrapolates beyond HI with the last slope")
    ap.add_argument("--reps", type=_int_at_least(1, "a positive integer"), metavar="N",
                    help="samples per step and size, and calls per algorithm and size, in each round; "
                         "the model and the validation take the minimum (default 30; --quick 10)")
    ap.add_argument("--validate", action="store_true",
                    help="also time every allreduce algorithm on all ranks and compare with the model")
    ap.add_argument("--validate-sizes", type=_range, metavar="LO:HI",
                    help="allreduce vector sizes in bytes, multiples of 4: LO, the powers of 4 between, HI "
                         "(default 8:16M; --quick 4K:256K)")
    ap.add_argument("--json", metavar="FILE", help="write all results to FILE as JSON (rank 0)")
    ap.add_argument("--quick", action="store_true", help="few sizes and repetitions: a smoke test of seconds")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap


def _say(rank: int, quiet: bool):
    if rank != 0 or quiet:
        return lambda text: None
    return lambda text: print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def _t(s: float) -> str:
    return format_seconds(s)


def _report(res: dict, net: Network, model: Model) -> None:
    rows = res["validation"]
    samples = res["rounds"] * res["reps"]
    print(f"steps between ranks 0 and 1, each sample after a barrier, the slowest rank's time; minimum of {samples} "
          "samples (JSON: medians): one-way = half a round trip (into scratch, back into the vector); exchange, "
          "reduce, nans = the parts of the fastest sample of a sendrecv into scratch, combine of what arrived into "
          "the vector, the NaN pass; copy = a copy into another buffer")
    print(f"{'size':>10} {'one-way':>10} {'line':>10} {'exchange':>10} {'reduce':>10} {'nans':>10} {'copy':>10}")
    for r in res["steps"]:
        print(f"{fmt_size(r['bytes']):>10} {_t(r['one_way_min_s']):>10} {_t(r['one_way_fit_s']):>10} "
              + " ".join(f"{_t(r[k + '_min_s']):>10}" for k in ("exchange", "reduce", "nans", "copy")))
    print(f"fit: {net}  (alpha, beta: the line through the one-way minima; gamma: the slope of the reduction "
          f"from {fmt_size(GAMMA_FROM)})")
    print("model (mpisim.comm.loggp): overhead[alg] + T(n) - T(tiny), T = max(chain, work) + k*reduce(c/k) + "
          "nans + copy along each algorithm's closed-form counts; its terms:")
    for name, what in model.terms():
        if name == "overhead":
            print(f"  overhead: {what}: " + ", ".join(f"{a} {_t(s)}" for a, s in model.overhead.items()))
        elif name == "check":
            print(f"  check {_t(model.check)}: {what} (the calls below pass check=False)")
        else:
            segs = getattr(model, name).segments()
            print(f"  {name}: {what}; piecewise, {len(segs)} segments, {_t(segs[0][2] + segs[0][0] * segs[0][3])} "
                  f"at {fmt_size(int(segs[0][0]))}, last slope {segs[-1][3] * 1e9:.4g} ns/B")
    if rows:
        print(f"allreduce on {res['ranks']} ranks, in place, check=False: slowest rank's time, minimum over "
              f"{samples} calls (median in brackets); model = overhead + what the bytes add")
        print(f"{'algorithm':>20} {'size':>10} {'measured':>10} {'[median]':>10} {'model':>10} {'overhead':>10} "
              f"{'error':>8} {'bound':>6}")
        for r in rows:
            print(f"{r['algorithm']:>20} {fmt_size(r['bytes']):>10} {_t(r['measured_s']):>10} "
                  f"{_t(r['median_s']):>10} {_t(r['model_s']):>10} {_t(r['overhead_s']):>10} {r['error']:>+8.1%} "
                  f"{r['bound']:>6.0%}{'' if r['ok'] else '  NOT within'}")
        for label, part in ((f">= {fmt_size(BIG)}", [r for r in rows if r["bytes"] >= BIG]),
                            (f"< {fmt_size(BIG)}", [r for r in rows if r["bytes"] < BIG])):
            if part:
                worst = max(part, key=lambda r: abs(r["error"]))
                verdict = "within" if worst["ok"] else "NOT within"
                print(f"largest |error| at {label} on {res['ranks']} ranks: {worst['error']:+.1%} "
                      f"({worst['algorithm']}, {fmt_size(worst['bytes'])}): {verdict} {worst['bound']:.0%}")
        bad = sum(not r["ok"] for r in rows)
        print(f"validation: {'all' if not bad else len(rows) - bad} of {len(rows)} points within their bound"
              + (f"; {bad} outside" if bad else ""))
    print(f"--network {net.spec()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    sizes = pow2_range(*(args.sizes or ((1, 1 << 20) if args.quick else (1, 16 << 20))))
    vsizes = size_range(*(args.validate_sizes or ((4 << 10, 256 << 10) if args.quick else (8, 16 << 20))))
    reps = args.reps or (10 if args.quick else 30)
    if len(sizes) < 2:
        ap.error(f"--sizes needs LO < HI for a fit of alpha and beta, got {sizes[0]}:{sizes[0]}")
    if any(n % 4 for n in vsizes):
        ap.error("--validate-sizes: LO and HI must be multiples of 4 bytes (float32 vectors)")
    if not under_mpiexec():
        print(f"{PROG}: needs 2 or more MPI processes; run it as '{USAGE_MPI}'", file=sys.stderr)
        return 2
    if args.json:
        prepare_output_file(ap, "--json", args.json)
    from mpi4py import MPI
    if MPI.COMM_WORLD.Get_size() < 2:
        print(f"{PROG}: needs 2 or more MPI processes, got 1; run it as '{USAGE_MPI}'", file=sys.stderr)
        return 2

    from .comm import mpi_transport
    t = mpi_transport()   # an exception on any rank now aborts the whole job
    say = _say(t.rank, args.quiet)
    if t.size > 2:
        say(f"{t.size} ranks: steps between ranks 0 and 1 (the others wait); validation on all {t.size}")
    start = time.perf_counter()
    try:
        res = calibrate(t, sizes, reps, vsizes=vsizes if args.validate else (), rounds=2 if args.quick else ROUNDS,
                        say=say)
    except CalibrationError as e:   # raised on every rank alike: all return, nobody hangs
        if t.rank == 0:
            print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 1
    if t.rank == 0 and res["fit_off"] > ROUGH:
        print(f"{PROG}: warning: after {res['rounds']} rounds a one-way minimum is still "
              f"{res['fit_off']:.1f}x off the fitted line: the machine is busy, the spec is rough",
              file=sys.stderr, flush=True)
    net = to_network(res["alpha_s"], res["beta_s_per_byte"], res["gamma_s_per_byte"])
    rows = res["validation"]
    ok = all(r["ok"] for r in rows)
    if t.rank == 0:
        say(f"done in {time.perf_counter() - start:.1f} s")
        _report(res, net, Model.from_dict(res["model"]))
        if args.json:
            atomic_write_bytes(args.json, json.dumps({**res, "within_bounds": ok}, indent=1).encode())
        if not ok:
            bad = [r for r in rows if not r["ok"]]
            worst = max(bad, key=lambda r: abs(r["error"]) - r["bound"])
            print(f"{PROG}: error: the model is not within its bound at {len(bad)} of {len(rows)} points "
                  f"(worst {worst['error']:+.1%} for {worst['algorithm']} at {fmt_size(worst['bytes'])}, bound "
                  f"{worst['bound']:.0%})", file=sys.stderr, flush=True)
    barrier(t)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
