"""mpisim.hybrid: a D x P x T grid computes what the centralized trainer computes; its groups and formulas."""
import numpy as np
import pytest

from mpisim import hybrid
from mpisim.comm import run_simulated
from mpisim.train.checkpoint import load_checkpoint

from .helpers import assert_close, run_centralized, run_sim

BASE = ["--dataset", "synthetic", "--synthetic-size", "60", "--synthetic-features", "8", "--hidden", "6,5,7",
        "--dtype", "float64", "--quiet", "--epochs", "2", "--batch-size", "10"]
ADAM = ["--optimizer", "adam", "--lr", "0.01"]
MOMENTUM = ["--optimizer", "momentum", "--lr", "0.05"]


@pytest.mark.parametrize("D, P, T, schedule, M, opt", [
    (2, 2, 1, "1f1b", 2, ADAM),
    (3, 2, 1, "gpipe", 2, MOMENTUM),          # shares of 4, 3 and 3 examples of a batch of 10
    (1, 2, 2, "gpipe", 3, MOMENTUM),
    (2, 2, 2, "1f1b", 3, ADAM),
    (1, 3, 2, "gpipe", 2, ADAM),
    (2, 1, 2, "1f1b", 1, MOMENTUM),
])
def test_the_grid_computes_what_the_centralized_trainer_computes(D, P, T, schedule, M, opt):
    got = run_sim(hybrid, D * P * T, [*BASE, *opt, "--dp", D, "--pp", P, "--tp", T, "--schedule", schedule,
                                      "--micro-batches", M])
    assert_close(got["model"].params, run_centralized([*BASE, *opt]).params)
    assert got["comm_agrees"] and got["grid"] == (D, P, T)


def test_a_replica_with_no_examples_still_joins_the_gradient_sum():
    """Batches of 2 on 3 replicas: replica 2 gets nothing, every step, and the grid still takes the step."""
    argv = [*BASE[:-1], "2", *MOMENTUM]
    got = run_sim(hybrid, 6, [*argv, "--dp", "3", "--pp", "2"])
    assert_close(got["model"].params, run_centralized(argv).params)
    assert got["comm_agrees"]


def test_without_sim_the_grid_asked_for_sets_the_rank_count():
    par = hybrid.PARADIGM
    assert par.ranks_by_default(par.parse(["--dp", "3", "--pp", "2", "--tp", "2"]).opts) == 12
    assert par.ranks_by_default(par.parse([]).opts) == 4


def test_schedule_plot_of_the_grid_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "grid.png"
    got = run_sim(hybrid, 8, [*BASE, *ADAM, "--dp", "2", "--pp", "2", "--tp", "2", "--network",
                              "10gbe,compute=1GFLOP/s", "--schedule-plot", path])
    assert got["comm_agrees"] and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_groups_are_the_grid_s_rows_columns_and_pillars():
    """Rank (d*P + s)*T + k: its pipe group holds the P stages of (d, k), its data group the D replicas of
    (s, k), its tensor group the T ranks of (d, s); each ordered by the other coordinate."""
    D, P, T = 2, 3, 2

    def body(t):
        k, rest = t.rank % T, t.rank // T
        s, d = rest % P, rest // P
        pipe, data, tens = (t.split(d * T + k, key=s), t.split(s * T + k, key=d), t.split(d * P + s, key=k))
        return pipe.members, data.members, tens.members, (pipe.rank, data.rank, tens.rank), (s, d, k)

    for r, (pipe, data, tens, ranks, (s, d, k)) in enumerate(run_simulated(D * P * T, body)):
        assert pipe == tuple((d * P + j) * T + k for j in range(P))
        assert data == tuple((j * P + s) * T + k for j in range(D))
        assert tens == tuple((d * P + s) * T + j for j in range(T))
        assert ranks == (s, d, k)


def test_stopped_and_resumed_equals_uninterrupted(tmp_path):
    argv = [*BASE[:-3], "3", "--batch-size", "10", *ADAM, "--dp", "2", "--pp", "2", "--tp", "2"]
    a = run_sim(hybrid, 8, [*argv, "--checkpoint", tmp_path / "a"])["model"]
    run_sim(hybrid, 8, [*argv, "--checkpoint", tmp_path / "b", "--stop-after", "1"])
    assert load_checkpoint(tmp_path / "b")[1]["epoch"] == 1
    b = run_sim(hybrid, 8, [*argv, "--checkpoint", tmp_path / "b", "--resume"])["model"]
    np.testing.assert_array_equal(a.params, b.params)


def test_a_failing_rank_ends_the_job_naming_it(capsys):
    assert hybrid.main(["--sim", "4", "--dp", "2", "--pp", "2", "--epochs", "1", "--quiet",
                        "--inject-fault", "3:2:raise"]) == 1
    assert "rank 3 of 4 failed: fault injected" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--sim", "6", "--dp", "2", "--pp", "2"], "--dp 2 x --pp 2 x --tp 1 = 4 ranks, but there are 6"),
    (["--sim", "6", "--pp", "4"], "6 ranks is not a multiple of --pp 4 x --tp 1 = 4"),
    (["--sim", "9", "--pp", "9"], "--pp 9 stages but the model has only 8 Linear layers"),
    (["--sim", "8", "--pp", "2", "--tp", "4", "--hidden", "64,3,64"], "stage 1: tensor parallelism splits Linear 1"),
    (["--sim", "4", "--stages", "3,2"], "--stages 3,2 must list 2 stages (--pp) summing to the model's 8"),
    (["--sim", "4", "--micro-batches", "0"], "--micro-batches"),
    (["--sim", "4", "--batchnorm"], "--batchnorm is not supported by hybrid"),
])
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        hybrid.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_defaults_reach_90_percent_on_digits():
    got = run_sim(hybrid, 4, ["--dp", "2", "--pp", "2", "--quiet"])
    assert got["test_acc"] >= 0.90 and got["comm_agrees"]
