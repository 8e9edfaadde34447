"""The collectives under real mpiexec (1-4 ranks), against MPI's own collectives."""
import re
import time

import pytest

from tests.mpirun import run_mpi

SCRIPTS = "tests/comm/mpi_scripts"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_collectives_match_mpi(n):
    res = run_mpi(n, f"{SCRIPTS}/check_collectives.py", timeout=150)
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(r"mpi collectives: (\d+) checks, (\d+) failures on (\d+) ranks", res.stdout)
    assert m, res.stdout + res.stderr
    checks, failures, ranks = map(int, m.groups())
    assert (failures, ranks) == (0, n) and checks > 1000


@pytest.mark.timeout(90)
@pytest.mark.parametrize("n", [2, 4])
def test_a_failing_rank_ends_the_job_naming_it(n):
    start = time.monotonic()
    res = run_mpi(n, f"{SCRIPTS}/rank_fails.py", timeout=60)
    elapsed = time.monotonic() - start
    assert res.returncode != 0
    assert f"mpisim: rank 1 of {n} failed with TypeError" in res.stderr
    assert "unreachable" not in res.stdout
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end"


@pytest.mark.timeout(90)
def test_mismatched_lengths_raise_on_every_rank():
    res = run_mpi(3, f"{SCRIPTS}/mismatch.py", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    for r in range(3):
        assert f"rank {r}: ValueError: allreduce: ranks passed inconsistent arguments: length differs" in res.stdout


@pytest.mark.timeout(90)
def test_transport_semantics_under_mpi():
    res = run_mpi(2, f"{SCRIPTS}/transport_semantics.py", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "transport semantics ok" in res.stdout


@pytest.mark.timeout(90)
@pytest.mark.parametrize("n", [3, 4])
def test_split_groups_under_mpi(n):
    res = run_mpi(n, f"{SCRIPTS}/split_groups.py", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"split groups ok on {n} ranks" in res.stdout
