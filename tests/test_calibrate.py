"""mpisim.calibrate: the weighted fit on synthetic data, and the tool under real mpiexec."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mpisim.calibrate import fit_alpha_beta, size_range, to_network
from mpisim.comm.network import parse_network
from tests.mpirun import ROOT, run_mpi

SIZES = [4 ** k for k in range(13)]   # 1 B .. 16 MiB


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
