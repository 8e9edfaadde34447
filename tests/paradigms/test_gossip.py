"""mpisim.gossip: D-PSGD's mixing matrices, its payload, and the complete graph as allreduce SGD."""
import json

import numpy as np
import pytest

from mpisim import allreduce as ar
from mpisim import gossip as gs
from mpisim.comm import RankError, run_simulated
from mpisim.train import load_checkpoint
from tests.mpirun import run_mpi

from .helpers import SMALL, assert_close, parse, run_sim

SGD = ["--optimizer", "sgd", "--lr", "0.1", "--epochs", "2", "--batch-size", "12"]
CASES = [("ring", 2), ("ring", 3), ("ring", 5), ("ring", 8), ("torus", 4), ("torus", 6), ("torus", 9),
         ("torus", 12), ("exponential", 2), ("exponential", 5), ("exponential", 8), ("exponential", 11),
         ("complete", 3), ("complete", 6)]


@pytest.mark.parametrize("n", [2, 3])
def test_complete_with_plain_sgd_is_allreduce_sgd_in_float64(n):
    """40 examples in batches of 12: the last batch of 4 splits unequally over 3 ranks; averaging after
    each local step is still one step on the global batch."""
    want = run_sim(ar, n, [*SMALL, *SGD])["model"].params
    got = run_sim(gs, n, [*SMALL, *SGD, "--topology", "complete"])
    assert got["steps"] == 8
    assert_close(got["model"].params, want)          # rank 0's parameters
    assert_close(got["average"].params, want)        # the average it evaluates


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_complete_is_local_sgd_averaging_every_step(optimizer):
    """Both average the parameters after every local step, each rank keeping its own optimizer state."""
    localsgd = pytest.importorskip("mpisim.localsgd")
    argv = [*SMALL, *SGD, "--optimizer", optimizer, "--lr", "0.01"]
    want = run_sim(localsgd, 3, [*argv, "--sync-every", "1"])["model"].params
    assert_close(run_sim(gs, 3, [*argv, "--topology", "complete"])["model"].params, want)


@pytest.mark.parametrize("topology, n", CASES)
def test_mixing_matrix_is_doubly_stochastic_and_matches_the_exchange(topology, n):
    W = gs.mixing_matrix(topology, n)
    assert (W >= 0).all()
    assert_close(W.sum(axis=1), np.ones(n))
    assert_close(W.sum(axis=0), np.ones(n))
    if topology != "exponential" or n <= 3:          # exponential is directed from N = 4 on
        assert_close(W, W.T)
    for i in range(n):
        out, ins = gs.peers(topology, n, i)
        assert i not in out and len(set(out)) == len(out) == len(ins)
        for j in ins:                                # every receive has its send
            assert i in gs.peers(topology, n, j)[0]
    assert np.sort(np.abs(np.linalg.eigvals(W)))[-2] < 1 - 1e-9     # connected: the ranks reach consensus


def test_mixing_matrices_by_hand():
    third = 1 / 3
    assert_close(gs.mixing_matrix("ring", 4), np.array([[third, third, 0, third], [third, third, third, 0],
                                                        [0, third, third, third], [third, 0, third, third]]))
    assert_close(gs.mixing_matrix("ring", 2), np.full((2, 2), 0.5))   # one neighbour
    assert_close(gs.mixing_matrix("complete", 5), np.full((5, 5), 0.2))
    assert gs.grid(4) == (2, 2) and gs.grid(6) == (2, 3) and gs.grid(12) == (3, 4) and gs.grid(7) == (1, 7)
    assert gs.peers("torus", 4, 0) == ([1, 2], [1, 2])                # 2x2: up = down, left = right
    assert gs.peers("torus", 9, 4) == ([1, 3, 5, 7], [1, 3, 5, 7])
    assert gs.peers("exponential", 8, 0) == ([1, 2, 4], [4, 6, 7])
    W = gs.mixing_matrix("exponential", 5)
    assert_close(W[0], [0.25, 0.25, 0, 0.25, 0.25])       # 0 receives from 0 - 1, 0 - 2, 0 - 4 (mod 5)
    assert_close(W[:, 0], [0.25, 0.25, 0.25, 0, 0.25])    # and sends to 0 + 1, 0 + 2, 0 + 4


@pytest.mark.parametrize("topology, n", [("ring", 3), ("ring", 5), ("torus", 4), ("torus", 6),
                                         ("exponential", 5), ("complete", 3)])
def test_measured_payload_equals_the_formula(topology, n):
    got = run_sim(gs, n, [*SMALL, *SGD, "--epochs", "1", "--topology", topology])
    P, d = got["model"].num_params, len(gs.peers(topology, n, 0)[0])
    assert got["comm_agrees"]
    assert got["payload_messages"] == 4 * n * d                       # 4 steps, N ranks, d out-neighbours
    assert got["payload_bytes"] == 4 * n * d * 8 * P


def test_consensus_distance_is_zero_for_complete_and_positive_for_ring():
    argv = [*SMALL, *SGD, "--epochs", "1"]
    assert run_sim(gs, 4, [*argv, "--topology", "complete"])["consensus_distance"] < 1e-12
    ring = run_sim(gs, 4, [*argv, "--topology", "ring"])
    assert ring["consensus_distance"] > 1e-6
    assert not np.allclose(ring["model"].params, ring["average"].params, rtol=1e-6)


def test_runs_are_deterministic():
    argv = [*SMALL, "--epochs", "2", "--batch-size", "8", "--lr", "0.01", "--topology", "exponential"]
    a, b = run_sim(gs, 5, argv), run_sim(gs, 5, argv)
    np.testing.assert_array_equal(a["average"].params, b["average"].params)


def test_resume_restarts_every_rank_from_rank_0(tmp_path):
    """With the complete graph and plain SGD every rank holds rank 0's model: a resume changes nothing."""
    argv = [*SMALL, *SGD, "--epochs", "3", "--topology", "complete"]
    a = run_sim(gs, 3, [*argv, "--checkpoint", tmp_path / "a"])["model"]
    run_sim(gs, 3, [*argv, "--checkpoint", tmp_path / "b", "--stop-after", "1"])
    assert load_checkpoint(tmp_path / "b")[1]["epoch"] == 1
    b = run_sim(gs, 3, [*argv, "--checkpoint", tmp_path / "b", "--resume"])["model"]
    np.testing.assert_array_equal(a.params, b.params)


@pytest.mark.parametrize("argv, message", [
    (["--sim", "5", "--topology", "torus"], "--topology torus needs"),
    (["--sim", "2", "--topology", "torus"], "at least 4 ranks"),
    (["--sim", "1"], "--topology ring needs at least 2 ranks"),
    (["--sim", "2", "--batchnorm"], "--batchnorm is not supported by gossip"),
    (["--sim", "2", "--topology", "star"], "--topology"),
])
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        gs.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_a_world_too_small_for_the_topology_is_refused_by_rank_0():
    cfg = parse(gs, [*SMALL, "--sim", "4", "--topology", "torus"])
    with pytest.raises(RankError) as e:
        run_simulated(5, gs.PARADIGM.run_rank, cfg)                 # mpiexec -n 5: known only at launch
    assert e.value.rank == 0 and "--topology torus needs" in str(e.value.exc)


def test_defaults():
    assert parse(gs, ["--sim", "2"]).opts.topology == "ring"


@pytest.mark.timeout(120)
def test_under_mpiexec_matches_the_simulated_run(tmp_path):
    argv = ["--epochs", "2", "--hidden", "32", "--topology", "exponential"]
    metrics = tmp_path / "m.jsonl"
    res = run_mpi(2, "-m", "mpisim.gossip", *argv, "--metrics", str(metrics), "--checkpoint", str(tmp_path / "mpi"),
                  timeout=100)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 ranks (MPI)" in res.stdout and "consensus distance" in res.stdout
    assert "agrees" in res.stdout and "DIFFERS" not in res.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert len(records) == 2 and records[-1]["test_acc"] > 0.2 and "consensus_distance" in records[-1]
    assert gs.main([*argv, "--quiet", "--sim", "2", "--checkpoint", str(tmp_path / "sim")]) == 0
    a, b = load_checkpoint(tmp_path / "mpi")[0]["params"], load_checkpoint(tmp_path / "sim")[0]["params"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

