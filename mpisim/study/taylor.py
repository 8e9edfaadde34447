"""Taylor series over ranks: each rank sums its share of the terms, one reduce adds the partial sums.

exp(x) = sum_k x^k / k! and sin(x) = sum_k (-1)^k x^(2k+1) / (2k+1)! with T terms. Every term is computed
on its own, |term| = exp(m log|x| - lgamma(m+1)) with its sign, in a Python loop (about 0.2 us a term: a
cost large enough that the split pays for big T, small enough that the reduce's latency is visible for
small T). Rank r of N takes the terms r, r+N, r+2N, ... (cyclic): the counts are equal (± 1), as with
contiguous blocks, and every rank also gets the same mix of small and large k, so a term cost that drifts
with k (the study measures it) cannot unbalance the ranks. Each rank adds its terms with
math.fsum (a correctly rounded partial sum); mpisim's binomial-tree reduce adds the N partial sums on rank
0 (ceil(lg N) steps of alpha + 8 bytes * beta + 8 bytes * gamma under a network model).

Measured twice: as a real MPI job (``python -m mpisim.study.taylor --worker ...`` under mpiexec, the
worker below), and on up to 64 simulated ranks where each rank's computation is charged as virtual time
(its terms at the per-term rate measured in this process) and the reduce as the network model says.
"""
from __future__ import annotations

import json
import math
import os
import socket
import statistics
import sys
import time
import zlib

import numpy as np

from . import Study, StudyError, cores, fmt, mpi_job, pct

__all__ = ["QUESTION", "run", "split_terms", "term", "partial_sum", "serial_sum", "model_seconds", "simulate_sum",
           "ulps", "per_term_seconds", "first_zero_term", "half_costs"]

TITLE = "A Taylor series summed over ranks"
QUESTION = ("How much faster is a Taylor series when its terms are split over N ranks and combined with a "
            "reduce, below how many terms does the reduce's latency eat the gain, and how accurate is the sum?")

FUNCS = {"exp": math.exp, "sin": math.sin}
SPLITS = ("cyclic", "block")
X = 1.5                      # the point the series is summed at
WORD = 8                     # bytes of one float64 partial sum: what the reduce moves per step


# -- the series ------------------------------------------------------------------------------------------------
def split_terms(terms: int, size: int, rank: int, how: str = "cyclic") -> range:
    """The term indices rank ``rank`` of ``size`` sums: cyclic r, r+N, r+2N, ... or a contiguous block (the
    first terms % size ranks one more). Over all ranks, every index 0..terms-1 exactly once."""
    if terms < 0 or size < 1 or not 0 <= rank < size:
        raise ValueError(f"split_terms: need terms >= 0, size >= 1, 0 <= rank < size; got {terms}, {size}, {rank}")
    if how == "cyclic":
        return range(rank, terms, size)
    if how == "block":
        q, r = divmod(terms, size)
        lo = rank * q + min(rank, r)
        return range(lo, lo + q + (rank < r))
    raise ValueError(f"split_terms: how must be one of {', '.join(SPLITS)}, got {how!r}")


def term(func: str, x: float, k: int) -> float:
    """Term k of the series of ``func`` at x, computed on its own: exp: x^k/k!; sin: (-1)^k x^(2k+1)/(2k+1)!."""
    m = k if func == "exp" else 2 * k + 1
    if x == 0:
        return 1.0 if m == 0 else 0.0
    mag = math.exp(m * math.log(abs(x)) - math.lgamma(m + 1))
    neg = (x < 0 and m % 2 == 1) != (func == "sin" and k % 2 == 1)
    return -mag if neg else mag


def partial_sum(func: str, x: float, ks: range) -> float:
    """math.fsum of the terms ``ks`` (the inner loop of a rank: one exp and one lgamma a term)."""
    if func not in FUNCS:
        raise ValueError(f"func must be one of {', '.join(FUNCS)}, got {func!r}")
    if x == 0:
        return math.fsum(term(func, x, k) for k in ks)
    exp, lgamma, lx = math.exp, math.lgamma, math.log(abs(x))
    if func == "exp":
        s = -1.0 if x < 0 else 1.0
        return math.fsum(exp(k * lx - lgamma(k + 1)) * (s if k & 1 else 1.0) for k in ks)
    s = -1.0 if x < 0 else 1.0
    return math.fsum(exp((2 * k + 1) * lx - lgamma(2 * k + 2)) * (-s if k & 1 else s) for k in ks)


def serial_sum(func: str, x: float, terms: int) -> float:
    """The one-process sum of the first ``terms`` terms (math.fsum: correctly rounded)."""
    return partial_sum(func, x, range(terms))


def ulps(value: float, ref: float) -> float:
    """(value - ref) in units in the last place of ref."""
    return (value - ref) / math.ulp(ref) if ref else value


def model_seconds(terms: int, size: int, per_term: float, alpha: float, beta: float, gamma: float) -> float:
    """Closed form of the simulated time: ceil(T/N) terms on the busiest rank, then ceil(lg N) steps of one
    8-byte message (alpha + 8 beta) and one 8-byte addition (8 gamma)."""
    steps = math.ceil(math.log2(size)) if size > 1 else 0
    return math.ceil(terms / size) * per_term + steps * (alpha + WORD * beta + WORD * gamma)


# -- simulated ranks ------------------------------------------------------------------------------------------
def _sim_rank(t, func: str, x: float, terms: int, how: str) -> dict:
    from ..comm import reduce
    ks = split_terms(terms, t.size, t.rank, how)
    s = partial_sum(func, x, ks)
    t.compute(len(ks))                 # one "FLOP" is one term: the model's rate is the measured terms/s
    computed = t.now()
    out = reduce(t, np.array([s]), check=False)
    return {"compute": computed, "end": t.now(), "value": None if out is None else float(out[0]), "partial": s}


def simulate_sum(func: str, x: float, terms: int, size: int, *, network: str | None = None,
                 how: str = "cyclic") -> dict:
    """Sum the series on ``size`` simulated ranks (mpisim's reduce to rank 0); with ``network`` (a spec with
    compute=RATE, one FLOP a term) also the virtual times: compute (slowest rank), reduce, total (rank 0)."""
    from ..comm import SimCluster
    res = SimCluster(size, network=network).run(_sim_rank, func, x, terms, how)
    compute = max(r["compute"] for r in res)
    total = res[0]["end"]
    return {"value": res[0]["value"], "compute": compute, "reduce": total - compute, "total": total,
            "partials": [r["partial"] for r in res]}


def per_term_seconds(func: str, x: float, terms: int | range, repeats: int = 3) -> float:
    """Seconds a term takes in :func:`partial_sum` in this process: median over ``repeats`` sums of the first
    ``terms`` terms (or of the terms of a range)."""
    ks = range(terms) if isinstance(terms, int) else terms
    partial_sum(func, x, ks[:1000])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        partial_sum(func, x, ks)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / len(ks)


def first_zero_term(func: str, x: float) -> int:
    """The first k from which the terms underflow to 0 (two in a row; 100,000 if none does before)."""
    return next((k for k in range(1, 100_000) if term(func, x, k) == 0 and term(func, x, k + 1) == 0), 100_000)


def half_costs(func: str, x: float, terms: int, repeats: int = 3) -> tuple[float, float]:
    """Seconds a term takes in :func:`partial_sum` in the first and the second half of range(terms) (medians)."""
    h = terms // 2
    return tuple(per_term_seconds(func, x, ks, repeats) for ks in (range(h), range(h, 2 * h)))


# -- the MPI worker -------------------------------------------------------------------------------------------
def _worker(argv: list[str]) -> int:
    """``mpiexec -n N python -m mpisim.study.taylor --worker ...``: one JSON line per T from rank 0."""
    from ..train.options import Parser
    p = Parser(prog="python -m mpisim.study.taylor",
               description="The MPI worker of the taylor study (run the study with python -m mpisim.study taylor): "
                           "each rank sums its terms, a reduce adds them on rank 0, which prints one JSON line per "
                           "term count with the median times over the repeats.")
    p.add_argument("--worker", action="store_true", required=True, help="run as the study's MPI worker")
    p.add_argument("--func", choices=sorted(FUNCS), default="exp", help="the series (default exp)")
    p.add_argument("--x", type=float, default=X, help=f"the point (default {X})")
    p.add_argument("--terms", default="10000", help="term count T, or several comma separated (default 10000)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per T; the median is reported (default 5)")
    p.add_argument("--split", choices=SPLITS, default="cyclic", help="which terms a rank takes (default cyclic)")
    a = p.parse_args(argv)
    try:
        counts = [int(v) for v in a.terms.split(",")]
    except ValueError:
        p.error(f"--terms takes whole numbers, comma separated; got {a.terms!r}")
    if min(counts) < 1 or a.repeats < 1:
        p.error("--terms and --repeats must be >= 1")
    from ..comm import barrier, mpi_transport, reduce
    t = mpi_transport()
    # one host: every rank reads the same monotonic clock, so the total can start at the first rank's start
    host = np.array([zlib.crc32(socket.gethostname().encode())], dtype=np.int64)
    hosts = reduce(t, host, op="max", check=False), reduce(t, host, op="min", check=False)
    one_clock = t.rank == 0 and bool(hosts[0][0] == hosts[1][0])     # what rank 0 needs to know
    for T in counts:
        ks = split_terms(T, t.size, t.rank, a.split)
        partial_sum(a.func, a.x, ks)                      # warm-up, untimed
        comp, red, tot, comp_min = [], [], [], []
        for _ in range(a.repeats):
            barrier(t)
            t0 = time.perf_counter()
            s = partial_sum(a.func, a.x, ks)
            t1 = time.perf_counter()
            barrier(t)                                    # the compute phase ends when the slowest rank is done
            t2 = time.perf_counter()
            out = reduce(t, np.array([s]), check=False)
            t3 = time.perf_counter()
            # untimed: the slowest and fastest rank's compute, the first rank's start
            hi = reduce(t, np.array([t1 - t0]), op="max", check=False)
            lo = reduce(t, np.array([t1 - t0]), op="min", check=False)
            first = reduce(t, np.array([t0]), op="min", check=False)
            if t.rank == 0:
                comp.append(float(hi[0]))
                comp_min.append(float(lo[0]))
                red.append(t3 - t2)
                # >= every rank's compute when the clock is shared (the barrier lets ranks go a little apart)
                tot.append(t3 - (float(first[0]) if one_clock else t0))
                value = float(out[0])
        if t.rank == 0:
            print(json.dumps({"func": a.func, "x": a.x, "terms": T, "ranks": t.size, "split": a.split,
                              "repeats": a.repeats, "compute_s": statistics.median(comp),
                              "compute_min_s": statistics.median(comp_min), "reduce_s": statistics.median(red),
                              "total_s": statistics.median(tot), "value": value, "one_clock": one_clock}),
                  flush=True)
    barrier(t)
    return 0


# -- the study -------------------------------------------------------------------------------------------------
def run(study: Study) -> None:
    from ..comm.network import PRESETS
    quick = study.quick
    ncores = cores()
    mpi_ranks = [1, 2] if quick else [1, 2, 4]
    mpi_terms = [1_000, 10_000, 100_000] if quick else [100, 1_000, 10_000, 100_000, 1_000_000]
    repeats = 3 if quick else 11
    sim_ranks = [1, 2, 4, 8] if quick else [1, 2, 4, 8, 16, 32, 64]
    sim_terms = [10, 100, 1_000, 10_000, 100_000] if quick else [10, 100, 1_000, 10_000, 100_000, 1_000_000]
    main_net = "10gbe"
    nets = [main_net] if quick else ["shm", main_net, "100gbe-rdma", "wan"]
    err_terms = [1, 2, 4, 6, 8, 10, 12, 15, 18, 21, 25, 30, 40]
    order_terms = 1_000
    func = "exp"

    over = max(mpi_ranks) > ncores
    study.data["load_average"] = os.getloadavg()[0]
    study.setting(f"The series of exp(x) at x = {X} (and sin(x) for the error), T terms; term k computed on its own "
                  "as ±exp(m·log|x| − lgamma(m+1)) (m = k for exp, 2k+1 for sin) in a Python loop, each rank's "
                  "terms added with math.fsum, the partial sums added on rank 0 by mpisim.comm.reduce (binomial "
                  "tree, the cross-rank argument check off: only the tree's messages are timed).")
    k0 = first_zero_term(func, X)
    cal_terms = min(max(sim_terms), 50_000 if quick else 200_000)
    lo_c, hi_c = half_costs(func, X, cal_terms)
    drift = abs(hi_c - lo_c) / lo_c
    study.data.update(first_zero_term=k0, half_costs=[lo_c, hi_c])
    study.setting(f"Split: cyclic, rank r of N takes terms r, r+N, r+2N, ...: both splits give the ranks equal "
                  f"counts (± 1), and the cyclic one also gives each rank the same mix of small and large k, so a "
                  f"term cost that drifts with k cannot unbalance it. Measured here, a term of the first "
                  f"{cal_terms // 2:,} costs {fmt(lo_c * 1e9)} ns and one of the next {cal_terms // 2:,} "
                  f"{fmt(hi_c * 1e9)} ns"
                  + (f" ({pct(drift, 0)} apart: blocks would give the ranks unequal work)" if drift > 0.1 else
                     f" ({pct(drift, 0)} apart: here blocks would balance about as well)")
                  + f". The order table also sums with blocks, for the rounding. From k = {k0} on the terms of "
                    f"{func}({X}) underflow to 0: a larger T adds work, not digits.")
    study.setting(f"MPI: `mpiexec -n N python -m mpisim.study.taylor --worker --func {func} --x {X} --terms ...` at "
                  f"N = {', '.join(map(str, mpi_ranks))} on {ncores} core{'s' if ncores != 1 else ''} "
                  f"(os.sched_getaffinity; load average {study.data['load_average']:.1f} when the study started)"
                  + (f"; {max(mpi_ranks)} ranks on {ncores} cores are oversubscribed: ranks take turns on the cores"
                     if over else "") +
                  f". T = {', '.join(f'{t:,}' for t in mpi_terms)}. Per repeat: barrier, compute, barrier, reduce; "
                  f"compute is the slowest rank's, reduce is rank 0's (from the second barrier to the sum), total runs "
                  f"from the first rank's start to the sum on rank 0 (one machine: the ranks share its monotonic "
                  f"clock), median over {repeats} repeats after one untimed warm-up. Speedup = total at 1 "
                  "rank / total at N; overhead share = (total − compute) / total: the barrier that closes the "
                  "compute phase and the reduce.")

    # per-term cost, in this process, for the simulated ranks' virtual compute
    c = per_term_seconds(func, X, cal_terms)
    rate = 1 / c
    spec = lambda net: f"{net},compute={rate:.9e}FLOP/s"   # noqa: E731  one FLOP = one term
    study.setting(f"Simulated ranks: N = {', '.join(map(str, sim_ranks))} with mpisim's network model "
                  f"({'; '.join(str(PRESETS[n]) for n in nets)}). A rank's computation is charged as virtual time: "
                  f"its terms × {fmt(c * 1e9)} ns, the cost of a term measured in this process (median of 3 sums of "
                  f"the first {cal_terms:,} terms); the reduce costs what the model says. The terms are still "
                  f"computed, for the value. T = {', '.join(f'{t:,}' for t in sim_terms)}.")
    study.data.update(per_term_s=c, cores=ncores, oversubscribed=over, x=X, func=func)

    # -- MPI runs
    steps = len(mpi_ranks) + len(nets) + 2
    step = 0
    mpi: list[dict] = []
    for n in mpi_ranks:
        step += 1
        study.progress(step, steps, f"mpiexec -n {n}, T = {', '.join(f'{t:,}' for t in mpi_terms)}")
        args = ["--worker", "--func", func, "--x", str(X), "--terms", ",".join(map(str, mpi_terms)),
                "--repeats", str(repeats)]
        out = mpi_job(study, n, "mpisim.study.taylor", args, metrics=False, tag=f"mpi{n}",
                      timeout=120 if quick else 600)
        lines = [json.loads(ln) for ln in out["stdout"].splitlines() if ln.startswith("{")]
        if len(lines) != len(mpi_terms):
            raise StudyError(f"mpiexec -n {n} python -m mpisim.study.taylor printed {len(lines)} results, "
                             f"expected {len(mpi_terms)}")
        mpi += lines
    ref = FUNCS[func](X)
    base = {r["terms"]: r["total_s"] for r in mpi if r["ranks"] == 1}
    for r in mpi:
        r["speedup"] = base[r["terms"]] / r["total_s"]
        r["efficiency"] = r["speedup"] / r["ranks"]
        r["overhead"] = (r["total_s"] - r["compute_s"]) / r["total_s"]
        r["abs_err"] = abs(r["value"] - ref)
        r["rel_err"] = r["abs_err"] / abs(ref)
    mpi.sort(key=lambda r: (r["terms"], r["ranks"]))
    study.data["mpi"] = mpi
    study.heading("Real MPI ranks")
    study.table(f"{func}({X}) under mpiexec: median of {repeats} repeats",
                ["T", "ranks", "compute s (slowest)", "reduce s", "total s", "speedup", "efficiency",
                 "overhead share", "relative error"],
                [[r["terms"], r["ranks"] if r["ranks"] <= ncores else f"{r['ranks']} (oversubscribed)",
                  r["compute_s"], r["reduce_s"], r["total_s"], r["speedup"], pct(r["efficiency"]),
                  pct(r["overhead"]), r["rel_err"]] for r in mpi],
                note="compute: the slowest rank's sum of its terms; reduce: rank 0, from the barrier after "
                     "the compute to the sum; total: from the first rank's start to the sum on rank 0.")

    # -- simulated ranks
    sim: list[dict] = []
    for net in nets:
        step += 1
        study.progress(step, steps, f"simulated ranks 1-{max(sim_ranks)} on {net}")
        a, b, g = PRESETS[net].seconds
        for T in sim_terms:
            for n in sim_ranks:
                try:
                    r = simulate_sum(func, X, T, n, network=spec(net))
                except Exception as e:
                    raise StudyError(f"simulated sum, {n} ranks, T = {T:,}, {net}: {type(e).__name__}: {e}") from None
                sim.append({"network": net, "terms": T, "ranks": n, "compute": r["compute"], "reduce": r["reduce"],
                            "total": r["total"], "value": r["value"],
                            "model": model_seconds(T, n, c, a, b, g)})
    for r in sim:
        one = next(q for q in sim if q["network"] == r["network"] and q["terms"] == r["terms"] and q["ranks"] == 1)
        r["speedup"] = one["total"] / r["total"]
        r["efficiency"] = r["speedup"] / r["ranks"]
        r["overhead"] = (r["total"] - r["compute"]) / r["total"]
    study.data["sim"] = sim
    main = [r for r in sim if r["network"] == main_net]
    study.heading(f"Simulated ranks on {main_net}")
    head = ["T"] + [f"N={n}" for n in sim_ranks]
    study.table(f"Virtual speedup on {main_net} (total at 1 rank / total at N)", head,
                [[T] + [f"{r['speedup']:.2f}" for r in main if r["terms"] == T] for T in sim_terms])
    study.table(f"Overhead share on {main_net} (reduce / total)", head,
                [[T] + [pct(r["overhead"]) for r in main if r["terms"] == T] for T in sim_terms])
    best = []
    for net in nets:
        for T in sim_terms:
            rows = [r for r in sim if r["network"] == net and r["terms"] == T]
            b_ = max(rows, key=lambda r: (r["speedup"], -r["ranks"]))
            best.append({"network": net, "terms": T, "ranks": b_["ranks"], "speedup": b_["speedup"],
                         "efficiency": b_["efficiency"], "overhead": b_["overhead"], "total": b_["total"]})
    study.data["best"] = best
    study.table("Best rank count for each T (virtual time)", ["network", "T", "best N", "speedup", "efficiency",
                                                              "overhead share", "total s"],
                [[b_["network"], b_["terms"], b_["ranks"], b_["speedup"], pct(b_["efficiency"]), pct(b_["overhead"]),
                  b_["total"]] for b_ in best], key="best_rows")
    far = max(sim, key=lambda r: abs(r["total"] - r["model"]) / r["model"])
    dev = abs(far["total"] - far["model"]) / far["model"]
    study.data["model_max_rel_dev"] = dev
    study.data["model_max_rel_dev_at"] = {k: far[k] for k in ("network", "terms", "ranks")}
    study.data["model_max_abs_dev_s"] = max(abs(r["total"] - r["model"]) for r in sim)

    # -- accuracy
    step += 1
    study.progress(step, steps, "error against math.exp and math.sin")
    errors = []
    for f in ("exp", "sin"):
        fref = FUNCS[f](X)
        for T in err_terms:
            v = serial_sum(f, X, T)
            errors.append({"func": f, "terms": T, "value": v, "ref": fref, "abs_err": abs(v - fref),
                           "rel_err": abs(v - fref) / abs(fref), "next_term": abs(term(f, X, T))})
    study.data["errors"] = errors
    cancel = []
    for xn in (-X, -2 * X, -4 * X):
        v, fref = serial_sum("exp", xn, 250), math.exp(xn)
        cancel.append({"x": xn, "value": v, "ref": fref, "rel_err": abs(v - fref) / fref, "ulps": ulps(v, fref),
                       "largest_term": max(abs(term("exp", xn, k)) for k in range(250))})
    study.data["cancellation"] = cancel
    study.heading("Accuracy")
    study.table(f"Serial sum of T terms at x = {X} against math.exp / math.sin",
                ["function", "T", "sum", "absolute error", "relative error", "first omitted term"],
                [[e["func"], e["terms"], f"{e['value']:.17g}", e["abs_err"], e["rel_err"], e["next_term"]]
                 for e in errors],
                note=f"math.exp({X}) = {math.exp(X):.17g}, math.sin({X}) = {math.sin(X):.17g}; one unit in the last "
                     f"place is {math.ulp(math.exp(X)):.3g} and {math.ulp(math.sin(X)):.3g}.")

    study.table("Cancellation: exp(x) for x < 0, 250 terms (alternating signs)",
                ["x", "sum", "math.exp", "relative error", "error (ulps)", "largest term"],
                [[c_["x"], f"{c_['value']:.17g}", f"{c_['ref']:.17g}", c_["rel_err"], f"{c_['ulps']:+g}",
                  c_["largest_term"]] for c_ in cancel])

    # -- order of the additions
    step += 1
    study.progress(step, steps, "summation order: serial, cyclic and block splits")
    serial = serial_sum(func, X, order_terms)
    naive = 0.0
    for k in range(order_terms):
        naive += term(func, X, k)
    order = []
    for n in sim_ranks:
        for how in SPLITS:
            v = simulate_sum(func, X, order_terms, n, how=how)["value"]
            order.append({"ranks": n, "split": how, "value": v, "ulps_vs_serial": ulps(v, serial),
                          "abs_err": abs(v - ref), "ulps_vs_math": ulps(v, ref)})
    study.data["order"] = order
    study.data["serial"] = {"fsum": serial, "naive": naive, "ref": ref, "fsum_ulps_vs_math": ulps(serial, ref),
                            "naive_ulps_vs_math": ulps(naive, ref)}
    study.table(f"Summation order: {func}({X}), T = {order_terms:,}, on simulated ranks (the same reduce as "
                f"under MPI)", ["ranks", "split", "sum", "minus serial fsum (ulps)", "absolute error",
                                "error (ulps of math)"],
                [[o["ranks"], o["split"], f"{o['value']:.17g}", f"{o['ulps_vs_serial']:+g}", o["abs_err"],
                  f"{o['ulps_vs_math']:+g}"] for o in order],
                note=f"Serial: math.fsum {serial:.17g} ({ulps(serial, ref):+g} ulps from math.exp), a plain "
                     f"left-to-right loop {naive:.17g} ({ulps(naive, ref):+g} ulps); math.exp({X}) = {ref:.17g}.")
    sim_val = {(r["terms"], r["ranks"]): r["value"] for r in main}
    same = [(r["terms"], r["ranks"]) for r in mpi if (r["terms"], r["ranks"]) in sim_val]
    study.data["mpi_matches_sim"] = all(
        next(m["value"] for m in mpi if (m["terms"], m["ranks"]) == key) == sim_val[key] for key in same)
    study.data["mpi_sim_compared"] = len(same)

    _plot(study, mpi, main, sim_ranks, ncores, main_net)
    _plot_error(study, errors)
    _conclude(study, mpi, sim, best, errors, order, nets, main_net, c, ncores, dev)


def _plot(study: Study, mpi: list[dict], main: list[dict], sim_ranks: list[int], ncores: int, net: str) -> None:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    for col, (rows, ranks, title) in enumerate([(mpi, sorted({r["ranks"] for r in mpi}), "mpiexec (measured)"),
                                                (main, sim_ranks, f"simulated, {net} (virtual time)")]):
        terms = sorted({r["terms"] for r in rows})
        cmap = plt.get_cmap("viridis")
        for i, T in enumerate(terms):
            pts = sorted((r for r in rows if r["terms"] == T), key=lambda r: r["ranks"])
            colr = cmap(i / max(len(terms) - 1, 1))
            ax[0, col].plot([r["ranks"] for r in pts], [r["speedup"] for r in pts], "o-", color=colr,
                            label=f"T = {T:,}")
            ax[1, col].plot([r["ranks"] for r in pts], [100 * r["overhead"] for r in pts], "o-", color=colr,
                            label=f"T = {T:,}")
        ax[0, col].plot(ranks, ranks, "k--", lw=1, label="ideal (N)")
        if col == 0 and max(ranks) > ncores:
            for a in ax[:, col]:
                a.axvline(ncores, color="grey", lw=0.8, ls=":")
            ax[0, col].text(ncores, 1, f" {ncores} cores", color="grey", va="bottom")
        for a in ax[:, col]:
            a.set_xscale("log", base=2)
            a.set_xticks(ranks, [str(n) for n in ranks])
            a.set_xlabel("ranks N")
        ax[0, col].set_yscale("log", base=2)
        ax[0, col].set_ylabel("speedup (total at 1 rank / total at N)")
        ax[0, col].set_title(f"speedup, {title}")
        ax[0, col].legend(fontsize=8)
        ax[1, col].set_ylim(0, 100)
        ax[1, col].set_ylabel("overhead share (%)")
        ax[1, col].set_title(f"(total − compute) / total, {title}")
        ax[1, col].legend(fontsize=8, loc="upper left" if col == 0 else "lower right")
    fig.tight_layout()
    study.figure(fig, "speedup", "Top: speedup against the rank count for several term counts T, with the ideal "
                                 "speedup N. Bottom: the share of the total that is not computation (the reduce, "
                                 "and under MPI the barrier closing the compute phase). Left: real MPI ranks; right: "
                                 "simulated ranks with the network model.")


def _plot_error(study: Study, errors: list[dict]) -> None:
    import matplotlib.pyplot as plt
    fig, a = plt.subplots(figsize=(6.5, 4))
    for f, colr in (("exp", "tab:blue"), ("sin", "tab:orange")):
        pts = [e for e in errors if e["func"] == f]
        a.plot([e["terms"] for e in pts], [max(e["rel_err"], 1e-18) for e in pts], "o-", color=colr,
               label=f"{f}: relative error")
        a.plot([e["terms"] for e in pts], [e["next_term"] / abs(e["ref"]) for e in pts], ":", color=colr,
               label=f"{f}: first omitted term / value")
    a.axhline(2 ** -53, color="grey", lw=0.8, ls="--", label="unit roundoff 2^-53")
    a.set_yscale("log")
    a.set_ylim(1e-18, 10)
    a.set_xlabel("terms T")
    a.set_ylabel("relative error")
    a.set_title(f"Taylor series at x = {X} against math")
    a.legend(fontsize=8)
    fig.tight_layout()
    study.figure(fig, "error", "Relative error of the sum of T terms against math.exp and math.sin (0 drawn at "
                               "1e-18): it follows the first omitted term down to the rounding of float64.")


def _conclude(study: Study, mpi, sim, best, errors, order, nets, main_net, c, ncores, dev) -> None:
    us = lambda s: f"{s * 1e6:.3g} µs"   # noqa: E731
    # MPI
    Tmax = max(r["terms"] for r in mpi)
    at = {r["ranks"]: r for r in mpi if r["terms"] == Tmax}
    two = at.get(2)
    if two:
        text = (f"Under mpiexec at T = {Tmax:,} terms, 2 ranks are {two['speedup']:.2f}x as fast as 1 (efficiency "
                f"{pct(two['efficiency'])}, overhead share {pct(two['overhead'])})")
        four = at.get(4)
        if four:
            faster = four["speedup"] >= 1.05 * two["speedup"]
            cmp_ = ("slower than" if four["speedup"] < 0.95 * two["speedup"] else
                    "faster than" if faster else "no faster than")
            text += f"; 4 ranks reach {four['speedup']:.2f}x, {cmp_} 2 ranks"
            if four["ranks"] > ncores and not faster:
                text += (f": with {ncores} cores, 4 ranks take turns on them, so the compute cannot run faster than "
                         f"on {ncores} ranks")
            elif four["ranks"] > ncores:
                text += (f" although there are only {ncores} cores; if the machine had other load (the load average "
                         f"was {study.data['load_average']:.1f} at the start), 4 processes get a larger share of the "
                         f"cores against it than 2, and these timings measure that load as much as the split")
        study.conclude(text + ".")
        pays = [r["terms"] for r in mpi if r["ranks"] == 2 and r["speedup"] > 1]
        smallest = min(r["terms"] for r in mpi)
        sm = next(r for r in mpi if r["terms"] == smallest and r["ranks"] == 2)
        study.conclude(
            f"The reduce of one float64 over 2 MPI ranks took {us(sm['reduce_s'])} at T = {smallest:,}; the overhead "
            f"share at 2 ranks goes from {pct(sm['overhead'])} at T = {smallest:,} to {pct(two['overhead'])} at "
            f"T = {Tmax:,}. "
            + _vs_shm(sm["reduce_s"])
            + (f"2 ranks beat 1 from T = {min(pays):,} on among the measured T"
               + (f" (not at T = {smallest:,}, where {smallest:,} terms take {us(smallest * c)})"
                  if min(pays) > smallest else "") + "."
               if pays else "2 ranks beat 1 at none of the measured T."))
    # simulated
    main = [r for r in sim if r["network"] == main_net]
    nmax = max(r["ranks"] for r in main)
    bm = [b for b in best if b["network"] == main_net]
    desc = "; ".join(f"T = {b['terms']:,}: N = {b['ranks']} ({fmt(b['speedup'])}x)" for b in bm)
    study.conclude(f"Simulated on {main_net} (one term costs {fmt(c * 1e9)} ns), the fastest rank count for each T "
                   f"is: {desc}.")
    far = next(r for r in main if r["ranks"] == nmax and r["terms"] == max(r["terms"] for r in main))
    steps = math.ceil(math.log2(nmax))
    red = far["reduce"]
    study.conclude(f"At {nmax} simulated ranks the reduce is {steps} tree steps and takes {us(red)}, as long as "
                   f"{red / c:,.0f} terms; at T = {far['terms']:,} that is {pct(far['overhead'])} of the total and the "
                   f"speedup is {far['speedup']:.1f} of an ideal {nmax}. Each doubling of N halves the computation "
                   f"but adds one step of alpha + 8 bytes"
                   + (": the best N grows with T." if all(x["ranks"] <= y["ranks"] for x, y in zip(bm, bm[1:]))
                      and bm[-1]["ranks"] > bm[0]["ranks"] else "."))
    for net in nets:
        rows = [b for b in best if b["network"] == net]
        loss = [b["terms"] for b in rows if b["ranks"] == 1]
        gain = [b["terms"] for b in rows if b["ranks"] > 1]
        a, b_, g = _preset(net)
        even = 2 * (a + WORD * b_ + WORD * g) / c
        if not gain:
            s = f"on {net} no rank count above 1 pays for any T up to {max(b['terms'] for b in rows):,}"
        elif not loss:
            s = f"on {net} more than one rank pays from the smallest T measured ({min(gain):,}) on"
        else:
            below = [t for t in loss if t < min(gain)]
            s = (f"on {net} parallelism does not pay below T = {min(gain):,}"
                 + (f" (at T = {max(below):,} one rank is fastest)" if below else "")
                 + (f"; one rank is also fastest at T = {', '.join(f'{t:,}' for t in loss if t > min(gain))}"
                    if len(below) < len(loss) else ""))
        study.conclude(f"Break-even: {s}; the model's break-even for 2 ranks, T·c/2 = alpha + 8 beta + 8 gamma, is "
                       f"T ≈ {even:,.0f} terms.")
    gap, at = study.data["model_max_abs_dev_s"], study.data["model_max_rel_dev_at"]
    study.conclude(f"The simulated times match the closed form ceil(T/N)·c + ceil(lg N)(alpha + 8 beta + 8 gamma) to "
                   f"within the time of {gap / c:.2g} term{'' if round(gap / c, 2) == 1 else 's'} over all runs "
                   f"({pct(dev, 1)} of the total at worst, "
                   f"at T = {at['terms']:,}, N = {at['ranks']} on {at['network']}): the form gives every rank on the "
                   "tree's critical path ceil(T/N) terms, where some have one less.")
    # accuracy
    for f in ("exp", "sin"):
        pts = [e for e in errors if e["func"] == f]
        ok = [e for e in pts if e["rel_err"] < 1e-12]
        floor = [e for e in pts if e["abs_err"] <= 2 * math.ulp(e["ref"])]
        last = pts[-1]
        one = pts[0]["terms"] == 1
        study.conclude(f"{f}({X}): {pts[0]['terms']} term{'' if one else 's'} give{'s' if one else ''} a relative "
                       f"error of {fmt(pts[0]['rel_err'])}; "
                       + (f"from T = {ok[0]['terms']} on it is below 1e-12, " if ok else "it never gets below 1e-12, ")
                       + (f"from T = {floor[0]['terms']} within 2 ulps of math.{f} " if floor else "")
                       + f"and at T = {last['terms']} it is {fmt(last['rel_err'])} ({fmt(last['abs_err'])} absolute, "
                         f"{_ulp_text(ulps(last['value'], last['ref']), sign=True)}): the error follows the first "
                         "omitted term until float64 rounding stops it.")
    cancel = study.data["cancellation"]
    worst = max(cancel, key=lambda c_: c_["rel_err"])
    at_x = [e for e in errors if e["func"] == "exp"][-1]
    study.conclude(f"For x < 0 the terms alternate and cancel: at x = {worst['x']:g} terms as large as "
                   f"{fmt(worst['largest_term'])} add up to {fmt(worst['ref'])}, and the sum is off by "
                   f"{fmt(worst['rel_err'])} relative ({_ulp_text(worst['ulps'], sign=True)}), against "
                   f"{fmt(at_x['rel_err'])} at x = {X}: each term's rounding is relative to the term, not to the "
                   "sum (exp(-|x|) = 1/exp(|x|) avoids it).")
    cyc = [o for o in order if o["split"] == "cyclic"]
    blk = [o for o in order if o["split"] == "block"]
    wc = max(cyc, key=lambda o: abs(o["ulps_vs_serial"]))
    wb = max(blk, key=lambda o: abs(o["ulps_vs_serial"]))
    serial = study.data["serial"]
    study.conclude(
        f"Order of the additions: the serial fsum is {_ulp_text(serial['fsum_ulps_vs_math'], sign=True)} from "
        f"math.exp and a plain left-to-right loop {_ulp_text(serial['naive_ulps_vs_math'], sign=True)}. Over ranks "
        f"the sum is the tree's additions of the correctly rounded partial sums, in another order than the serial "
        f"sum: with the cyclic split it differs from the serial fsum by "
        + (f"up to {_ulp_text(abs(wc['ulps_vs_serial']))} (at N = {wc['ranks']})" if wc["ulps_vs_serial"] else
           "nothing at any N") + ", with blocks by "
        + (f"up to {_ulp_text(abs(wb['ulps_vs_serial']))} (at N = {wb['ranks']})" if wb["ulps_vs_serial"] else
           "nothing at any N")
        + (" (with blocks the large terms sit on rank 0 and its first neighbours and the other partial sums are "
           "tiny, so the tree's roundings are smaller; the cyclic split gives every rank a partial sum of the size "
           "of the total, and each of them and each addition of the tree rounds)"
           if abs(wb["ulps_vs_serial"]) < abs(wc["ulps_vs_serial"]) else "")
        + f". The largest error against math.exp over all splits and rank counts is "
          f"{_ulp_text(max(abs(o['ulps_vs_math']) for o in order))}.")
    n = study.data["mpi_sim_compared"]
    if n:
        study.conclude(f"The MPI sums equal the simulated sums bit for bit in {n} of {n} (T, N) pairs measured both "
                       "ways." if study.data["mpi_matches_sim"] else
                       f"The MPI sums differ from the simulated ones for some of the {n} (T, N) pairs measured both "
                       "ways, though both add the same partial sums in the same tree.")


def _vs_shm(measured: float) -> str:
    """The measured 2-rank reduce against one step of the shm model (alpha + 8 beta + 8 gamma)."""
    a, b, g = _preset("shm")
    step = a + WORD * b + WORD * g
    ratio = measured / step
    return ("That is "
            + (f"{ratio:.0f}x one step of the shm model ({step * 1e6:.3g} µs): the model's alpha is the hardware's "
               "latency, the measured one adds the software on the way (mpisim's Python collective, mpi4py, MPICH). "
               if ratio > 2 else f"close to one step of the shm model ({step * 1e6:.3g} µs). "))


def _ulp_text(u: float, sign: bool = False) -> str:
    return f"{u:+g} ulp{'' if abs(u) == 1 else 's'}" if sign else f"{u:g} ulp{'' if abs(u) == 1 else 's'}"


def _preset(net: str) -> tuple[float, float, float]:
    from ..comm.network import PRESETS
    return PRESETS[net].seconds


if __name__ == "__main__":
    if "--worker" not in sys.argv[1:]:
        print("python -m mpisim.study.taylor is the MPI worker of the taylor study (needs --worker); run the study "
              "with: python -m mpisim.study taylor [--quick]", file=sys.stderr)
        sys.exit(2)
    sys.exit(_worker(sys.argv[1:]))
