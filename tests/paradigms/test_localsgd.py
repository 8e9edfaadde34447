"""mpisim.localsgd: H local steps, then the parameters averaged; H = 1 with plain SGD is allreduce SGD."""
import json

import numpy as np
import pytest

from mpisim import allreduce as ar
from mpisim import localsgd as ls
from mpisim.comm.costs import allreduce_traffic

from .helpers import SMALL, assert_close, run_sim

# 40 training examples in batches of 12: 4 steps per epoch, the last batch of 4 split unequally
SGD = ["--optimizer", "sgd", "--lr", "0.1", "--epochs", "2", "--batch-size", "12"]


@pytest.mark.parametrize("n", [1, 3, 4])
def test_averaging_every_step_with_plain_sgd_is_allreduce_sgd(n):
    want = run_sim(ar, n, [*SMALL, *SGD])["model"].params
    got = run_sim(ls, n, [*SMALL, *SGD, "--sync-every", "1", "--algorithm", "ring"])
    assert got["steps"] == 8 and got["averages"] == 8
    assert_close(got["model"].params, want)


def test_averaging_less_often_is_another_computation():
    every = run_sim(ls, 3, [*SMALL, *SGD, "--sync-every", "1"])["model"].params
    rarely = run_sim(ls, 3, [*SMALL, *SGD, "--sync-every", "3"])["model"].params
    assert not np.allclose(every, rarely, rtol=1e-6)      # replicas drifted between the averages


@pytest.mark.parametrize("argv, averages", [(["--sync-every", "3"], 4),                     # 2 per epoch
                                            (["--sync-every", "3", "--post-local", "1"], 6),  # 4, then 2
                                            (["--sync-every", "100"], 2)])                  # epoch ends only
def test_averages_counted_and_bytes_agree_with_the_formula(argv, averages, tmp_path):
    metrics = tmp_path / "m.jsonl"
    got = run_sim(ls, 4, [*SMALL, *SGD, *argv, "--algorithm", "tree", "--metrics", metrics])
    assert got["averages"] == averages and got["comm_agrees"]
    P = got["model"].num_params
    msgs, nbytes = allreduce_traffic("tree", P, 8, 4)
    total = sum(json.loads(line)["payload_bytes"] for line in metrics.read_text().splitlines())
    assert total == averages * nbytes
    assert "A·2(N-1)·b·P" in got["comm_table"] and "matches the formula" in got["summary"]


def test_defaults_reach_90_percent_on_digits(tmp_path):
    metrics = tmp_path / "m.jsonl"
    assert ls.main(["--sim", "4", "--quiet", "--metrics", str(metrics)]) == 0
    last = json.loads(metrics.read_text().splitlines()[-1])
    assert last["epoch"] == 10 and last["test_acc"] >= 0.9


@pytest.mark.parametrize("argv, message", [
    (["--sync-every", "0"], "H >= 1"),
    (["--sync-every", "x"], "H >= 1"),
    (["--post-local", "-1"], "epochs >= 0"),
    (["--batchnorm"], "--batchnorm is not supported by localsgd"),
    (["--algorithm", "mpi"], "invalid choice"),
])
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        ls.main(["--sim", "2", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_another_paradigms_checkpoint_is_refused_by_name(tmp_path, capsys):
    ck = str(tmp_path / "ck")
    assert ls.main(["--sim", "2", "--epochs", "1", "--hidden", "8", "--quiet", "--checkpoint", ck]) == 0
    from mpisim import gossip
    assert gossip.main(["--sim", "2", "--epochs", "2", "--hidden", "8", "--quiet", "--checkpoint", ck,
                        "--resume"]) == 1
    assert "is a checkpoint of python -m mpisim.localsgd, not of mpisim.gossip" in capsys.readouterr().err



F32 = [a if a != "float64" else "float32" for a in SMALL]     # the compressors work in float32


@pytest.mark.parametrize("scheme", ["fp16", "bf16", "topk:0.3 --error-feedback", "randomk:0.5", "powersgd:1",
                                    "signsgd --error-feedback"])
def test_compressed_averages_keep_the_replicas_identical_and_match_their_formula(scheme, tmp_path):
    from mpisim.train import load_checkpoint
    got = run_sim(ls, 3, [*F32, *SGD, "--sync-every", "2", "--compress", *scheme.split(),
                          "--checkpoint", tmp_path / "ck"])
    assert got["comm_agrees"]
    arrays, _ = load_checkpoint(tmp_path / "ck")                    # every rank's own parameters
    for r in (1, 2):
        np.testing.assert_array_equal(arrays["rank0.params"], arrays[f"rank{r}.params"])


def test_compressing_everything_exactly_is_the_plain_average():
    plain = run_sim(ls, 3, [*F32, *SGD, "--sync-every", "2"])["model"].params
    exact = run_sim(ls, 3, [*F32, *SGD, "--sync-every", "2", "--compress", "topk:1"])["model"].params
    np.testing.assert_allclose(exact, plain, rtol=1e-5, atol=1e-6)   # anchor + mean change = mean, to rounding


@pytest.mark.parametrize("argv, message", [
    (["--compress", "topk:1.5"], "--compress"),
    (["--error-feedback"], "--error-feedback keeps what a compression leaves out"),
    (["--compress", "powersgd:999"], "--compress powersgd:999"),
    (["--compress", "zip"], "--compress"),
])
def test_compression_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        ls.main(["--sim", "2", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
