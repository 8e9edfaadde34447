"""Helpers for tests that start real MPI jobs: find mpiexec, run with a hard timeout."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mpiexec() -> str:
    """The mpiexec beside this Python (the mpich wheel's), else $MPIEXEC, else the one on PATH."""
    found = os.environ.get("MPIEXEC") or shutil.which(
        "mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if not found:
        raise RuntimeError("mpiexec not found: install the project (pip install -e '.[test]' brings the "
                           "mpich wheel) or set MPIEXEC")
    return found


def run_mpi(n: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``mpiexec -n n python args...`` from the repository root; fail, never hang, at timeout."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [mpiexec(), "-n", str(n), sys.executable, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
