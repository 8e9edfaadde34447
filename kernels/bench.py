"""``python -m kernels.bench``: how fast each backend runs, next to ceilings measured in the same run.

Grayscale: GB/s moved on a batch of 1080p images, for every backend, next to a memcpy (host; also
split over Numba's threads, and the faster of the two is the ceiling) or a device-to-device copy
(GPU): a kernel that reads and writes every byte once cannot beat a copy.
Matmul: GFLOP/s at n = 256 .. 4096 next to BLAS (``numpy``) and cuBLAS (``cupy.matmul``), and the
time of ``np.linalg.inv`` (and ``cupy.linalg.inv``) at the same sizes: the course's BLAS comparison.
The header says which BLAS NumPy is linked to and with how many threads (threadpoolctl); the end
checks the targets: CPU grayscale (numba) >= 50% of memcpy, numba matmul >= 25% of BLAS at
1024, GPU grayscale >= 70% of the device copy, tiled Numba CUDA matmul >= 30% of cuBLAS at 4096.

    python -m kernels.bench
    python -m kernels.bench --only matmul --sizes 256,1024
    OMP_NUM_THREADS=2 python -m kernels.bench

Definitions: GB/s = (bytes read + bytes written) / s / 1e9, for kernels and copies alike (a copy of
B bytes moves 2 B); GFLOP/s = 2 n^3 / s / 1e9 for an (n, n) @ (n, n) matmul, and for an inversion
the LAPACK count getrf + getri = 2/3 n^3 + 4/3 n^3 = 2 n^3. Each time is the best of --repeats runs
after one untimed warm-up (where Numba compiles); GPU runs are timed between two synchronizations.
"""
from __future__ import annotations

import argparse
import csv
import functools
import os
import platform
import sys
import time
from typing import Callable, NamedTuple

import numba
import numpy as np

from . import BACKENDS, GPU_BACKENDS, OPS, backend_status, grayscale, matmul, to_device, to_host
from ._python import MAX_MULTIPLY_ADDS

SEED = 0
SLOW_RUN_S = 2.0        # a run slower than this is timed once
CELL_BUDGET_S = 10.0    # no more timed runs of one row once they add up to this
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
SIM_SKIP = "numba_cuda: skipped (NUMBA_ENABLE_CUDASIM=1 runs Numba's CUDA simulator, not a GPU)"
# (label, section, backend, size (None: the grayscale batch), minimum ratio to the reference)
TARGETS = [("CPU grayscale, numba vs memcpy", "grayscale", "numba", None, 0.50),
           ("CPU matmul at 1024, numba vs BLAS", "matmul", "numba", 1024, 0.25),
           ("GPU grayscale, cupy vs device copy", "grayscale", "cupy", None, 0.70),
           ("GPU grayscale, numba_cuda vs device copy", "grayscale", "numba_cuda", None, 0.70),
           ("GPU matmul at 4096 float32, numba_cuda vs cuBLAS", "matmul", "numba_cuda", 4096, 0.30)]
say = functools.partial(print, flush=True)


class Row(NamedTuple):
    section: str
    backend: str
    size: int | str
    seconds: float
    rate: float
    unit: str
    ratio: float | None       # rate / the reference's rate (memcpy, device copy, BLAS, cuBLAS)


class CheckFailed(RuntimeError):
    """A backend's result differs from NumPy's."""


def parse_backends(text: str) -> list[str]:
    """'numpy,numba' -> ['numpy', 'numba']; an unknown name is a usage error."""
    names = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [n for n in names if n not in BACKENDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown backend(s) {', '.join(bad) or repr(text)}; "
                                         f"choose from {', '.join(BACKENDS)}")
    return names


def positive_ints(text: str) -> list[int]:
    """'256,1024' -> [256, 1024]; anything but positive integers is a usage error."""
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not parts or not all(s.isdigit() and int(s) > 0 for s in parts):
        raise argparse.ArgumentTypeError(f"not a comma-separated list of positive integers: {text!r}")
    return [int(s) for s in parts]


def positive(text: str) -> int:
    """'8' -> 8; anything but a positive integer is a usage error."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m kernels.bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Time grayscale (GB/s, next to a memcpy) and matmul (GFLOP/s, next to BLAS and cuBLAS)\n"
                    "on every backend that runs here, and np.linalg.inv at the same sizes. Each row is the\n"
                    "best of --repeats runs after one untimed warm-up (where Numba compiles); a row whose\n"
                    f"run takes over {SLOW_RUN_S:g} s is timed once, and a row stops repeating after about "
                    f"{CELL_BUDGET_S:g} s.",
        epilog="examples:\n  python -m kernels.bench\n  python -m kernels.bench --only matmul --sizes 256,1024\n"
               "  python -m kernels.bench --only grayscale --images 2 --dtype float32 --backends numba\n"
               "  OMP_NUM_THREADS=2 python -m kernels.bench --csv results.csv\n\n"
               "GB/s = (bytes read + written) / s / 1e9; GFLOP/s = 2 n^3 / s / 1e9.")
    ap.add_argument("--only", choices=["grayscale", "matmul", "all"], default="all",
                    help="which section (default all)")
    ap.add_argument("--backends", type=parse_backends, metavar="LIST",
                    help=f"comma-separated, from {', '.join(BACKENDS)} (default: all that run here but "
                         "python, which is for small inputs and runs only where asked and its limit allows)")
    ap.add_argument("--images", type=positive, default=8, metavar="N", help="1080p images in the batch (default 8)")
    ap.add_argument("--dtype", choices=["uint8", "float32"], default="uint8", help="grayscale dtype (default uint8)")
    ap.add_argument("--sizes", type=positive_ints, default=[256, 512, 1024, 2048, 4096], metavar="LIST",
                    help="matmul and inversion sizes n (default 256,512,1024,2048,4096)")
    ap.add_argument("--matmul-dtype", choices=["float32", "float64"], default="float32", help="(default float32)")
    ap.add_argument("--repeats", type=positive, default=5, metavar="R",
                    help="timed runs per row, the best kept (default 5)")
    ap.add_argument("--csv", metavar="FILE", help="also write every row to FILE (at the end, atomically)")
    ap.add_argument("--no-inverse", action="store_true", help="skip the np.linalg.inv timing")
    return ap


def best_time(fn: Callable[[], object], repeats: int, sync: Callable[[], object]) -> tuple[float, int]:
    """(best seconds, runs timed): ``fn`` once untimed, then up to ``repeats`` timed runs."""
    fn()
    sync()
    times: list[float] = []
    while len(times) < repeats and sum(times) < CELL_BUDGET_S and not (times and times[-1] > SLOW_RUN_S):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times), len(times)


def timed_row(rows: list[Row], repeats: int, section: str, size: int | str, backend: str, fn: Callable[[], object],
              work: float, ref: float | None = None, sync: Callable[[], object] = lambda: None,
              label: str = "") -> float:
    """Time ``fn``, print its row and keep it; ``work``: bytes or FLOPs a call; ``ref``: the reference's
    rate (None: this row is the reference; 0: there is none). Returns the rate."""
    t, runs = best_time(fn, repeats, sync)
    rate = work / t / 1e9
    ratio = 1.0 if ref is None else (rate / ref if ref else None)
    rows.append(Row(section, backend, size, t, rate, "GB/s" if section == "grayscale" else "GFLOP/s", ratio))
    say(f"{size!s:>12}  {label or backend:<16} {runs:>4} {t * 1e3:>11.3f} {rate:>9.2f} {rows[-1].unit:<8} "
        f"{'-' if ratio is None else f'{100 * ratio:.1f}%':>7}")
    return rate


def check(what: str, got, want: np.ndarray, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Raise CheckFailed unless ``got`` (host or GPU) equals ``want`` (within rtol, atol)."""
    got = to_host(got)
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        diff = np.max(np.abs(got.astype(np.float64) - want))
        raise CheckFailed(f"{what}: the result differs from numpy's (max abs difference {diff:.3g})")


def gpu_sync(name: str) -> Callable[[], object]:
    """Wait for the GPU work of backend ``name``."""
    if name == "numba_cuda":
        from numba import cuda
        return cuda.synchronize
    import cupy
    return cupy.cuda.Device().synchronize


def table_head(*lines: str) -> None:
    """A section's title, its definitions and the column names."""
    say("\n## " + "\n# ".join(lines))
    say(f"{'size':>12}  {'backend':<16} {'runs':>4} {'time_ms':>11} {'rate':>9} {'unit':<8} {'vs_ref':>7}")


def select(op: str, asked: list[str] | None) -> list[str]:
    """The backends of ``op`` to time, saying why each asked-for one that cannot run is left out."""
    status = backend_status()
    chosen = []
    for name in (asked or OPS[op]):
        if name == "python" and asked is None:
            continue                                # the sections say why
        if name not in OPS[op]:
            say(f"{name}: has no {op}")
        elif status[name] != "available":
            if asked:
                say(f"{name}: not available: {status[name]}")
        elif name == "numba_cuda" and SIM:
            say(SIM_SKIP)
        else:
            chosen.append(name)
    return chosen


@numba.njit(parallel=True, nogil=True)
def _parallel_copy(dst: np.ndarray, src: np.ndarray) -> None:
    """A memcpy split over Numba's threads, in 1 MiB pieces: the ceiling for the parallel kernels."""
    n, piece = src.size, 1 << 20
    for c in numba.prange((n + piece - 1) // piece):
        dst[c * piece:min(n, (c + 1) * piece)] = src[c * piece:min(n, (c + 1) * piece)]


def bench_grayscale(args: argparse.Namespace, rows: list[Row]) -> None:
    """memcpy, then each host backend, then the device copy and each GPU backend."""
    x = np.random.default_rng(SEED).integers(0, 256, (args.images, 1080, 1920, 3), dtype=np.uint8)
    x = x.astype(args.dtype, copy=False)            # (N, 1080, 1920, 3) -> (N, 1080, 1920)
    want = grayscale(x, "numpy")
    tol = dict(rtol=1e-6, atol=1e-4) if args.dtype == "float32" else {}
    moved = x.nbytes + want.nbytes
    row = functools.partial(timed_row, rows, args.repeats, "grayscale", f"{args.images}x1080x1920")
    table_head(f"grayscale {args.dtype}: {args.images} x (1080, 1920, 3) -> (1080, 1920), {moved / 1e6:.1f} MB "
               f"moved a call ({x.nbytes / 1e6:.1f} read + {want.nbytes / 1e6:.1f} written)",
               f"rate = (bytes read + written) / s / 1e9; the copies copy {moved / 1e6:.1f} MB, so move twice "
               "that; vs_ref = rate / copy rate")
    names = select("grayscale", args.backends)
    if "python" in names or args.backends is None:
        say("python: skipped (plain loops; small inputs only)")
    src, dst = np.ones(moved, np.uint8), np.zeros(moved, np.uint8)
    copy_rate = row("memcpy", lambda: np.copyto(dst, src), 2 * moved)
    par_rate = row("parallel_copy", lambda: _parallel_copy(dst, src), 2 * moved, copy_rate,
                   label=f"memcpy x{numba.get_num_threads()} thr")
    del src, dst
    if par_rate > copy_rate:
        say(f"# the ceiling is the faster copy: {numba.get_num_threads()} threads, {par_rate:.2f} GB/s")
        copy_rate = par_rate
    for name in [n for n in names if n not in GPU_BACKENDS and n != "python"]:
        out = np.zeros_like(want)
        row(name, lambda: grayscale(x, name, out=out), moved, copy_rate)
        check(f"grayscale({name})", out, want, **tol)
    gpu = [n for n in names if n in GPU_BACKENDS]
    if not gpu:
        return
    if backend_status()["cupy"] == "available":     # device-to-device copy of the same bytes
        import cupy
        d_src, d_dst = cupy.ones(moved, cupy.uint8), cupy.zeros(moved, cupy.uint8)
        copy, sync = (lambda: cupy.copyto(d_dst, d_src)), gpu_sync("cupy")
    else:
        from numba import cuda
        d_src, d_dst = cuda.to_device(np.ones(moved, np.uint8)), cuda.device_array(moved, np.uint8)
        copy, sync = (lambda: d_dst.copy_to_device(d_src)), gpu_sync("numba_cuda")
    dev_rate = row("device_copy", copy, 2 * moved, sync=sync, label="device copy")
    del d_src, d_dst
    for name in gpu:
        d_x, d_out = to_device(x, name), to_device(np.zeros_like(want), name)
        row(name, lambda: grayscale(d_x, name, out=d_out), moved, dev_rate, gpu_sync(name))
        check(f"grayscale({name})", d_out, want, **tol)


def bench_matmul(args: argparse.Namespace, rows: list[Row]) -> None:
    """Per size: BLAS, the host backends, cuBLAS, the GPU backends; then the inversions."""
    dtype = np.dtype(args.matmul_dtype)
    rtol = 1e-3 if dtype == np.float32 else 1e-9
    cublas = backend_status()["cublas"] == "available"
    table_head(f"matmul {dtype}: (n, n) @ (n, n)",
               "rate = 2 n^3 / s / 1e9; vs_ref = rate / BLAS rate (host backends) or / cuBLAS rate (GPU backends)")
    names = select("matmul", args.backends)
    if args.backends is None:
        say(f"python: skipped (plain loops; small inputs only: n^3 <= {MAX_MULTIPLY_ADDS:,} multiply-adds)")
    others = [n for n in names if n not in ("numpy", "cublas")]
    rng = np.random.default_rng(SEED)
    for n in args.sizes:
        a, b = rng.standard_normal((2, n, n), dtype=dtype)
        flop, atol = 2 * n ** 3, 10 * n * np.finfo(dtype).eps
        row = functools.partial(timed_row, rows, args.repeats, "matmul", n)
        want = np.zeros((n, n), dtype)
        blas_rate = row("numpy", lambda: matmul(a, b, "numpy", out=want), flop, label="numpy (BLAS)")
        for name in [m for m in others if m not in GPU_BACKENDS]:
            if name == "python" and n ** 3 > MAX_MULTIPLY_ADDS:
                say(f"{n:>12}  python: skipped (over its limit of {MAX_MULTIPLY_ADDS:,} multiply-adds)")
                continue
            out = np.zeros_like(want)
            row(name, lambda: matmul(a, b, name, out=out), flop, blas_rate)
            check(f"matmul({name}) at n={n}", out, want, rtol, atol)
        ref_rate = 0.0                              # none without cuBLAS
        for name in (["cublas"] if cublas else []) + [m for m in others if m in GPU_BACKENDS]:
            d_a, d_b, d_out = (to_device(v, name) for v in (a, b, np.zeros_like(want)))
            rate = row(name, lambda: matmul(d_a, d_b, name, out=d_out), flop, None if name == "cublas" else ref_rate,
                       gpu_sync(name), "cublas (cuBLAS)" if name == "cublas" else "")
            ref_rate = rate if name == "cublas" else ref_rate
            check(f"matmul({name}) at n={n}", d_out, want, rtol, atol)
    if args.no_inverse:
        return
    table_head(f"inverse {dtype}: np.linalg.inv of (n, n)",
               "rate = 2 n^3 / s / 1e9, the LAPACK count of getrf + getri (NumPy solves A X = I with gesv, "
               "8/3 n^3); vs_ref = rate / NumPy's rate")
    for n in args.sizes:
        m = rng.standard_normal((n, n), dtype=dtype) + n * np.eye(n, dtype=dtype)   # well conditioned
        row = functools.partial(timed_row, rows, args.repeats, "inverse", n)
        np_rate = row("numpy", lambda: np.linalg.inv(m), 2 * n ** 3, label="numpy (LAPACK)")
        if backend_status()["cupy"] == "available":
            import cupy
            d_m = to_device(m, "cupy")
            row("cupy", lambda: cupy.linalg.inv(d_m), 2 * n ** 3, np_rate, gpu_sync("cupy"), "cupy (cuSOLVER)")


def header(args: argparse.Namespace) -> None:
    """Machine, versions, BLAS and thread counts."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    say(f"# kernels.bench on {cpu}, {os.cpu_count()} CPUs; Python {platform.python_version()}, "
        f"NumPy {np.__version__}, Numba {numba.__version__} ({numba.get_num_threads()} threads)")
    try:
        from threadpoolctl import threadpool_info
        libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        libs = [i for i in libs if "numpy" in i.get("filepath", "")] or libs     # NumPy's own, if it can tell
        for i in libs:
            say(f"# BLAS: {i.get('internal_api')} {i.get('version')}, {i.get('num_threads')} threads, architecture "
                f"{i.get('architecture')}, threading layer {i.get('threading_layer')} "
                f"({os.path.basename(i.get('filepath', ''))})")
        if not libs:
            say("# BLAS: threadpoolctl finds no BLAS library loaded")
    except ImportError:
        say("# BLAS: threadpoolctl not installed (pip install threadpoolctl to see which BLAS NumPy uses)")
    for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if var in os.environ:
            say(f"# note: {var}={os.environ[var]} is set")
    missing = [n for n, why in backend_status().items() if why != "available"]
    if missing and args.backends is None:
        say(f"# not available here: {', '.join(missing)} (python -m kernels says why)")
    say(f"# each row: the best of {args.repeats} timed run(s) after 1 warm-up; 1 run when one takes over "
        f"{SLOW_RUN_S:g} s, and no more runs after {CELL_BUDGET_S:g} s of them")


def targets(args: argparse.Namespace, rows: list[Row]) -> None:
    """The targets: measured, met or not, or why not measured."""
    status = backend_status()
    gpu_here = status["cupy"] == "available" or (status["numba_cuda"] == "available" and not SIM)
    say("\n## targets")
    for label, section, backend, size, goal in TARGETS:
        row = next((r for r in rows if r.section == section and r.backend == backend
                    and (size is None or r.size == size)), None)
        wrong_dtype = section == "matmul" and backend in GPU_BACKENDS and args.matmul_dtype != "float32"
        if row is not None and row.ratio is not None and not wrong_dtype:
            verdict = f"{100 * row.ratio:.1f}% (target >= {100 * goal:.0f}%): " + \
                      ("met" if row.ratio >= goal else "NOT met")
        elif args.only not in ("all", section):
            verdict = f"not measured (--only {args.only})"
        elif backend in GPU_BACKENDS and not gpu_here:
            verdict = "not measured (no GPU" + (": the CUDA simulator does not count)" if SIM else ")")
        elif size is not None and size not in args.sizes:
            verdict = f"not measured ({size} not in --sizes)"
        elif wrong_dtype:
            verdict = "not measured (float32 only; --matmul-dtype is float64)"
        elif row is not None:
            verdict = "not measured (no cuBLAS to compare with: it needs CuPy)"
        else:
            verdict = f"not measured ({backend} not benchmarked)"
        say(f"{label:<50} {verdict}")


def write_csv(path: str, rows: list[Row]) -> None:
    """All rows to ``path``, through a temporary file in the same folder and os.replace."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["section", "backend", "size", "seconds", "rate", "unit", "ratio_to_reference"])
            w.writerows([r.section, r.backend, r.size, f"{r.seconds:.9g}", f"{r.rate:.6g}", r.unit,
                         "" if r.ratio is None else f"{r.ratio:.6g}"] for r in rows)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.csv is not None:                    # checked now, not after minutes of measuring
        folder = os.path.dirname(os.path.abspath(args.csv))
        if not args.csv or os.path.isdir(args.csv):
            ap.error(f"--csv: give a file name, not {args.csv!r}")
        if not os.path.isdir(folder):
            ap.error(f"--csv: no such folder: {folder}")
        if not os.access(folder, os.W_OK):
            ap.error(f"--csv: cannot write in {folder}")
    rows: list[Row] = []
    try:
        header(args)
        if args.only in ("grayscale", "all"):
            bench_grayscale(args, rows)
        if args.only in ("matmul", "all"):
            bench_matmul(args, rows)
        targets(args, rows)
        if args.csv:
            write_csv(args.csv, rows)
            say(f"\n# wrote {len(rows)} rows to {args.csv}")
    except CheckFailed as e:
        print(f"kernels.bench: {e}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"kernels.bench: out of memory for these sizes (--images {args.images}, --sizes "
              f"{','.join(map(str, args.sizes))})", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"kernels.bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
