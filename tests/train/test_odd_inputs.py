"""Odd command-line values and files found by trying to break the tools: each is a one-line error with exit 2
(usage) or 1 (runtime), before any work is wasted; never a traceback, a hang or a silently ignored option."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mpisim import allreduce, centralized, easgd, fedavg, paramserver
from mpisim.train import CheckpointError, load_checkpoint, save_checkpoint
from mpisim.train import checkpoint
from mpisim.train.checkpoint import checkpoint_path
from mpisim.train.loop import history_problem, restore_state
from mpisim.train.options import TrainOptions

from ..mpirun import ROOT, mpiexec, run_mpi
from ..paradigms.helpers import SMALL

# 40 training examples: batches of 12 make 4 steps an epoch
TINY = ["--dataset", "synthetic", "--synthetic-size", "50", "--synthetic-features", "8", "--hidden", "6", "--quiet"]


def usage_error(module, argv, capsys) -> str:
    """The one line of a usage error (exit 2) that parsing ``argv`` gives."""
    with pytest.raises(SystemExit) as e:
        module.PARADIGM.parse([str(a) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def cli(*args, cwd=ROOT, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))


def one_line(res: subprocess.CompletedProcess, code: int) -> str:
    assert res.returncode == code, res.stdout + res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# -- paramserver --straggler ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["1:1e9", "1:1e300", "1:1000.5"])
def test_a_straggler_factor_that_would_stall_the_run_is_refused(value):
    """1:1e9 made the worker sleep a billion times its compute time: the run never ended."""
    err = one_line(cli("-m", "mpisim.paramserver", "--sim", "3", *TINY, "--straggler", value, timeout=60), 2)
    assert "--straggler" in err and "at most 1000" in err and value in err


def test_the_largest_straggler_factor_is_accepted(capsys):
    cfg = paramserver.PARADIGM.parse(["--sim", "3", *TINY, "--straggler", "1:1000"])
    assert cfg.opts.straggler == (1, 1000.0)


# -- FIFOs, directories and empty names as output files --------------------------------------------------------
@pytest.fixture
def fifos(tmp_path):
    for name in ("pipe", "pipe.png", "pipe.json"):
        os.mkfifo(tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("flag, name, words", [
    ("--metrics", "pipe", "not a regular file"),
    ("--plot", "pipe.png", "not a regular file"),
    ("--trace", "pipe.json", "not a regular file"),
    ("--checkpoint", "pipe", "is not a directory"),
])
def test_a_fifo_as_an_output_is_refused_before_the_run(fifos, capsys, flag, name, words):
    """A FIFO blocks the writer (or the reader) until someone opens the other end: refused at parsing."""
    if flag == "--plot":
        pytest.importorskip("matplotlib")
    err = usage_error(allreduce, [*TINY, "--sim", "2", flag, fifos / name], capsys)
    assert flag in err and words in err and str(fifos / name) in err
    assert os.path.exists(fifos / name) and not os.path.isfile(fifos / name)    # left alone


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", [checkpoint.CHECKPOINT_NAME, getattr(checkpoint, "LOCK_NAME", "")])
@pytest.mark.parametrize("resume", [False, True])
def test_a_fifo_where_the_checkpoint_or_its_lock_should_be_is_refused(tmp_path, capsys, resume, name):
    if not name:
        pytest.skip("no lock file in this version")
    ck = tmp_path / "ck"
    ck.mkdir()
    os.mkfifo(ck / name)
    err = usage_error(centralized, [*TINY, "--checkpoint", ck, *(["--resume"] if resume else [])], capsys)
    assert str(ck / name) in err and "not a regular file" in err


@pytest.mark.timeout(60)
def test_restoring_from_a_fifo_raises_instead_of_blocking(tmp_path):
    """Below the command line too (the FIFO could appear after the options were checked)."""
    ck = tmp_path / "ck"
    ck.mkdir()
    os.mkfifo(checkpoint_path(ck))
    with pytest.raises(CheckpointError, match="not a regular file"):
        restore_state(TrainOptions(checkpoint=str(ck), resume=True), None, None, {})


@pytest.mark.parametrize("flag, words", [("--metrics", "--metrics needs a file name"),
                                         ("--plot", "--plot needs a file name"),
                                         ("--checkpoint", "--checkpoint needs a directory name"),
                                         ("--trace", "--trace needs a file name"),
                                         ("--timeline", "--timeline needs a file name"),
                                         ("--data-dir", "--data-dir needs a directory name"),
                                         ("--hidden", "--hidden: expected hidden sizes such as 128,64, or none")])
@pytest.mark.parametrize("module", [centralized, fedavg])
def test_an_empty_value_is_refused_not_ignored(capsys, module, flag, words):
    argv = [*TINY, flag, ""] + (["--sim", "3", "--clients", "4", "--rounds", "1"] if module is fedavg else [])
    assert words in usage_error(module, argv, capsys)


# -- bench: the CSV (and the table) checked before the sweep ---------------------------------------------------
@pytest.mark.parametrize("flag, value, words", [
    ("--csv", "{d}", "is a directory; give a file name"),
    ("--csv", "", "--csv needs a file name"),
    ("--csv", "{d}/pipe", "not a regular file"),
    ("--save-table", "{d}", "is a directory; give a file name"),
    ("--save-table", "{d}/pipe", "not a regular file"),
    ("--save-table", "", "--save-table needs a file name"),
    ("--trace", "", "--trace needs a file name"),
    ("--max-size", "4096G", "memory available"),
])
def test_bench_refuses_an_output_it_cannot_write_before_the_sweep(tmp_path, flag, value, words):
    """bench --csv DIR ran the whole sweep and failed at the end; without mpiexec it would run on one rank, so
    an exit 2 within the timeout shows the check comes first."""
    os.mkfifo(tmp_path / "pipe")
    res = cli("-m", "mpisim.bench", "--max-size", "64M", flag, value.format(d=tmp_path), timeout=60)
    assert words in one_line(res, 2)


# -- a checkpoint with a valid checksum but a malformed history ---------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A one-epoch checkpoint of the centralized trainer: (arrays, meta)."""
    ck = tmp_path_factory.mktemp("ck")
    centralized.train_centralized([*TINY, "--epochs", "1", "--batch-size", "12", "--checkpoint", str(ck)])
    return load_checkpoint(ck)


BAD_HISTORIES = [
    ("junk", "expected a list of records, found str"),
    (None, "found NoneType"),
    ({"epoch": 1}, "found dict"),
    ([1], "record 1 is int, not an object"),
    ([{"loss": 0.5}], "record 1 has no epoch or round number"),
    ([{"epoch": "1", "loss": 0.5}], "record 1 has epoch '1', expected 1"),
    ([{"epoch": 2, "loss": 0.5}], "record 1 has epoch 2, expected 1"),
    ([{"epoch": 1, "test_acc": "high"}], "record 1 has test_acc 'high', not a number"),
    ([{"epoch": 1, "loss": [0.5]}], "record 1 has loss [0.5], not a number"),
    ([], "it holds 0 records, but the checkpoint was saved after epoch (or round) 1"),
    ([{"epoch": 1}, {"epoch": 2}], "it holds 2 records, but the checkpoint was saved after epoch (or round) 1"),
]


@pytest.mark.parametrize("history, words", BAD_HISTORIES)
def test_a_malformed_history_is_a_checkpoint_error_naming_the_file(tmp_path, capsys, saved, history, words):
    """These ended a --resume with AttributeError, TypeError or KeyError (and a half-updated checkpoint)."""
    arrays, meta = saved
    ck = tmp_path / "ck"
    save_checkpoint(ck, arrays, {**meta, "history": history})
    before = checkpoint_path(ck).read_bytes()
    assert centralized.main([*TINY, "--epochs", "2", "--batch-size", "12", "--checkpoint", str(ck), "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(checkpoint_path(ck)) in err and "history is malformed" in err and words in err
    assert checkpoint_path(ck).read_bytes() == before                 # not overwritten


def test_a_good_history_passes_and_resumes(tmp_path, saved):
    arrays, meta = saved
    assert history_problem(meta["history"], meta["epoch"]) is None
    assert history_problem([{"round": 1, "loss": 0.1, "test_acc": None}], 1) is None     # federated records
    ck = tmp_path / "ck"
    save_checkpoint(ck, arrays, meta)
    out = centralized.train_centralized([*TINY, "--epochs", "2", "--batch-size", "12", "--checkpoint", str(ck),
                                         "--resume"])
    assert out["epoch"] == 2


@pytest.mark.parametrize("key", ["params", "opt.exp_avg"])
def test_non_finite_values_in_a_checkpoint_are_refused(tmp_path, capsys, saved, key):
    """A NaN resumed would surface later as a diverging run ("lower --lr"): said at once, naming the array."""
    arrays, meta = saved
    bad = {k: v.copy() for k, v in arrays.items()}
    bad[key][0] = np.nan
    save_checkpoint(tmp_path, bad, meta)
    assert centralized.main([*TINY, "--epochs", "2", "--batch-size", "12", "--checkpoint", str(tmp_path),
                             "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{key} holds non-finite values" in err


def test_a_step_count_that_is_not_one_number_is_a_checkpoint_error(tmp_path, capsys, saved):
    arrays, meta = saved
    save_checkpoint(tmp_path, {**arrays, "opt.steps": np.arange(3)}, meta)
    assert centralized.main([*TINY, "--epochs", "2", "--batch-size", "12", "--checkpoint", str(tmp_path),
                             "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(checkpoint_path(tmp_path)) in err


# -- --inject-fault that can never fire ----------------------------------------------------------------------------
@pytest.mark.parametrize("module, argv, fault, words", [
    # 40 training examples in batches of 12: 4 steps an epoch on every rank
    (allreduce, ["--sim", "2", "--epochs", "2", "--batch-size", "12"], "1:9:raise",
     "rank 1 takes at most 8 training steps in 2 epochs, 4 per epoch (40 training examples in 4 global batches "
     "of 12); name a step 1..8"),
    (allreduce, ["--sim", "2", "--epochs", "5", "--stop-after", "1", "--batch-size", "12"], "0:5:nan",
     "at most 4 training steps in 1 epoch (--stop-after 1)"),
    (allreduce, ["--sim", "2", "--epochs", "1", "--per-rank-batch", "5"], "0:5:raise", "4 global batches of 10"),
    (paramserver, ["--sim", "3", "--epochs", "1", "--batch-size", "12"], "2:5:raise", "name a step 1..4"),
    # async: the 2 workers share 2 x 4 pushes an epoch however they fall
    (paramserver, ["--sim", "3", "--epochs", "1", "--batch-size", "12", "--mode", "async"], "2:9:raise",
     "name a step 1..8"),
    (easgd, ["--sim", "3", "--epochs", "1", "--batch-size", "12"], "1:5:raise", "name a step 1..4"),
    (fedavg, ["--sim", "3", "--rounds", "2", "--clients", "4"], "1:3:raise", "the run has 2 rounds; name a round 1..2"),
    (allreduce, ["--sim", "2"], "2:1:raise", "names rank 2, but the ranks are 0..1"),
    (paramserver, ["--sim", "3"], "0:1:raise", "rank 0, a server, which takes no training steps"),
    (easgd, ["--sim", "3"], "0:1:raise", "rank 0, a server"),
])
def test_a_fault_that_can_never_fire_is_a_usage_error(capsys, module, argv, fault, words):
    err = usage_error(module, [*TINY, *argv, "--inject-fault", fault], capsys)
    assert words in err and "--inject-fault" in err


@pytest.mark.parametrize("module, argv, fault", [
    (allreduce, ["--sim", "2", "--epochs", "2", "--batch-size", "12"], "1:8:raise"),
    (paramserver, ["--sim", "3", "--epochs", "1", "--batch-size", "12", "--mode", "async"], "2:8:raise"),
    (paramserver, ["--sim", "3", "--epochs", "1", "--batch-size", "12", "--mode", "ssp"], "2:8:raise"),
    (fedavg, ["--sim", "3", "--rounds", "2", "--clients", "4"], "1:2:raise"),
    (fedavg, ["--sim", "3", "--rounds", "2", "--clients", "4"], "0:1:raise"),      # the server does fail in a round
])
def test_the_last_step_that_can_fire_is_accepted(module, argv, fault):
    assert module.PARADIGM.parse([*TINY, *argv, "--inject-fault", fault]).train.inject_fault[1] == int(fault.split(":")[1])


def test_the_last_reachable_step_does_fire():
    """The bound is not too tight: step 8 of 2 epochs of 4 steps fails the run on that rank."""
    res = cli("-m", "mpisim.allreduce", *TINY, "--sim", "2", "--epochs", "2", "--batch-size", "12",
              "--inject-fault", "1:8:raise", timeout=60)
    assert res.returncode == 1 and "fault injected on rank 1 at step 8" in res.stderr


def test_a_fault_within_the_bound_that_is_not_reached_is_still_said_at_the_end(capsys):
    """The bound is what a rank can take at most; async workers share the pushes, each makes at least one a
    epoch, so with 2 workers and 4 batches neither reaches push 8: the warning at the end says so."""
    argv = [*TINY, "--sim", "3", "--epochs", "1", "--batch-size", "12", "--mode", "async", "--inject-fault", "1:8:raise"]
    assert paramserver.main(argv) == 0
    assert "warning: --inject-fault 1:8:raise never happened: rank 1 reached steps 1.." in capsys.readouterr().err


def test_without_mpiexec_or_sim_the_fault_step_is_checked_when_the_world_is_known():
    err = one_line(cli("-m", "mpisim.allreduce", *TINY, "--epochs", "1", "--batch-size", "12", "--inject-fault",
                       "1:5:raise", timeout=60), 2)
    assert "can never fire" in err


def test_mnist_files_not_there_leave_the_step_to_the_run(tmp_path):
    """Where the training set's size is not known before loading, the check is left to the warning at the end
    (and here to the data error)."""
    cfg = allreduce.PARADIGM.parse(["--dataset", "mnist", "--data-dir", str(tmp_path), "--sim", "2",
                                    "--inject-fault", "1:999999:raise"])
    assert cfg.train.inject_fault[1] == 999999


# -- no pickling mpi4py call ------------------------------------------------------------------------------------------
TRAP = textwrap.dedent("""\
    import os, runpy, sys
    from mpi4py import MPI

    def trapped(*args, **kwargs):
        os.write(2, b"PICKLING CALL: a lowercase mpi4py method was used\\n")
        os._exit(97)

    MPI.pickle.__init__(trapped, trapped)      # every pickling call (bcast, allreduce, send, ...) now fails
    sys.argv = [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
""")


@pytest.mark.timeout(200)
@pytest.mark.parametrize("tool, args", [
    ("mpisim.bench", ["--max-size", "4K", "--factor", "32", "--iters", "3", "--min-iters", "2", "--repeats", "1",
                      "--trace", "{d}/t.json", "--csv", "{d}/b.csv"]),
    ("mpisim.allreduce", [*SMALL, "--epochs", "1", "--batch-size", "12", "--eval", "distributed"]),
    ("mpisim.paramserver", [*SMALL, "--epochs", "1", "--batch-size", "12", "--servers", "1"]),
])
def test_no_pickling_mpi4py_call_under_mpiexec(tmp_path, tool, args):
    """With mpi4py's pickle replaced by a trap, the tools run to the end: only buffer calls are used."""
    mpiexec()
    trap = tmp_path / "trap.py"
    trap.write_text(TRAP)
    res = run_mpi(2, str(trap), tool, *(a.format(d=tmp_path) for a in args), timeout=180)
    assert "PICKLING CALL" not in res.stderr
    assert res.returncode == 0, res.stdout + res.stderr
    if tool == "mpisim.bench":
        assert (tmp_path / "b.csv").read_text().count("MPI_Allreduce") == 3


@pytest.mark.timeout(100)
def test_the_trap_catches_a_pickling_call(tmp_path):
    """The test above could fail: a lowercase bcast under the trap ends the job with the trap's message."""
    mpiexec()
    (tmp_path / "trap.py").write_text(TRAP)
    (tmp_path / "pickler.py").write_text("from mpi4py import MPI\nMPI.COMM_WORLD.bcast({'a': 1}, root=0)\n")
    res = run_mpi(2, str(tmp_path / "trap.py"), "pickler", timeout=60)
    assert res.returncode != 0 and "PICKLING CALL" in res.stderr
