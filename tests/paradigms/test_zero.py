"""mpisim.zero: every stage computes the centralized trainer's steps; each rank holds what the stage says."""
import gc
import json
import weakref
from types import SimpleNamespace

import numpy as np
import pytest

from mpisim import allreduce as ar
from mpisim import zero
from mpisim.nn import MLP, make_optimizer
from mpisim.train import build_dataset, build_model, build_optimizer, load_checkpoint

from mpisim.centralized import train_centralized

from .helpers import SMALL, assert_close, parse, run_sim

# 40 training examples in batches of 12: 2 epochs of 4 steps, the last batch of 4 split unequally
ADAM = ["--optimizer", "adam", "--lr", "0.01", "--epochs", "2", "--batch-size", "12"]
MOMENTUM = ["--optimizer", "momentum", "--lr", "0.1", "--epochs", "2", "--batch-size", "12"]


@pytest.fixture(scope="module")
def centralized():
    return {"adam": train_centralized([*SMALL, *ADAM]), "momentum": train_centralized([*SMALL, *MOMENTUM])}


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_every_stage_equals_the_centralized_trainer_in_float64(stage, n, centralized):
    """Unequal blocks on 3 ranks (layers of 54 and 70 parameters), Adam and SGD with momentum."""
    for name, opt in (("adam", ADAM), ("momentum", MOMENTUM)):
        got, want = run_sim(zero, n, [*SMALL, *opt, "--stage", stage]), centralized[name]
        assert got["steps"] == 8 and got["stage"] == stage
        assert_close(got["model"].params, want["model"].params)
        assert got["comm_agrees"] and got["memory_agrees"]
        # rank 0 evaluates the full model (in stage 3 its evaluation copy, filled from the shards)
        assert_close(got["test_loss"], want["test_loss"])
        assert got["test_acc"] == want["test_acc"]
        # stages 2 and 3 never write a full gradient vector: the model's own is released
        P = got["model"].num_params
        assert got["model"].grads.size == (P if stage <= 1 else 0)


def test_shards_are_array_split_blocks_of_every_linear_layer_covering_the_vector_once():
    model = MLP([64, 30, 20, 10])
    N = 3
    seen = np.zeros(model.num_params, dtype=int)
    for r in range(N):
        shards, sizes = zero.plan_shards(model, N, r)
        want = []
        for s in shards:
            block = np.array_split(np.arange(s.lo, s.lo + s.n), N)[r]
            want.append(block)
            assert [len(b) for b in np.array_split(np.arange(s.n), N)] == np.diff(s.offs).tolist()
        index = np.concatenate(want)
        assert sizes[r] == index.size
        seen[index] += 1
    assert (seen == 1).all()
    assert [s.n for s in shards] == [64 * 30 + 30, 30 * 20 + 20, 20 * 10 + 10]


def _allreduce_optimizer_bytes(argv):
    """The bytes of mpisim.allreduce's optimizer state (the full moments on every rank)."""
    tr = parse(ar, [*argv, "--sim", 4]).train
    opt = build_optimizer(tr, build_model(tr, build_dataset(tr)))
    return sum(v.nbytes for v in opt.state.values())


def test_measured_memory_per_rank_is_the_stage_formula_and_shrinks_by_n():
    argv = [*SMALL, *ADAM, "--epochs", "1", "--hidden", "7,5"]        # 3 layers: 63, 40, 60 parameters
    N, b, K = 4, 8, 2
    runs = {s: run_sim(zero, N, [*argv, "--stage", s]) for s in (0, 1, 2, 3)}
    P = runs[0]["model"].num_params
    L = 3
    shards = runs[1]["shards"]
    assert sum(shards) == P and len(set(shards)) > 1                   # unequal shards
    full_opt = _allreduce_optimizer_bytes(argv)
    assert full_opt == K * P * b
    for r, s in enumerate(shards):
        m = {stage: runs[stage]["memory"][r] for stage in runs}
        assert m[0] == {"params": P * b, "grads": P * b, "optimizer": K * P * b, "transient": 0, "eval copy": 0}
        # stage 1: the optimizer state is the shard's moments
        assert m[1]["optimizer"] == K * s * b
        assert m[1]["optimizer"] / full_opt <= 1 / N + L / P            # one element of rounding per layer
        assert (m[1]["params"], m[1]["grads"]) == (P * b, P * b)
        assert m[1]["transient"] == 16 * b                               # the allgather's padded block
        # stage 2: the gradients too
        assert m[2]["grads"] == s * b and m[2]["optimizer"] == K * s * b and m[2]["params"] == P * b
        assert m[2]["grads"] / m[1]["grads"] <= 1 / N + L / P
        assert m[2]["transient"] == (63 + 16) * b                        # one layer scratch, one padded block
        # stage 3: the parameters too
        assert (m[3]["params"], m[3]["grads"], m[3]["optimizer"]) == (s * b, s * b, K * s * b)
        assert m[3]["params"] / m[2]["params"] <= 1 / N + L / P
        largest = 63
        assert m[3]["transient"] == (2 * largest + 16) * b               # two layer scratches, one padded block
        # apart: rank 0 keeps the full parameters in stage 3 to evaluate; stages 0-2 evaluate their own
        assert [m[s]["eval copy"] for s in runs] == [0, 0, 0, P * b if r == 0 else 0]
    for s in runs.values():
        assert s["memory_agrees"] and s["memory"] == s["memory_formula"]
        assert set(s["memory"][0]) == set(zero.KINDS)


def test_on_two_ranks_with_adam_stages_1_to_3_hold_three_quarters_five_eighths_and_half_of_stage_0():
    """No copy beside the replicas: 2Ψ + 2Ψ/2 = 3/4 of 4Ψ, Ψ + 3Ψ/2 = 5/8, 4Ψ/2 = 1/2, exact because every
    layer's range splits evenly (54 and 70 parameters)."""
    argv = [*SMALL, *ADAM, "--epochs", "1"]
    runs = {s: run_sim(zero, 2, [*argv, "--stage", s]) for s in (0, 1, 2, 3)}
    assert runs[1]["shards"][0] == runs[1]["shards"][1]
    total = {s: [sum(m[k] for k in zero.HELD) for m in got["memory"]] for s, got in runs.items()}
    for s, share in ((1, 0.75), (2, 0.625), (3, 0.5)):
        assert total[s] == [share * t for t in total[0]]
        assert runs[s]["memory_agrees"]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_the_optimizers_update_views_one_per_layer(stage):
    """Stages 1 and 2: each layer's optimizer works on the rank's block of the full parameters (and, stage 1,
    of the full gradient); stage 2's gradients and stage 3's parameters are the shard vectors."""
    model, N = MLP([8, 6, 3], dtype="float64"), 3
    for r in range(N):
        z = zero.Zero(SimpleNamespace(size=N, rank=r), model, stage=stage, algorithm="auto", meter=None,
                      make_optimizer=lambda p, g: make_optimizer("adam", p, g, lr=0.01))
        assert len(z.opts) == len(z.shards) == 2
        index = np.concatenate([np.arange(o.params.size) for o in z.opts])
        assert index.size == z.index.size == z.sizes[r]
        at = 0
        for L, o in zip(z.shards, z.opts):
            lo, hi = L.lo + L.offs[r], L.lo + L.offs[r + 1]
            np.testing.assert_array_equal(z.index[at:at + o.params.size], np.arange(lo, hi))
            if stage <= 2:
                assert np.shares_memory(o.params, model.params) and o.params.base is model.params
            else:
                assert o.params.base is z.shard_p
            assert (o.grads.base is model.grads) if stage == 1 else (o.grads.base is z.shard_g)
            assert o.params.size == o.grads.size == hi - lo
            at += o.params.size
        held = [a for arrays in z.held.values() for a in arrays]
        assert len({id(a) for a in held}) == len(held)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_the_full_vectors_a_stage_does_not_use_are_released_on_every_rank(stage, tmp_path, monkeypatch):
    """Measured on each of 3 ranks at the end of the run (and by the memory gather after set-up): the
    model's gradient vector is empty in stages 2 and 3, its parameter vector too on ranks 1 and 2 in stage 3,
    and the arrays let go are freed (no layer, view or optimizer keeps them: rank 0's optimizer to
    checkpoint neither), in a run with --checkpoint and in its resume."""
    built, ended = {}, {}
    release, close = zero.Zero.release, zero.ZeroRank.close

    def spy_release(self):                      # the model's full vectors as the runtime built them
        built[self.t.rank] = (weakref.ref(self.model.params), weakref.ref(self.model.grads))
        release(self)

    def spy_close(self):                        # every rank, after its last epoch: what it holds, and
        m, r = self.run.model, self.run.rank    # whether the vectors it was built with are still alive
        gc.collect()
        ended[r] = (m.params.size, m.grads.size, m.params.dtype, m.grads.dtype,
                    built[r][0]() is not None, built[r][1]() is not None)
        close(self)

    monkeypatch.setattr(zero.Zero, "release", spy_release)
    monkeypatch.setattr(zero.ZeroRank, "close", spy_close)
    argv = [*SMALL, *ADAM, "--stage", stage, "--checkpoint", tmp_path / "c"]
    for extra in (["--stop-after", "1"], ["--resume"]):
        built.clear(), ended.clear()
        got = run_sim(zero, 3, [*argv, *extra])
        P = got["model"].num_params
        want = [{"params": P if stage <= 2 or r == 0 else 0, "grads": P if stage <= 1 else 0} for r in range(3)]
        assert got["model_vectors"] == want                                   # after set-up, from the gather
        assert {r: e[:2] for r, e in ended.items()} == {r: (w["params"], w["grads"]) for r, w in enumerate(want)}
        assert all(e[2] == e[3] == np.float64 for e in ended.values())        # empty, of the model's dtype
        assert {r: e[4:] for r, e in ended.items()} == {r: (w["params"] > 0, w["grads"] > 0)
                                                        for r, w in enumerate(want)}
    assert load_checkpoint(tmp_path / "c")[1]["epoch"] == 2


def test_stage_3_rank_0_evaluates_the_shards_and_the_others_compute_in_the_scratch():
    """After release: rank 0's layers point back at the model's own vector between steps; on the other
    ranks they point at the gathered scratch for good."""
    model, N = MLP([8, 6, 3], dtype="float64"), 3
    for r in range(N):
        m = MLP([8, 6, 3], dtype="float64")
        z = zero.Zero(SimpleNamespace(size=N, rank=r), m, stage=3, algorithm="auto", meter=None,
                      make_optimizer=lambda p, g: make_optimizer("adam", p, g, lr=0.01))
        z.release()
        assert m.grads.size == 0 and m.params.size == (model.num_params if r == 0 else 0)
        assert m._dev[:2] == (m.params, m.grads)
        for L in z.shards:
            W = m.layers[L.layer].params["W"]
            assert np.shares_memory(W, m.params if r == 0 else z.pscratch)
            assert np.shares_memory(m.layers[L.layer].grads["W"], z.gscratch)
        assert z.memory()["eval copy"] == (model.params.nbytes if r == 0 else 0)
        assert z.memory() == z.formula()[r]


@pytest.mark.parametrize("stage, gathers", [(1, 1), (3, 2)])
def test_ring_bytes_by_hand(stage, gathers, tmp_path):
    """Ring: a reduce_scatter of n_l sends (N-1)·n_l elements, an allgather of N padded blocks (N-1)·N·m_l:
    stage 3 gathers twice per layer (1.5 times the bytes of stage 1)."""
    metrics = tmp_path / "m.jsonl"
    N, b = 3, 8
    got = run_sim(zero, N, [*SMALL, *ADAM, "--stage", stage, "--algorithm", "ring", "--metrics", metrics])
    model = got["model"]
    ns = [int(np.prod(shape)) + model.layers[li].d_out for li, name, _, shape in model.slices if name == "W"]
    per_step = (N - 1) * b * (sum(ns) + gathers * N * sum(-(-n // N) for n in ns))
    total = sum(json.loads(line)["payload_bytes"] for line in metrics.read_text().splitlines())
    assert total == 8 * per_step
    assert got["comm_agrees"] and "S·(N-1)·b·(P + " in got["comm_table"]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_stopped_and_resumed_equals_uninterrupted(stage, tmp_path):
    argv = [*SMALL, "--epochs", "3", "--batch-size", "8", "--optimizer", "adam", "--lr", "0.01", "--stage", stage]
    a = run_sim(zero, 3, [*argv, "--checkpoint", tmp_path / "a"])["model"]
    run_sim(zero, 3, [*argv, "--checkpoint", tmp_path / "b", "--stop-after", "1"])
    assert load_checkpoint(tmp_path / "b")[1]["epoch"] == 1
    b = run_sim(zero, 3, [*argv, "--checkpoint", tmp_path / "b", "--resume"])["model"]
    np.testing.assert_array_equal(a.params, b.params)


@pytest.mark.parametrize("argv, message", [
    (["--stage", "4"], "argument --stage: invalid choice: 4"),
    (["--batchnorm"], "--batchnorm is not supported by zero"),
    (["--algorithm", "tree"], "argument --algorithm: invalid choice"),
])
def test_usage_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        zero.main(["--sim", "2", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("stage", [1, 3])
def test_a_failing_rank_ends_the_job_naming_it(stage, capsys):
    assert zero.main([*SMALL, "--sim", "3", "--epochs", "1", "--batch-size", "12", "--stage", str(stage),
                      "--inject-fault", "1:2:raise"]) == 1
    assert "rank 1 of 3 failed: fault injected" in capsys.readouterr().err


def test_nan_names_rank_and_step(capsys):
    assert zero.main([*SMALL, "--sim", "3", "--epochs", "1", "--batch-size", "12", "--stage", "3",
                      "--inject-fault", "2:3:nan"]) == 1
    err = capsys.readouterr().err
    assert "rank 2 of 3" in err and "loss became nan at epoch 1, step 3" in err


def test_defaults_reach_90_percent_on_digits(tmp_path):
    metrics = tmp_path / "m.jsonl"
    assert zero.main(["--sim", "4", "--quiet", "--metrics", str(metrics)]) == 0
    last = json.loads(metrics.read_text().splitlines()[-1])
    assert last["epoch"] == 10 and last["test_acc"] >= 0.9
    o = parse(zero, ["--sim", "2"]).opts
    assert o.stage == 1 and o.algorithm == "auto"
