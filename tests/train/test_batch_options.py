"""--per-rank-batch, --lr-scaling/--base-batch and --eval distributed on the paradigms."""
import json
import subprocess
import sys

import numpy as np
import pytest

from mpisim import allreduce, centralized, fedavg, gossip, paramserver, pipeline
from mpisim.train.options import scaled_lr
from tests.paradigms.helpers import SMALL, parse, run_sim

DIGITS = ["--dataset", "digits", "--epochs", "2", "--quiet"]


def _exit(module, *argv):
    r = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=120)
    return r.returncode, r.stderr


def test_per_rank_batch_is_the_global_batch_times_the_workers():
    assert parse(allreduce, ["--sim", "4", "--per-rank-batch", "16"]).train.batch_size == 64
    assert parse(paramserver, ["--sim", "5", "--servers", "2", "--per-rank-batch", "10"]).train.batch_size == 30
    a = run_sim(allreduce, 3, [*SMALL, "--epochs", "2", "--per-rank-batch", "4"])
    b = run_sim(allreduce, 3, [*SMALL, "--epochs", "2", "--batch-size", "12"])
    assert np.array_equal(a["model"].params, b["model"].params)


def test_per_rank_batch_resolves_at_run_time_for_the_world_size():
    """Without --sim (as under mpiexec) the global batch is set once the ranks are known."""
    from mpisim.comm import run_simulated
    cfg = parse(gossip, [*SMALL, "--epochs", "1", "--per-rank-batch", "5"])
    assert cfg.train.batch_size == 64          # the parser's default until the world is known
    out = run_simulated(4, gossip.PARADIGM.run_rank, cfg)[0]
    assert out["comm_agrees"]
    mine = run_sim(gossip, 4, [*SMALL, "--epochs", "1", "--batch-size", "20"])
    assert np.array_equal(out["model"].params, mine["model"].params)


@pytest.mark.parametrize("argv, why", [
    (["mpisim.allreduce", "--sim", "2", "--per-rank-batch", "8", "--batch-size", "16"], "drop --batch-size"),
    (["mpisim.allreduce", "--sim", "2", "--per-rank-batch", "0"], "positive integer"),
    (["mpisim.allreduce", "--sim", "2", "--per-rank-batch", "8", "--batch-si", "16"], "drop --batch-size"),
    (["mpisim.allreduce", "--sim", "2", "--per-rank-batch", "8", "--batch-s=16"], "drop --batch-size"),
    (["mpisim.allreduce", "--sim", "1", "--per-rank-batch", "1", "--batchnorm"], "global batch of at least 2"),
    (["mpisim.allreduce", "--sim", "2", "--per-rank-batch", "1", "--batchnorm"], "fewer than 2 rows per rank"),
    (["mpisim.allreduce", "--sim", "2", "--batch-size", "3", "--batchnorm"], "or --sync-bn"),
    (["mpisim.centralized", "--per-rank-batch", "8"], "unrecognized arguments"),
    (["mpisim.fedavg", "--sim", "3", "--per-rank-batch", "8"], "unrecognized arguments"),
    (["mpisim.allreduce", "--sim", "2", "--base-batch", "32"], "needs --lr-scaling"),
    (["mpisim.allreduce", "--sim", "2", "--lr-scaling", "cubic"], "invalid choice"),
    (["mpisim.allreduce", "--sim", "2", "--eval", "everyone"], "invalid choice"),
])
def test_bad_batch_options_are_usage_errors(argv, why):
    code, err = _exit(*argv)
    assert code == 2 and why in err and "Traceback" not in err


def test_a_checkpoint_from_before_lr_scaling_resumes(tmp_path):
    """Checkpoints written before --lr-scaling existed have no lr_scaling in their run options: unscaled."""
    import json as js
    from mpisim.train.checkpoint import load_checkpoint, save_checkpoint
    ck = tmp_path / "ck"
    centralized.train_centralized([*SMALL, "--epochs", "1", "--checkpoint", str(ck)])
    arrays, meta = load_checkpoint(str(ck))
    for k in ("lr_scaling", "base_batch", "base_lr", "per_rank_batch"):
        meta["config"].pop(k)
    save_checkpoint(str(ck), arrays, meta)
    out = centralized.train_centralized([*SMALL, "--epochs", "2", "--checkpoint", str(ck), "--resume"])
    assert out["epoch"] == 2 and js.dumps(out["test_acc"])


def test_lr_scaling():
    assert scaled_lr(0.1, "none", 1024, 64) == 0.1
    assert scaled_lr(0.1, "linear", 1024, 64) == pytest.approx(1.6)
    assert scaled_lr(0.1, "sqrt", 1024, 64) == pytest.approx(0.4)
    cfg = parse(centralized, ["--batch-size", "256", "--lr-scaling", "linear", "--lr", "0.001"])
    assert cfg.train.base_batch == 64                     # the default batch size
    # resolving is idempotent: the command line's rate is kept in base_lr
    again = centralized.PARADIGM.resolve(centralized.PARADIGM.resolve(cfg.train, cfg.opts, 1), cfg.opts, 1)
    assert again.lr == pytest.approx(0.004) and again.base_lr == 0.001
    # the scaled run is the run with the scaled rate, bit for bit
    a = centralized.train_centralized([*SMALL, "--epochs", "2", "--batch-size", "16", "--optimizer", "sgd",
                                       "--lr", "0.05", "--lr-scaling", "linear", "--base-batch", "4"])
    b = centralized.train_centralized([*SMALL, "--epochs", "2", "--batch-size", "16", "--optimizer", "sgd",
                                       "--lr", "0.2"])
    assert np.array_equal(a["model"].params, b["model"].params)


def test_lr_scaling_with_per_rank_batch_on_simulated_ranks():
    cfg = parse(allreduce, ["--sim", "4", "--per-rank-batch", "32", "--lr-scaling", "sqrt", "--base-batch", "32",
                            "--lr", "0.01"])
    assert cfg.train.batch_size == 128 and cfg.train.lr == pytest.approx(0.02)


def test_a_scaled_run_says_its_rate():
    r = subprocess.run([sys.executable, "-m", "mpisim.allreduce", "--sim", "2", "--epochs", "1", "--per-rank-batch",
                        "32", "--lr-scaling", "linear", "--base-batch", "16"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "global batch 64 = 32 per worker x 2 workers" in r.stdout
    assert "learning rate 0.004 = 0.001 x 64/16" in r.stdout


@pytest.mark.parametrize("module, n, extra", [
    (allreduce, 3, ["--batchnorm", "--val-fraction", "0.2"]),     # replicas: only BatchNorm's statistics travel
    (paramserver, 3, ["--mode", "async"]),                        # rank 0's model is broadcast first
    (fedavg, 3, []),
    (pipeline, 3, []),
])
def test_distributed_evaluation_equals_rank_0s(module, n, extra, tmp_path):
    unit = ["--rounds", "2", "--dataset", "digits", "--quiet"] if module is fedavg else DIGITS
    recs = {}
    for mode in ("rank0", "distributed"):
        path = tmp_path / f"{mode}.jsonl"
        out = run_sim(module, n, [*unit, *extra, "--eval", mode, "--metrics", str(path)])
        assert out["comm_agrees"] in (True, None)
        recs[mode] = [json.loads(line) for line in open(path)]
    for a, b in zip(recs["rank0"], recs["distributed"]):
        assert a["test_acc"] == b["test_acc"]
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-6)
        assert a.get("val_acc") == b.get("val_acc")
        assert b["eval_s"] > 0
    assert len(recs["distributed"]) == 2


def test_distributed_evaluation_adds_control_bytes_only(tmp_path):
    a = run_sim(allreduce, 3, [*DIGITS])
    b = run_sim(allreduce, 3, [*DIGITS, "--eval", "distributed"])
    assert a["payload_bytes"] == b["payload_bytes"] and b["comm_agrees"]
    assert np.array_equal(a["model"].params, b["model"].params)


def test_warmup_under_lr_scaling_starts_from_the_unscaled_rate():
    from mpisim.train.loop import build_schedule
    cfg = parse(allreduce, ["--sim", "4", "--batch-size", "1024", "--lr", "0.01", "--lr-scaling", "linear",
                            "--base-batch", "64", "--warmup", "2", "--epochs", "4"])
    lr_at = build_schedule(cfg.train)
    assert lr_at(0) == pytest.approx(0.01) and lr_at(1) == pytest.approx(0.01 + (0.16 - 0.01) / 2)
    assert lr_at(2) == pytest.approx(0.16) and lr_at(3.5) == pytest.approx(0.16)
    plain = build_schedule(parse(allreduce, ["--sim", "4", "--lr", "0.01", "--warmup", "2"]).train)
    assert plain(0) == pytest.approx(0.001)                 # without scaling: from a tenth, as before
    for batch in ("64", "32"):                              # at or below the base batch there is nothing to warm
        flat = build_schedule(parse(allreduce, ["--sim", "4", "--batch-size", batch, "--lr", "0.01", "--lr-scaling",
                                                "linear", "--base-batch", "64", "--warmup", "2"]).train)
        assert flat(0) == flat(1) == flat(3)


@pytest.mark.parametrize("data, scoring", [
    (["--dataset", "digits"], [True, False, False]),                      # 360 test rows: one batch, rank 0's
    (["--dataset", "synthetic", "--synthetic-size", "10000"], [True, True, False]),   # 2,000 rows: 2 batches
])
def test_distributed_shares_are_whole_evaluation_batches(data, scoring, tmp_path):
    """Which ranks score: those with a whole 1,024-row batch of the test set (the first ranks take the extra)."""
    from mpisim.trace import events_of
    path = tmp_path / "t.json"
    run_sim(allreduce, 3, [*data, "--epochs", "1", "--quiet", "--eval", "distributed", "--trace", str(path)])
    ranks = events_of(json.loads(path.read_text()))
    assert [any(name == "evaluate" for _, name, *_ in spans) for spans in ranks] == scoring
