"""python -m kernels and python -m kernels.bench, as a user runs them."""
import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_backend_list_says_why_a_backend_is_missing():
    res = _run("kernels")
    assert res.returncode == 0, res.stderr
    for name in ("python", "numpy", "numba", "numba_cuda", "cupy", "cublas"):
        assert f"  {name} " in res.stdout
    assert "numpy       [grayscale, matmul]  available" in res.stdout
    assert "cublas      [matmul]" in res.stdout


def test_bench_measures_checks_and_writes_csv(tmp_path):
    out = tmp_path / "bench.csv"
    res = _run("kernels.bench", "--images", "1", "--sizes", "64,96", "--repeats", "1", "--csv", str(out))
    assert res.returncode == 0, res.stderr
    assert "BLAS:" in res.stdout and "memcpy" in res.stdout
    rows = list(csv.DictReader(out.open()))
    got = {(r["section"], r["backend"], r["size"]) for r in rows}
    assert {("grayscale", "memcpy", "1x1080x1920"), ("grayscale", "numba", "1x1080x1920"),
            ("matmul", "numpy", "64"), ("matmul", "numba", "96")} <= got
    assert all(float(r["seconds"]) > 0 for r in rows)
    assert "CPU matmul at 1024, numba vs BLAS                  not measured (1024 not in --sizes)" in res.stdout


def test_bench_bad_options_are_usage_errors(tmp_path):
    for args, msg in [(["--backends", "foo"], "unknown backend(s) foo"), (["--sizes", "0"], "positive integers"),
                      (["--csv", str(tmp_path / "no" / "f.csv")], "no such folder"),
                      (["--csv", str(tmp_path)], "give a file name")]:
        res = _run("kernels.bench", *args)
        assert res.returncode == 2 and msg in res.stderr, res.stderr
