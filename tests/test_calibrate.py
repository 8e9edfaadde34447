"""mpisim.calibrate: the weighted fit on synthetic data, the passes through bursts of load (simulated
ranks, synthetic timings), and the tool under real mpiexec."""
import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mpisim.calibrate as calib
from mpisim.calibrate import CalibrationError, calibrate, fit_alpha_beta, size_range, to_network
from mpisim.comm import RankError, run_simulated
from mpisim.comm.network import parse_network
from tests.mpirun import ROOT, run_mpi

SIZES = [4 ** k for k in range(13)]   # 1 B .. 16 MiB
PP_SIZES = [16, 64, 256, 1024, 4096, 16384, 65536, 262144]   # the quick test's --sizes 16:256K
ALPHA, BETA, GAMMA = 5e-6, 1 / 8e9, 1 / 60e9   # a plausible shared-memory machine


def test_fit_recovers_exact_alpha_and_beta():
    alpha, beta = 2.1e-6, 1 / 5.3e9
    t = [alpha + n * beta for n in SIZES]
    a, b = fit_alpha_beta(SIZES, t)
    assert a == pytest.approx(alpha, rel=1e-9) and b == pytest.approx(beta, rel=1e-9)


def test_fit_is_close_under_5_percent_noise():
    alpha, beta = 8e-6, 1 / 4e9
    rng = np.random.default_rng(0)
    fits = []
    for _ in range(20):
        t = np.array([alpha + n * beta for n in SIZES]) * (1 + rng.uniform(-0.05, 0.05, len(SIZES)))
        fits.append(fit_alpha_beta(SIZES, t))
    a, b = np.median(fits, axis=0)
    assert a == pytest.approx(alpha, rel=0.05) and b == pytest.approx(beta, rel=0.05)
    assert all(a > 0 and b > 0 for a, b in fits)


def test_fit_clamps_to_zero_and_rejects_bad_input():
    a, b = fit_alpha_beta([1, 2, 4], [3e-6, 2e-6, 1e-6])   # falling times: beta would be negative
    assert b == 0 and a > 0
    a, b = fit_alpha_beta([100, 200, 400], [1e-6, 2.2e-6, 4.4e-6])   # alpha would be negative
    assert a == 0 and b > 0
    with pytest.raises(ValueError, match="2 different sizes"):
        fit_alpha_beta([64], [1e-6])
    with pytest.raises(ValueError, match="2 different sizes"):
        fit_alpha_beta([64, 64], [1e-6, 2e-6])
    with pytest.raises(ValueError, match="> 0"):
        fit_alpha_beta([1, 2], [1e-6, 0.0])


def test_size_range_and_network():
    assert size_range(1, 16 << 20) == SIZES
    assert size_range(8, 1024) == [8, 16, 64, 256, 1024]
    assert size_range(3, 10) == [3, 4, 10]
    net = to_network(2e-6, 1 / 5e9, 1 / 4e9)
    assert parse_network(net.spec()).seconds == pytest.approx(net.seconds, rel=1e-3)


def _fake_timings(monkeypatch, burst):
    """Replace the timed loops by synthetic one-way times: alpha + n*beta, up to 5% jitter, plus
    ``burst(n, call)`` seconds on every sample of rank 0's ``call``-th pass of size n (a burst of
    load that lasts a whole size, as a descheduled rank does). Returns rank 0's calls per size."""
    calls = collections.Counter()

    def pingpong(t, n, reps):
        if t.rank != 0:
            return np.ones(reps)   # rank 1's times are never used
        calls[n] += 1
        rng = np.random.default_rng([n, calls[n]])
        return (ALPHA + n * BETA) * (1 + rng.uniform(0, 0.05, reps)) + burst(n, calls[n])

    monkeypatch.setattr(calib, "_pingpong", pingpong)
    monkeypatch.setattr(calib, "_reduction", lambda n, reps: np.full(reps, n * GAMMA))
    return calls


def test_a_burst_of_load_is_measured_again_and_the_minima_recover_beta(monkeypatch):
    # pass 1: the medians of 5 round trips of a run that printed beta=0 on a loaded machine (us)
    loaded = dict(zip(PP_SIZES, np.array([1398, 449, 1401, 436, 1382, 117, 357, 192]) * 1e-6))
    calls = _fake_timings(monkeypatch, lambda n, call: loaded[n] - (ALPHA + n * BETA) if call == 1 else 0.0)
    assert fit_alpha_beta(PP_SIZES, list(loaded.values()))[1] == 0   # one pass alone gives beta = 0
    res = run_simulated(2, calibrate, PP_SIZES, 5, gamma_sizes=[1 << 16, 1 << 18, 1 << 20])[0]
    assert res["passes"] == 2 and all(calls[n] == 2 for n in PP_SIZES)
    assert res["alpha_s"] == pytest.approx(ALPHA, rel=0.05)
    assert res["beta_s_per_byte"] == pytest.approx(BETA, rel=0.05)
    assert res["gamma_s_per_byte"] == pytest.approx(GAMMA, rel=1e-6)
    assert res["fit_off"] <= calib.ROUGH
    net = parse_network(res["network"])
    assert net.alpha > 0 and net.beta > 0 and net.gamma > 0
    assert all(0 < r["min_s"] <= r["median_s"] for r in res["pingpong"] + res["reduction"])
    assert all(r["median_s"] > 2 * r["min_s"] for r in res["pingpong"])   # the burst shows in the medians


def test_a_quiet_machine_needs_one_pass(monkeypatch):
    calls = _fake_timings(monkeypatch, lambda n, call: 0.0)
    res = run_simulated(2, calibrate, PP_SIZES, 5, gamma_sizes=[1 << 16, 1 << 18])[0]
    assert res["passes"] == 1 and set(calls.values()) == {1}
    assert res["beta_s_per_byte"] == pytest.approx(BETA, rel=0.05)


def test_noise_that_hides_beta_is_an_error_not_a_spec(monkeypatch):
    # every pass: ms of noise that falls with size, so the slope is never > 0
    calls = _fake_timings(monkeypatch, lambda n, call: 2e-3 - n * 2e-9)
    with pytest.raises(RankError) as info:
        run_simulated(2, calibrate, PP_SIZES, 5, gamma_sizes=[1 << 16, 1 << 18])
    assert isinstance(info.value.exc, CalibrationError)
    msg = str(info.value.exc)
    assert "beta not > 0" in msg and "too busy" in msg and "--reps" in msg
    assert set(calls.values()) == {calib.PASSES}   # measured again, then gave up


@pytest.mark.timeout(30)
def test_busy_machine_exits_1_with_a_clear_message(tmp_path):
    out = tmp_path / "calib.json"
    code = ("import sys, numpy as np, mpisim.calibrate as c\n"
            "c._pingpong = lambda t, n, reps: np.full(reps, 2e-3 - n * 1e-9)\n"
            f"sys.exit(c.main(['--quick', '--sizes', '16:64K', '--reps', '2', '--json', {str(out)!r}]))\n")
    res = run_mpi(2, "-c", code, timeout=25)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "error: the fit came out with beta not > 0" in res.stderr and "Traceback" not in res.stderr
    assert "--network" not in res.stdout and not out.exists()


@pytest.mark.timeout(60)
def test_quick_validate_under_mpiexec(tmp_path):
    out = tmp_path / "sub" / "calib.json"   # the missing folder is created
    res = run_mpi(2, "-m", "mpisim.calibrate", "--quick", "--validate", "--sizes", "16:256K",
                  "--json", str(out), timeout=50)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(out.read_text())
    net = parse_network(data["network"])
    assert net.alpha > 0 and net.beta > 0 and net.gamma > 0
    assert data["ranks"] == 2
    assert [r["bytes"] for r in data["pingpong"]] == [16, 64, 256, 1024, 4096, 16384, 65536, 262144]
    assert all(0 < r["min_s"] <= r["median_s"] for r in data["pingpong"])
    assert 1 <= data["passes"] <= calib.PASSES and data["reps"] == 20
    assert {r["algorithm"] for r in data["validation"]} == {
        "naive", "tree", "recursive_doubling", "ring", "rabenseifner"}
    assert all(r["measured_s"] > 0 and r["model_s"] > 0 for r in data["validation"])
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == f"--network {data['network']}"
    assert "largest |error|" in res.stdout


@pytest.mark.timeout(30)
def test_without_mpiexec_says_how_to_run_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "OMPI_"))}
    res = subprocess.run([sys.executable, "-m", "mpisim.calibrate", "--quick"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=25)
    assert res.returncode == 2
    assert "mpiexec -n 2 python -m mpisim.calibrate" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


@pytest.mark.timeout(30)
def test_one_rank_under_mpiexec_exits_2():
    res = run_mpi(1, "-m", "mpisim.calibrate", "--quick", timeout=25)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "mpiexec -n 2" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.timeout(30)
@pytest.mark.parametrize("argv", [["--sizes", "x"], ["--sizes", "8:4"], ["--reps", "0"],
                                  ["--validate-sizes", "6:64"]])
def test_bad_options_are_usage_errors(argv):
    res = run_mpi(2, "-m", "mpisim.calibrate", *argv, timeout=25)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "usage:" in res.stderr and "Traceback" not in res.stderr
