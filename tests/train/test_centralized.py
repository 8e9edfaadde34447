"""The centralized trainer: options, metrics, plot, checkpoints and exact resume."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mpisim.centralized import main
import mpisim.train.checkpoint as ckmod
from mpisim.train import CheckpointError, load_checkpoint, save_checkpoint
from mpisim.train.checkpoint import checkpoint_path

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--epochs", "3", "--hidden", "32", "--quiet"]


def run(*argv):
    return main([str(a) for a in argv])


def test_default_run_on_digits_learns(tmp_path, capsys):
    """The README's main job: the defaults on digits reach the issue's 95% test accuracy."""
    metrics = tmp_path / "m.jsonl"
    assert run("--metrics", metrics) == 0
    out = capsys.readouterr().out
    assert [ln.split("/")[0] for ln in out.splitlines() if ln.startswith("epoch ")] == [f"epoch {k:>2}" for k in range(1, 11)]
    assert "digits: 1437 train / 360 test" in out and "summary: test accuracy" in out
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 11))
    for r in records:
        assert {"epoch", "loss", "train_acc", "test_acc", "seconds", "lr", "test_loss"} <= set(r)
    assert records[-1]["test_acc"] > 0.95
    assert records[-1]["loss"] < records[0]["loss"]


def test_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra) not installed")
    png = tmp_path / "curves.png"
    assert run(*FAST, "--plot", png, "--val-fraction", "0.1") == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


RECIPE = ["--hidden", "24,16", "--dropout", "0.2", "--batchnorm", "--optimizer", "adamw", "--weight-decay", "1e-4",
          "--schedule", "step", "--step-size", "1", "--gamma", "0.7", "--warmup", "1", "--batch-size", "50",
          "--seed", "3", "--quiet"]


def test_stopped_and_resumed_equals_uninterrupted(tmp_path):
    """Stop after epoch 2 of 4, resume: the same parameters, buffers, optimizer state and metrics."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(*RECIPE, "--epochs", 4, "--checkpoint", a, "--metrics", tmp_path / "a.jsonl") == 0
    assert run(*RECIPE, "--epochs", 4, "--checkpoint", b, "--stop-after", 2, "--metrics", tmp_path / "b.jsonl") == 0
    assert load_checkpoint(b)[1]["epoch"] == 2
    assert run(*RECIPE, "--epochs", 4, "--checkpoint", b, "--resume", "--metrics", tmp_path / "b.jsonl") == 0
    (arr_a, meta_a), (arr_b, meta_b) = load_checkpoint(a), load_checkpoint(b)
    assert meta_a["epoch"] == meta_b["epoch"] == 4
    assert set(arr_a) == set(arr_b) and len(arr_a) >= 5
    for k in arr_a:
        np.testing.assert_array_equal(arr_a[k], arr_b[k], err_msg=k)

    def strip(path):
        return [{k: v for k, v in json.loads(s).items() if k not in ("seconds", "samples_per_s", "eval_s")}
                for s in path.read_text().splitlines()]
    assert strip(tmp_path / "a.jsonl") == strip(tmp_path / "b.jsonl")


def test_resume_refuses_corrupt_truncated_or_foreign_checkpoints(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert run(*FAST, "--checkpoint", ck) == 0
    good = checkpoint_path(ck).read_bytes()

    checkpoint_path(ck).write_bytes(good[:-100])
    assert run(*FAST, "--checkpoint", ck, "--resume") == 1
    assert "corrupt" in capsys.readouterr().err

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    checkpoint_path(ck).write_bytes(bytes(flipped))
    assert run(*FAST, "--checkpoint", ck, "--resume") == 1
    assert "checksum" in capsys.readouterr().err

    checkpoint_path(ck).write_bytes(b"not a checkpoint at all")
    assert run(*FAST, "--checkpoint", ck, "--resume") == 1
    assert "not an mpisim checkpoint" in capsys.readouterr().err

    checkpoint_path(ck).write_bytes(good)
    assert run("--epochs", "3", "--hidden", "32", "--quiet", "--lr", "0.01", "--checkpoint", ck, "--resume") == 1
    err = capsys.readouterr().err
    assert "different run" in err and "--lr: checkpoint has 0.001, this run has 0.01" in err

    assert run(*FAST, "--checkpoint", tmp_path / "empty", "--resume") == 1
    assert "no checkpoint to resume" in capsys.readouterr().err

    assert run(*FAST, "--checkpoint", ck) == 1          # would overwrite a run: refuse
    assert "pass --resume" in capsys.readouterr().err
    assert checkpoint_path(ck).read_bytes() == good      # and nothing was lost


def test_resume_with_more_epochs_continues(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert run(*FAST, "--checkpoint", ck) == 0
    assert run("--epochs", "5", "--hidden", "32", "--checkpoint", ck, "--resume") == 0
    out = capsys.readouterr().out
    assert "resuming after epoch 3" in out and "epoch 4/5" in out and "epoch 1/5" not in out
    assert load_checkpoint(ck)[1]["epoch"] == 5
    assert run("--epochs", "7", "--hidden", "32", "--checkpoint", ck, "--resume", "--stop-after", "2") == 0
    assert "stopping after epoch 5" in capsys.readouterr().out and "epoch 6/7" not in out
    assert load_checkpoint(ck)[1]["epoch"] == 5            # nothing more was trained


def test_checkpoint_file_round_trip(tmp_path):
    arrays = {"x": np.arange(5, dtype=np.float32), "y": np.zeros((2, 3))}
    save_checkpoint(tmp_path, arrays, {"epoch": 1, "note": "é"})
    got, meta = load_checkpoint(tmp_path)
    assert meta == {"epoch": 1, "note": "é"}
    np.testing.assert_array_equal(got["x"], arrays["x"])
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.mpisim"]      # no temporary left
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(checkpoint_path(tmp_path).stat().st_mode) == 0o666 & ~mask
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_save_keeps_the_old_checkpoint_and_leaves_no_temporary(tmp_path, monkeypatch, failing):
    save_checkpoint(tmp_path, {"x": np.zeros(3)}, {"epoch": 1})
    before = checkpoint_path(tmp_path).read_bytes()

    def boom(*a, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ckmod.os, failing, boom)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, {"x": np.ones(1000)}, {"epoch": 2})
    monkeypatch.undo()
    assert checkpoint_path(tmp_path).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.mpisim"]
    assert load_checkpoint(tmp_path)[1] == {"epoch": 1}


def test_cosine_resume_must_keep_the_number_of_epochs(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert run(*FAST, "--schedule", "cosine", "--checkpoint", ck, "--stop-after", "1") == 0
    assert run("--epochs", "6", "--hidden", "32", "--quiet", "--schedule", "cosine", "--checkpoint", ck,
               "--resume") == 1
    assert "resume it with --epochs 3" in capsys.readouterr().err
    assert run(*FAST, "--schedule", "cosine", "--checkpoint", ck, "--resume") == 0


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "0"], "expected a positive integer"),
    (["--activation", "swish"], "invalid choice"),
    (["--hidden", "64,x"], "comma-separated integers"),
    (["--lr", "-1"], "finite number >= 0"),
    (["--dropout", "1"], r"in \[0, 1\)"),
    (["--resume"], "--resume needs --checkpoint"),
    (["--dataset", "imagenet"], "invalid choice"),
    (["--data-dir", "/tmp"], "for --dataset mnist"),
    (["--metrics", __file__ + "/m.jsonl"], "is a file, not a directory"),
    (["--plot", "curves.pdf"], "ending in .png"),
    (["--seed", "-1"], "integer >= 0"),
    (["--optimizer", "nesterov", "--momentum", "0"], "nesterov needs --momentum > 0"),
    (["--gamma", "1e200"], r"--gamma must be in \(0, 1\]"),
    (["--hidden", "0"], "must be positive"),
    (["--checkpoint", __file__], "is a file; give a directory"),
])
def test_bad_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and __import__("re").search(message, err), err


def test_missing_mnist_is_a_clear_error(tmp_path, capsys):
    assert run("--dataset", "mnist", "--data-dir", tmp_path, "--quiet") == 1
    err = capsys.readouterr().err
    assert "error:" in err and str(tmp_path) in err


def test_float64_logistic_regression_runs(capsys):
    assert run("--hidden", "none", "--dtype", "float64", "--epochs", "2", "--optimizer", "sgd", "--lr", "0.1") == 0
    assert "logistic regression" in capsys.readouterr().out


def test_help_and_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "mpisim.centralized", "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0
    for opt in ("--dataset", "--hidden", "--optimizer", "--schedule", "--metrics", "--checkpoint", "--resume",
                "--plot", "--batch-size", "--seed"):
        assert opt in r.stdout
