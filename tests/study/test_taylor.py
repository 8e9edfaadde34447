"""The taylor study: the quick run end to end (real MPI ranks and simulated ones), and its pure functions."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mpisim.study import mpiexec_path
from mpisim.study.taylor import (QUESTION, SPLITS, first_zero_term, model_seconds, partial_sum, per_term_seconds,
                                 serial_sum, simulate_sum, split_terms, term, ulps)
from mpisim.comm.network import PRESETS


# -- the split ----------------------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(terms=st.integers(0, 400), size=st.integers(1, 70), how=st.sampled_from(SPLITS))
def test_split_covers_every_term_exactly_once(terms, size, how):
    parts = [split_terms(terms, size, r, how) for r in range(size)]
    assert sorted(k for p in parts for k in p) == list(range(terms))
    counts = [len(p) for p in parts]
    assert max(counts) - min(counts) <= 1          # balanced: at most one term apart
    assert counts == sorted(counts, reverse=True)   # the extra terms go to the first ranks


def test_split_shapes():
    assert split_terms(10, 3, 1, "cyclic") == range(1, 10, 3)
    assert [split_terms(10, 3, r, "block") for r in range(3)] == [range(0, 4), range(4, 7), range(7, 10)]
    assert split_terms(2, 4, 3, "block") == range(2, 2)      # more ranks than terms: some get none
    for bad in [(-1, 2, 0, "cyclic"), (5, 0, 0, "cyclic"), (5, 2, 2, "cyclic"), (5, 2, 0, "diagonal")]:
        with pytest.raises(ValueError):
            split_terms(*bad)


# -- the terms and sums -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x", [-3.0, -1.5, -0.25, 0.0, 0.5, 1.5, 4.0])
@pytest.mark.parametrize("func", ["exp", "sin"])
def test_series_converges_to_math(func, x):
    ref = getattr(math, func)(x)
    v = serial_sum(func, x, 120)
    # exp(x < 0) alternates: terms of up to e^|x| cancel to e^-|x|, and their rounding with them
    assert v == pytest.approx(ref, rel=1e-13 * (math.exp(2 * abs(x)) if func == "exp" and x < 0 else 1), abs=1e-15)
    assert partial_sum(func, x, range(120)) == math.fsum(term(func, x, k) for k in range(120))


def test_terms():
    assert [term("exp", 2.0, k) for k in range(4)] == pytest.approx([1, 2, 2, 4 / 3], rel=1e-15)
    assert [term("sin", 2.0, k) for k in range(3)] == pytest.approx([2, -8 / 6, 32 / 120], rel=1e-15)
    assert term("exp", -2.0, 3) == pytest.approx(-8 / 6, rel=1e-15)
    assert term("exp", 0.0, 0) == 1.0 and term("exp", 0.0, 3) == 0.0 and term("sin", 0.0, 0) == 0.0
    with pytest.raises(ValueError):
        partial_sum("cos", 1.0, range(3))


def test_first_zero_term_and_cost():
    k0 = first_zero_term("exp", 1.5)
    assert term("exp", 1.5, k0 - 1) > 0 and term("exp", 1.5, k0) == 0 == term("exp", 1.5, k0 + 1)
    assert 100 < k0 < 300
    for got in (per_term_seconds("exp", 1.5, 2000, repeats=1), per_term_seconds("sin", 1.5, range(500, 1500), repeats=1)):
        assert got > 0 and np.isfinite(got)       # a time: its size depends on the machine and its load


def test_ulps():
    assert ulps(1.0 + 2 ** -52, 1.0) == 1
    assert ulps(4.0, 4.0) == 0
    assert ulps(math.nextafter(3.0, 0), 3.0) == -1


def test_model_seconds():
    a, b, g = 10e-6, 1e-9, 2e-10
    assert model_seconds(100, 1, 1e-7, a, b, g) == 100 * 1e-7
    assert model_seconds(101, 4, 1e-7, a, b, g) == pytest.approx(26 * 1e-7 + 2 * (a + 8 * b + 8 * g))
    assert model_seconds(10, 5, 1e-7, a, b, g) == pytest.approx(2 * 1e-7 + 3 * (a + 8 * b + 8 * g))


@pytest.mark.parametrize("size", [1, 3, 8])
@pytest.mark.parametrize("how", SPLITS)
def test_simulated_sum_is_the_sum_of_the_partials(size, how):
    r = simulate_sum("exp", 1.5, 300, size, how=how)
    assert len(r["partials"]) == size
    assert r["value"] == pytest.approx(math.exp(1.5), rel=1e-15)
    if size == 1:
        assert r["value"] == serial_sum("exp", 1.5, 300)
    assert r["total"] == 0.0                                   # no network: no virtual time


def test_simulated_time_is_compute_plus_tree_steps():
    rate = 1e6                                                 # terms per second: 1 us a term
    net = f"10gbe,compute={rate:g}FLOP/s"
    one = simulate_sum("exp", 1.5, 400, 1, network=net)
    four = simulate_sum("exp", 1.5, 400, 4, network=net)
    assert one["total"] == one["compute"] == pytest.approx(400e-6, rel=1e-12) and one["reduce"] == 0
    a, b, g = PRESETS["10gbe"].seconds
    assert four["compute"] == pytest.approx(100e-6, rel=1e-12)
    assert four["reduce"] == pytest.approx(2 * (a + 8 * b + 8 * g), rel=1e-9)      # ceil(lg 4) steps
    assert four["total"] == pytest.approx(model_seconds(400, 4, 1e-6, a, b, g), rel=1e-12)


def test_worker_entry_needs_worker_flag():
    r = subprocess.run([sys.executable, "-m", "mpisim.study.taylor"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--worker" in r.stderr


# -- the study, quick -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    if not mpiexec_path():
        pytest.skip("mpiexec not found (pip install -e . brings the mpich wheel): the study runs real MPI ranks")
    from mpisim.study.__main__ import main
    out = tmp_path_factory.mktemp("taylor")
    assert main(["taylor", "--quick", "--out", str(out), "--quiet"]) == 0
    return out, json.loads((out / "taylor.json").read_text())


def test_quick_report(quick):
    out, doc = quick
    md = (out / "taylor.md").read_text()
    assert md.splitlines()[0].startswith("`python -m mpisim.study taylor --quick --out ")
    assert QUESTION in md and doc["question"] == QUESTION
    for part in ("## Setting", "## Results", "## Conclusions", "under mpiexec", "Virtual speedup on 10gbe",
                 "Best rank count", "against math.exp", "Summation order"):
        assert part in md
    assert md.count("\n| ") >= 20                                # table rows
    for stem in ("speedup", "error"):
        png = out / f"taylor-{stem}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.name in md
    assert doc["quick"] is True and len(doc["tables"]) >= 6


def test_quick_numbers(quick):
    _, doc = quick
    d = doc["data"]
    ref = math.exp(1.5)
    assert d["per_term_s"] > 0 and math.isfinite(d["per_term_s"])
    # MPI runs: 1 and 2 ranks for each T; N=1 is the baseline
    mpi = d["mpi"]
    assert sorted({r["ranks"] for r in mpi}) == [1, 2] and len(mpi) == 2 * len({r["terms"] for r in mpi})
    for r in mpi:
        assert r["rel_err"] < 1e-12 and r["value"] == pytest.approx(ref, rel=1e-14)
        assert 0 < r["compute_s"] <= r["total_s"] and r["reduce_s"] >= 0 and 0 <= r["overhead"] < 1
        assert r["compute_min_s"] <= r["compute_s"] and r["one_clock"] is True
        if r["ranks"] == 1:
            assert r["speedup"] == 1.0
    # simulated: speedup at N=1 is exactly 1, virtual compute falls with N, the reduce only grows
    sim = d["sim"]
    assert {r["ranks"] for r in sim} == {1, 2, 4, 8}
    for r in sim:
        if r["terms"] >= 25:
            assert r["value"] == pytest.approx(ref, rel=1e-14)
        if r["ranks"] == 1:
            assert r["speedup"] == 1.0 and r["reduce"] == 0 and r["overhead"] == 0
        else:
            assert r["reduce"] > 0 and 0 < r["overhead"] < 1 and r["speedup"] <= r["ranks"] + 1e-9
        # the closed form charges ceil(T/N) terms on the critical path; some ranks on it have one less
        assert -1e-3 * d["per_term_s"] <= r["model"] - r["total"] <= 1.001 * d["per_term_s"]
    big = max(r["terms"] for r in sim)
    assert [r["speedup"] for r in sorted((r for r in sim if r["terms"] == big), key=lambda r: r["ranks"])] == \
        sorted(r["speedup"] for r in sim if r["terms"] == big)      # more ranks, faster, at the largest T
    assert {b["terms"] for b in d["best"]} == {r["terms"] for r in sim}
    # accuracy: enough terms reach float64 rounding
    for e in d["errors"]:
        if e["terms"] >= 25:
            assert e["rel_err"] < 1e-12 and e["abs_err"] <= 2 * math.ulp(e["ref"])
        assert e["next_term"] >= 0
    for o in d["order"]:
        assert abs(o["ulps_vs_serial"]) <= 4 and abs(o["ulps_vs_math"]) <= 4
        assert o["ulps_vs_serial"] == int(o["ulps_vs_serial"])
    assert d["mpi_matches_sim"] is True and d["mpi_sim_compared"] == len(mpi)
