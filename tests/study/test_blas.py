"""The BLAS study: its quick run writes a sane report, its kernels are right, and a wrong result fails it."""
import json
import math

import numpy as np
import pytest

from mpisim.study import blas
from mpisim.study.__main__ import main

METHODS = ("Python", "Numba", "NumPy, 1 thread")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    d = tmp_path_factory.mktemp("blas")
    assert main(["blas", "--quick", "--out", str(d), "--quiet"]) == 0
    return d


@pytest.fixture(scope="module")
def doc(out):
    return json.loads((out / "blas.json").read_text())


def test_report_has_command_question_tables_and_conclusions(out):
    md = (out / "blas.md").read_text()
    assert md.splitlines()[0].startswith("`python -m mpisim.study blas --quick --out ")
    assert blas.QUESTION in md
    assert "Matrix product C = A B: GFLOP/s" in md and "Inverse of A: GFLOP/s" in md
    assert "2n^3" in md and "with BLAS:" in md
    conclusions = md.split("## Conclusions", 1)[1]
    assert conclusions.count("\n- ") >= 5


def test_plot_is_a_png(out):
    png = out / "blas-gflops.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5000


def test_every_result_is_checked_and_positive(doc):
    rows = doc["data"]["results"]
    ncores = doc["data"]["cores"]
    assert ncores >= 1
    methods = set(METHODS) | {f"NumPy, {ncores} threads"}
    assert {r["method"] for r in rows} == methods
    sizes = sorted({r["n"] for r in rows})
    py_sizes = sorted({r["n"] for r in rows if r["method"] == "Python"})
    assert py_sizes and set(py_sizes) < set(sizes)
    for op in ("matmul", "inverse"):
        for n in sizes:
            got = {r["method"] for r in rows if r["op"] == op and r["n"] == n}
            assert got == (methods if n in py_sizes else methods - {"Python"})
    for r in rows:
        assert 0 < r["best_seconds"] <= r["seconds"] < math.inf
        assert 0 < r["gflops"] <= r["best_gflops"] < math.inf
        assert r["gflops"] == pytest.approx(2 * r["n"] ** 3 / r["seconds"] / 1e9)
        tol = blas.MATMUL_TOL if r["op"] == "matmul" else blas.INV_TOL
        assert 0 <= r["rel_error"] <= tol
        if r["op"] == "inverse":
            assert 0 <= r["residual"] < 1e-6
        else:
            assert r["residual"] is None
    assert len(doc["tables"]) == 2
    assert set(doc["data"]["thread_speedup"]) == {"matmul", "inverse"}
    assert all(v > 0 for v in doc["data"]["numpy_over_python"].values())


def test_blas_is_reported(doc):
    for info in doc["data"]["blas"]:
        assert {"internal_api", "version", "num_threads", "architecture"} <= set(info)
        assert info["num_threads"] >= 1


# -- the kernels --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 2), (7, 4, 9), (16, 16, 16)])
def test_matmuls_match_numpy_on_awkward_shapes(shape):
    n, k, m = shape
    rng = np.random.default_rng(sum(shape))
    A, B = rng.standard_normal((n, k)), rng.standard_normal((k, m))
    want = A @ B
    np.testing.assert_allclose(blas.matmul_python(A.tolist(), B.tolist()), want, rtol=1e-12, atol=1e-12)
    C = np.full((n, m), np.nan)                      # the kernel must overwrite, not accumulate
    np.testing.assert_allclose(blas.matmul_numba(A, B, C), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_inverses_match_numpy(n):
    A = np.random.default_rng(n).standard_normal((n, n))
    want = np.linalg.inv(A)
    np.testing.assert_allclose(blas.inv_python(A.tolist()), want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(blas.inv_numba(A), want, rtol=1e-9, atol=1e-9)


def test_inverses_pivot():
    A = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 4.0]])   # a zero on the diagonal: needs a swap
    want = np.linalg.inv(A)
    np.testing.assert_allclose(blas.inv_python(A.tolist()), want)
    np.testing.assert_allclose(blas.inv_numba(A), want)
    before = A.copy()
    blas.inv_numba(A)
    np.testing.assert_array_equal(A, before)           # the input is left alone


def test_singular_matrices_raise():
    S = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 0.0, 0.0]])
    with pytest.raises(ValueError):
        blas.inv_python(S.tolist())
    with pytest.raises(ValueError):
        blas.inv_numba(S)


def test_median_seconds_counts_calls_and_returns_the_result():
    calls = []

    def fn():
        calls.append(1)
        return len(calls)

    med, best, out = blas.median_seconds(fn, target=10.0, min_calls=5, max_calls=5)
    assert 0 < best <= med
    assert len(calls) == 6 and out == 6               # one warm-up call, then five


def test_rel_error():
    assert blas.rel_error(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == pytest.approx(0.5)
    assert blas.rel_error(np.ones(3), np.ones(3)) == 0


def test_a_wrong_result_fails_the_study(tmp_path, monkeypatch, capsys):
    def wrong(A, B, C):
        C[...] = A @ B
        C[0, 0] += 1.0
        return C

    monkeypatch.setattr(blas, "matmul_numba", wrong)
    assert main(["blas", "--quick", "--out", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "matmul by Numba at n = 32 is wrong" in err
    assert not (tmp_path / "blas.md").exists()
