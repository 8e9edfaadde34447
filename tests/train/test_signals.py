"""SIGTERM is handled like Ctrl-C (SIGINT): the run stops, no temporary file is left, the last checkpoint
stays whole, the message names the epoch that checkpoint holds, and the exit status is 143 (130 for
Ctrl-C). Also the launcher's odd options (--sim-timeout, --sim) as one-line usage errors."""
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from mpisim import allreduce
from mpisim.train import checkpoint as ckmod
from mpisim.train.checkpoint import LOCK_NAME, checkpoint_path, load_checkpoint
from mpisim.train.distributed import launch
from mpisim.train.options import TrainOptions

from ..mpirun import ROOT, mpiexec

ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
SAVED = re.compile(r"the last finished epoch, (\d+), is in (\S+): continue with --resume$")


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def signal_once_saved(proc: subprocess.Popen, ck, sig: int) -> tuple[str, str]:
    """Wait (bounded) until ``ck`` holds a checkpoint, send ``sig`` to ``proc``, and collect its output."""
    end = time.monotonic() + 90
    while not checkpoint_path(ck).exists() and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.05)
    try:
        assert proc.poll() is None and checkpoint_path(ck).exists(), "the run never saved a checkpoint"
        proc.send_signal(sig)
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def check_stopped_cleanly(ck, err: str, first_line: str) -> None:
    """One line, as asked; it names the epoch the checkpoint on disk holds; nothing half-written left."""
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith(first_line), err
    assert "Traceback" not in err, err
    m = SAVED.search(lines[0])
    assert m and m.group(2) == str(ck), err
    _, meta = load_checkpoint(ck)                     # whole: the checksum matches
    assert meta["epoch"] == int(m.group(1))
    assert not [p.name for p in ck.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.timeout(150)
def test_sigterm_stops_a_simulated_run_like_ctrl_c(tmp_path):
    ck = tmp_path / "D"
    proc = start([sys.executable, "-m", "mpisim.allreduce", "--sim", "2", "--epochs", "400", "--quiet",
                  "--checkpoint", str(ck)])
    out, err = signal_once_saved(proc, ck, signal.SIGTERM)
    assert proc.returncode == 143, err
    check_stopped_cleanly(ck, err, "python -m mpisim.allreduce: interrupted by SIGTERM; the last finished epoch, ")
    assert len(err.strip().splitlines()) == 1, err
    assert not (ck / LOCK_NAME).exists()
    res = subprocess.run([sys.executable, "-m", "mpisim.allreduce", "--sim", "2", "--epochs", "400", "--quiet",
                          "--checkpoint", str(ck), "--resume", "--stop-after", "1"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr          # it resumes


@pytest.mark.timeout(150)
def test_ctrl_c_still_ends_with_130(tmp_path):
    ck = tmp_path / "D"
    # started in its own session, so SIGINT is not ignored as it is for a background job of a shell
    proc = subprocess.Popen([sys.executable, "-c", "import signal, sys, runpy; "
                             "signal.signal(signal.SIGINT, signal.default_int_handler); "
                             "sys.argv = ['allreduce', *sys.argv[1:]]; runpy.run_module('mpisim.allreduce', "
                             "run_name='__main__')", "--sim", "2", "--epochs", "400", "--quiet", "--checkpoint",
                             str(ck)], cwd=ROOT, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = signal_once_saved(proc, ck, signal.SIGINT)
    assert proc.returncode == 130, err
    check_stopped_cleanly(ck, err, "python -m mpisim.allreduce: interrupted; the last finished epoch, ")


@pytest.mark.parametrize("sim", ["1", "2"])
def test_sigterm_in_the_middle_of_a_checkpoint_write(tmp_path, monkeypatch, capsys, sim):
    """The signal comes while the second checkpoint is being written (after its bytes, before the rename):
    the temporary file goes, the first checkpoint stays, and the message says epoch 1 (what is on disk)."""
    ck = tmp_path / "D"
    real_fsync, calls = os.fsync, []

    def fsync_then_sigterm(fd):
        real_fsync(fd)
        calls.append(fd)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(200):            # still writing when the handler's exception comes
                time.sleep(0.01)
            raise AssertionError("SIGTERM did not interrupt the write")
    monkeypatch.setattr(ckmod.os, "fsync", fsync_then_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    rc = allreduce.main(["--sim", sim, "--epochs", "5", "--quiet", "--hidden", "8", "--checkpoint", str(ck)])
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) is before          # the handler is the run's only
    err = capsys.readouterr().err
    assert rc == 143, err
    assert err.strip() == f"python -m mpisim.allreduce: interrupted by SIGTERM; the last finished epoch, 1, is in {ck}: " \
                          "continue with --resume"
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint.mpisim"]
    assert load_checkpoint(ck)[1]["epoch"] == 1


def test_interrupted_before_anything_was_saved(tmp_path, capsys):
    ck = tmp_path / "D"

    def body(t):
        raise KeyboardInterrupt
    assert launch("prog", TrainOptions(sim=2, checkpoint=str(ck)), body) == 130
    assert capsys.readouterr().err.strip() == f"prog: interrupted; nothing saved in {ck} yet"
    assert not ck.exists()


@pytest.mark.timeout(150)
def test_sigterm_to_mpiexec_stops_the_job_like_ctrl_c(tmp_path):
    ck = tmp_path / "D"
    proc = start([mpiexec(), "-n", "2", sys.executable, "-m", "mpisim.allreduce", "--epochs", "400", "--quiet",
                  "--checkpoint", str(ck)])
    out, err = signal_once_saved(proc, ck, signal.SIGTERM)
    assert proc.returncode == 143, out + err
    line = next((ln for ln in err.splitlines() if "interrupted" in ln), "")
    assert re.match(r"python -m mpisim\.allreduce: interrupted by SIGTERM on rank [01]; the last finished epoch, ",
                    line), err
    check_stopped_cleanly(ck, line, "python -m mpisim.allreduce: interrupted by SIGTERM on rank ")


def wait_for_lines(proc: subprocess.Popen, text: str, count: int, timeout: float = 60) -> None:
    """Wait until ``text`` has appeared ``count`` times on the process's stdout. Reads the pipe's bytes directly:
    a buffered readline may take two lines at once, and select then never wakes for the second."""
    got, end, fd = b"", time.monotonic() + timeout, proc.stdout.fileno()
    seen = 0
    while seen < count and time.monotonic() < end:
        if select.select([fd], [], [], 0.5)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            got += chunk
            seen = got.decode(errors="replace").count(text)
    if seen < count:
        proc.kill()
        pytest.fail(f"only {seen} of {count} lines said {text!r}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig, code, words", [(signal.SIGTERM, 143, "interrupted by SIGTERM on rank"),
                                              (signal.SIGINT, 130, "interrupted on rank")])
def test_a_signal_ends_a_job_whose_ranks_are_all_blocked_inside_mpi(sig, code, words):
    """Python cannot run a signal handler while its main thread is inside an MPI call: every rank of this
    job waits in a receive that never comes, so only the watch can end it."""
    proc = subprocess.Popen([mpiexec(), "-n", "2", sys.executable, "tests/comm/mpi_scripts/blocked_until_signal.py"],
                            cwd=ROOT, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_lines(proc, "blocked", 2)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == code, out + err
    assert f"blocked test: {words}" in err, err
    assert "Traceback" not in err


# -- the launcher's odd options ------------------------------------------------------------------------
@pytest.mark.parametrize("value, words", [("inf", "--sim-timeout must be below 1e+09 seconds, got inf"),
                                          ("1e300", "--sim-timeout must be below 1e+09 seconds, got 1e+300"),
                                          ("nan", "--sim-timeout must be > 0, got nan"),
                                          ("-1", "--sim-timeout must be > 0, got -1.0")])
def test_a_sim_timeout_out_of_range_is_a_usage_error(capsys, value, words):
    with pytest.raises(SystemExit) as e:
        allreduce.main(["--sim", "2", "--epochs", "1", "--sim-timeout", value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "(usage: python -m mpisim.allreduce --help)" in err, err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv", [["--sim-timeout", "inf"], ["--sim", "99999999999999"]])
def test_odd_cluster_options_from_the_command_line(argv):
    """As found from the command line: an OverflowError traceback, and memory growing until the process
    was killed (here capped, so a regression fails instead of taking the machine)."""
    res = subprocess.run(["sh", "-c", 'ulimit -v 4000000; exec "$0" "$@"', sys.executable, "-m", "mpisim.allreduce",
                          "--epochs", "1", "--quiet", *argv], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=90)
    assert res.returncode == 2, res.stdout + res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert ("simulated ranks need about" in err) if "--sim" in argv else ("--sim-timeout must be below" in err), err
