"""mpisim.calibrate and mpisim.comm.loggp: the fits on synthetic data from known parameters, the model's
reduction to the closed forms, the counted NaN passes and copies, the interleaving of steps and calls and
the rounds through bursts of load (simulated ranks, synthetic timings), the validation verdict on injected
timings, and the tool under real mpiexec (structure only, no timing bounds)."""
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
from mpisim.comm.loggp import STEPS, Model, local_passes, piecewise_fit
from mpisim.comm.network import parse_network
from tests.mpirun import ROOT, run_mpi

SIZES = [4 ** k for k in range(13)]   # 1 B .. 16 MiB
PP_SIZES = [16, 64, 256, 1024, 4096, 16384, 65536, 262144]   # the quick test's --sizes 16:256K
ALPHA, BETA, GAMMA = 5e-6, 1 / 8e9, 1 / 60e9   # a plausible shared-memory machine
FRONT = 10e-6   # a call on a tiny vector: the Python path of a call and its steps


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


def _linear(a: float, b: float):
    return piecewise_fit([1, 1 << 30], [a + n * b for n in (1, 1 << 30)])


ZERO = _linear(0.0, 0.0)


def _model(p=2, overhead=None, *, one_way=None, exchange=None, reduce=None, nans=ZERO, copy=ZERO, check=0.0):
    return Model(p, calib.TINY, dict(overhead or {}), one_way or _linear(ALPHA, BETA),
                 exchange or _linear(ALPHA, BETA), reduce or _linear(0.0, GAMMA), nans, copy, check=check)


@pytest.mark.parametrize("p", [2, 4, 8])
@pytest.mark.parametrize("alg", ["recursive_doubling", "ring", "rabenseifner", "tree", "naive"])
def test_linear_steps_give_back_the_closed_form(p, alg):
    # one-way = exchange = alpha + m*beta, reduce = m*gamma, no NaN pass or copy: T is Hockney's formula
    model = _model(p)
    count = 3 << 16   # divides by p: the closed forms are exact
    want = cost("allreduce", alg, p, count, 4).seconds(to_network(ALPHA, BETA, GAMMA))
    # the network rounds to ticks
    assert model.transfer("allreduce", alg, p, count, 4) == pytest.approx(want, rel=1e-4)
    # a call = its measured tiny call + what the bytes add beyond the tiny vector's
    tiny = model.transfer("allreduce", alg, p, 1, 4)
    measured = _model(p, {alg: 7e-6})
    assert measured.predict("allreduce", alg, p, count, 4) == pytest.approx(7e-6 + want - tiny, rel=1e-4)
    assert measured.predict("allreduce", alg, p, 1, 4) == 7e-6
    assert Model.from_dict(json.loads(json.dumps(measured.to_dict()))) == measured


def test_the_busiest_rank_bounds_a_chain_of_exchanges():
    # exchanges twice as slow per byte as one-way messages: recursive doubling (all exchanges) pays
    # it, the naive algorithm on 2 ranks (a chain of two one-way messages) does not
    model = _model(exchange=_linear(ALPHA, 2 * BETA), reduce=ZERO)
    n = 1 << 22
    assert model.transfer("allreduce", "recursive_doubling", 2, n // 4, 4) == pytest.approx(ALPHA + 2 * n * BETA)
    assert model.transfer("allreduce", "naive", 2, n // 4, 4) == pytest.approx(2 * (ALPHA + n * BETA))


@pytest.mark.parametrize("p", [2, 3, 4, 5])
def test_the_local_passes_are_counted_from_the_algorithms_code(p):
    count = 1000
    assert local_passes("recursive_doubling", p, count, 4) == (4 * count, 0)   # the NaN pass over the result
    assert local_passes("naive", p, count, 4) == (0, 0)                        # in place: no copy
    assert local_passes("naive", p, count, 4, in_place=False) == (0, 4 * count)
    assert local_passes("tree", p, count, 8, in_place=False) == (0, 8 * count)
    for alg in ("ring", "rabenseifner", "hierarchical"):
        assert local_passes(alg, p, count, 4, in_place=False) == (0, 0)    # they read the input, never copy it


def test_the_nan_pass_and_the_copy_add_where_the_algorithm_makes_them():
    nans, copy = _linear(1e-6, 3e-11), _linear(5e-7, 5e-11)
    bare = _model(overhead={a: 1e-5 for a in ALGORITHMS["allreduce"]})
    full = _model(overhead=bare.overhead, nans=nans, copy=copy)
    n = 1 << 22
    grow = lambda m, alg, **kw: m.predict("allreduce", alg, 2, n // 4, 4, **kw) - bare.predict(  # noqa: E731
        "allreduce", alg, 2, n // 4, 4, **kw)
    assert grow(full, "recursive_doubling") == pytest.approx(nans(n) - nans(calib.TINY))
    assert grow(full, "naive") == 0 and grow(full, "ring") == 0
    assert grow(full, "naive", in_place=False) == pytest.approx(copy(n) - copy(calib.TINY))
    checked = _model(overhead=bare.overhead, check=9e-6)
    assert checked.predict("allreduce", "ring", 2, n // 4, 4, check=True) == pytest.approx(
        bare.predict("allreduce", "ring", 2, n // 4, 4) + 9e-6)


def test_the_model_does_not_extrapolate_the_overhead():
    model = _model(2, {"ring": 1e-5})
    with pytest.raises(ValueError, match="no measured overhead.*'tree' on 2 ranks"):
        model.predict("allreduce", "tree", 2, 100, 4)
    with pytest.raises(ValueError, match="on 4 ranks"):
        model.predict("allreduce", "ring", 4, 100, 4)
    assert model.predict("allreduce", "ring", 1, 100, 4) == 0.0


def _fake_timings(monkeypatch, burst=lambda n, rnd: 0.0, *, one_way=None, reps=5):
    """Replace each timed sample by a synthetic one from known parameters: one-way alpha + n*beta, exchange
    alpha + 2n*beta, reduce n*gamma, up to 5% jitter, plus ``burst(n, round)`` seconds on rank 0's one-way
    samples of size n in that round (a burst of load that lasts a whole size, as a descheduled rank does);
    ``one_way``: the one-way samples are exactly ``one_way(n)``. The calls cost what the true model says,
    with jitter. Returns the log of (rank, kind, size) samples and the true model."""
    log, rng = [], np.random.default_rng(0)
    true = _model(overhead={a: FRONT + k * 1e-6 for k, a in enumerate(ALGORITHMS["allreduce"])},
                  exchange=_linear(ALPHA, 2 * BETA), nans=_linear(1e-6, 1e-11), copy=_linear(3e-7, 4e-11))
    jitter = lambda: 1 + rng.uniform(0, 0.05)  # noqa: E731

    def one(t, X, n):
        log.append((t.rank, "one_way", n))
        rnd = (log.count((t.rank, "one_way", n)) - 1) // ((reps + calib.WARMUP) * calib.SETTLE) + 1
        if one_way:
            return one_way(n)
        return (ALPHA + n * BETA) * jitter() + (burst(n, rnd) if t.rank == 0 else 0.0)

    def step(t, X, n):
        log.append((t.rank, "step", n))
        return ((ALPHA + 2 * n * BETA) * jitter(), n * GAMMA * jitter(), true.nans(n))

    def call(t, x, alg):
        log.append((t.rank, alg, x.nbytes))
        return true.predict("allreduce", alg, t.size, x.size, 4) * jitter()

    monkeypatch.setattr(calib, "_one_way", one)
    monkeypatch.setattr(calib, "_step", step)
    monkeypatch.setattr(calib, "_copy", lambda X, n: true.copy(n))
    monkeypatch.setattr(calib, "_time_call", call)
    monkeypatch.setattr(calib, "_time_check", lambda t: 9e-6)
    return log, true


def test_the_fit_recovers_known_parameters(monkeypatch):
    _, true = _fake_timings(monkeypatch)
    res = run_simulated(2, calibrate, PP_SIZES, 5)[0]
    assert res["rounds"] == calib.ROUNDS
    assert res["alpha_s"] == pytest.approx(ALPHA, rel=0.05)
    assert res["beta_s_per_byte"] == pytest.approx(BETA, rel=0.05)
    assert res["gamma_s_per_byte"] == pytest.approx(GAMMA, rel=0.05)
    model = Model.from_dict(res["model"])
    assert model.overhead == pytest.approx(true.overhead, rel=0.05) and model.check == 9e-6 and model.ranks == 2
    steps = [r["bytes"] for r in res["steps"]]
    assert steps == [1, 2, 4] + PP_SIZES   # the tiny call's sizes are always measured
    for n in steps:
        assert model.one_way(n) == pytest.approx(ALPHA + n * BETA, rel=0.05)
        assert model.exchange(n) == pytest.approx(ALPHA + 2 * n * BETA, rel=0.05)
        assert model.reduce(n) == pytest.approx(n * GAMMA, rel=0.05)
        assert model.nans(n) == true.nans(n) and model.copy(n) == true.copy(n)
    assert all(0 < r[f"{k}_min_s"] <= r[f"{k}_median_s"] for r in res["steps"] for k in ("one_way", "copy"))
    assert all(r[f"{k}_min_s"] > 0 for r in res["steps"] for k in STEPS)
    assert res["validation"] == []


def test_a_steps_parts_come_from_its_fastest_sample():
    # sample 0 has the fastest exchange, sample 1 the fastest reduction, sample 2 the fastest step as a whole
    got = {("exchange", 8): [np.array([1.0, 5.0, 2.0])], ("reduce", 8): [np.array([9.0, 1.0, 2.5])],
           ("nans", 8): [np.array([1.0, 1.0, 1.0])], ("one_way", 8): [np.array([3.0, 2.0]), np.array([4.0])]}
    stats = calib._stats(got, list(got), [8])
    assert stats["exchange", 8] == (2.0, 2.0) and stats["reduce", 8] == (2.5, 2.5) and stats["nans", 8] == (1.0, 1.0)
    assert stats["one_way", 8] == (2.0, 3.0)   # the others: the minimum and the median over all rounds


def test_steps_and_calls_are_interleaved_sample_by_sample(monkeypatch):
    log, _ = _fake_timings(monkeypatch, reps=2)
    algs = ALGORITHMS["allreduce"]
    res = run_simulated(2, calibrate, [1024, 4096], 2, vsizes=[4096], rounds=1)[0]
    mine = [k[1:] for k in log if k[0] == 0]
    assert mine == [k[1:] for k in log if k[0] == 1]
    at = [k[0] for k in mine if k[1] == 4096][::calib.SETTLE]   # each kind runs SETTLE times back to back
    assert [k[0] for k in mine if k[1] == 4096] == [k for k in at for _ in range(calib.SETTLE)]
    per = 2 + len(algs)
    samples = [at[i:i + per] for i in range(0, len(at), per)]
    assert len(samples) == 2 + calib.WARMUP and len(at) == per * len(samples)
    for i, sample in enumerate(samples):   # each kind once per sample, never a block of one kind
        assert sample[:2] == ["one_way", "step"] and sorted(sample[2:]) == sorted(algs)
        assert sample[2] == algs[(i - calib.WARMUP) % len(algs)]   # and each sample starts with the next algorithm
    assert [(r["algorithm"], r["bytes"]) for r in res["validation"]] == [(a, 4096) for a in algs]
    tiny = [k for k in mine if k[1] == calib.TINY and k[0] in algs]
    assert len(tiny) == len(algs) * (2 + calib.WARMUP) * calib.SETTLE   # the overhead: every algorithm, tiny


def test_the_validation_of_the_true_model_is_within_its_bounds(monkeypatch):
    _, true = _fake_timings(monkeypatch)
    vsizes = [8, 4096, 65536, 262144]
    res = run_simulated(2, calibrate, PP_SIZES, 5, vsizes=vsizes)[0]
    rows = res["validation"]
    assert [(r["algorithm"], r["bytes"]) for r in rows] == [(a, n) for n in vsizes for a in ALGORITHMS["allreduce"]]
    assert all(r["ok"] for r in rows)
    assert max(abs(r["error"]) for r in rows) < 0.08   # 5% jitter on the calls and the fitted steps


def test_a_burst_of_load_is_measured_again_and_the_minima_recover_beta(monkeypatch):
    # the first ROUNDS rounds: the medians of 5 round trips of a run that printed beta=0 on a loaded machine (us)
    loaded = dict(zip(PP_SIZES, np.array([1398, 449, 1401, 436, 1382, 117, 357, 192]) * 1e-6))
    log, _ = _fake_timings(monkeypatch, lambda n, rnd: loaded[n] - (ALPHA + n * BETA)
                           if n in loaded and rnd <= calib.ROUNDS else 0.0)
    assert fit_alpha_beta(PP_SIZES, list(loaded.values()))[1] == 0   # the loaded rounds alone give beta = 0
    res = run_simulated(2, calibrate, PP_SIZES, 5)[0]
    more = calib.ROUNDS + 1   # one more round, and its minima are the quiet ones
    assert res["rounds"] == more and log.count((0, "one_way", PP_SIZES[0])) == more * (5 + calib.WARMUP) * calib.SETTLE
    assert res["beta_s_per_byte"] == pytest.approx(BETA, rel=0.05)
    assert res["fit_off"] <= calib.ROUGH
    net = parse_network(res["network"])
    assert net.alpha > 0 and net.beta > 0 and net.gamma > 0
    assert all(r["one_way_median_s"] > 2 * r["one_way_min_s"] for r in res["steps"] if r["bytes"] in loaded)


def test_noise_that_hides_beta_is_an_error_not_a_spec(monkeypatch):
    # every round: ms of noise that falls with size, so the slope is never > 0
    log, _ = _fake_timings(monkeypatch, lambda n, rnd: 2e-3 - n * 2e-9)
    with pytest.raises(RankError) as info:
        run_simulated(2, calibrate, PP_SIZES, 5)
    assert isinstance(info.value.exc, CalibrationError)
    msg = str(info.value.exc)
    assert "beta not > 0" in msg and "too busy" in msg and "--reps" in msg
    assert log.count((0, "one_way", 16)) == calib.MAX_ROUNDS * (5 + calib.WARMUP) * calib.SETTLE   # measured again, then gave up


def test_flat_times_never_give_beta_zero(monkeypatch):
    _fake_timings(monkeypatch, one_way=lambda n: 5e-6)   # no slope at all
    with pytest.raises(RankError) as info:
        run_simulated(2, calibrate, PP_SIZES, 3)
    assert isinstance(info.value.exc, CalibrationError) and "beta not > 0" in str(info.value.exc)


def test_compare_flags_points_outside_their_bound():
    model = _model(overhead={a: FRONT for a in ALGORITHMS["allreduce"]})
    # fake calls: exactly the model, except ring at 64 KiB (30% slow), tree at 4 KiB (45%) and naive (55%)
    slow = {("ring", 65536): 1.30, ("tree", 4096): 1.45, ("naive", 4096): 1.55}
    calls = {}
    for n in (4096, 65536):
        for a in ALGORITHMS["allreduce"]:
            t = model.predict("allreduce", a, 2, n // 4, 4) * slow.get((a, n), 1.0)
            calls[a, n] = (t, 2 * t)
    rows = calib.compare(model, 2, calls)
    assert {(r["algorithm"], r["bytes"]) for r in rows if not r["ok"]} == {("ring", 65536), ("naive", 4096)}
    ring = next(r for r in rows if (r["algorithm"], r["bytes"]) == ("ring", 65536))
    assert ring["error"] == pytest.approx(0.30) and ring["bound"] == calib.TOLERANCE
    assert ring["median_s"] == 2 * ring["measured_s"] and ring["overhead_s"] == FRONT
    assert calib.bound(4096) == calib.SMALL_TOLERANCE and calib.bound(65536) == calib.TOLERANCE


@pytest.mark.timeout(60)
def test_validate_exits_1_when_a_point_is_outside_its_bound(tmp_path):
    out = tmp_path / "calib.json"
    code = ("import sys, numpy as np, mpisim.calibrate as c\n"
            "real = c._time_call\n"
            "c._time_call = lambda t, x, alg: real(t, x, alg) if x.nbytes == c.TINY else 1.0   # a second: far off\n"
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
            "c._one_way = lambda t, X, n: 2e-3 - n * 1e-9\n"
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
    if not out.exists():   # too busy to see the per-byte costs (a loaded machine): one clear line, no spec
        assert res.returncode == 1 and "too busy" in res.stderr and "beta=" not in res.stdout, res.stderr
        return
    data = json.loads(out.read_text())
    net = parse_network(data["network"])
    assert net.alpha > 0 and net.beta > 0 and net.gamma > 0
    assert data["ranks"] == 2
    assert [r["bytes"] for r in data["steps"]] == [1, 2, 4] + [16 << k for k in range(15)]
    assert all(0 < r[f"{k}_min_s"] for r in data["steps"] for k in STEPS)
    assert all(r[f"{k}_min_s"] <= r[f"{k}_median_s"] for r in data["steps"] for k in ("one_way", "copy"))
    assert 2 <= data["rounds"] <= calib.MAX_ROUNDS and data["reps"] == 10
    model = Model.from_dict(data["model"])
    algs = ALGORITHMS["allreduce"]
    assert {"naive", "tree", "recursive_doubling", "ring", "rabenseifner"} <= set(algs)
    assert set(model.overhead) == set(algs) and all(v > 0 for v in model.overhead.values()) and model.check > 0
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
    assert "largest |error| at >= 64 KiB" in res.stdout and "overhead:" in res.stdout


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
