"""mpisim.pipeline: the same model as the centralized trainer, the schedules, the bubble and the memory."""
import itertools

import numpy as np
import pytest

from mpisim import pipeline as pp
from mpisim.nn.stage import balance
from mpisim.train.checkpoint import load_checkpoint

from .helpers import assert_close, run_centralized, run_sim

# 4 Linear layers; 60 examples -> 48 training, batches of 12 (last one full) or 10 (last one short)
BASE = ["--dataset", "synthetic", "--synthetic-size", "60", "--synthetic-features", "8", "--hidden", "6,5,7",
        "--dtype", "float64", "--quiet", "--epochs", "2"]
ADAM = ["--optimizer", "adam", "--lr", "0.01"]
MOMENTUM = ["--optimizer", "momentum", "--lr", "0.05"]
FREE = "alpha=0s,beta=0s,gamma=0s,compute=1GFLOP/s"       # messages cost nothing; FLOPs take time


@pytest.mark.parametrize("n, schedule, M, extra", [
    (2, "gpipe", 3, [*ADAM, "--batch-size", "12"]),
    (3, "1f1b", 5, [*MOMENTUM, "--batch-size", "10"]),               # M does not divide the batch
    (4, "1f1b", 2, [*ADAM, "--batch-size", "10", "--dropout", "0.3"]),
    (4, "gpipe", 12, [*MOMENTUM, "--batch-size", "10", "--dropout", "0.3"]),   # M > the last batch (8)
    (3, "gpipe", 4, [*ADAM, "--batch-size", "12", "--stages", "1,2,1"]),
    (2, "1f1b", 4, [*ADAM, "--batch-size", "12", "--stages", "3,1", "--lr-schedule", "cosine"]),
    (1, "1f1b", 3, [*MOMENTUM, "--batch-size", "12"]),
])
def test_every_schedule_split_and_m_computes_what_the_centralized_trainer_computes(n, schedule, M, extra):
    argv = [*BASE, *extra]
    central = [a.replace("--lr-schedule", "--schedule") for a in argv if a not in ("--stages", "1,2,1", "3,1")]
    got = run_sim(pp, n, [*argv, "--schedule", schedule, "--micro-batches", M])
    assert_close(got["model"].params, run_centralized(central).params)
    assert got["comm_agrees"]
    assert got["steps"] == 2 * -(-48 // int(argv[argv.index("--batch-size") + 1]))


def test_schedules_run_each_micro_batch_forward_then_backward_once():
    for kind, p, m in itertools.product(pp.SCHEDULES, range(1, 6), range(1, 9)):
        for s in range(p):
            ops = pp.schedule(kind, p, m, s)
            assert sorted(ops) == sorted([("F", j) for j in range(m)] + [("B", j) for j in range(m)])
            live = peak = 0
            for op, j in ops:
                if op == "B":
                    assert ops.index(("F", j)) < ops.index(("B", j))
                live += 1 if op == "F" else -1
                peak = max(peak, live)
            assert peak == pp.in_flight_formula(kind, p, m, s)
    assert pp.schedule("1f1b", 4, 8, 1) == [("F", 0), ("F", 1), ("F", 2), ("B", 0), ("F", 3), ("B", 1),
                                           ("F", 4), ("B", 2), ("F", 5), ("B", 3), ("F", 6), ("B", 4),
                                           ("F", 7), ("B", 5), ("B", 6), ("B", 7)]


def test_balance_is_the_best_contiguous_cut():
    rng = np.random.default_rng(1)
    for _ in range(40):
        n = int(rng.integers(1, 8))
        costs = rng.integers(1, 20, size=n).tolist()
        p = int(rng.integers(1, n + 1))
        counts = balance(costs, p)
        assert len(counts) == p and sum(counts) == n and min(counts) >= 1

        def worst(cs):
            ends = np.cumsum([0, *cs])
            return max(sum(costs[a:b]) for a, b in zip(ends[:-1], ends[1:]))
        best = min(worst(c) for c in itertools.product(range(1, n + 1), repeat=p) if sum(c) == n)
        assert worst(counts) == best


@pytest.mark.parametrize("kind", pp.SCHEDULES)
def test_with_equal_stages_the_virtual_bubble_is_exactly_the_formula(kind):
    for p, m in [(2, 1), (2, 4), (3, 5), (4, 8), (5, 3), (6, 2), (8, 8)]:
        busy, span = pp.equal_stage_bubble(kind, p, m)
        for s in range(p):
            # integer ticks: busy/span = m/(m+p-1) exactly, so the bubble is (p-1)/(m+p-1)
            assert busy[s] * (m + p - 1) == span * m, (kind, p, m, s)


def test_the_report_measures_bubble_and_memory_next_to_the_formulas():
    got = run_sim(pp, 4, [*BASE, *ADAM, "--batch-size", "12", "--micro-batches", "6", "--schedule", "gpipe",
                          "--network", FREE])
    assert got["in_flight"] == [6, 6, 6, 6]                        # GPipe keeps all M
    one = run_sim(pp, 4, [*BASE, *ADAM, "--batch-size", "12", "--micro-batches", "6", "--network", FREE])
    assert one["in_flight"] == [4, 3, 2, 1]                        # 1F1B: min(M, p - s)
    # the same micro-batches keep the same bytes: memory is in proportion to what is in flight
    for s in range(4):
        assert got["peak_activation_bytes"][s] * one["in_flight"][s] == one["peak_activation_bytes"][s] * 6
    # unequal stages: every bubble lies between 0 and 1 and the bottleneck stage idles least
    b = got["bubble_virtual"]
    assert all(0 < v < 1 for v in b)
    flops = [sum(f + bw for f, bw in pp.block_flops(got["model"])[k:k + 1]) for k in range(4)]
    assert int(np.argmin(b)) == int(np.argmax(flops))


def test_report_text_says_why_the_bubble_differs(capsys):
    pp.main([*BASE[:-3], "--epochs", "1", "--sim", "3", "--network", "10gbe,compute=1GFLOP/s"])
    out = capsys.readouterr().out
    assert "bubble formula (p-1)/(M+p-1) = 0.3333" in out
    assert "differs from the formula" in out and "messages take virtual time" in out
    assert "the stages' FLOPs differ" in out


def test_the_report_uses_the_micro_batches_a_batch_allows(capsys):
    pp.main([*BASE[:-3], "--epochs", "1", "--sim", "2", "--batch-size", "2", "--micro-batches", "8",
             "--network", FREE])
    out = capsys.readouterr().out
    assert "M = 2 (8 asked; a batch of 2 examples has 2)" in out and "(p-1)/(M+p-1) = 0.3333" in out


def test_a_resume_with_other_options_names_their_flags(tmp_path, capsys):
    argv = [*BASE, *ADAM, "--batch-size", "12", "--checkpoint", str(tmp_path / "ck")]
    assert pp.main([*argv, "--sim", "2", "--stop-after", "1"]) == 0
    assert pp.main([*argv, "--sim", "2", "--resume", "--schedule", "gpipe", "--lr-schedule", "step"]) == 1
    err = capsys.readouterr().err
    assert "--schedule: checkpoint has '1f1b', this run has 'gpipe'" in err
    assert "--lr-schedule: checkpoint has 'constant', this run has 'step'" in err


def test_schedule_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "sched" / "gpipe.png"
    run_sim(pp, 4, [*BASE, *ADAM, "--batch-size", "12", "--micro-batches", "8", "--schedule", "gpipe",
                    "--network", FREE, "--schedule-plot", path])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stopped_and_resumed_equals_uninterrupted(tmp_path):
    argv = [*BASE[:-1], "3", *ADAM, "--batch-size", "10", "--dropout", "0.2"]
    a = run_sim(pp, 3, [*argv, "--checkpoint", tmp_path / "a"])["model"]
    run_sim(pp, 3, [*argv, "--checkpoint", tmp_path / "b", "--stop-after", "1"])
    arrays, meta = load_checkpoint(tmp_path / "b")
    assert meta["epoch"] == 1 and "opt.exp_avg" in arrays and int(arrays["opt.steps"]) == 5
    b = run_sim(pp, 3, [*argv, "--checkpoint", tmp_path / "b", "--resume"])["model"]
    np.testing.assert_array_equal(a.params, b.params)


def test_a_failing_stage_ends_the_job_naming_it(capsys):
    assert pp.main(["--sim", "3", "--epochs", "1", "--quiet", "--inject-fault", "1:2:raise"]) == 1
    assert "rank 1 of 3 failed: fault injected" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--sim", "9"], "9 pipeline stages but the model has only 8 Linear layers"),
    (["--sim", "3", "--hidden", "5"], "3 pipeline stages but the model has only 2 Linear layers"),
    (["--sim", "2", "--micro-batches", "0"], "--micro-batches"),
    (["--sim", "2", "--stages", "2,1"], "--stages 2,1 sums to 3, but the model has 8 Linear layers"),
    (["--sim", "2", "--stages", "2,5,1"], "--stages lists 3 stages but there are 2 ranks"),
    (["--sim", "2", "--stages", "2,x"], "--stages"),
    (["--sim", "2", "--batchnorm"], "--batchnorm is not supported by pipeline"),
    (["--sim", "2", "--schedule", "cosine"], "--lr-schedule"),
    (["--sim", "2", "--schedule-plot", "sched.svg"], "--schedule-plot writes a PNG"),
])
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        pp.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_defaults_reach_90_percent_on_digits():
    got = run_sim(pp, 4, ["--quiet"])
    assert got["test_acc"] >= 0.90 and got["comm_agrees"]


def test_the_learning_rate_schedule_is_lr_schedule_in_every_tool():
    """--lr-schedule everywhere; --schedule too where it is not the pipeline's."""
    from mpisim import allreduce, centralized, hybrid
    for module in (centralized, allreduce, pp, hybrid):
        assert module.PARADIGM.parse(["--lr-schedule", "cosine"]).train.schedule == "cosine"
    assert centralized.PARADIGM.parse(["--schedule", "step"]).train.schedule == "step"
    assert pp.PARADIGM.parse(["--schedule", "gpipe"]).opts.pipeline_schedule == "gpipe"
