"""python -m mpisim.elastic: a failed job restarts from its last checkpoint and ends where an uninterrupted one ends."""
import subprocess
import sys

import numpy as np
import pytest

from mpisim.elastic import restarted
from mpisim.train.checkpoint import load_checkpoint
from tests.mpirun import ROOT, mpiexec

DIGITS = ["-m", "mpisim.allreduce", "--epochs", "4", "--quiet"]


def _run(*argv, timeout=300):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def _same_checkpoints(a, b):
    x, mx = load_checkpoint(a)
    y, my = load_checkpoint(b)
    assert mx["epoch"] == my["epoch"] == 4
    assert sorted(x) == sorted(y) and all(np.array_equal(x[k], y[k]) for k in y)


@pytest.mark.timeout(400)
def test_a_killed_mpi_job_restarts_and_ends_as_an_uninterrupted_one(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    # rank 1 kills itself at its 60th step (epoch 3 of 4, 23 steps each): the job dies after epoch 2 was saved
    r = _run("-m", "mpisim.elastic", "--max-restarts", "1", "--", mpiexec(), "-n", "2", sys.executable, *DIGITS,
             "--checkpoint", str(a), "--inject-fault", "1:60:kill")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "restarting from epoch 2, the last one saved in" in r.stderr and "(1 of 1)" in r.stderr
    u = subprocess.run([mpiexec(), "-n", "2", sys.executable, *DIGITS, "--checkpoint", str(b)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert u.returncode == 0, u.stderr
    _same_checkpoints(a, b)


@pytest.mark.timeout(300)
def test_simulated_job_restarts_and_no_restarts_left(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    cmd = [sys.executable, *DIGITS, "--sim", "2", "--checkpoint", str(a), "--inject-fault", "1:50:raise"]
    r = _run("-m", "mpisim.elastic", "--max-restarts", "2", "--", *cmd)
    assert r.returncode == 0 and "restarting from epoch 2" in r.stderr, r.stderr[-2000:]
    assert _run(*DIGITS, "--sim", "2", "--checkpoint", str(b)).returncode == 0
    _same_checkpoints(a, b)
    # a fault before anything was saved, and no restarts allowed: the failure stands, said in one line
    c = tmp_path / "c"
    r = _run("-m", "mpisim.elastic", "--max-restarts", "0", "--", sys.executable, *DIGITS, "--sim", "2",
             "--checkpoint", str(c), "--inject-fault", "1:3:raise")
    assert r.returncode == 1 and "no restarts left (0 made)" in r.stderr


@pytest.mark.parametrize("argv, why", [
    (["--max-restarts", "1", "--"], "give the job's command"),
    (["--max-restarts", "-1", "--", "true"], "must be >= 0"),
    (["--", sys.executable, "-m", "mpisim.allreduce"], "needs --checkpoint DIR"),
])
def test_usage_errors(argv, why):
    r = _run("-m", "mpisim.elastic", *argv, timeout=60)
    assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr


def test_usage_errors_of_the_job_end_it_at_once(tmp_path):
    r = _run("-m", "mpisim.elastic", "--", sys.executable, "-m", "mpisim.allreduce", "--sim", "2", "--checkpoint",
             str(tmp_path / "x"), "--epochs", "0", timeout=60)
    assert r.returncode == 2 and "restarting" not in r.stderr


def test_the_restart_command():
    assert restarted(["x", "--inject-fault", "1:2:kill", "--checkpoint", "d"]) == ["x", "--checkpoint", "d", "--resume"]
    assert restarted(["x", "--inject-fault=1:2:kill", "--resume"]) == ["x", "--resume"]
