"""mpisim.easgd: workers pulled toward a center variable by the elastic difference alpha (x_i - x~)."""
import json

import pytest

from mpisim import easgd as ea
from mpisim.train import load_checkpoint

from .helpers import SMALL, assert_close, run_centralized, run_sim

SGD = ["--optimizer", "sgd", "--lr", "0.1", "--epochs", "1", "--batch-size", "12"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_one_worker_one_exchange_moves_the_center_by_alpha_times_the_difference(mode):
    """One worker trains as the centralized trainer does; one exchange at the epoch's end moves the center
    from x0 to x0 + alpha (x1 - x0)."""
    x0 = run_centralized([*SMALL, *SGD, "--lr", "0"]).params          # the initial model
    x1 = run_centralized([*SMALL, *SGD]).params                         # one epoch of the worker
    got = run_sim(ea, 2, [*SMALL, *SGD, "--period", "1000", "--elasticity", "0.25", "--mode", mode])
    assert_close(got["model"].params, x0 + 0.25 * (x1 - x0))


def test_sync_center_moves_by_the_sum_of_the_differences_and_shards_change_nothing():
    one = run_sim(ea, 4, [*SMALL, *SGD, "--epochs", "2", "--period", "2", "--elasticity", "0.2"])["model"].params
    two = run_sim(ea, 5, [*SMALL, *SGD, "--epochs", "2", "--period", "2", "--elasticity", "0.2",
                          "--servers", "2"])["model"].params
    assert_close(one, two)          # the elastic update is element-wise: sharding the center is invisible


@pytest.mark.parametrize("n, servers, mode, period, exchanges", [(4, 1, "sync", 2, 3 * 2 * 2),
                                                                  (5, 2, "async", 3, 3 * 2 * 2),
                                                                  (3, 1, "async", 1, 2 * 4 * 2)])
def test_bytes_agree_with_the_formula(n, servers, mode, period, exchanges, tmp_path):
    got = run_sim(ea, n, [*SMALL, *SGD, "--epochs", "2", "--servers", servers, "--mode", mode,
                          "--period", period, "--checkpoint", tmp_path / "ck"])
    P = got["model"].num_params
    assert got["comm_agrees"] and f"X = {exchanges} exchanges" in got["comm_table"]
    assert f"{exchanges * P * 8:,}" in got["comm_table"]
    assert load_checkpoint(tmp_path / "ck")[1]["epoch"] == 2


def test_defaults_reach_90_percent_on_digits(tmp_path):
    metrics = tmp_path / "m.jsonl"
    assert ea.main(["--sim", "4", "--quiet", "--metrics", str(metrics)]) == 0
    last = json.loads(metrics.read_text().splitlines()[-1])
    assert last["epoch"] == 10 and last["test_acc"] >= 0.9


@pytest.mark.parametrize("argv, message", [
    (["--elasticity", "0"], "expected a number in (0, 1)"),
    (["--elasticity", "1"], "expected a number in (0, 1)"),
    (["--elasticity", "1.5"], "expected a number in (0, 1)"),
    (["--elasticity", "nan"], "expected a number in (0, 1)"),
    (["--mode", "eventual"], "invalid choice"),
    (["--period", "0"], "tau >= 1"),
    (["--servers", "2"], "easgd needs at least 3 ranks"),
    (["--batchnorm"], "--batchnorm is not supported by easgd"),
    (["--sim", "4", "--elasticity", "0.6"], "diverges unless alpha < 2/(W+1) = 0.5"),     # W = 3: (W+1) alpha >= 2
    (["--inject-fault", "0:1:raise"], "a server, which takes no training steps"),
])
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        ea.main(["--sim", "2", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
