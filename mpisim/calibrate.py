"""Calibrate a cost model on the real machine and check that it predicts the real collectives.

    mpiexec -n 2 python -m mpisim.calibrate
    mpiexec -n 2 python -m mpisim.calibrate --validate --json calib.json

Ranks 0 and 1 time three point-to-point steps through the MPI transport (Python overhead
included: it is what the collectives pay), at every power of two of a size range, the sizes
interleaved and the whole sweep repeated in passes: a one-way message (half a ping-pong), a
``sendrecv`` exchange, and an exchange followed by the reduction of what arrived (the inner step
of the reducing collectives). Every rank also times a collective call on a one-rank group: the
fixed Python path of a call, where nothing is sent. From the MINIMUM of each (load only ever
adds time, in bursts: a descheduled rank costs a whole time slice, so the minimum is the least
disturbed estimate, as latency benchmarks use it) :mod:`mpisim.comm.loggp` builds piecewise
step times (a separate alpha and beta between consecutive sizes: MPICH changes protocol near
16 KiB and the cache changes beta again), and predicts every registered allreduce from the
counts of its closed form (:mod:`mpisim.comm.costs`). Nothing is fitted on the collectives.

The simulator's network is Hockney's (Hockney 1994, "The communication challenge for MPP"):
alpha + n*beta per message, gamma per reduced byte. alpha and beta come from a least-squares fit,
weighted by 1/t, of the one-way minima; gamma from the slope of the reduction step from 64 KiB
up. A fit with a coefficient that is not > 0, or a one-way minimum more than ``ROUGH`` times off
its line, is measured again (another pass, pooled), up to ``PASSES`` passes; still not > 0 is an
error that says so, never a spec.

``--validate`` then times every allreduce algorithm on all ranks (sizes and algorithms
interleaved in rounds; a call's time is the slowest rank's; the minimum over calls) and compares
it with the model: within 25 % from 64 KiB, within 50 % below. It exits 1 if any point is
outside its bound (the report and the JSON are written first).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from .bench import fmt_size, parse_size
from .comm import allreduce, barrier, bcast
from .comm._common import combine, consistency_check, scratch
from .comm.costs import ALGORITHMS
from .comm.loggp import Model, piecewise_fit
from .comm.network import TICK, Network, format_seconds
from .train.checkpoint import atomic_write_bytes
from .train.distributed import under_mpiexec
from .train.options import _int_at_least, prepare_output_file

__all__ = ["BIG", "CalibrationError", "TOLERANCE", "calibrate", "fit_alpha_beta", "pow2_range", "size_range",
           "to_network", "validate", "main"]

PROG = "python -m mpisim.calibrate"
USAGE_MPI = f"mpiexec -n 2 {PROG}"
WARMUP = 3           # untimed round trips / calls before each measurement
PASSES = 4           # at most this many passes over all sizes until the fit is sane (pooled)
MIN_PASSES = 2       # ... and at least this many: a burst of load then spoils one pass, not the minimum
ROUGH = 3.0          # ... sane: alpha, beta, gamma > 0 and every one-way minimum within 3x of the line
GAMMA_FROM = 64 << 10  # gamma: the slope of the reduction step from this size up
BIG = 64 << 10       # validation: sizes >= this must be within TOLERANCE ...
TOLERANCE = 0.25
SMALL_TOLERANCE = 0.50   # ... and smaller ones within this
ROUNDS = 3           # validation: rounds over all sizes and algorithms, interleaved
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


# -- the micro-benchmarks: each returns rank 0's times of `reps` steps (other ranks: their own) -----------

def _pingpong(t, nbytes: int, reps: int) -> np.ndarray:
    """One-way times (half round trips) of ``reps`` round trips between ranks 0 and 1, on rank 0.

    Each side receives into its vector and sends that on: the message carries data that has just
    arrived (dirty in the other core's cache), as a tree passes on what it got and the naive root
    sends what it just reduced. A never-written send buffer is 20-25 % faster from 256 KiB on this
    kind of machine, and predicts those chains too fast.
    """
    buf = tmp = np.zeros(nbytes, np.uint8)
    times = np.empty(reps)
    for i in range(-WARMUP, reps):
        if t.rank == 0:
            t0 = time.perf_counter()
            t.send(buf, 1, _TAG)
            t.recv(tmp, 1, _TAG)
            if i >= 0:
                times[i] = (time.perf_counter() - t0) / 2
        else:
            t.recv(tmp, 0, _TAG)
            t.send(buf, 0, _TAG)
    return times


def _exchange(t, nbytes: int, reps: int, reduce: bool = False) -> np.ndarray:
    """Times of ``reps`` sendrecv steps between ranks 0 and 1 (both send and receive ``nbytes``),
    each followed, when ``reduce``, by ``combine`` of what arrived into the sent vector as float32
    (recursive doubling's step). Each rank times its own steps."""
    w = np.zeros(nbytes // 4 + 1, np.float32)   # zeros: the sums stay finite
    buf, m = w.view(np.uint8)[:nbytes], nbytes // 4
    peer = 1 - t.rank
    times = np.empty(reps)
    for i in range(-WARMUP, reps):
        t0 = time.perf_counter()   # the step as the collectives write it: scratch, views, sendrecv, combine
        tmp = scratch(nbytes, np.uint8)
        t.sendrecv(buf[0:nbytes], peer, tmp, peer, _TAG, _TAG)
        if reduce:
            combine(t, np.add, w[0:m], tmp[:4 * m].view(np.float32), w[0:m])
        if i >= 0:
            times[i] = time.perf_counter() - t0
    return times


def _front(one, reps: int) -> np.ndarray:
    """Times of ``reps`` allreduce calls on the one-rank group ``one``: the Python path of a call."""
    x = np.zeros(16, np.float32)
    times = np.empty(reps)
    for i in range(-WARMUP, reps):
        t0 = time.perf_counter()
        allreduce(one, x, out=x)
        if i >= 0:
            times[i] = time.perf_counter() - t0
    return times


_BENCHES = ("one_way", "exchange", "step")


def _fit(sizes, low: dict[str, np.ndarray], front: float) -> tuple[Model, np.ndarray]:
    """The model and [alpha, beta, gamma, off] from the minima; off, the largest factor between a
    one-way minimum and its fitted line (either way; inf where the line is 0)."""
    n = np.asarray(sizes, np.float64)
    alpha, beta = fit_alpha_beta(n, low["one_way"])
    red = low["step"] - low["exchange"]   # what the reduction adds to a step
    big = n >= min(GAMMA_FROM, n[-1] / 4)
    gamma = fit_alpha_beta(n[big], np.maximum(red[big], 1e-12))[1] if big.sum() >= 2 else 0.0
    fitted = alpha + n * beta
    with np.errstate(divide="ignore"):
        off = float(np.max(np.maximum(low["one_way"] / fitted, fitted / low["one_way"])))
    model = Model(front, piecewise_fit(n, low["one_way"]), piecewise_fit(n, low["exchange"]),
                  piecewise_fit(n, red, floor=0.0))
    return model, np.array([alpha, beta, gamma, off])


def calibrate(t, sizes: list[int], reps: int, *, passes: int = PASSES, min_passes: int = MIN_PASSES,
              say=lambda text: None) -> dict:
    """Measure the steps of :mod:`mpisim.comm.loggp` (ranks 0 and 1) and the call's front (every rank).

    Each pass times ``reps`` steps of every kind at every size, sizes interleaved; the fits use
    the minimum over all passes so far. Passes stop, after ``min_passes``, once alpha, beta,
    gamma > 0 and every one-way minimum is within ``ROUGH`` times its line, or after ``passes``;
    if a coefficient is still not > 0 then, :class:`CalibrationError` is raised (on every rank).

    Collective: every rank calls it and gets the same dict (rank 0's measurements), with keys
    ranks, network, alpha_s, beta_s_per_byte, gamma_s_per_byte, model (:meth:`Model.to_dict`),
    front_s, passes, reps, fit_off, and per size the one-way, exchange and step times
    (``pingpong``, ``exchange``, ``step``: bytes, median_s, min_s; JSON-able).
    """
    if t.size < 2:
        raise ValueError(f"calibrate needs at least 2 ranks, got {t.size}")
    if passes < 1 or not 1 <= min_passes:
        raise ValueError(f"calibrate: passes and min_passes must be >= 1, got {passes} and {min_passes}")
    sizes = sorted(set(sizes))
    if len(sizes) < 2:
        raise ValueError(f"calibrate needs at least 2 sizes, got {sizes}")
    one = t.split(t.rank)   # a one-rank group per rank: a collective call there sends nothing
    got = {b: [[] for _ in sizes] for b in _BENCHES}   # rank 0's times, one array per pass and size
    fronts = []
    for p in range(1, passes + 1):
        say(f"pass {p}: one-way, exchange and exchange+reduce between ranks 0 and 1: {len(sizes)} sizes, "
            f"{reps} steps each")
        barrier(t)
        if t.rank < 2:   # ranks >= 2 wait at the barrier below
            for i, n in enumerate(sizes):
                got["one_way"][i].append(_pingpong(t, n, reps))
                got["exchange"][i].append(_exchange(t, n, reps))
                got["step"][i].append(_exchange(t, n, reps, reduce=True))
        barrier(t)
        fronts.append(_front(one, reps))
        fit = np.zeros(4 + 3 * len(sizes) + 1)
        if t.rank == 0:
            low = {b: np.array([np.min(x) for x in got[b]]) for b in _BENCHES}
            front = float(np.min(np.concatenate(fronts)))
            _, head = _fit(sizes, low, front)
            fit[:] = np.concatenate([head, low["one_way"], low["exchange"], low["step"], [front]])
        fit = bcast(t, fit, 0, check=False)   # rank 0's verdict for everyone: all go on or stop together
        alpha, beta, gamma, off = (float(x) for x in fit[:4])
        net = to_network(alpha, beta, gamma)
        positive = net.alpha > 0 and net.beta > 0 and net.gamma > 0
        if p >= min_passes and positive and off <= ROUGH:
            break
        if p < passes and p >= min_passes:
            say(f"pass {p}: fit {'not > 0' if not positive else f'{off:.1f}x off a minimum'} "
                f"(alpha {alpha:.3g} s, beta {beta:.3g} s/B, gamma {gamma:.3g} s/B): the machine is busy; "
                "measuring again")
    k = len(sizes)
    low = dict(zip(_BENCHES, np.split(fit[4:4 + 3 * k], 3)))
    front = float(fit[-1])
    if not positive:
        bad = ", ".join(name for name, v in (("alpha", net.alpha), ("beta", net.beta), ("gamma", net.gamma))
                        if v <= 0)
        mins = ", ".join(f"{fmt_size(n)}: {format_seconds(float(m))}" for n, m in zip(sizes, low["one_way"]))
        raise CalibrationError(
            f"the fit came out with {bad} not > 0 (alpha {alpha:.3g} s, beta {beta:.3g} s/B, gamma "
            f"{gamma:.3g} s/B) after {p} pass{'es' * (p > 1)} of {reps} steps per size; the "
            f"minimum one-way times were {mins}. The machine is too busy for the per-byte costs to show "
            "above the noise: run it on a quieter machine, with more --reps, or with larger --sizes "
            "(default 1:16M)")
    model, _ = _fit(sizes, low, front)
    med = np.zeros(3 * k)
    if t.rank == 0:
        med[:] = [np.median(np.concatenate(x)) for b in _BENCHES for x in got[b]]
    med = dict(zip(_BENCHES, np.split(bcast(t, med, 0, check=False), 3)))
    rows = lambda b: [{"bytes": n, "median_s": float(m), "min_s": float(lo)}  # noqa: E731
                      for n, m, lo in zip(sizes, med[b], low[b])]
    return {
        "ranks": t.size, "network": net.spec(),
        "alpha_s": alpha, "beta_s_per_byte": beta, "gamma_s_per_byte": gamma,
        "model": model.to_dict(), "front_s": front,
        "passes": p, "reps": reps, "fit_off": off,
        "pingpong": [{**r, "fit_s": alpha + r["bytes"] * beta, "model_s": model.one_way(r["bytes"])}
                     for r in rows("one_way")],
        "exchange": rows("exchange"), "step": rows("step"),
    }


def bound(nbytes: int) -> float:
    """The relative error --validate allows at a vector of ``nbytes``."""
    return TOLERANCE if nbytes >= BIG else SMALL_TOLERANCE


def _time_calls(t, x: np.ndarray, algorithm: str, reps: int) -> np.ndarray:
    """This rank's times of ``reps`` allreduce calls on ``x`` (in place), each after a barrier."""
    for _ in range(WARMUP):   # first touch of the scratch buffers, out of the timing
        allreduce(t, x, algorithm=algorithm, out=x, check=False)
    times = np.empty(reps)
    for i in range(reps):
        barrier(t)
        t0 = time.perf_counter()
        allreduce(t, x, algorithm=algorithm, out=x, check=False)
        times[i] = time.perf_counter() - t0
    return times


def _time_check(t, reps: int) -> np.ndarray:
    """This rank's times of ``reps`` consistency checks of an allreduce's fields (what check=True adds)."""
    x = np.zeros(4, np.float32)
    times = np.empty(reps)
    for i in range(-WARMUP, reps):
        barrier(t)
        t0 = time.perf_counter()
        consistency_check(t, "allreduce", True, length=x.size, dtype=x.dtype, op="sum", algorithm="auto")
        if i >= 0:
            times[i] = time.perf_counter() - t0
    return times


def validate(t, model: Model, sizes: list[int], reps: int, *, algorithms=None, rounds: int = ROUNDS,
             say=lambda text: None) -> list[dict]:
    """Time each allreduce algorithm on float32 vectors of ``sizes`` bytes and compare with ``model``.

    ``rounds`` times over all sizes and algorithms (interleaved, so a burst of load spoils one
    round of a point, not all), ``reps`` calls each; a call's time is the slowest rank's (each rank
    times from its own exit of the barrier before the call); ``measured_s`` is the minimum over
    all calls, ``median_s`` the median. ``error`` = measured/model - 1, ``bound`` the allowed
    |error|, ``ok`` whether it holds. Collective: every rank gets the same list.
    """
    algorithms = ALGORITHMS["allreduce"] if algorithms is None else algorithms
    if any(n < 4 or n % 4 for n in sizes):
        raise ValueError(f"validate: sizes must be multiples of 4 bytes (float32 vectors), got {sizes}")
    say(f"validation: {len(algorithms)} allreduce algorithms x {len(sizes)} sizes on {t.size} ranks, "
        f"{rounds} rounds of {reps} calls each")
    got = {(n, a): [] for n in sizes for a in algorithms}
    for _ in range(rounds):
        for n in sizes:
            x = np.zeros(n // 4, np.float32)   # reduced in place, like a training step's gradient; stays 0
            for alg in algorithms:
                times = _time_calls(t, x, alg, reps)
                got[n, alg].append(allreduce(t, times, op="max", algorithm="recursive_doubling", check=False))
    rows = []
    for n in sizes:
        for alg in algorithms:
            times = np.concatenate(got[n, alg])
            measured, model_s = float(np.min(times)), model.predict("allreduce", alg, t.size, n // 4, 4)
            error = measured / model_s - 1
            rows.append({"algorithm": alg, "bytes": n, "measured_s": measured, "median_s": float(np.median(times)),
                         "model_s": model_s, "error": error, "bound": bound(n), "ok": abs(error) <= bound(n)})
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
        description="Measure this machine's point-to-point steps and the Python path of a collective call,\n"
                    "fit a cost model (piecewise in the message size), print alpha, beta and gamma as a\n"
                    "--network spec for the simulator, and with --validate check the model against\n"
                    f"every allreduce algorithm: within {TOLERANCE:.0%} from {fmt_size(BIG)}, "
                    f"{SMALL_TOLERANCE:.0%} below (exit 1 if not).",
        epilog=f"example:\n  {USAGE_MPI} --validate --json calib.json\n"
               "  -> --network alpha=2.1us,beta=5.3GB/s,gamma=4.8GB/s")
    ap.add_argument("--sizes", type=_range, metavar="LO:HI",
                    help="step message sizes: LO, the powers of 2 between, HI (default 1:16M; --quick 1:1M); "
                         "the model extrapolates beyond HI with the last slope")
    ap.add_argument("--reps", type=_int_at_least(1, "a positive integer"), metavar="N",
                    help="timed steps per size and pass, and calls per point and validation round; "
                         "both take the minimum (default 30; --quick 10)")
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


def _report(res: dict, net: Network, model: Model, rows: list[dict], check: tuple[float, float] | None) -> None:
    samples = res["passes"] * res["reps"]
    steps = {r["bytes"]: r for r in res["exchange"]}
    red = {r["bytes"]: r for r in res["step"]}
    print(f"steps between ranks 0 and 1, minimum of {samples} each (median in brackets): one-way = half a "
          "round trip; exchange = one sendrecv; +reduce = an exchange then combine of what arrived")
    print(f"{'size':>10} {'one-way':>20} {'line':>10} {'exchange':>20} {'+reduce':>20}")
    for r in res["pingpong"]:
        n = r["bytes"]
        cell = lambda x: f"{_t(x['min_s'])} [{_t(x['median_s'])}]"  # noqa: E731
        print(f"{fmt_size(n):>10} {cell(r):>20} {_t(r['fit_s']):>10} {cell(steps[n]):>20} {cell(red[n]):>20}")
    print(f"fit: {net}  (alpha, beta: the line through the one-way minima; gamma: the slope of what the "
          f"reduction adds to a step from {fmt_size(GAMMA_FROM)})")
    print("model (mpisim.comm.loggp): front + max(chain, work) + k*reduce(c/k), from each algorithm's closed-form "
          "counts; its terms:")
    print(f"  front {_t(model.front)}: the Python path of one collective call, measured on a one-rank group")
    for name, what in model.terms()[1:]:
        segs = getattr(model, name).segments()
        lo, hi = segs[0], segs[-1]
        print(f"  {name}: {what}; piecewise, {len(segs)} segments, "
              f"{_t(lo[2] + lo[0] * lo[3])} at {fmt_size(int(lo[0]))}, last slope "
              f"{hi[3] * 1e9:.4g} ns/B")
    if check is not None:
        print(f"  consistency check (on by default; the calls below pass check=False): measured {_t(check[0])}, "
              f"predicted {_t(check[1])} (a recursive-doubling allreduce of its fields)")
    if rows:
        print(f"allreduce on {res['ranks']} ranks: slowest rank's time, minimum over the calls (median in "
              "brackets); model = mpisim.comm.loggp")
        print(f"{'algorithm':>20} {'size':>10} {'measured':>10} {'[median]':>10} {'model':>10} {'error':>8} "
              f"{'bound':>6}")
        for r in rows:
            print(f"{r['algorithm']:>20} {fmt_size(r['bytes']):>10} {_t(r['measured_s']):>10} "
                  f"{_t(r['median_s']):>10} {_t(r['model_s']):>10} {r['error']:>+8.1%} "
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
        res = calibrate(t, sizes, reps, say=say)
    except CalibrationError as e:   # raised on every rank alike: all return, nobody hangs
        if t.rank == 0:
            print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 1
    if t.rank == 0 and res["fit_off"] > ROUGH:
        print(f"{PROG}: warning: after {res['passes']} passes a one-way minimum is still "
              f"{res['fit_off']:.1f}x off the fitted line: the machine is busy, the spec is rough",
              file=sys.stderr, flush=True)
    net = to_network(res["alpha_s"], res["beta_s_per_byte"], res["gamma_s_per_byte"])
    model = Model.from_dict(res["model"])
    rows, check = [], None
    if args.validate:
        rows = validate(t, model, vsizes, reps, rounds=2 if args.quick else ROUNDS, say=say)
        ct = allreduce(t, _time_check(t, reps), op="max", algorithm="recursive_doubling", check=False)
        check = (float(np.min(ct)), model.predict("allreduce", "recursive_doubling", t.size, 2 * 5, 8))
    ok = all(r["ok"] for r in rows)
    if t.rank == 0:
        say(f"done in {time.perf_counter() - start:.1f} s")
        _report(res, net, model, rows, check)
        if args.json:
            extra = {"consistency_check": {"measured_s": check[0], "model_s": check[1]}} if check else {}
            atomic_write_bytes(args.json, json.dumps({**res, **extra, "validation": rows, "within_bounds": ok},
                                                     indent=1).encode())
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
