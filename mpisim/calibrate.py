"""Calibrate the network model on the real machine: alpha, beta by ping-pong, gamma by a local sum.

    mpiexec -n 2 python -m mpisim.calibrate
    mpiexec -n 2 python -m mpisim.calibrate --validate --json calib.json

Hockney's model (Hockney 1994, "The communication challenge for MPP"): a message of n bytes
takes alpha + n*beta. Ranks 0 and 1 bounce a message back and forth through the MPI transport
(Python overhead included: it is what the collectives pay); the one-way time is half a round
trip. alpha and beta come from a least-squares fit, weighted by 1/t (relative error, so the
large sizes do not decide alpha), of the MINIMUM one-way time of each size: load only ever adds
time, in bursts (a descheduled rank costs a whole time slice, ~ms, far above n*beta), so the
minimum is the least disturbed estimate, as latency benchmarks use it; the median is reported.
gamma, the seconds per byte of a reduction, is the slope of the minimum time of
``np.add(a, b, out=a)`` on float32 vectors, the way the collectives reduce.

A busy machine can still hit every sample of a size. A fit with a coefficient that is not > 0,
or with a minimum more than ``ROUGH`` times off the line, is measured again (another pass over
all sizes, pooled with the ones before), up to ``PASSES`` passes; a fit still not > 0 is an
error that says so, never a spec. The result is printed as a ``--network`` spec for the simulator.

``--validate`` then times every allreduce algorithm on all ranks and compares it with the closed
form of :mod:`mpisim.comm.costs` under the calibrated network.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from .bench import fmt_size, parse_size
from .comm import allreduce, barrier, bcast
from .comm.costs import ALGORITHMS, cost
from .comm.network import TICK, Network, format_seconds
from .train.checkpoint import atomic_write_bytes
from .train.distributed import under_mpiexec
from .train.options import _int_at_least, prepare_output_file

__all__ = ["GAMMA_SIZES", "CalibrationError", "calibrate", "fit_alpha_beta", "size_range", "to_network",
           "validate", "main"]

PROG = "python -m mpisim.calibrate"
USAGE_MPI = f"mpiexec -n 2 {PROG}"
GAMMA_SIZES = [1 << k for k in range(16, 25, 2)]   # 64 KiB .. 16 MiB of float32 output
QUICK_GAMMA_SIZES = GAMMA_SIZES[:3]                # 64 KiB .. 1 MiB
WARMUP = 3           # untimed round trips / calls before each measurement
PASSES = 4           # at most this many passes over all sizes until the fit is sane (pooled)
ROUGH = 3.0          # ... sane: alpha, beta, gamma > 0 and every ping-pong minimum within 3x of the line
BIG = 64 << 10       # the validation summary looks at sizes >= this (bandwidth-bound)
TOLERANCE = 0.25     # ... and says whether the model is within this relative error
MAX_SIZE = 1 << 30   # largest message or vector a size range may ask for
_TAG = 201           # ping-pong tag (the collectives use 101..109)


def fit_alpha_beta(sizes, seconds) -> tuple[float, float]:
    """Least-squares fit of t(n) = alpha + n*beta, weighted by 1/t(n); both clamped to >= 0.

    Minimizes sum(((alpha + n*beta) - t) / t)**2, the relative error, so that each size counts
    alike. A coefficient that would come out negative is set to 0 and the other refitted.
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
    out, s = [lo], 1
    while s <= hi:
        if s > lo:
            out.append(s)
        s *= 4
    return out if out[-1] == hi else out + [hi]


def _pingpong(t, nbytes: int, reps: int) -> np.ndarray:
    """One-way times (half round trips) of ``reps`` round trips between ranks 0 and 1, on rank 0."""
    buf = np.zeros(nbytes, dtype=np.uint8)
    times = np.empty(reps)
    for i in range(-WARMUP, reps):
        if t.rank == 0:
            t0 = time.perf_counter()
            t.send(buf, 1, _TAG)
            t.recv(buf, 1, _TAG)
            if i >= 0:
                times[i] = (time.perf_counter() - t0) / 2
        else:
            t.recv(buf, 0, _TAG)
            t.send(buf, 0, _TAG)
    return times


def _reduction(nbytes: int, reps: int) -> np.ndarray:
    """Seconds of ``reps`` calls of ``np.add(a, b, out=a)`` on float32 vectors of ``nbytes``."""
    a, b = np.zeros(nbytes // 4, np.float32), np.ones(nbytes // 4, np.float32)
    times = np.empty(reps)
    for i in range(-WARMUP, reps):
        t0 = time.perf_counter()
        np.add(a, b, out=a)   # (n,) + (n,) -> (n,): what combine() does in the collectives
        if i >= 0:
            times[i] = time.perf_counter() - t0
    return times


def _fit(sizes, pp_low, gamma_sizes, red_low) -> np.ndarray:
    """[alpha, beta, gamma, off]: the fits on the minima; off, the largest factor between a
    ping-pong minimum and its fitted time (either way; inf where the fit is 0)."""
    alpha, beta = fit_alpha_beta(sizes, pp_low)
    gamma = fit_alpha_beta(gamma_sizes, red_low)[1]
    fitted = alpha + np.asarray(sizes, np.float64) * beta   # (k,)
    with np.errstate(divide="ignore"):
        off = float(np.max(np.maximum(pp_low / fitted, fitted / pp_low)))
    return np.array([alpha, beta, gamma, off])


def calibrate(t, sizes: list[int], reps: int, *, gamma_sizes: list[int] = GAMMA_SIZES,
              passes: int = PASSES, say=lambda text: None) -> dict:
    """Measure alpha and beta (ping-pong between ranks 0 and 1) and gamma (local float32 sums).

    Each pass times ``reps`` round trips of every size and ``reps`` sums of every gamma size; the
    fits use the minimum over all passes so far. Passes stop once alpha, beta, gamma > 0 and every
    ping-pong minimum is within ``ROUGH`` times its fitted time, or after ``passes``; if a
    coefficient is still not > 0 then, :class:`CalibrationError` is raised (on every rank).

    Collective: every rank calls it and gets the same dict (rank 0's measurements), with keys
    network, alpha_s, beta_s_per_byte, gamma_s_per_byte, passes, reps, fit_off (the largest
    factor between a minimum and the fit), pingpong and reduction (JSON-able).
    ``say`` is called with a progress line now and then.
    """
    if t.size < 2:
        raise ValueError(f"calibrate needs at least 2 ranks, got {t.size}")
    if passes < 1:
        raise ValueError(f"calibrate: passes must be >= 1, got {passes}")
    k, g = len(sizes), len(gamma_sizes)
    pp = [[] for _ in sizes]          # rank 0's one-way times, one array per pass
    rd = [[] for _ in gamma_sizes]    # this rank's reduction times, one array per pass
    for p in range(1, passes + 1):
        say(f"pass {p}: ping-pong between ranks 0 and 1: {k} sizes, {reps} round trips each")
        barrier(t)
        if t.rank < 2:   # ranks >= 2 wait at the barrier below
            for i, n in enumerate(sizes):
                pp[i].append(_pingpong(t, n, reps))
        barrier(t)
        say(f"pass {p}: reduction: np.add on float32, {g} sizes, {reps} calls each (every rank at once)")
        for i, n in enumerate(gamma_sizes):
            rd[i].append(_reduction(n, reps))
        barrier(t)
        fit = np.zeros(4)
        if t.rank == 0:
            fit = _fit(sizes, np.array([np.min(x) for x in pp]), gamma_sizes, np.array([np.min(x) for x in rd]))
        fit = bcast(t, fit, 0, check=False)   # rank 0's verdict for everyone: all go on or stop together
        alpha, beta, gamma, off = (float(x) for x in fit)
        net = to_network(alpha, beta, gamma)
        positive = net.alpha > 0 and net.beta > 0 and net.gamma > 0
        if positive and off <= ROUGH:
            break
        if p < passes:
            say(f"pass {p}: fit {'not > 0' if not positive else f'{off:.1f}x off a minimum'} "
                f"(alpha {alpha:.3g} s, beta {beta:.3g} s/B, gamma {gamma:.3g} s/B): the machine is busy; "
                "measuring again")
    # rank 0's numbers for everyone: [medians, minima, reduction medians, reduction minima]
    vec = np.zeros(2 * k + 2 * g)
    if t.rank == 0:
        vec[:] = np.concatenate([[np.median(np.concatenate(x)) for x in pp], [np.min(x) for x in pp],
                                 [np.median(np.concatenate(x)) for x in rd], [np.min(x) for x in rd]])
    vec = bcast(t, vec, 0, check=False)
    med, low, rmed, rlow = np.split(vec, np.cumsum([k, k, g]))
    if not positive:
        bad = ", ".join(name for name, v in (("alpha", net.alpha), ("beta", net.beta), ("gamma", net.gamma))
                        if v <= 0)
        mins = ", ".join(f"{fmt_size(n)}: {format_seconds(float(m))}" for n, m in zip(sizes, low))
        raise CalibrationError(
            f"the fit came out with {bad} not > 0 (alpha {alpha:.3g} s, beta {beta:.3g} s/B, gamma "
            f"{gamma:.3g} s/B) after {p} pass{'es' * (p > 1)} of {reps} round trips / sums per size; the "
            f"minimum one-way times were {mins}. The machine is too busy for the per-byte costs to show "
            "above the noise: run it on a quieter machine, with more --reps, or with larger --sizes "
            "(default 1:16M)")
    return {
        "ranks": t.size, "network": net.spec(),
        "alpha_s": alpha, "beta_s_per_byte": beta, "gamma_s_per_byte": gamma,
        "passes": p, "reps": reps, "fit_off": off,
        "pingpong": [{"bytes": n, "median_s": float(m), "min_s": float(lo), "fit_s": alpha + n * beta}
                     for n, m, lo in zip(sizes, med, low)],
        "reduction": [{"bytes": n, "median_s": float(m), "min_s": float(lo)}
                      for n, m, lo in zip(gamma_sizes, rmed, rlow)],
    }


def validate(t, net: Network, sizes: list[int], reps: int, *, algorithms=ALGORITHMS["allreduce"],
             say=lambda text: None) -> list[dict]:
    """Time each allreduce algorithm on float32 vectors of ``sizes`` bytes and compare with the model.

    A call's time is the slowest rank's (each rank times from its own exit of the barrier before
    the call); the median over ``reps`` calls is ``measured_s``; ``error`` = measured/model - 1.
    Collective: every rank gets the same list.
    """
    if any(n < 4 or n % 4 for n in sizes):
        raise ValueError(f"validate: sizes must be multiples of 4 bytes (float32 vectors), got {sizes}")
    rows = []
    say(f"validation: {len(algorithms)} allreduce algorithms x {len(sizes)} sizes on {t.size} ranks, "
        f"{reps} calls each")
    for n in sizes:
        x = np.zeros(n // 4, np.float32)   # reduced in place, like a training step's gradient
        for alg in algorithms:
            for _ in range(WARMUP):   # first touch of the scratch buffers, out of the timing
                allreduce(t, x, algorithm=alg, out=x, check=False)
            times = np.empty(reps)
            for i in range(reps):
                barrier(t)
                t0 = time.perf_counter()
                allreduce(t, x, algorithm=alg, out=x, check=False)
                times[i] = time.perf_counter() - t0
            times = allreduce(t, times, op="max", algorithm="recursive_doubling", check=False)
            measured = float(np.median(times))
            model = cost("allreduce", alg, t.size, n // 4, 4).seconds(net)
            rows.append({"algorithm": alg, "bytes": n, "measured_s": measured, "model_s": model,
                         "error": measured / model - 1 if model > 0 else float("nan")})
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
        description="Measure this machine's alpha, beta (ping-pong through the MPI transport) and\n"
                    "gamma (float32 sums), and print them as a --network spec for the simulator.",
        epilog=f"example:\n  {USAGE_MPI} --validate --json calib.json\n"
               "  -> --network alpha=2.1us,beta=5.3GB/s,gamma=4.8GB/s")
    ap.add_argument("--sizes", type=_range, metavar="LO:HI",
                    help="ping-pong message sizes: LO, the powers of 4 between, HI (default 1:16M; --quick 1:1M)")
    ap.add_argument("--reps", type=_int_at_least(1, "a positive integer"), metavar="N",
                    help="timed round trips / calls per size and pass; the fit takes the minimum, "
                         "validation the median (default 50; --quick 20)")
    ap.add_argument("--validate", action="store_true",
                    help="also time every allreduce algorithm on all ranks and compare with the model")
    ap.add_argument("--validate-sizes", type=_range, metavar="LO:HI",
                    help="allreduce vector sizes in bytes, multiples of 4 (default 8:16M; --quick 4K:256K)")
    ap.add_argument("--json", metavar="FILE", help="write all results to FILE as JSON (rank 0)")
    ap.add_argument("--quick", action="store_true", help="few sizes and repetitions: a smoke test of seconds")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap


def _say(rank: int, quiet: bool):
    if rank != 0 or quiet:
        return lambda text: None
    return lambda text: print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def _report(res: dict, net: Network, rows: list[dict], reps: int) -> None:
    samples = res["passes"] * res["reps"]
    print(f"ping-pong, ranks 0 and 1: one-way time (half a round trip), median and min of {samples}; "
          "fit on the minima")
    print(f"{'size':>10} {'median':>10} {'min':>10} {'fit':>10} {'error':>8}")
    for r in res["pingpong"]:
        print(f"{fmt_size(r['bytes']):>10} {format_seconds(r['median_s']):>10} {format_seconds(r['min_s']):>10} "
              f"{format_seconds(r['fit_s']):>10} {r['min_s'] / r['fit_s'] - 1:>+8.1%}")
    print(f"reduction np.add(a, b, out=a), float32, rank 0 (bytes of the output vector), min of {samples}:")
    for r in res["reduction"]:
        rate = r["bytes"] / r["min_s"] / 1e9
        print(f"{fmt_size(r['bytes']):>10} {format_seconds(r['min_s']):>10} {rate:>7.2f} GB/s")
    print(f"fit: {net}")
    if rows:
        print(f"allreduce on {res['ranks']} ranks: slowest rank's time, median of {reps}; model = mpisim.comm.costs")
        print(f"{'algorithm':>20} {'size':>10} {'measured':>10} {'model':>10} {'error':>8}")
        for r in rows:
            print(f"{r['algorithm']:>20} {fmt_size(r['bytes']):>10} {format_seconds(r['measured_s']):>10} "
                  f"{format_seconds(r['model_s']):>10} {r['error']:>+8.1%}")
        big = [r for r in rows if r["bytes"] >= BIG]
        if big:
            worst = max(big, key=lambda r: abs(r["error"]))
            verdict = "within" if abs(worst["error"]) <= TOLERANCE else "NOT within"
            print(f"largest |error| at >= {fmt_size(BIG)} on {res['ranks']} ranks: {worst['error']:+.1%} "
                  f"({worst['algorithm']}, {fmt_size(worst['bytes'])}): {verdict} {TOLERANCE:.0%}")
        else:
            print(f"no validation size >= {fmt_size(BIG)}: no error summary")
    print(f"--network {net.spec()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    sizes = size_range(*(args.sizes or ((1, 1 << 20) if args.quick else (1, 16 << 20))))
    vsizes = size_range(*(args.validate_sizes or ((4 << 10, 256 << 10) if args.quick else (8, 16 << 20))))
    reps = args.reps or (20 if args.quick else 50)
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
        say(f"{t.size} ranks: ping-pong between ranks 0 and 1 (the others wait); validation on all {t.size}")
    start = time.perf_counter()
    try:
        res = calibrate(t, sizes, reps, gamma_sizes=QUICK_GAMMA_SIZES if args.quick else GAMMA_SIZES, say=say)
    except CalibrationError as e:   # raised on every rank alike: all return, nobody hangs
        if t.rank == 0:
            print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 1
    if t.rank == 0 and res["fit_off"] > ROUGH:
        print(f"{PROG}: warning: after {res['passes']} passes a ping-pong minimum is still "
              f"{res['fit_off']:.1f}x off the fitted line: the machine is busy, the spec is rough",
              file=sys.stderr, flush=True)
    net = to_network(res["alpha_s"], res["beta_s_per_byte"], res["gamma_s_per_byte"])
    rows = validate(t, net, vsizes, reps, say=say) if args.validate else []
    if t.rank == 0:
        say(f"done in {time.perf_counter() - start:.1f} s")
        _report(res, net, rows, reps)
        if args.json:
            atomic_write_bytes(args.json, json.dumps({**res, "validation": rows}, indent=1).encode())
    barrier(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
