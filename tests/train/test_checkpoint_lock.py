"""One run per checkpoint directory: a second run given the same --checkpoint DIR while the first runs is
refused (exit 2, one line naming the process that holds it), a lock left by a dead process blocks nothing,
and --resume of a finished run still works."""
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mpisim import allreduce, centralized
from mpisim.train.checkpoint import (LOCK_NAME, CheckpointBusy, checkpoint_path, load_checkpoint,
                                     lock_directory)

from ..mpirun import ROOT, run_mpi

TINY = ["--dataset", "synthetic", "--synthetic-size", "60", "--synthetic-features", "8", "--hidden", "6", "--quiet"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")

# a process that takes the lock and holds it until its stdin closes (or it is killed)
HOLDER = textwrap.dedent("""
    import sys
    from mpisim.train.checkpoint import lock_directory
    lock = lock_directory(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()
""")


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 60) -> None:
    """Read ``proc``'s stdout until a line contains ``text``; fail (never hang) after ``timeout`` s."""
    end, fd, got = time.monotonic() + timeout, proc.stdout.fileno(), b""
    while time.monotonic() < end:               # the pipe's bytes, not buffered lines: select sees them all
        if select.select([fd], [], [], 0.5)[0]:
            chunk = os.read(fd, 65536)
            got += chunk
            if text in got.decode(errors="replace"):
                return
            if not chunk:
                break
    proc.kill()
    pytest.fail(f"the helper process never said {text!r} (exit status {proc.wait(timeout=10)})")


@pytest.fixture
def holder(tmp_path):
    """Start a process holding the lock on tmp_path/ck; yield (it, ck); end it at the end."""
    ck = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(ck)], cwd=ROOT, env=ENV, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(proc, "locked")
        yield proc, ck
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def refused_line(capsys, ck) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"--checkpoint {ck} is in use by another run (process " in err, err
    return err


@pytest.mark.parametrize("extra", [[], ["--resume"]])
def test_a_second_run_on_a_held_directory_is_refused(holder, capsys, extra):
    proc, ck = holder
    assert allreduce.main(["--sim", "2", "--epochs", "1", *TINY, "--checkpoint", str(ck), *extra]) == 2
    err = refused_line(capsys, ck)
    assert f"process {proc.pid} on " in err
    assert not checkpoint_path(ck).exists()
    assert centralized.main(["--epochs", "1", *TINY, "--checkpoint", str(ck)]) == 2      # the local trainer too
    refused_line(capsys, ck)


def test_a_lock_left_by_a_killed_process_does_not_block(holder, capsys):
    proc, ck = holder
    proc.send_signal(signal.SIGKILL)     # the kernel drops its flock with it; the lock file stays behind
    proc.wait(timeout=30)
    assert (ck / LOCK_NAME).exists()
    assert allreduce.main(["--sim", "2", "--epochs", "1", *TINY, "--checkpoint", str(ck)]) == 0
    assert load_checkpoint(ck)[1]["epoch"] == 1
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint.mpisim"]   # the lock file went with the run


def test_two_concurrent_training_runs_on_one_directory(tmp_path):
    """A real first run (long, stopped by SIGTERM at the end of the test) and a second one started while it
    runs: the second is refused at once and the first one's checkpoints are its own."""
    ck = tmp_path / "ck"
    first = subprocess.Popen([sys.executable, "-m", "mpisim.allreduce", "--sim", "2", "--epochs", "100000", *TINY,
                              "--checkpoint", str(ck)], cwd=ROOT, env=ENV, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 60
        while not checkpoint_path(ck).exists() and time.monotonic() < end and first.poll() is None:
            time.sleep(0.05)
        assert checkpoint_path(ck).exists(), first.stderr.read() if first.poll() is not None else "no checkpoint"
        for extra in ([], ["--resume"]):
            second = subprocess.run([sys.executable, "-m", "mpisim.allreduce", "--sim", "2", "--epochs", "2", *TINY,
                                     "--checkpoint", str(ck), *extra], cwd=ROOT, env=ENV, text=True,
                                    capture_output=True, timeout=120)
            assert second.returncode == 2, second.stdout + second.stderr
            assert second.stderr.strip() == (f"python -m mpisim.allreduce: error: --checkpoint {ck} is in use by "
                                              f"another run (process {first.pid} on {os.uname().nodename}): wait "
                                              f"for it to end, or choose another directory")
        assert first.poll() is None                 # untouched by the refused runs
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
    assert first.returncode == 143, err
    _, meta = load_checkpoint(ck)
    assert meta["epochs"] == 100000                 # the first run's own checkpoint
    assert not (ck / LOCK_NAME).exists()


@pytest.mark.timeout(120)
def test_under_mpiexec_a_held_directory_is_refused_on_every_rank(holder):
    proc, ck = holder
    res = run_mpi(2, "-m", "mpisim.allreduce", "--epochs", "1", *TINY, "--checkpoint", str(ck), timeout=90)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines == [f"python -m mpisim.allreduce: error: --checkpoint {ck} is in use by another run (process "
                     f"{proc.pid} on {os.uname().nodename}): wait for it to end, or choose another directory"], lines


@pytest.mark.timeout(120)
def test_under_mpiexec_the_lock_is_taken_and_given_back(tmp_path):
    ck = tmp_path / "ck"
    res = run_mpi(2, "-m", "mpisim.allreduce", "--epochs", "2", *TINY, "--checkpoint", str(ck), timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint.mpisim"]
    with lock_directory(ck):                        # free again
        pass


def test_resuming_a_finished_run_still_works(tmp_path, capsys):
    ck = tmp_path / "ck"
    argv = ["--sim", "2", "--epochs", "2", *TINY[:-1], "--checkpoint", str(ck)]
    assert allreduce.main(argv) == 0
    assert allreduce.main([*argv, "--resume"]) == 0
    assert "the checkpoint has already done 2 of 2 epochs: nothing to train" in capsys.readouterr().out
    assert allreduce.main([*argv[:3], "3", *argv[4:], "--resume"]) == 0     # and one more epoch
    assert load_checkpoint(ck)[1]["epoch"] == 3


def test_a_failed_run_gives_the_directory_back(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert allreduce.main(["--sim", "2", "--epochs", "2", *TINY, "--batch-size", "10", "--checkpoint", str(ck),
                           "--inject-fault", "1:8:raise"]) == 1
    assert "rank 1 of 2 failed" in capsys.readouterr().err
    assert load_checkpoint(ck)[1]["epoch"] == 1
    with lock_directory(ck):
        pass
    assert allreduce.main(["--sim", "2", "--epochs", "2", *TINY, "--batch-size", "10", "--checkpoint", str(ck),
                           "--resume"]) == 0


def test_a_run_that_fails_before_saving_leaves_no_directory(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert allreduce.main(["--sim", "2", "--epochs", "2", *TINY, "--batch-size", "10", "--checkpoint", str(ck),
                           "--inject-fault", "1:1:raise"]) == 1
    assert not ck.exists()                          # made for the lock, removed with it


def test_the_holder_removes_temporary_files_a_killed_writer_left(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    stale = ck / ".checkpoint.mpisim.k2j4x9.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = ck / "notes.txt"
    other.write_text("mine")
    with lock_directory(ck):
        assert not stale.exists() and other.exists()


def test_the_lock_in_one_process(tmp_path):
    ck = tmp_path / "ck"
    lock = lock_directory(ck)
    assert (ck / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    with pytest.raises(CheckpointBusy, match=f"in use by another run \\(process {os.getpid()} on "):
        lock_directory(ck)                          # a second open file is another lock, even here
    lock.release()
    lock.release()                                  # twice is harmless
    assert not ck.exists()                          # made by the lock, empty: removed
    with lock_directory(ck):
        pass
