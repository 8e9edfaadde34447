"""--precision fp32|fp16|bf16 in the centralized trainer: accuracy next to fp32, the loss scaler's figures in
the records, a gradient overflow skips its step, a real divergence still ends the run, fp16 checkpoints
resume exactly (the scaler's state included), and the usage errors."""
import json
import re

import numpy as np
import pytest

import mpisim.nn.model as model_mod
from mpisim.centralized import main, train_centralized
from mpisim.comm import RankError
from mpisim.nn import Adam
from mpisim.train import load_checkpoint

DIGITS = ["--epochs", "5", "--quiet"]


def run(*argv):
    return main([str(a) for a in argv])


@pytest.fixture
def inject(monkeypatch):
    """``inject(step, value)``: the gradient gets ``value`` in one entry after backward number ``step``
    (counted from 1 from now on), as an fp16 overflow leaves it; returns the log of (step, applied) pairs,
    applied: whether the optimizer stepped after that backward."""
    state = {"calls": 0, "at": set(), "value": np.inf, "log": []}
    backward, step = model_mod.MLP.backward, Adam.step

    def spy_backward(self, dlogits, hook=None):
        backward(self, dlogits, hook)
        state["calls"] += 1
        state["log"].append([state["calls"], False])
        if state["calls"] in state["at"] or "always" in state["at"]:
            self.grads[len(self.grads) // 2] = state["value"]

    def spy_step(self):
        state["log"][-1][1] = True
        step(self)
    monkeypatch.setattr(model_mod.MLP, "backward", spy_backward)
    monkeypatch.setattr(Adam, "step", spy_step)

    def arm(at, value=np.inf):
        state.update(calls=0, at=set(at), value=value, log=[])
        return state["log"]
    return arm


def test_fp16_and_bf16_reach_fp32_accuracy_on_digits():
    """Five epochs on digits (360 test examples): each half format within one point of fp32."""
    acc, recs = {}, {}
    for p in ("fp32", "fp16", "bf16"):
        out = train_centralized([*DIGITS, "--precision", p])
        acc[p], recs[p] = out["test_acc"], out
    print("test accuracy after 5 epochs:", {p: f"{100 * a:.2f}%" for p, a in acc.items()})
    assert acc["fp32"] > 0.9
    for p in ("fp16", "bf16"):
        assert abs(acc[p] - acc["fp32"]) <= 0.01 + 1e-9, acc
    assert recs["fp16"]["loss_scale"] == 2.0**16 and recs["fp16"]["skipped_steps"] == 0   # digits never overflow
    assert "loss_scale" not in recs["bf16"] and "loss_scale" not in recs["fp32"]          # bf16 needs no scaling
    k = recs["bf16"]["activations"]
    assert k["measured"] == k["bytes"]["fp32"] and k["bytes"]["bf16"] < k["bytes"]["fp32"]
    assert "activations" not in recs["fp32"]


def test_fp16_run_prints_the_scale_and_the_activation_memory_and_records_them(tmp_path, capsys):
    metrics = tmp_path / "m.jsonl"
    assert run("--epochs", "2", "--precision", "fp16", "--metrics", metrics) == 0
    out = capsys.readouterr().out
    assert "fp16 mixed precision (emulated" in out and "dynamic loss scaling" in out
    assert out.count("fp16 loss scale 65536; 0 steps skipped so far") == 2
    assert len(re.findall(r"activations kept for backward, one step of batch 64: 64·\(64 \+ 128 \+ 64\)", out)) == 1
    assert "= 68,096 B in fp32, 35,328 B in fp16 (2 bytes a value); measured here 68,096 B" in out
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [(r["loss_scale"], r["skipped_steps"]) for r in records] == [(65536.0, 0), (65536.0, 0)]


def test_a_step_whose_gradient_overflowed_is_skipped_not_applied(inject):
    log = inject(at={3, 4})
    out = train_centralized(["--epochs", "1", "--quiet", "--precision", "fp16"])
    steps = len(log)
    assert steps == 23                                           # 1437 examples in batches of 64
    assert [s for s, applied in log if not applied] == [3, 4]    # exactly the two, every other step applied
    assert out["skipped_steps"] == 2 and out["loss_scale"] == 2.0**14
    assert np.isfinite(out["model"].params).all() and out["test_acc"] > 0.5


def test_without_loss_scaling_an_inf_in_the_gradient_is_applied(inject):
    """The control: bf16 has no scaler, so nothing stands between the inf and the parameters."""
    log = inject(at={3})
    with pytest.raises(RankError, match="loss became nan"):
        train_centralized(["--epochs", "1", "--quiet", "--precision", "bf16"])
    assert log[2] == [3, True]


def test_a_gradient_that_stays_non_finite_ends_the_run_with_the_usual_error(inject, capsys):
    inject(at={"always"}, value=np.nan)
    assert run("--epochs", "3", "--quiet", "--precision", "fp16") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(r"error: .*non-finite gradient at epoch 2, step 18 \(lr 0\.001\) even with the fp16 loss "
                     r"scale down to 2\.98\d*e-08: lower --lr$", err), err       # the 41st skip: 23 + 18


def test_a_diverging_fp16_run_still_stops_with_the_loss_error(capsys):
    assert run("--epochs", "3", "--quiet", "--precision", "fp16", "--optimizer", "sgd", "--lr", "1000") == 1
    err = capsys.readouterr().err
    assert re.search(r"loss became (nan|inf) at epoch 1, step \d+ \(lr 1000\) in fp16, whose largest value is "
                     r"65504: lower --lr", err), err


def test_an_fp16_checkpoint_resumes_exactly_with_its_loss_scaler(tmp_path, inject):
    recipe = ["--epochs", "2", "--quiet", "--precision", "fp16", "--hidden", "32", "--dropout", "0.1"]
    a, b = tmp_path / "a", tmp_path / "b"
    inject(at={5})                                               # the scale moves to 2^15 in epoch 1
    assert run(*recipe, "--checkpoint", a) == 0
    inject(at={5})
    assert run(*recipe, "--checkpoint", b, "--stop-after", "1") == 0
    assert float(load_checkpoint(b)[0]["scaler.scale"]) == 2.0**15
    inject(at=set())
    assert run(*recipe, "--checkpoint", b, "--resume") == 0
    arr_a, (arr_b, meta_b) = load_checkpoint(a)[0], load_checkpoint(b)
    assert {"scaler.scale", "scaler.clean", "scaler.skipped"} <= set(arr_a) and set(arr_a) == set(arr_b)
    for k in arr_a:
        np.testing.assert_array_equal(arr_a[k], arr_b[k], err_msg=k)
    assert [r["skipped_steps"] for r in meta_b["history"]] == [1, 1]
    assert int(arr_b["scaler.clean"]) == 2 * 23 - 5


def test_an_fp16_checkpoint_does_not_resume_in_another_precision(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert run("--epochs", "1", "--quiet", "--precision", "fp16", "--checkpoint", ck) == 0
    assert run("--epochs", "2", "--quiet", "--precision", "bf16", "--checkpoint", ck, "--resume") == 1
    assert "--precision: checkpoint has 'fp16', this run has 'bf16'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp16", "--dtype", "float64"], "--precision fp16 keeps float32 master weights .* needs --dtype "
                                                    "float32 .*, not float64"),
    (["--precision", "bf16", "--dtype", "float64"], "needs --dtype float32"),
    (["--precision", "fp8"], r"argument --precision: invalid choice: 'fp8' \(choose from 'fp32', 'fp16', 'bf16'\)"),
])
def test_bad_precision_options_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "usage:" in err and re.search(message, err), err


def test_help_says_the_cpu_path_is_an_emulation(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--precision {fp32,fp16,bf16}" in text and "On the CPU an EMULATION" in text
