"""Under mpiexec, a rank that leaves early or dies ends the whole job: never a hang, never a survivor
blamed. Each test starts a real MPI job (tests/comm/mpi_scripts) with a timeout."""
import os
import subprocess
import sys

import pytest

from tests.mpirun import ROOT, mpiexec, run_mpi

SCRIPTS = "tests/comm/mpi_scripts"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("how", ["sys.exit(0)", "sys.exit(3)", "end"])
def test_a_rank_that_exits_before_a_collective_ends_the_job_naming_it(how, n):
    res = run_mpi(n, f"{SCRIPTS}/exits_early.py", how, timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"mpisim: rank 1 of {n} exited before the run finished, while rank " in res.stderr, res.stderr
    assert "unreachable" not in res.stdout
    assert "Traceback" not in res.stderr


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how, status", [("os._exit(3)", 3), ("os._exit(0)", None)])
def test_a_rank_that_ends_its_process_at_once_ends_the_job(how, status):
    """os._exit runs nothing of Python on the way out: MPICH's launcher sees the process end without
    MPI_Finalize and kills the others itself (SIGKILL), with the dead rank's status: 3 is a failure, but
    0 reads as success, and no process of the job is left to say otherwise (see the report's limits)."""
    res = run_mpi(2, f"{SCRIPTS}/exits_early.py", how, timeout=60)
    assert res.stdout.count("started") == 2, res.stdout + res.stderr
    assert "unreachable" not in res.stdout         # the survivor never got past the collective
    if status is not None:
        assert res.returncode == status, res.stdout + res.stderr


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how, message", [
    ("sys.exit(3)", "early-exit test: error: rank 1 of 2 exited before the run finished (exit status 3)"),
    ("return", "mpisim: rank 1 of 2 exited before the run finished, while rank 0 was waiting for it"),
])
def test_inside_the_launcher_a_rank_that_leaves_early_ends_the_job_naming_it(how, message):
    res = run_mpi(2, f"{SCRIPTS}/launch_exits_early.py", how, timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    assert message in res.stderr, res.stderr
    assert "unreachable" not in res.stdout
    assert "Traceback" not in res.stderr


@pytest.mark.timeout(90)
def test_a_rank_that_exits_is_no_loss_to_ranks_that_do_not_wait_for_it():
    """Rank 1 exits while rank 0 still waits on ANY_SOURCE (rank 2 sends 3 s later), then rank 0 works on
    after both have exited: the job is fine and must end with 0."""
    res = run_mpi(3, f"{SCRIPTS}/late_sender.py", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rank 0: received from [1, 2]" in res.stdout
    assert "exited before the run finished" not in res.stderr


def _killed_peer(how: str) -> subprocess.CompletedProcess:
    """peer_killed.py with the launcher's clean-up off and each rank under sh (so the launcher does not
    end the job when rank 1 is killed): rank 0 then meets the dead rank inside MPI, as a survivor does
    when the launcher is slow to end the job."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [mpiexec(), "-disable-auto-cleanup", "-n", "2", "sh", "-c",
           f'"{sys.executable}" {SCRIPTS}/peer_killed.py {how}']
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how, prefix", [("script", "mpisim: "), ("launch", "killed-peer test: error: ")])
def test_a_survivor_names_the_killed_rank_and_does_not_blame_itself(how, prefix):
    res = _killed_peer(how)
    assert res.returncode != 0, res.stdout + res.stderr
    assert f"{prefix}lost contact with rank 1 of 2: that process has probably died" in res.stderr, res.stderr
    assert "rank 0 of 2 failed" not in res.stderr and "rank 0 of 2:" not in res.stderr
    assert "Traceback" not in res.stderr
    assert "unreachable" not in res.stdout


@pytest.mark.timeout(120)
def test_a_rank_killed_during_training_ends_the_job_without_blaming_the_survivor():
    res = run_mpi(2, "-m", "mpisim.allreduce", "--epochs", "2", "--quiet", "--hidden", "256,256",
                  "--inject-fault", "1:3:kill", timeout=90)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "rank 0 of 2 failed" not in res.stderr and "rank 0 of 2:" not in res.stderr
    assert "Traceback" not in res.stderr
