"""mpisim.paramserver: sync equals allreduce SGD; async and ssp apply stale pushes and record how stale."""
import json

import numpy as np
import pytest

from mpisim import allreduce as ar
from mpisim import paramserver as ps
from mpisim.train import load_checkpoint

from .helpers import SMALL, assert_close, run_sim

OPT = ["--optimizer", "adam", "--lr", "0.01", "--epochs", "2", "--batch-size", "12"]


@pytest.mark.parametrize("n, servers", [(2, 1), (4, 1), (5, 2), (6, 3)])
def test_sync_equals_allreduce_sgd(n, servers):
    """W = n - servers workers with global batch 12 compute what allreduce SGD on W ranks computes."""
    want = run_sim(ar, n - servers, [*SMALL, *OPT])["model"].params
    got = run_sim(ps, n, [*SMALL, *OPT, "--servers", servers])
    assert_close(got["model"].params, want)
    assert got["comm_agrees"]
    assert got["staleness_max"] == 0


def test_ssp_with_staleness_zero_is_sync():
    a = run_sim(ps, 4, [*SMALL, *OPT])["model"].params
    b = run_sim(ps, 4, [*SMALL, *OPT, "--mode", "ssp", "--staleness", "0"])["model"].params
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["async", "ssp"])
def test_async_and_ssp_apply_every_push_and_record_staleness(mode, tmp_path):
    metrics = tmp_path / "m.jsonl"
    got = run_sim(ps, 5, ["--epochs", "2", "--quiet", "--servers", "2", "--mode", mode, "--staleness", "1",
                          "--metrics", metrics])
    assert got["comm_agrees"] and got["test_acc"] > 0.8
    steps = -(-1437 // 64)
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        pushes = [w["pushes"] for w in r["workers"].values()]
        assert sorted(r["workers"]) == ["2", "3", "4"]
        assert sum(pushes) == 3 * steps                  # an epoch is W x (sync steps) pushes
        assert r["staleness_max"] >= 1                   # 3 workers interleave: some pushes are stale


def test_a_straggler_makes_fewer_pushes_in_async():
    got = run_sim(ps, 4, ["--epochs", "1", "--quiet", "--mode", "async", "--straggler", "3:6",
                          "--hidden", "256,128"])
    pushes = {int(r): w["pushes"] for r, w in got["workers"].items()}
    assert pushes[3] < min(pushes[1], pushes[2])


def test_sync_stopped_and_resumed_equals_uninterrupted(tmp_path):
    argv = [*SMALL, *OPT, "--epochs", "3", "--servers", "2"]
    a = run_sim(ps, 4, [*argv, "--checkpoint", tmp_path / "a"])["model"]
    run_sim(ps, 4, [*argv, "--checkpoint", tmp_path / "b", "--stop-after", "2"])
    b = run_sim(ps, 4, [*argv, "--checkpoint", tmp_path / "b", "--resume"])["model"]
    np.testing.assert_array_equal(a.params, b.params)
    arr_a, arr_b = load_checkpoint(tmp_path / "a")[0], load_checkpoint(tmp_path / "b")[0]
    for k in arr_a:                                       # the optimizer state, gathered from both servers
        np.testing.assert_array_equal(arr_a[k], arr_b[k], err_msg=k)


@pytest.mark.parametrize("argv, code, message", [
    (["--sim", "1"], 2, "needs at least 2 ranks"),
    (["--sim", "3", "--servers", "3"], 2, "--servers 3 leaves no worker on 3 ranks"),
    (["--sim", "3", "--servers", "0"], 2, "--servers must be at least 1"),
    (["--sim", "3", "--straggler", "0:2"], 2, "workers are ranks 1..2"),
    (["--sim", "3", "--straggler", "1:0.5"], 2, "FACTOR >= 1"),
    (["--sim", "3", "--batchnorm"], 2, "not supported"),
])
def test_bad_configurations_get_clear_errors(argv, code, message, capsys):
    try:
        got = ps.main([*argv, "--epochs", "1", "--quiet"])
    except SystemExit as e:
        got = e.code
    assert got == code
    assert message in capsys.readouterr().err


def test_a_diverging_worker_stops_the_run_naming_rank(capsys):
    assert ps.main(["--sim", "3", "--epochs", "1", "--quiet", "--inject-fault", "2:4:nan"]) == 1
    err = capsys.readouterr().err
    assert "rank 2 of 3" in err and "step 4" in err


F32 = [a if a != "float64" else "float32" for a in SMALL]     # the compressors work in float32


def test_pushes_compressed_exactly_change_nothing_and_fp16_pushes_half_the_bytes():
    plain = run_sim(ps, 3, [*F32, *OPT, "--servers", "2"])
    exact = run_sim(ps, 3, [*F32, *OPT, "--servers", "2", "--compress", "topk:1"])
    np.testing.assert_array_equal(exact["model"].params, plain["model"].params)   # the same values, summed alike
    half = run_sim(ps, 3, [*F32, *OPT, "--servers", "2", "--compress", "fp16"])
    assert half["comm_agrees"] and exact["comm_agrees"]
    # the pushes are half the payload; fp16 halves them: 3/4 of the bytes
    assert 4 * half["payload_bytes"] == 3 * plain["payload_bytes"]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("scheme", ["bf16", "randomk:0.5 --error-feedback", "signsgd"])
def test_every_point_to_point_scheme_matches_its_formula(mode, scheme):
    got = run_sim(ps, 3, [*F32, *OPT, "--mode", mode, "--compress", *scheme.split()])
    assert got["comm_agrees"]


def test_powersgd_cannot_compress_a_push(capsys):
    with pytest.raises(SystemExit) as e:
        ps.main(["--sim", "3", "--compress", "powersgd:2"])
    assert e.value.code == 2
    assert "cannot compress a push to a server" in capsys.readouterr().err
