"""The paradigm runtime (mpisim.train.runtime): the summary line, a toy paradigm through the whole loop
(progress, checkpoint, resume, refusals, failures), the shared options, every paradigm's --help, and the
messages the new paradigms give for bad command lines."""
import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from mpisim.__main__ import PARADIGMS
from mpisim.comm import RankError, SimCluster
from mpisim.train import load_checkpoint
from mpisim.train.distributed import CommReport, Formula, ParadigmError, UsageError
from mpisim.train.options import RESUMABLE_CHANGES, TrainOptions, options_from, run_config
from mpisim.train.runtime import Paradigm, Payload, Role, summary_line
from tests.mpirun import ROOT, run_mpi

from tests.paradigms.helpers import SMALL

LOUD = [a for a in SMALL if a != "--quiet"]          # the small problem, with its progress lines


# ---- summary_line -----------------------------------------------------------------------------------

RECORDS = [{"epoch": 1, "test_acc": 0.50, "seconds": 10.0},
           {"epoch": 2, "test_acc": 0.875, "seconds": 3.0},     # best
           {"epoch": 3, "test_acc": 0.625, "seconds": 5.0}]


def _report(agrees=True, has_formula=True, payload_bytes=1234567):
    return CommReport(text="(table)", agrees=agrees, payload_bytes=payload_bytes, has_formula=has_formula)


def test_summary_names_final_and_best_accuracy_and_time_per_epoch_of_this_run():
    line = summary_line(RECORDS, 2, "epoch", 9.04, _report())
    assert line.startswith("summary: ")
    assert "test accuracy 62.5% final, 87.5% best (epoch 2)" in line
    assert "9.0 s in all" in line
    assert "4.00 s per epoch" in line              # (3 + 5) / 2: only the 2 epochs of this run
    assert "payload 1,234,567 B sent, matches the formula" in line
    # all three epochs in this run: (10 + 3 + 5) / 3
    assert "6.00 s per epoch" in summary_line(RECORDS, 3, "epoch", 20.0, _report())
    tiny = [dict(r, seconds=0.004) for r in RECORDS]
    assert "0.004 s per epoch" in summary_line(tiny, 2, "epoch", 0.5, _report())


def test_summary_in_rounds_and_with_the_best_last():
    recs = [{"round": 1, "test_acc": 0.1, "seconds": 1.0}, {"round": 2, "test_acc": 0.9, "seconds": 2.0}]
    line = summary_line(recs, 1, "round", 3.0, _report())
    assert "90.0% final, 90.0% best (round 2)" in line and "2.00 s per round" in line


@pytest.mark.parametrize("report, tail", [
    (_report(agrees=False), "; payload 1,234,567 B sent, DIFFERS from the formula"),
    (_report(has_formula=False, agrees=True), "; payload 1,234,567 B sent (no closed form to check)"),
    (_report(payload_bytes=0), "; payload 0 B sent, matches the formula"),
    (None, "; no communication (one process)"),
])
def test_summary_says_what_the_payload_check_found(report, tail):
    line = summary_line(RECORDS, 1, "epoch", 5.0, report)
    assert line.endswith(tail)
    assert "matches" not in line or "matches" in tail


def test_summary_when_no_epoch_was_trained():
    assert summary_line(RECORDS, 0, "epoch", 0.31, _report()) == "summary: no epoch trained in this run; 0.3 s in all"
    assert summary_line([], 0, "round", 1.0, None) == "summary: no round trained in this run; 1.0 s in all"


# ---- a toy paradigm on the runtime -------------------------------------------------------------------

TOY_DOC = """A toy paradigm for the runtime's tests: every epoch one control allreduce, no payload.

It trains nothing; the runtime evaluates, records, checkpoints and prints around it.

    python -m toy --sim 3          (the --help epilog)
"""


@dataclass(frozen=True)
class ToyOptions:
    fail_rank: int = -1           # this rank raises in --fail-epoch
    fail_epoch: int = 0
    fail_kind: str = "runtime"    # runtime (a bug: traceback) | paradigm (a user error: one line)
    refuse: int = 0               # check_world refuses this many ranks


def toy_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("toy")
    g.add_argument("--fail-rank", type=int, default=-1)
    g.add_argument("--fail-epoch", type=int, default=0)
    g.add_argument("--fail-kind", choices=("runtime", "paradigm"), default="runtime")
    g.add_argument("--refuse", type=int, default=0)


def toy_world(train, o: ToyOptions, n: int) -> str | None:
    return f"toy refuses {n} ranks (--refuse {o.refuse})" if n == o.refuse else None


class Toy(Role):
    title = "toy"

    def __init__(self, run) -> None:
        super().__init__(run)
        self.epochs = 0
        run.say(f"toy: {run.size} ranks ({run.where()})"
                + (f"; resuming after epoch {run.state.start_epoch}" if run.state.start_epoch else ""))

    def epoch(self, epoch: int) -> dict | None:
        run, o = self.run, self.run.opts
        if run.rank == o.fail_rank and epoch == o.fail_epoch:      # before the allreduce: the others wait
            error = RuntimeError if o.fail_kind == "runtime" else ParadigmError
            raise error(f"toy failure on rank {run.rank} in epoch {epoch + 1}")
        self.epochs += 1
        tot = self.run.totals(np.zeros(3))
        return run.figures(tot, run.opt.lr) if run.rank == 0 else None

    def payload(self) -> Payload:
        n = self.run.size
        return Payload({"rank": list(range(n))}, {"rank": Formula("0 (no payload)", 0, 0, 0, 0)}, "toy: no payload")

    def result(self) -> dict:
        return {"toy_epochs": self.epochs}


TOY = Paradigm(name="toy", doc=TOY_DOC, description="A toy paradigm that trains nothing.", setup=Toy,
               options=ToyOptions, add_args=toy_args, check_world=toy_world, default_ranks=2)


def test_toy_prints_a_progress_line_per_epoch_then_the_table_and_the_summary(capsys):
    assert TOY.main(["--sim", "3", "--epochs", "3", *LOUD]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "toy: 3 ranks (simulated)"
    progress = [ln for ln in lines if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in progress] == ["1/3", "2/3", "3/3"]
    assert all("loss 0.0000" in ln and "(comm " in ln for ln in progress)
    assert "toy: no payload" in out and "0 (no payload) = 0  agrees" in out
    assert lines[-1].startswith("summary: test accuracy ")
    assert lines[-1].endswith("payload 0 B sent, matches the formula")


def test_toy_help_has_the_description_and_the_docs_last_paragraph(capsys):
    with pytest.raises(SystemExit) as e:
        TOY.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m mpisim.toy")
    assert "A toy paradigm that trains nothing." in out
    assert "(the --help epilog)" in out and "It trains nothing" not in out     # only the last paragraph
    assert "--fail-rank" in out and "--sim N" in out and "--epochs" in out


def test_toy_stops_then_resumes_to_the_end(tmp_path, capsys):
    ck, metrics = tmp_path / "ck", tmp_path / "m.jsonl"
    argv = ["--sim", "3", "--epochs", "3", *LOUD, "--checkpoint", ck, "--metrics", metrics]
    assert TOY.main([*argv, "--stop-after", "1"]) == 0
    out = capsys.readouterr().out
    assert "stopping after epoch 1 as asked (--stop-after 1); continue with --resume" in out
    assert load_checkpoint(ck)[1]["epoch"] == 1
    assert [json.loads(ln)["epoch"] for ln in metrics.read_text().splitlines()] == [1]

    assert TOY.main([*argv, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming after epoch 1" in out
    assert [ln.split()[1] for ln in out.splitlines() if ln.startswith("epoch ")] == ["2/3", "3/3"]
    meta = load_checkpoint(ck)[1]
    assert meta["epoch"] == 3 and meta["config"]["paradigm"] == "toy" and meta["config"]["ranks"] == 3
    assert [json.loads(ln)["epoch"] for ln in metrics.read_text().splitlines()] == [1, 2, 3]

    # all done: a further resume trains nothing and says so
    assert TOY.main([*argv, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "the checkpoint has already done 3 of 3 epochs: nothing to train" in out
    assert out.splitlines()[-1].startswith("summary: no epoch trained in this run")


def test_toy_resume_on_another_rank_count_is_refused(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert TOY.main(["--sim", "3", "--epochs", "2", *SMALL, "--checkpoint", ck, "--stop-after", "1"]) == 0
    assert TOY.main(["--sim", "2", "--epochs", "2", *SMALL, "--checkpoint", ck, "--resume"]) == 1
    err = capsys.readouterr().err
    assert "is from a different run" in err and "checkpoint has 3, this run has 2" in err
    assert "Traceback" not in err
    assert load_checkpoint(ck)[1]["epoch"] == 1                     # left as it was


def test_check_world_refusal_is_a_usage_error_at_parse(capsys):
    with pytest.raises(SystemExit) as e:
        TOY.main(["--sim", "3", "--refuse", "3", *SMALL])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: toy refuses 3 ranks (--refuse 3)" in err and len(err.splitlines()) == 1
    assert TOY.main(["--sim", "2", "--refuse", "3", "--epochs", "1", *SMALL]) == 0


def test_check_world_refusal_once_the_world_is_known_is_raised_by_rank_0_only():
    cfg = TOY.parse(["--refuse", "3", "--epochs", "1", *SMALL])       # no --sim: not checked at parse
    assert cfg.train.sim is None
    with pytest.raises(RankError) as e:
        SimCluster(3, timeout=30).run(TOY.run_rank, cfg)
    assert e.value.rank == 0 and isinstance(e.value.exc, UsageError)
    assert str(e.value.exc) == "toy refuses 3 ranks (--refuse 3)"
    # another world size runs; rank 0 returns the result, the others None
    res = SimCluster(2, timeout=30).run(TOY.run_rank, cfg)
    assert res[1] is None and res[0]["toy_epochs"] == 1 and res[0]["comm_agrees"] is True
    assert res[0]["summary"].startswith("summary: ")


@pytest.mark.parametrize("kind, traceback", [("paradigm", False), ("runtime", True)])
def test_an_exception_on_one_rank_ends_the_job_naming_it(kind, traceback, capsys):
    # the other ranks wait in the epoch's allreduce for rank 2: they must be woken, not time out
    rc = TOY.main(["--sim", "3", "--sim-timeout", "60", "--epochs", "3", *SMALL, "--fail-rank", "2",
                   "--fail-epoch", "1", "--fail-kind", kind])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == ("python -m mpisim.toy: error: rank 2 of 3 failed: toy failure on rank 2 "
                                    "in epoch 2")
    assert ("Traceback" in err) is traceback          # a user error is one line; anything else shows where
    assert "blocked" not in err


# ---- the shared options --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Opts:
    shape: tuple = (4, 3)
    name: str = "x"


def test_run_config_is_json_normal_and_leaves_out_what_a_resume_may_change():
    train = TrainOptions(hidden=(5, 2), epochs=7, metrics="m.jsonl", inject_fault=(1, 2, "raise"), sim=4)
    cfg = run_config(train, _Opts(), exclude=("sim",), ranks=4, paradigm="toy")
    assert cfg["hidden"] == [5, 2] and cfg["shape"] == [4, 3]        # tuples come back as lists
    assert cfg == json.loads(json.dumps(cfg))                        # what a checkpoint gives back
    assert not set(RESUMABLE_CHANGES) & set(cfg)
    assert "sim" not in cfg and "epochs" not in cfg and "inject_fault" not in cfg
    assert cfg["ranks"] == 4 and cfg["paradigm"] == "toy" and cfg["name"] == "x" and cfg["lr"] == train.lr
    assert list(cfg) == sorted(cfg)
    # a Namespace too, private names skipped, extras win
    ns = argparse.Namespace(lr=0.5, _hidden_thing=1, resume=True, seed=3)
    assert run_config(ns, seed=9) == {"lr": 0.5, "seed": 9}


@pytest.mark.parametrize("name", PARADIGMS)
def test_train_options_hold_every_shared_option_of_the_parser(name):
    par = importlib.import_module(f"mpisim.{name}").PARADIGM
    args = par.build_parser().parse_args([])
    own = {f.name for f in dataclasses.fields(par.options)}
    shared = set(vars(args)) - own
    cluster = {"sim", "sim_timeout", "network", "inject_fault", "eval"}
    fields = {f.name for f in dataclasses.fields(TrainOptions)} - {"base_lr"}    # derived: --lr before scaling
    if not par.workers:
        fields -= {"per_rank_batch"}                 # only the data-parallel paradigms split a global batch
    if par.unit == "round":
        fields -= {"lr_scaling", "base_batch"}       # the clients choose their own batches
    assert shared == (fields if par.cluster else fields - cluster)
    train = options_from(TrainOptions, args)
    for k in shared:
        assert getattr(train, k) == getattr(args, k), k


def test_options_from_the_allreduce_parser_keep_what_was_given():
    from mpisim import allreduce
    p = allreduce.PARADIGM.build_parser()
    args = p.parse_args(["--hidden", "7,3", "--lr", "0.25", "--sim", "5", "--inject-fault", "1:2:nan"])
    train = options_from(TrainOptions, args)
    assert train.hidden == [7, 3] and train.lr == 0.25 and train.sim == 5 and train.inject_fault == (1, 2, "nan")
    with pytest.raises(dataclasses.FrozenInstanceError):
        train.lr = 1.0


# ---- every paradigm ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PARADIGMS)
def test_every_listed_paradigm_is_named_by_its_module_and_has_help(name, capsys):
    mod = importlib.import_module(f"mpisim.{name}")
    par = mod.PARADIGM
    assert isinstance(par, Paradigm) and par.name == name and par.prog == f"python -m mpisim.{name}"
    assert mod.main == par.main
    with pytest.raises(SystemExit) as e:
        par.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m mpisim.{name}")
    assert par.description in out
    assert par.doc.rsplit("\n\n", 1)[1].strip().splitlines()[0].strip() in out     # the epilog


# ---- bad command lines of the new paradigms ------------------------------------------------------------

TINY = [*SMALL, "--epochs", "2", "--batch-size", "8"]

USAGE = [  # (module, argv, what stderr must say)
    ("localsgd", ["--sync-every", "abc"], "argument --sync-every: expected a number of steps H >= 1, got 'abc'"),
    ("localsgd", ["--sync-every", "0"], "argument --sync-every: expected a number of steps H >= 1, got 0"),
    ("localsgd", ["--sync-every", "1.5"], "expected a number of steps H >= 1, got '1.5'"),
    ("localsgd", ["--post-local", "x"], "argument --post-local: expected a number of epochs >= 0, got 'x'"),
    ("localsgd", ["--post-local", "-1"], "expected a number of epochs >= 0, got -1"),
    ("localsgd", ["--algorithm", "mpi"], "argument --algorithm: invalid choice: 'mpi'"),
    ("localsgd", ["--algorithm", ""], "argument --algorithm: invalid choice: ''"),
    ("easgd", ["--servers", "x"], "argument --servers: expected a number of servers >= 1, got 'x'"),
    ("easgd", ["--servers", "0"], "expected a number of servers >= 1, got 0"),
    ("easgd", ["--servers", "3"], "easgd needs at least 4 ranks (3 server(s) and a worker), got 3"),
    ("easgd", ["--mode", "bsp"], "argument --mode: invalid choice: 'bsp' (choose from 'sync', 'async')"),
    ("easgd", ["--elasticity", "x"], "argument --elasticity: expected a number in (0, 1), got 'x'"),
    ("easgd", ["--elasticity", "0"], "expected a number in (0, 1), got 0"),
    ("easgd", ["--elasticity", "1"], "expected a number in (0, 1), got 1"),
    ("easgd", ["--elasticity", "nan"], "expected a number in (0, 1), got nan"),
    ("easgd", ["--elasticity", "-0.5"], "expected a number in (0, 1), got -0.5"),
    ("easgd", ["--period", "0"], "argument --period: expected a number of steps tau >= 1, got 0"),
    ("easgd", ["--period", "two"], "expected a number of steps tau >= 1, got 'two'"),
    ("gossip", ["--topology", "star"], "argument --topology: invalid choice: 'star'"),
    ("gossip", ["--topology", "torus"], "--topology torus needs an R x C grid with R, C >= 2"),
    ("gossip", ["--batchnorm"], "--batchnorm is not supported by gossip"),
    *[(m, argv, msg) for m in ("localsgd", "easgd", "gossip") for argv, msg in [
        (["--stop-after", "1", "--resume"], "--resume needs --checkpoint DIR"),
        (["--stop-after", "0"], "argument --stop-after: expected a positive integer, got 0"),
        (["--inject-fault", "1:x:raise"], "argument --inject-fault: expected RANK:STEP:KIND"),
        (["--inject-fault", "1:1:kill"], "--inject-fault ...:kill kills a process: run under mpiexec"),
        (["--network", "ethernet"], "argument --network: unknown preset 'ethernet'"),
        (["--sim-timeout", "nan"], "--sim-timeout must be > 0, got nan"),
    ]],
]


@pytest.mark.parametrize("module, argv, message", USAGE)
def test_bad_options_of_the_new_paradigms_are_one_line_usage_errors(module, argv, message, capsys):
    main = importlib.import_module(f"mpisim.{module}").main
    with pytest.raises(SystemExit) as e:
        main(["--sim", "3", *TINY, *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("module", ["localsgd", "easgd", "gossip"])
def test_output_paths_that_cannot_be_written_are_usage_errors(module, tmp_path, capsys):
    main = importlib.import_module(f"mpisim.{module}").main
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for argv, message in [(["--checkpoint", a_file], f"--checkpoint {a_file} is a file; give a directory"),
                          (["--checkpoint", a_file / "sub"], f"{a_file} is a file, not a directory"),
                          (["--metrics", a_file / "m.jsonl"], f"{a_file} is a file, not a directory"),
                          (["--metrics", tmp_path], f"--metrics {tmp_path} is a directory; give a file name")]:
        with pytest.raises(SystemExit) as e:
            main(["--sim", "3", *TINY, *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_metrics_in_a_read_only_folder_is_a_usage_error(tmp_path, capsys):
    from mpisim import gossip
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(SystemExit) as e:
            gossip.main(["--sim", "3", *TINY, "--metrics", ro / "sub" / "m.jsonl"])
        assert e.value.code == 2 and f"cannot write in {ro}" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("module, fault, message", [
    ("localsgd", "1:2:nan", "rank 1 of 3 failed: loss became nan at epoch 1, step 2 on rank 1"),
    ("easgd", "2:3:nan", "rank 2 of 3 failed: loss became nan at epoch 1, step 3 on rank 2"),
    ("gossip", "0:1:nan", "rank 0 of 3 failed: loss became nan at epoch 1, step 1 on rank 0"),
    ("localsgd", "2:3:raise", "rank 2 of 3 failed: fault injected on rank 2 at step 3 (--inject-fault)"),
    ("easgd", "1:4:raise", "rank 1 of 3 failed: fault injected on rank 1 at step 4 (--inject-fault)"),
    ("gossip", "2:7:raise", "rank 2 of 3 failed: fault injected on rank 2 at step 7 (--inject-fault)"),
])
def test_an_injected_fault_ends_the_run_naming_the_rank(module, fault, message, capsys):
    main = importlib.import_module(f"mpisim.{module}").main
    assert main(["--sim", "3", *TINY, "--inject-fault", fault]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"python -m mpisim.{module}: error: {message}")
    if fault.endswith("nan"):
        assert len(err.splitlines()) == 1          # a diverged loss is a user error: one line


@pytest.mark.parametrize("module", ["localsgd", "easgd", "gossip"])
def test_resume_on_another_rank_count_is_refused(module, tmp_path, capsys):
    main, ck = importlib.import_module(f"mpisim.{module}").main, tmp_path / "ck"
    assert main(["--sim", "4", *TINY, "--stop-after", "1", "--checkpoint", ck]) == 0
    assert main(["--sim", "3", *TINY, "--resume", "--checkpoint", ck]) == 1
    err = capsys.readouterr().err
    assert f"python -m mpisim.{module}: error: rank 0 of 3 failed: " in err
    assert "is from a different run" in err and "checkpoint has 4, this run has 3" in err
    assert len(err.splitlines()) == 2 and "Traceback" not in err


def test_a_rank_count_the_default_cannot_run_is_a_usage_error_said_once(capsys):
    """Without --sim and mpiexec easgd runs on 4 simulated ranks: 4 servers need 5, said by rank 0 alone."""
    from mpisim import easgd
    assert easgd.main([*TINY, "--servers", "4"]) == 2
    err = capsys.readouterr().err
    assert err == ("python -m mpisim.easgd: error: easgd needs at least 5 ranks (4 server(s) and a worker), got 4: "
                   "mpiexec -n 5 python -m mpisim.easgd or --sim 5\n")


def _python_m(*argv, timeout=100):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", *map(str, argv)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv, code, message", [
    (["mpisim.easgd", "--sim", "2", "--servers", "2"], 2, "easgd needs at least 3 ranks (2 server(s) and a worker)"),
    (["mpisim.localsgd", "--sim", "3", "--sync-every", "-4"], 2, "expected a number of steps H >= 1, got -4"),
    (["mpisim.gossip", "--sim", "3", "--inject-fault", "1:2:nan"], 1,
     "error: rank 1 of 3 failed: loss became nan at epoch 1, step 2 on rank 1"),
])
def test_the_commands_as_a_user_runs_them(argv, code, message):
    res = _python_m(*argv, *TINY)
    assert res.returncode == code, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.splitlines()) <= 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv, message", [
    (["-m", "mpisim.gossip", "--topology", "torus"], "--topology torus needs an R x C grid with R, C >= 2"),
    (["-m", "mpisim.easgd", "--servers", "2"], "easgd needs at least 3 ranks (2 server(s) and a worker), got 2"),
])
def test_a_rank_count_mpiexec_cannot_run_is_said_once_with_exit_2(argv, message):
    res = run_mpi(2, *argv, *TINY, timeout=100)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.count(message) == 1 and "Traceback" not in res.stderr


# ---- bad inputs that once misbehaved ----------------------------------------------------------------

@pytest.mark.parametrize("module, fault", [("localsgd", "7:1:raise"), ("easgd", "0:1:raise")])
def test_an_injected_fault_that_can_never_fire_is_refused(module, fault, capsys):
    main = importlib.import_module(f"mpisim.{module}").main
    try:
        rc = main(["--sim", "3", *TINY, "--inject-fault", fault])
    except SystemExit as e:
        rc = e.code
    assert rc == 2                        # a usage error: the asked-for fault would never happen
    assert "--inject-fault names rank" in capsys.readouterr().err


def test_resume_on_another_rank_count_names_the_option_that_sets_it(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert TOY.main(["--sim", "3", "--epochs", "2", *SMALL, "--checkpoint", ck, "--stop-after", "1"]) == 0
    assert TOY.main(["--sim", "2", "--epochs", "2", *SMALL, "--checkpoint", ck, "--resume"]) == 1
    err = capsys.readouterr().err
    assert "--ranks" not in err and "the rank count (--sim N, or mpiexec -n N): checkpoint has 3, this run has 2" in err


@pytest.mark.timeout(120)
def test_a_usage_error_under_mpiexec_is_said_once():
    res = run_mpi(2, "-m", "mpisim.localsgd", *TINY, "--sync-every", "0", timeout=100)
    assert res.returncode == 2
    assert res.stderr.count("expected a number of steps H >= 1, got 0") == 1


@pytest.mark.parametrize("module, fault, what", [("localsgd", "1:1000:raise", "steps"), ("fedavg", "1:50:raise", "rounds")])
def test_an_injected_fault_past_the_end_of_the_run_is_refused(module, fault, what, capsys):
    main = importlib.import_module(f"mpisim.{module}").main
    extra = ["--rounds", "2", "--clients", "4", "--fraction", "0.5"] if module == "fedavg" else ["--epochs", "1"]
    with pytest.raises(SystemExit) as e:
        main(["--sim", "2", "--quiet", "--hidden", "8", *extra, "--inject-fault", fault])
    assert e.value.code == 2 and f"--inject-fault {fault} can never fire" in capsys.readouterr().err



@pytest.mark.parametrize("module, n, argv", [
    ("localsgd", 3, ["--sync-every", "3", "--optimizer", "adam"]),
    ("gossip", 4, ["--topology", "ring", "--optimizer", "adam"]),
    ("easgd", 5, ["--servers", "2", "--period", "2", "--optimizer", "momentum", "--lr", "0.05"]),
])
def test_ranks_with_models_of_their_own_resume_exactly(module, n, argv, tmp_path):
    """Every rank's parameters and optimizer state are checkpointed: stopped and resumed equals
    uninterrupted, bit for bit, on every rank (sync paradigms)."""
    from mpisim.train import load_checkpoint
    main = importlib.import_module(f"mpisim.{module}").main
    common = ["--sim", n, "--quiet", "--hidden", "8", "--epochs", "3", *argv]
    assert main([*map(str, common), "--checkpoint", str(tmp_path / "a")]) == 0
    assert main([*map(str, common), "--checkpoint", str(tmp_path / "b"), "--stop-after", "1"]) == 0
    assert main([*map(str, common), "--checkpoint", str(tmp_path / "b"), "--resume"]) == 0
    a, b = load_checkpoint(tmp_path / "a")[0], load_checkpoint(tmp_path / "b")[0]
    assert sorted(a) == sorted(b) and {f"rank{r}.params" for r in range(n)} <= set(a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    if module != "localsgd":                       # the ranks really do hold different models
        assert not np.array_equal(a["rank0.params"], a[f"rank{n - 1}.params"])
