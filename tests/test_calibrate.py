"""mpisim.calibrate and mpisim.comm.loggp: the fits on synthetic data from known parameters, the model's
reduction to the closed forms, the passes through bursts of load (simulated ranks, synthetic timings), the
validation verdict on injected timings, and the tool under real mpiexec (structure only, no timing bounds)."""
import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mpisim.calibrate as calib
from mpisim.calibrate import CalibrationError, calibrate, fit_alpha_beta, pow2_range, size_range, to_network
from mpisim.comm import RankError, run_simulated
from mpisim.comm.costs import ALGORITHMS, cost
from mpisim.comm.loggp import Model, piecewise_fit
from mpisim.comm.network import parse_network
from tests.mpirun import ROOT, run_mpi

SIZES = [4 ** k for k in range(13)]   # 1 B .. 16 MiB
PP_SIZES = [16, 64, 256, 1024, 4096, 16384, 65536, 262144]   # the quick test's --sizes 16:256K
ALPHA, BETA, GAMMA = 5e-6, 1 / 8e9, 1 / 60e9   # a plausible shared-memory machine
FRONT = 3e-6   # the Python path of one collective call


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
    assert pow2_range(1, 16) == [1, 2, 4, 8, 16] and pow2_range(3, 10) == [3, 4, 8, 10]
    net = to_network(2e-6, 1 / 5e9, 1 / 4e9)
    assert parse_network(net.spec()).seconds == pytest.approx(net.seconds, rel=1e-3)


def test_piecewise_fit_recovers_segments_and_never_falls():
    sizes = [1 << k for k in range(0, 25, 2)]
    # eager below 16 KiB, rendezvous above: two lines with a step between
    true = [2e-6 + n / 20e9 if n < 16384 else 6e-6 + n / 8e9 for n in sizes]
    pw = piecewise_fit(sizes, true)
    for n in (3, 100, 5000, 20000, 3 << 20):
        lo = max(s for s in sizes if s <= n)
        hi = min(s for s in sizes if s >= n)
        want = np.interp(n, [lo, hi], [true[sizes.index(lo)], true[sizes.index(hi)]])
        assert pw(n) == pytest.approx(want, rel=1e-12)
    assert pw(0.5) == true[0]                                  # flat below the first size
    assert pw(32 << 20) == pytest.approx(6e-6 + (32 << 20) / 8e9, rel=1e-9)   # the last slope beyond
    seg = pw.segments()[-1]
    assert seg[2] == pytest.approx(6e-6, rel=1e-6) and seg[3] == pytest.approx(1 / 8e9, rel=1e-9)
    noisy = piecewise_fit([1, 2, 4, 8], [3e-6, 1e-6, 5e-6, 4e-6])   # dips are lifted: slopes >= 0
    assert list(noisy.seconds) == [3e-6, 3e-6, 5e-6, 5e-6]
    assert all(b >= 0 for *_, b in noisy.segments())
    with pytest.raises(ValueError, match="increase"):
        piecewise_fit([4, 2], [1e-6, 2e-6])


@pytest.mark.parametrize("p", [2, 4, 8])
@pytest.mark.parametrize("alg", ["recursive_doubling", "ring", "rabenseifner", "tree", "naive"])
def test_linear_steps_give_back_the_closed_form(p, alg):
    # one-way = exchange = alpha + m*beta, reduce = m*gamma, no front: the model is Hockney's again
    sizes = [1, 1 << 30]
    line = lambda a, b: piecewise_fit(sizes, [a + n * b for n in sizes])  # noqa: E731
    model = Model(0.0, line(ALPHA, BETA), line(ALPHA, BETA), line(0.0, GAMMA))
    count = 3 << 16   # divides by p: the closed forms are exact
    want = cost("allreduce", alg, p, count, 4).seconds(to_network(ALPHA, BETA, GAMMA))
    assert model.predict("allreduce", alg, p, count, 4) == pytest.approx(want, rel=1e-4)   # the network rounds to ticks
    front = Model(7e-6, model.one_way, model.exchange, model.reduce)
    assert front.predict("allreduce", alg, p, count, 4) == pytest.approx(want + 7e-6, rel=1e-4)
    assert Model.from_dict(json.loads(json.dumps(front.to_dict()))) == front


def test_the_busiest_rank_bounds_a_chain_of_exchanges():
    # exchanges twice as slow per byte as one-way messages: recursive doubling (all exchanges) pays
    # it, the naive algorithm on 2 ranks (a chain of two one-way messages) does not
    sizes = [1, 1 << 30]
    one = piecewise_fit(sizes, [ALPHA + n * BETA for n in sizes])
    ex = piecewise_fit(sizes, [ALPHA + 2 * n * BETA for n in sizes])
    model = Model(0.0, one, ex, piecewise_fit(sizes, [0.0, 0.0]))
    n = 1 << 22
    assert model.predict("allreduce", "recursive_doubling", 2, n // 4, 4) == pytest.approx(ALPHA + 2 * n * BETA)
    assert model.predict("allreduce", "naive", 2, n // 4, 4) == pytest.approx(2 * (ALPHA + n * BETA))


def _fake_timings(monkeypatch, burst):
    """Replace the timed steps by synthetic ones from known parameters: one-way alpha + n*beta,
    exchange alpha + 2n*beta, the reduction n*gamma more, up to 5% jitter, plus ``burst(n, call)``
    seconds on every sample of rank 0's ``call``-th pass of size n (a burst of load that lasts a
    whole size, as a descheduled rank does). Returns rank 0's one-way calls per size."""
    calls = collections.Counter()

    def jitter(key, reps):
        return 1 + np.random.default_rng(key).uniform(0, 0.05, reps)

    def pingpong(t, n, reps):
        if t.rank != 0:
            return np.ones(reps)   # rank 1's times are never used
        calls[n] += 1
        return (ALPHA + n * BETA) * jitter([n, calls[n]], reps) + burst(n, calls[n])

    def exchange(t, n, reps, reduce=False):
        return (ALPHA + 2 * n * BETA + reduce * n * GAMMA) * jitter([n, calls[n]], reps)   # one jitter: the difference is n*gamma

    monkeypatch.setattr(calib, "_pingpong", pingpong)
    monkeypatch.setattr(calib, "_exchange", exchange)
    monkeypatch.setattr(calib, "_front", lambda one, reps: np.full(reps, FRONT))
    return calls


def test_the_fit_recovers_known_parameters(monkeypatch):
    _fake_timings(monkeypatch, lambda n, call: 0.0)
    res = run_simulated(2, calibrate, PP_SIZES, 5)[0]
    assert res["passes"] == calib.MIN_PASSES
    assert res["alpha_s"] == pytest.approx(ALPHA, rel=0.05)
    assert res["beta_s_per_byte"] == pytest.approx(BETA, rel=0.05)
    assert res["gamma_s_per_byte"] == pytest.approx(GAMMA, rel=0.1)
    model = Model.from_dict(res["model"])
    assert model.front == FRONT
    for n in PP_SIZES:
        assert model.one_way(n) == pytest.approx(ALPHA + n * BETA, rel=0.05)
        assert model.exchange(n) == pytest.approx(ALPHA + 2 * n * BETA, rel=0.05)
    assert model.reduce(PP_SIZES[-1]) == pytest.approx(PP_SIZES[-1] * GAMMA, rel=0.2)
    assert [r["bytes"] for r in res["pingpong"]] == PP_SIZES
    assert all(0 < r["min_s"] <= r["median_s"] for b in ("pingpong", "exchange", "step") for r in res[b])


def test_a_burst_of_load_is_measured_again_and_the_minima_recover_beta(monkeypatch):
    # passes 1 and 2: the medians of 5 round trips of a run that printed beta=0 on a loaded machine (us)
    loaded = dict(zip(PP_SIZES, np.array([1398, 449, 1401, 436, 1382, 117, 357, 192]) * 1e-6))
    calls = _fake_timings(monkeypatch, lambda n, call: loaded[n] - (ALPHA + n * BETA) if call <= 2 else 0.0)
    assert fit_alpha_beta(PP_SIZES, list(loaded.values()))[1] == 0   # the loaded passes alone give beta = 0
    res = run_simulated(2, calibrate, PP_SIZES, 5)[0]
    assert res["passes"] == 3 and all(calls[n] == 3 for n in PP_SIZES)
    assert res["beta_s_per_byte"] == pytest.approx(BETA, rel=0.05)
    assert res["fit_off"] <= calib.ROUGH
    net = parse_network(res["network"])
    assert net.alpha > 0 and net.beta > 0 and net.gamma > 0
    assert all(r["median_s"] > 2 * r["min_s"] for r in res["pingpong"])   # the burst shows in the medians


def test_noise_that_hides_beta_is_an_error_not_a_spec(monkeypatch):
    # every pass: ms of noise that falls with size, so the slope is never > 0
    calls = _fake_timings(monkeypatch, lambda n, call: 2e-3 - n * 2e-9)
    with pytest.raises(RankError) as info:
        run_simulated(2, calibrate, PP_SIZES, 5)
    assert isinstance(info.value.exc, CalibrationError)
    msg = str(info.value.exc)
    assert "beta not > 0" in msg and "too busy" in msg and "--reps" in msg
    assert set(calls.values()) == {calib.PASSES}   # measured again, then gave up


def test_flat_times_never_give_beta_zero(monkeypatch):
    _fake_timings(monkeypatch, lambda n, call: 0.0)
    monkeypatch.setattr(calib, "_pingpong", lambda t, n, reps: np.full(reps, 5e-6))   # no slope at all
    with pytest.raises(RankError) as info:
        run_simulated(2, calibrate, PP_SIZES, 3)
    assert isinstance(info.value.exc, CalibrationError) and "beta not > 0" in str(info.value.exc)


def test_validate_compares_with_the_model_and_flags_points_outside_their_bound(monkeypatch):
    sizes = [1, 1 << 30]
    line = lambda a, b: piecewise_fit(sizes, [a + n * b for n in sizes])  # noqa: E731
    model = Model(FRONT, line(ALPHA, BETA), line(ALPHA, BETA), line(0.0, GAMMA))
    # fake calls: exactly the model, except ring at 64 KiB (30% slow) and tree at 4 KiB (45% slow)
    slow = {("ring", 65536): 1.30, ("tree", 4096): 1.45, ("naive", 4096): 1.55}
    monkeypatch.setattr(calib, "_time_calls", lambda t, x, alg, reps: np.full(
        reps, model.predict("allreduce", alg, t.size, x.size, 4) * slow.get((alg, x.nbytes), 1.0)))
    rows = run_simulated(2, calib.validate, model, [4096, 65536], 3, rounds=2)[0]
    bad = {(r["algorithm"], r["bytes"]) for r in rows if not r["ok"]}
    assert bad == {("ring", 65536), ("naive", 4096)}
    ring = next(r for r in rows if (r["algorithm"], r["bytes"]) == ("ring", 65536))
    assert ring["error"] == pytest.approx(0.30) and ring["bound"] == calib.TOLERANCE
    assert calib.bound(4096) == calib.SMALL_TOLERANCE


@pytest.mark.timeout(60)
def test_validate_exits_1_when_a_point_is_outside_its_bound(tmp_path):
    out = tmp_path / "calib.json"
    code = ("import sys, numpy as np, mpisim.calibrate as c\n"
            "c._time_calls = lambda t, x, alg, reps: np.full(reps, 1.0)   # a second per call: far off\n"
            f"sys.exit(c.main(['--quick', '--validate', '--sizes', '16:64K', '--validate-sizes', '4K:16K', "
            f"'--reps', '3', '--json', {str(out)!r}]))\n")
    res = run_mpi(2, "-c", code, timeout=50)
    assert res.returncode == 1, res.stdout + res.stderr
    points = 2 * len(ALGORITHMS["allreduce"])   # 2 sizes x every registered algorithm
    assert f"error: the model is not within its bound at {points} of {points} points" in res.stderr
    assert "Traceback" not in res.stderr
    data = json.loads(out.read_text())   # the report and the JSON come first
    assert data["within_bounds"] is False and not any(r["ok"] for r in data["validation"])
    assert "NOT within" in res.stdout


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


@pytest.mark.timeout(90)
def test_quick_validate_under_mpiexec(tmp_path):
    out = tmp_path / "sub" / "calib.json"   # the missing folder is created
    res = run_mpi(2, "-m", "mpisim.calibrate", "--quick", "--validate", "--sizes", "16:256K",
                  "--json", str(out), timeout=80)
    # the verdict depends on this machine's load: the structure does not
    assert res.returncode in (0, 1), res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    data = json.loads(out.read_text())
    net = parse_network(data["network"])
    assert net.alpha > 0 and net.beta > 0 and net.gamma > 0
    assert data["ranks"] == 2
    assert [r["bytes"] for r in data["pingpong"]] == [16 << k for k in range(15)]
    assert all(0 < r["min_s"] <= r["median_s"] for r in data["pingpong"])
    assert calib.MIN_PASSES <= data["passes"] <= calib.PASSES and data["reps"] == 10
    model = Model.from_dict(data["model"])
    assert model.front > 0
    algs = ALGORITHMS["allreduce"]
    assert {"naive", "tree", "recursive_doubling", "ring", "rabenseifner"} <= set(algs)
    assert [(r["algorithm"], r["bytes"]) for r in data["validation"]] == [
        (a, n) for n in (4096, 16384, 65536, 262144) for a in algs]
    for r in data["validation"]:
        assert 0 < r["measured_s"] <= r["median_s"] and r["model_s"] > 0
        assert r["model_s"] == pytest.approx(model.predict("allreduce", r["algorithm"], 2, r["bytes"] // 4, 4))
        assert r["ok"] == (abs(r["error"]) <= r["bound"])
    assert data["within_bounds"] == all(r["ok"] for r in data["validation"])
    assert (res.returncode == 0) == data["within_bounds"]
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == f"--network {data['network']}"
    assert "largest |error| at >= 64 KiB" in res.stdout and "front" in res.stdout


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
