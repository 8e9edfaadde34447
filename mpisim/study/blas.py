"""Dense linear algebra four ways: the matrix product C = A B and the inverse of A in naive Python, Numba loops,
and NumPy's BLAS/LAPACK at one thread and at all threads; GFLOP/s against n, each result checked."""
from __future__ import annotations

import os
import statistics
import time

import numba
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from . import Study, StudyError, cores, fmt

QUESTION = ("How many GFLOP/s do a matrix product and a matrix inversion reach in naive Python, in Numba loops "
            "and in NumPy's BLAS at one thread and at all threads, and how does that change with the matrix size?")

TITLE = "BLAS"              # the report's heading (the default would capitalize the name: "Blas")
MATMUL_TOL = 1e-10          # max |C - C_ref| / max |C_ref|: float64 sums in another order
INV_TOL = 1e-6              # the same for the inverse, which also carries the matrix's condition number


# -- the kernels --------------------------------------------------------------------------------------------
def matmul_python(A: list[list[float]], B: list[list[float]]) -> list[list[float]]:
    """C = A B on lists of lists, i-k-j order: the inner loop walks a row of B and a row of C."""
    m = len(B[0])
    C = []
    for Ai in A:
        Ci = [0.0] * m
        for a, Bk in zip(Ai, B):
            for j in range(m):
                Ci[j] += a * Bk[j]
        C.append(Ci)
    return C


def inv_python(A: list[list[float]]) -> list[list[float]]:
    """The inverse of a square matrix of lists: in-place Gauss-Jordan with partial pivoting (see inv_numba)."""
    n = len(A)
    a = [row[:] for row in A]
    perm = list(range(n))
    for k in range(n):
        p = max(range(k, n), key=lambda i: abs(a[i][k]))
        if a[p][k] == 0.0:
            raise ValueError("singular matrix")
        if p != k:
            a[k], a[p] = a[p], a[k]
        perm[k] = p
        ak = a[k]
        piv = 1.0 / ak[k]
        ak[k] = 1.0
        for j in range(n):
            ak[j] *= piv
        for i in range(n):
            if i != k:
                ai = a[i]
                f = ai[k]
                ai[k] = 0.0
                for j in range(n):
                    ai[j] -= f * ak[j]
    for k in range(n - 1, -1, -1):           # undo the row swaps: swap the columns back, last first
        p = perm[k]
        if p != k:
            for row in a:
                row[k], row[p] = row[p], row[k]
    return a


@numba.njit(cache=True)
def matmul_numba(A, B, C):
    """C = A B, triple loop in i-k-j order (the inner loop is contiguous in B and C, so it vectorizes)."""
    n, K = A.shape
    m = B.shape[1]
    for i in range(n):
        for j in range(m):
            C[i, j] = 0.0
        for k in range(K):
            a = A[i, k]
            for j in range(m):
                C[i, j] += a * B[k, j]
    return C


@numba.njit(cache=True)
def inv_numba(A):
    """The inverse of A by in-place Gauss-Jordan with partial pivoting: for each column k, swap in the row with
    the largest |a_ik| (i >= k), scale it by 1/pivot, subtract it from every other row. The pivot column
    is overwritten with the inverse's column, so the work is n multiply-adds per row per pivot: 2n^3 flops."""
    n = A.shape[0]
    a = A.copy()
    perm = np.arange(n)
    for k in range(n):
        p = k
        for i in range(k + 1, n):
            if abs(a[i, k]) > abs(a[p, k]):
                p = i
        if a[p, k] == 0.0:
            raise ValueError("singular matrix")
        if p != k:
            for j in range(n):
                a[k, j], a[p, j] = a[p, j], a[k, j]
        perm[k] = p
        piv = 1.0 / a[k, k]
        a[k, k] = 1.0
        for j in range(n):
            a[k, j] *= piv
        for i in range(n):
            if i != k:
                f = a[i, k]
                a[i, k] = 0.0
                for j in range(n):
                    a[i, j] -= f * a[k, j]
    for k in range(n - 1, -1, -1):           # undo the row swaps: swap the columns back, last first
        p = perm[k]
        if p != k:
            for i in range(n):
                a[i, k], a[i, p] = a[i, p], a[i, k]
    return a


# -- measuring ----------------------------------------------------------------------------------------------
def median_seconds(fn, *, target: float, warmup: float = 0.0, min_calls: int = 3,
                   max_calls: int = 200) -> tuple[float, float, object]:
    """Median and least seconds of ``fn()``, and its last result. Warm-up calls first, at least one and until ``warmup``
    seconds are spent (a thread pool that was idle needs a while to be scheduled again); a first call that
    alone takes over ``target`` (a naive Python call) counts as a sample. Then calls until about ``target``
    seconds are spent, ``min_calls`` to ``max_calls`` of them."""
    t_start = time.perf_counter()
    t0 = t_start
    out = fn()
    first = time.perf_counter() - t0
    times = [first] if first > target else []
    while not times and time.perf_counter() - t_start < warmup:
        out = fn()
    spent = sum(times)
    while len(times) < min_calls or (spent < target and len(times) < max_calls):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    return statistics.median(times), min(times), out


def rel_error(x: np.ndarray, ref: np.ndarray) -> float:
    """max |x - ref| / max |ref|."""
    return float(np.max(np.abs(np.asarray(x) - ref)) / np.max(np.abs(ref)))


def blas_info() -> list[dict]:
    """The BLAS libraries threadpoolctl finds in this process (what NumPy calls)."""
    return [i for i in threadpool_info() if i.get("user_api") == "blas"]


def run(study: Study) -> None:
    quick = study.quick
    ncores = cores()
    sizes = [32, 64, 128, 256] if quick else [32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
    py_sizes = [32, 64] if quick else [32, 48, 64, 96, 128, 192, 256]
    rounds = 1 if quick else 3
    target = 0.05 if quick else 1.0             # seconds of timed calls per point, over all rounds
    warmup = 0.05 if quick else 0.3
    min_calls = 3
    methods = ["Python", "Numba", "NumPy, 1 thread", f"NumPy, {ncores} threads"]

    load0 = os.getloadavg()[0]
    info = blas_info()
    if info:
        blas = "; ".join(f"{i.get('internal_api')} {i.get('version')} (architecture "
                         f"{i.get('architecture') or 'not reported'}, {i.get('threading_layer', '?')} threading, "
                         f"{i.get('num_threads')} threads by default)" for i in info)
    else:
        blas = "none that threadpoolctl can see (the thread settings below may then have no effect)"
    study.setting(f"NumPy {np.__version__} with BLAS: {blas}; Numba {numba.__version__}; {ncores} cores.")
    study.setting(f"Square float64 matrices, standard normal entries (seeded), n = {', '.join(map(str, sizes))}; "
                  f"naive Python (lists of lists, triple loops) only for n = {', '.join(map(str, py_sizes))}.")
    study.setting("Matrix product C = A B: 2n^3 flops. Python and Numba run the same i-k-j triple loop (Numba "
                  "compiles it, one thread); NumPy runs A @ B, i.e. BLAS dgemm.")
    study.setting("Inverse of A: counted as 2n^3 flops for every method, the cost of an LU-based inverse (LU, "
                  "2/3 n^3, then the inverse from the factors, 4/3 n^3). Python and Numba run in-place "
                  "Gauss-Jordan with partial pivoting, which does exactly that many (n multiply-adds per row per "
                  "pivot); NumPy's inv solves A X = I with LAPACK's gesv, which does a little more (about 8/3 n^3), "
                  "so its GFLOP/s are if anything understated.")
    study.setting(f"Load average (1 min) at the start: {load0:.2f} on {ncores} cores (other work competes with "
                  "the timings, the threaded ones most).")
    study.setting(f"NumPy's threads are set with threadpoolctl: 1, then {ncores} (every core); Python and Numba "
                  f"run under a limit of 1 too. Each time is the median of at least {min_calls} calls (one for "
                  f"naive Python; about {target:g} s of calls per point) after {warmup:g} s of warm-up calls (a BLAS "
                  "thread pool that sat idle takes a while to get its cores back)"
                  + ("" if rounds == 1 else f"; at each size the methods take turns in {rounds} rounds of a third of "
                     "that, and the figure is the median of the rounds' medians") + "; "
                  "Numba's compilation happens before (cached on disk).")
    study.setting(f"Every result is checked against NumPy's at one thread: max |X - X_ref| / max |X_ref| must stay "
                  f"under {MATMUL_TOL:g} for the product and {INV_TOL:g} for the inverse; the inverse's residual "
                  "max abs(A X - I) is reported too. NumPy at one thread is checked against Numba's result.")

    A0 = np.random.default_rng(0).standard_normal((2, 2))
    matmul_numba(A0, A0, np.empty((2, 2)))          # compile (or load from the cache) outside the timings
    inv_numba(A0 + 2 * np.eye(2))

    rows: list[dict] = []
    steps = 2 * len(sizes)
    k = 0
    for op in ("matmul", "inverse"):
        for n in sizes:
            rng = np.random.default_rng(n)
            A = rng.standard_normal((n, n))
            B = rng.standard_normal((n, n))
            with threadpool_limits(limits=1, user_api="blas"):
                ref = A @ B if op == "matmul" else np.linalg.inv(A)
            runs = []
            if n in py_sizes:
                Al, Bl = A.tolist(), B.tolist()
                runs.append(("Python", (lambda: matmul_python(Al, Bl)) if op == "matmul" else (lambda: inv_python(Al)),
                             None))
            C = np.empty((n, n))
            runs.append(("Numba", (lambda: matmul_numba(A, B, C)) if op == "matmul" else (lambda: inv_numba(A)), None))
            np_fn = (lambda: A @ B) if op == "matmul" else (lambda: np.linalg.inv(A))
            runs.append(("NumPy, 1 thread", np_fn, 1))
            runs.append((f"NumPy, {ncores} threads", np_fn, ncores))
            k += 1
            study.progress(k, steps, f"{op}, n = {n}: {', '.join(m for m, _, _ in runs)}")
            got: dict[str, list] = {m: [] for m, _, _ in runs}
            for _ in range(rounds):     # the methods take turns: a passing load on the machine hits them alike
                for method, fn, threads in runs:
                    calls = 1 if method == "Python" else min_calls
                    with threadpool_limits(limits=threads or 1, user_api="blas"):
                        got[method].append(median_seconds(fn, target=target / rounds, warmup=warmup / rounds,
                                                          min_calls=calls))
            numba_out = None
            for method, _, _ in runs:
                sec = statistics.median(g[0] for g in got[method])
                best = min(g[1] for g in got[method])
                out = np.asarray(got[method][-1][2], dtype=np.float64)
                if method == "Numba":
                    numba_out = out
                check = numba_out if method == "NumPy, 1 thread" else ref
                err = rel_error(out, check)
                tol = MATMUL_TOL if op == "matmul" else INV_TOL
                if not err <= tol:
                    raise StudyError(f"{op} by {method} at n = {n} is wrong: max relative error {err:.3g} "
                                     f"(tolerance {tol:g})")
                resid = float(np.max(np.abs(A @ out - np.eye(n)))) if op == "inverse" else None
                rows.append({"op": op, "method": method, "n": n, "seconds": sec, "gflops": 2 * n ** 3 / sec / 1e9,
                             "best_seconds": best, "best_gflops": 2 * n ** 3 / best / 1e9,
                             "rel_error": err, "residual": resid})
    study.data["results"] = rows
    study.data["blas"] = [{k_: i.get(k_) for k_ in ("internal_api", "version", "num_threads", "architecture",
                                                   "threading_layer")} for i in info]
    study.data["cores"] = ncores
    _report(study, rows, methods, sizes)
    _plot(study, rows, methods)
    load = (load0, os.getloadavg()[0])
    study.data["load_average"] = load
    _conclude(study, rows, methods, ncores, py_sizes, load)


def _get(rows: list[dict], op: str, method: str, n: int) -> dict | None:
    return next((r for r in rows if r["op"] == op and r["method"] == method and r["n"] == n), None)


def _report(study: Study, rows: list[dict], methods: list[str], sizes: list[int]) -> None:
    for op, title in (("matmul", "Matrix product C = A B"), ("inverse", "Inverse of A")):
        table = []
        for n in sizes:
            cells: list = [n]
            for m in methods:
                r = _get(rows, op, m, n)
                cells.append(r["gflops"] if r else "-")
            errs = [r["rel_error"] for r in rows if r["op"] == op and r["n"] == n]
            cells.append(max(errs))
            if op == "inverse":
                cells.append(max(r["residual"] for r in rows if r["op"] == op and r["n"] == n))
            table.append(cells)
        headers = ["n", *(f"{m} GFLOP/s" for m in methods), "max relative error"]
        if op == "inverse":
            headers.append("max abs(A X - I)")
        study.table(f"{title}: GFLOP/s (2n^3 flops / median time)", headers, table, key=op,
                    note="'-': not run at that size. Errors: the largest over the methods at that size.")


def _plot(study: Study, rows: list[dict], methods: list[str]) -> None:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (op, title) in zip(axes, (("matmul", "matrix product C = A B"), ("inverse", "inverse of A"))):
        for m, style in zip(methods, ("o-", "s-", "^-", "v--")):
            pts = [(r["n"], r["gflops"]) for r in rows if r["op"] == op and r["method"] == m]
            ax.plot(*zip(*pts), style, label=m)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ns = sorted({r["n"] for r in rows})
        ax.set_xticks(ns, [str(n) for n in ns], fontsize=7 if len(ns) > 6 else None)
        ax.minorticks_off()
        ax.set_xlabel("n (n x n float64 matrices)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("GFLOP/s (2n^3 flops / time)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    study.figure(fig, "gflops", "GFLOP/s against the matrix size, log-log: the matrix product (left) and the "
                                "inverse (right), counted as 2n^3 flops each.")


def _conclude(study: Study, rows: list[dict], methods: list[str], ncores: int, py_sizes: list[int],
              load: tuple[float, float]) -> None:
    py, nb, np1, npn = methods
    nmax = max(r["n"] for r in rows)
    npy = max(py_sizes)
    for op, what in (("matmul", "the matrix product"), ("inverse", "the inverse")):
        g = {m: _get(rows, op, m, npy)["gflops"] for m in methods}
        study.conclude(f"For {what} at n = {npy}, the largest size naive Python ran: Python {fmt(g[py])} GFLOP/s, "
                       f"Numba {fmt(g[nb])}, NumPy at one thread {fmt(g[np1])}: BLAS is {g[np1] / g[py]:,.0f}x "
                       f"naive Python and Numba {g[nb] / g[py]:,.0f}x; each multiply-add in Python goes through the "
                       f"interpreter and boxed floats.")
    for op, what in (("matmul", "the matrix product"), ("inverse", "the inverse")):
        g = {m: _get(rows, op, m, nmax)["gflops"] for m in (nb, np1)}
        best_nb = max((r for r in rows if r["op"] == op and r["method"] == nb), key=lambda r: r["gflops"])
        ratio = g[np1] / g[nb]
        text = (f"At n = {nmax}, NumPy at one thread reaches {fmt(g[np1])} GFLOP/s for {what}, "
                + (f"{ratio:.1f}x Numba's {fmt(g[nb])}" if ratio >= 1 else
                   f"only {ratio:.2f}x Numba's {fmt(g[nb])} (Numba is faster here)"))
        if best_nb["n"] != nmax and best_nb["gflops"] > 1.25 * g[nb]:
            text += (f"; Numba's loop peaks at {fmt(best_nb['gflops'])} GFLOP/s at n = {best_nb['n']} and falls by "
                     f"{best_nb['gflops'] / g[nb]:.1f}x as the matrices outgrow the caches, which the BLAS, working "
                     f"on blocks that stay in cache, does not suffer")
        study.conclude(text + ".")
    sp = {op: _get(rows, op, npn, nmax)["gflops"] / _get(rows, op, np1, nmax)["gflops"] for op in ("matmul", "inverse")}
    spb = {op: _get(rows, op, npn, nmax)["best_gflops"] / _get(rows, op, np1, nmax)["best_gflops"]
           for op in ("matmul", "inverse")}
    small = min(r["n"] for r in rows)
    sp_small = _get(rows, "matmul", npn, small)["gflops"] / _get(rows, "matmul", np1, small)["gflops"]
    slow = [r for r in rows if r["method"] == npn
            and r["gflops"] < 0.5 * _get(rows, r["op"], np1, r["n"])["gflops"]]
    if ncores == 1:
        study.conclude("One core: NumPy at all threads is NumPy at one thread here, and the two columns differ "
                       "only by noise.")
    else:
        text = (f"{ncores} BLAS threads against one, at n = {nmax}: {sp['matmul']:.2f}x for the product and "
                f"{sp['inverse']:.2f}x for the inverse (median calls), {spb['matmul']:.2f}x and {spb['inverse']:.2f}x "
                f"comparing the fastest calls, on {ncores} cores (at most {ncores}x)")
        text += (f"; at n = {small} they give {sp_small:.2f}x, no gain at that size" if 0.9 <= sp_small < 1.2 else
                 f"; at n = {small}: {sp_small:.2f}x")
        study.conclude(text + ".")
        if slow:
            study.conclude(f"At {len(slow)} of the {sum(r['method'] == npn for r in rows)} points ("
                           + ", ".join(f"{r['op']} n = {r['n']}" for r in slow)
                           + f") the threaded BLAS ran at less than half the speed of one thread. BLAS threads wait "
                             f"for each other at every step, so one held up by other work on the machine stalls "
                             f"them all (load average {load[0]:.2f} before the study, {load[1]:.2f} after, on "
                             f"{ncores} cores): one BLAS thread per process is the safe setting on a shared machine, "
                             f"and the setting the other studies use.")
    for op, what in (("matmul", "product"), ("inverse", "inverse")):
        wins = [r["n"] for r in rows if r["op"] == op and r["method"] == nb
                and r["gflops"] >= _get(rows, op, np1, r["n"])["gflops"]]
        if wins:
            study.conclude(f"Numba's loop matches or beats NumPy at one thread for the {what} at n = "
                           f"{', '.join(map(str, wins))} ("
                           + ", ".join(f"{fmt(_get(rows, op, nb, n)['gflops'])} against "
                                       f"{fmt(_get(rows, op, np1, n)['gflops'])} GFLOP/s" for n in wins)
                           + ("): a matrix that small leaves the library little to gain over a plain compiled loop."
                              if max(wins) <= 128 else ")."))
    ri = {m: _get(rows, "inverse", m, nmax)["gflops"] / _get(rows, "matmul", m, nmax)["gflops"] for m in (nb, np1)}
    study.conclude(f"At n = {nmax}, the inverse runs at {ri[np1]:.2f}x the product's GFLOP/s in NumPy (one thread) "
                   f"and {ri[nb]:.2f}x in Numba"
                   + (": the same flop count takes longer as an inverse, whose pivoting and row operations are "
                      "less regular than a product's (and NumPy's gesv does about 8/3 n^3 flops, 4/3 of those "
                      "counted)" if ri[np1] < 0.9 else "") + ".")
    study.data["numpy_over_python"] = {op: _get(rows, op, np1, npy)["gflops"] / _get(rows, op, py, npy)["gflops"]
                                       for op in ("matmul", "inverse")}
    study.data["thread_speedup"] = sp
