"""mpisim.tensor: Megatron tensor parallelism computes what one process computes, with 2K-1 allreduces a step."""
import json

import numpy as np
import pytest

from mpisim import tensor as tp
from mpisim.comm import run_simulated
from mpisim.comm.costs import allreduce_traffic
from mpisim.nn import MLP
from mpisim.nn.loss import SoftmaxCrossEntropy
from mpisim.train import load_checkpoint

from .helpers import SMALL, assert_close, run_centralized, run_sim

# 40 training examples in batches of 12: 4 steps per epoch, the last one of 4 examples
STEPS = ["--epochs", "2", "--batch-size", "12"]
ADAM = ["--optimizer", "adam", "--lr", "0.01"]
MOMENTUM = ["--optimizer", "momentum", "--lr", "0.1"]
# 3 Linear layers (a pair, then a replicated last one) and 4 (two pairs); widths 7 and 4 split unequally on 3
ODD, EVEN = ["--hidden", "7,5"], ["--hidden", "7,5,4"]


@pytest.mark.parametrize("T", [1, 2, 3])
@pytest.mark.parametrize("hidden", [ODD, EVEN], ids=["odd", "even"])
@pytest.mark.parametrize("opt", [ADAM, MOMENTUM], ids=["adam", "momentum"])
def test_equivalent_to_centralized_in_float64(T, hidden, opt):
    argv = [*SMALL, *STEPS, *opt, *hidden]
    want = run_centralized(argv).params
    got = run_sim(tp, T, argv)
    K = 2 if hidden is EVEN else 1
    assert got["steps"] == 8 and got["allreduces_per_step"] == 2 * K - 1
    assert got["allreduces"] == 8 * (2 * K - 1)       # counted calls: K forward (g), K - 1 backward (f)
    assert_close(got["model"].params, want)
    assert got["comm_agrees"]


@pytest.mark.parametrize("argv", [[*EVEN, "--dropout", "0.3"], [*ODD, "--dropout", "0.3", "--activation", "tanh"],
                                  [*EVEN, "--dropout", "0.3", "--activation", "sigmoid", "--weight-decay", "0.01"]])
def test_dropout_draws_the_centralized_masks(argv):
    argv = [*SMALL, *STEPS, *ADAM, *argv]
    want = run_centralized(argv).params
    assert_close(run_sim(tp, 3, argv)["model"].params, want)
    # the masks matter: the same run without dropout is another computation (the test can fail)
    plain = run_centralized([a for a in argv if a not in ("--dropout", "0.3")]).params
    assert not np.allclose(plain, want, rtol=1e-6)


@pytest.mark.parametrize("T, algorithm", [(3, "ring"), (4, "tree"), (3, "auto")])
def test_measured_traffic_is_2k_minus_1_allreduces_of_b_by_d(T, algorithm, tmp_path):
    """Per epoch, batches of 12, 12, 12 and 4 examples; per step forward allreduces of (B, 5) and (B, C) and
    a backward one of (B, 5): Linear 2's input gradient (Linear 0's is skipped)."""
    metrics = tmp_path / "m.jsonl"
    got = run_sim(tp, T, [*SMALL, *STEPS, *ADAM, *EVEN, "--algorithm", algorithm, "--metrics", metrics])
    sizes = got["model"].sizes                      # [8, 7, 5, 4, C]
    widths = [sizes[2], sizes[4], sizes[2]]
    want_m = want_b = 0
    for B in (12, 12, 12, 4):
        for d in widths:
            m, b = allreduce_traffic(algorithm, B * d, 8, T)
            want_m, want_b = want_m + m, want_b + b
    if algorithm == "ring":                         # spelled out once: 2T(T-1) messages, 2(T-1)·b·B·d bytes
        assert want_m == 4 * 3 * 2 * T * (T - 1) and want_b == 2 * (T - 1) * 8 * 40 * sum(widths)
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        assert (r["payload_messages"], r["payload_bytes"]) == (want_m, want_b)
    assert got["comm_agrees"] and "matches the formula" in got["summary"]


def test_one_rank_sends_nothing():
    got = run_sim(tp, 1, [*SMALL, *STEPS, *ADAM, *EVEN])
    assert got["comm_agrees"] and "payload 0 B sent" in got["summary"]


@pytest.mark.parametrize("ranges", [[(0, 4)], [(0, 2), (2, 4)], [(0, 1), (1, 4)], [(0, 3), (3, 4)],
                                    [(0, 1), (1, 2), (2, 4)]])
def test_the_core_on_ranges_of_layers_chained_as_pipeline_stages(ranges):
    """Cores on consecutive ranges [a, b), each pairing from a, chained through their activations and input
    gradients (need_dx), give the centralized gradient; the replicas agree bit for bit; K pairs in all cost
    one g each, and one f each except where the range's first layer is the MLP's first."""
    sizes, B = [6, 7, 5, 4, 3], 9
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((B, sizes[0])), rng.integers(0, sizes[-1], B)
    opts = dict(activation="tanh", dropout=0.3, dtype=np.float64, seed=3)
    ref = MLP(sizes, **opts)
    ref.seed_dropout(5)
    ref.train_step(x, y)

    def body(t):
        model = MLP(sizes, **opts)
        model.seed_dropout(5)
        cores = [tp.TensorParallelMLP(t, model, layers=r) for r in ranges]
        for c in cores:
            c.params[...] = model.params[c.index]
        h, tapes = x, []
        for c in cores:
            h, tape = c.forward(h)
            tapes.append(tape)
        loss = SoftmaxCrossEntropy()
        loss.forward(h, y)
        d = loss.backward()
        for c, tape in zip(cores[::-1], tapes[::-1]):
            d = c.backward(tape, d, need_dx=c is not cores[0])
        assert d is None
        return [(c.index, c.grads.copy(), c.owned) for c in cores], sum(c.allreduces for c in cores)

    out = run_simulated(3, body)
    full, held = np.full(ref.num_params, np.nan), {}
    for parts, calls in out:
        pairs = sum((b - a) // 2 for a, b in ranges)
        assert calls == 2 * pairs - (1 if ranges[0][1] - ranges[0][0] > 1 else 0)
        for index, grads, _ in parts:
            for i, g in zip(index, grads):
                assert held.setdefault(i, g) == g           # replicas are identical, bit for bit
                full[i] = g
    owned = np.zeros(ref.num_params, dtype=int)
    for parts, _ in out:
        for index, _, own in parts:
            np.add.at(owned, index[own], 1)
    assert (owned == 1).all()                               # every parameter owned once
    assert_close(full, ref.grads)


def test_the_split_follows_array_split():
    assert [tp.block(7, 3, r) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [list(b) for b in np.array_split(range(7), 3)] == [list(range(lo, hi)) for lo, hi in
                                                             (tp.block(7, 3, r) for r in range(3))]
    assert tp.kinds(0, 3) == ["column", "row", "replicated"] and tp.kinds(1, 5) == ["column", "row"] * 2
    shards = tp.plan([8, 7, 5, 4, 3], 3, 2)
    assert [(s.kind, s.w_shape, s.b_size) for s in shards] == [
        ("column", (8, 2), 2), ("row", (2, 5), 5), ("column", (5, 1), 1), ("row", (1, 3), 3)]


def test_stopped_and_resumed_equals_uninterrupted(tmp_path):
    argv = [*SMALL, "--epochs", "3", "--batch-size", "8", *ADAM, *EVEN, "--dropout", "0.2"]
    a = run_sim(tp, 3, [*argv, "--checkpoint", tmp_path / "a"])["model"]
    run_sim(tp, 3, [*argv, "--checkpoint", tmp_path / "b", "--stop-after", "1"])
    assert load_checkpoint(tmp_path / "b")[1]["epoch"] == 1
    b = run_sim(tp, 3, [*argv, "--checkpoint", tmp_path / "b", "--resume"])["model"]
    np.testing.assert_array_equal(a.params, b.params)
    # the saved optimizer is the whole one, gathered from the parts: the same as the uninterrupted run's
    sa, sb = load_checkpoint(tmp_path / "a")[0], load_checkpoint(tmp_path / "b")[0]
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])


def test_defaults_reach_90_percent_on_digits(tmp_path):
    metrics = tmp_path / "m.jsonl"
    assert tp.main(["--sim", "4", "--quiet", "--metrics", str(metrics)]) == 0
    last = json.loads(metrics.read_text().splitlines()[-1])
    assert last["epoch"] == 10 and last["test_acc"] >= 0.9


def test_an_exception_on_one_rank_ends_the_job_naming_it(capsys):
    assert tp.main(["--sim", "3", "--epochs", "1", "--quiet", "--inject-fault", "1:2:raise"]) == 1
    assert "rank 1 of 3 failed: fault injected on rank 1 at step 2" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--sim", "8", "--hidden", "7,5"], "splits Linear 0's 7 outputs (--hidden size 1) over the ranks: 8 ranks"),
    (["--sim", "4", "--hidden", "16,2,3"], "splits Linear 2's 3 outputs (--hidden size 3) over the ranks: 4 ranks"),
    (["--sim", "2", "--batchnorm"], "--batchnorm is not supported by tensor"),
    (["--sim", "2", "--algorithm", "mpi"], "invalid choice"),
])
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        tp.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_narrow_row_parallel_layer_is_not_split():
    """Only column-parallel widths limit T: --hidden 16,2 on 4 ranks splits Linear 0's 16 outputs (and
    Linear 1's 16 rows); the 2-wide activation is summed whole."""
    assert tp.split_problem([16, 2], 4) is None and tp.split_problem([16, 2, 3], 4) is not None
