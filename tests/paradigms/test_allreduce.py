"""mpisim.allreduce: N ranks with global batch B compute what one process computes with batch B."""
import json

import numpy as np
import pytest

from mpisim import allreduce as ar
from mpisim.comm.costs import allreduce_traffic
from mpisim.train import load_checkpoint

from .helpers import SMALL, assert_close, parse, run_centralized, run_sim

OPT = ["--optimizer", "momentum", "--lr", "0.1", "--epochs", "2", "--batch-size", "12"]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_equivalent_to_centralized_in_float64(n):
    """40 training examples in batches of 12: 2 epochs of 4 steps, the last batch of 4 split unequally
    over 3 ranks: equal to rounding on any rank count."""
    want = run_centralized([*SMALL, *OPT]).params
    got = run_sim(ar, n, [*SMALL, *OPT])
    assert got["steps"] == 8
    assert_close(got["model"].params, want)


@pytest.mark.parametrize("algorithm", ["ring", "tree", "naive", "recursive_doubling", "rabenseifner"])
def test_every_algorithm_buckets_and_overlap_give_the_same_model(algorithm):
    want = run_centralized([*SMALL, *OPT]).params
    got = run_sim(ar, 3, [*SMALL, *OPT, "--algorithm", algorithm, "--bucket-mb", "0.0002", "--overlap"])
    assert_close(got["model"].params, want)
    assert got["comm_agrees"]


def test_sync_bn_matches_centralized_batchnorm_and_local_bn_does_not():
    argv = [*SMALL, *OPT, "--batchnorm", "--hidden", "6,5"]
    want = run_centralized(argv)
    synced = run_sim(ar, 3, [*argv, "--sync-bn"])["model"]
    assert_close(synced.params, want.params)
    assert_close(synced.buffers, want.buffers)          # running statistics of the global batch
    local = run_sim(ar, 3, [*argv, "--bucket-mb", "0.0001", "--overlap", "--sync-bn"])["model"]
    assert_close(local.params, want.params)
    # without --sync-bn the statistics are per rank: a different computation (the test can fail)
    unsynced = run_sim(ar, 3, argv)["model"]
    assert not np.allclose(unsynced.params, want.params, rtol=1e-6)


def test_buckets_are_whole_layers_covering_the_vector_last_layer_first():
    from mpisim.nn import MLP
    m = MLP([20, 30, 40, 10])
    buckets = ar.plan_buckets(m, 1000 * 4)
    assert buckets[0][1] == m.num_params and buckets[-1][0] == 0
    for (lo, _, _), (_, hi, _) in zip(buckets, buckets[1:]):
        assert hi == lo                                   # contiguous, descending
    starts = {off for _, name, off, _ in m.slices if name == "W"}
    assert all(lo in starts for lo, _, _ in buckets)      # cut at layer boundaries
    assert ar.plan_buckets(m, 0) == [(0, m.num_params, 0)]


def test_measured_bytes_equal_the_formula_per_epoch(tmp_path):
    metrics = tmp_path / "m.jsonl"
    got = run_sim(ar, 4, [*SMALL, *OPT, "--algorithm", "ring", "--metrics", metrics])
    P = got["model"].num_params
    msgs, nbytes = allreduce_traffic("ring", P, 8, 4)
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        assert r["payload_bytes"] == 4 * nbytes and r["payload_messages"] == 4 * msgs
    assert got["comm_agrees"]


def test_stopped_and_resumed_equals_uninterrupted(tmp_path):
    argv = [*SMALL, "--epochs", "3", "--batch-size", "8", "--optimizer", "adam", "--lr", "0.01"]
    a = run_sim(ar, 3, [*argv, "--checkpoint", tmp_path / "a"])["model"]
    run_sim(ar, 3, [*argv, "--checkpoint", tmp_path / "b", "--stop-after", "1"])
    assert load_checkpoint(tmp_path / "b")[1]["epoch"] == 1
    b = run_sim(ar, 3, [*argv, "--checkpoint", tmp_path / "b", "--resume"])["model"]
    np.testing.assert_array_equal(a.params, b.params)
    # a resume with another rank count is refused, by rank 0, with the option named
    assert ar.main([*map(str, argv), "--checkpoint", str(tmp_path / "b"), "--resume", "--sim", "2"]) == 1


def test_nan_stops_the_run_naming_rank_and_step_and_keeps_the_checkpoint(tmp_path, capsys):
    ck = tmp_path / "ck"
    # digits, batch 64: 23 steps per epoch; the fault at rank 2's step 30 is in epoch 2
    code = ar.main(["--sim", "3", "--epochs", "3", "--quiet", "--checkpoint", str(ck), "--inject-fault", "2:30:nan"])
    assert code == 1
    err = capsys.readouterr().err
    assert "rank 2 of 3" in err and "epoch 2, step 7" in err and "nan" in err
    assert "the NaN --inject-fault 2:30:nan put into the batch" in err and "lower --lr" not in err
    assert load_checkpoint(ck)[1]["epoch"] == 1


def test_an_exception_on_one_rank_ends_the_job_naming_it(capsys):
    assert ar.main(["--sim", "4", "--epochs", "1", "--quiet", "--inject-fault", "3:2:raise"]) == 1
    assert "rank 3 of 4 failed: fault injected" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--sim", "2", "--algorithm", "mpi"], "run under mpiexec"),
    (["--algorithm", "mpi"], "run under mpiexec"),                  # a simulated cluster by default
    (["--sim", "2", "--sync-bn"], "--sync-bn needs --batchnorm"),
    (["--sim", "2", "--bucket-mb", "-1"], "--bucket-mb"),
    (["--sim", "0"], "--sim"),
    (["--sim", "2", "--inject-fault", "1:0:raise"], "RANK:STEP:KIND"),
    (["--sim", "2", "--inject-fault", "1:3:kill"], "under mpiexec"),
])
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        ar.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_batch_smaller_than_ranks_still_matches():
    argv = [*SMALL, "--optimizer", "sgd", "--lr", "0.1", "--epochs", "1", "--batch-size", "3"]
    assert_close(run_sim(ar, 4, argv)["model"].params, run_centralized(argv).params)


def test_defaults():
    o = parse(ar, ["--sim", "2"]).opts
    assert o.algorithm == "auto" and o.bucket_mb == 0 and not o.overlap


# ---- --compress ---------------------------------------------------------------------------------------------
SCHEMES = ["none", "fp16", "bf16", "topk:0.2", "randomk:0.2", "signsgd", "powersgd:2"]
F32 = [*SMALL, "--dtype", "float32", "--optimizer", "momentum", "--lr", "0.1", "--batch-size", "12"]


def every_rank_params(n, argv):
    """Every rank's parameters after the run (the runtime's loop on each simulated rank)."""
    from mpisim.comm import run_simulated
    from mpisim.nn import flush_denormals
    from mpisim.train.runtime import Run
    cfg = parse(ar, [*argv, "--sim", n])

    def body(t, c):
        flush_denormals()
        run = Run(t, ar.PARADIGM, c)
        role = ar.DataParallel(run)
        try:
            run.loop(role)
        finally:
            role.close()
        return run.model.params.copy()
    return run_simulated(n, body, cfg)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_compressed_replicas_stay_bit_identical(scheme):
    """2 epochs of 4 steps on 3 ranks, buckets of one layer each, overlapped: every rank ends with the same bits."""
    ef = ["--error-feedback"] if scheme in ("topk:0.2", "signsgd") else []
    params = every_rank_params(3, [*F32, "--epochs", "2", "--compress", scheme, *ef, "--bucket-mb", "0.0001",
                                   "--overlap"])
    for p in params[1:]:
        np.testing.assert_array_equal(p, params[0])
    assert np.isfinite(params[0]).all()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n, buckets", [(2, "0"), (3, "0.0001")])
def test_compressed_bytes_equal_the_closed_form_and_the_record_has_the_ratio(scheme, n, buckets, tmp_path):
    from mpisim.train.compress import make_compressor, sub_layout
    metrics = tmp_path / "m.jsonl"
    got = run_sim(ar, n, [*F32, "--epochs", "2", "--compress", scheme, "--bucket-mb", buckets, "--metrics", metrics])
    assert got["comm_agrees"] and "matches the formula" in got["summary"]
    model = got["model"]
    comp = make_compressor(scheme, layout=model.slices)
    step_bytes = plain = 0
    for lo, hi, _ in ar.plan_buckets(model, float(buckets) * 2**20):
        step_bytes += comp.traffic(hi - lo, n, sub_layout(model.slices, lo, hi))[1]
        plain += allreduce_traffic("auto", hi - lo, 4, n)[1]
    for line in metrics.read_text().splitlines():
        r = json.loads(line)                      # 40 examples in batches of 12: 4 steps per epoch
        assert r["payload_bytes"] == 4 * step_bytes
        assert r["compression"] == pytest.approx(plain / step_bytes)
        assert (r["compression"] > 1) == (scheme != "none")      # topk:0.2 on 3 ranks: only 1.4x (indices, N copies)


def test_compression_in_float64_and_with_named_algorithms_agrees():
    for extra in (["--compress", "fp16"], ["--compress", "powersgd:1", "--algorithm", "ring"],
                  ["--compress", "topk:0.5", "--algorithm", "recursive_doubling", "--error-feedback"]):
        got = run_sim(ar, 3, [*SMALL, *OPT, *extra])
        assert got["comm_agrees"], extra
        assert np.isfinite(got["model"].params).all()


def test_the_header_names_the_scheme(capsys):
    assert ar.main(["--sim", "2", "--epochs", "1", "--compress", "topk:0.01", "--error-feedback"]) == 0
    out = capsys.readouterr().out
    assert "compression topk:0.01 with error feedback, 49.8x fewer payload bytes" in out
    assert "S·((N-1)·N·8k, k = ⌈0.01·P⌉)" in out and "matches the formula" in out


@pytest.mark.parametrize("argv, message", [
    (["--compress", "gzip"], "unknown compression scheme 'gzip'"),
    (["--compress", "topk:0"], "RATIO must be in (0, 1], got 0"),
    (["--compress", "randomk:1.5"], "RATIO must be in (0, 1], got 1.5"),
    (["--compress", "powersgd:0"], "RANK must be an integer >= 1"),
    (["--compress", "powersgd:11"], "use a rank of at most 10"),           # digits 64-128-64-10: W 64x10
    (["--compress", "powersgd:7", *SMALL], "use a rank of at most 6"),      # 8-6-10
    (["--compress", "fp16", "--algorithm", "mpi"], "cannot carry a compressed gradient"),
    (["--error-feedback"], "--error-feedback keeps what a compression leaves out: it needs --compress"),
    (["--compress", "topk:0.1", "--algorithm", "tree"], "algorithm 'tree'"),
    (["--compress", "fp16", "--algorithm", "rabenseifner"], "its own 16-bit ring"),
])
def test_compression_usage_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        ar.main(["--sim", "2", *map(str, argv)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_one_rank_is_the_centralized_trainer(precision):
    argv = ["--epochs", "2", "--hidden", "16", "--quiet", "--precision", precision]
    np.testing.assert_array_equal(run_sim(ar, 1, argv)["model"].params, run_centralized(argv).params)


def test_mixed_precision_fp16_resume_is_exact_and_the_records_hold_the_scale(tmp_path):
    argv = ["--epochs", "3", "--hidden", "16", "--quiet", "--precision", "fp16", "--metrics", tmp_path / "m.jsonl"]
    a = run_sim(ar, 2, [*argv, "--checkpoint", tmp_path / "a"])
    run_sim(ar, 2, [*argv, "--checkpoint", tmp_path / "b", "--stop-after", "1"])
    b = run_sim(ar, 2, [*argv, "--checkpoint", tmp_path / "b", "--resume"])
    np.testing.assert_array_equal(a["model"].params, b["model"].params)
    assert a["loss_scale"] == 2.0 ** 16 and a["skipped_steps"] == 0


@pytest.mark.parametrize("module, argv, message", [
    ("localsgd", ["--precision", "fp16"], "--precision fp16 is not supported by localsgd"),
    ("allreduce", ["--precision", "fp16", "--compress", "signsgd"], "infinite scale"),
    ("allreduce", ["--precision", "fp16", "--compress", "randomk:0.1"], "an overflow elsewhere would go unseen"),
    ("allreduce", ["--compress", "topk:1e-99999999"], "RATIO must be in (0, 1], got 1e-99999999"),
    ("allreduce", ["--precision", "fp16", "--compress", "topk:0.1", "--error-feedback"], "--precision bf16"),
    ("allreduce", ["--precision", "bf16", "--dtype", "float64"], "--precision"),
])
def test_mixed_precision_usage_errors(module, argv, message, capsys):
    import importlib
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"mpisim.{module}").main(["--sim", "2", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
