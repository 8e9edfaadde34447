"""The paradigms under real mpiexec: same code as --sim, other transport; failures end the job fast."""
import json
import time

import numpy as np
import pytest

from tests.mpirun import run_mpi

SMALL = ["--epochs", "1", "--hidden", "32", "--quiet"]


@pytest.mark.timeout(120)
def test_allreduce_under_mpi_matches_the_simulated_run(tmp_path):
    res = run_mpi(2, "-m", "mpisim.allreduce", *SMALL, "--algorithm", "ring", "--bucket-mb", "0.01", "--overlap",
                  "--checkpoint", str(tmp_path / "mpi"), timeout=100)
    assert res.returncode == 0, res.stdout + res.stderr
    from mpisim import allreduce as ar
    from mpisim.train import load_checkpoint
    assert ar.main([*SMALL, "--sim", "2", "--algorithm", "ring", "--checkpoint", str(tmp_path / "sim")]) == 0
    a, b = load_checkpoint(tmp_path / "mpi")[0]["params"], load_checkpoint(tmp_path / "sim")[0]["params"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)   # buckets change the summation order only


@pytest.mark.timeout(120)
def test_mpi_allreduce_baseline_and_the_table():
    res = run_mpi(2, "-m", "mpisim.allreduce", "--epochs", "1", "--hidden", "32", "--algorithm", "mpi", timeout=100)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 ranks (MPI)" in res.stdout and "invisible to mpisim" in res.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv", [["-m", "mpisim.paramserver", "--mode", "async", "--epochs", "2"],
                                  ["-m", "mpisim.paramserver", "--mode", "sync", "--epochs", "2"],
                                  ["-m", "mpisim.fedavg", "--rounds", "2"]])
def test_paramserver_and_fedavg_under_mpi(argv, tmp_path):
    metrics = tmp_path / "m.jsonl"
    res = run_mpi(3, *argv, "--hidden", "32", "--metrics", str(metrics), timeout=100)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "(MPI)" in res.stdout and res.stdout.count("agrees") == 2 and "DIFFERS" not in res.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert len(records) == 2 and records[-1]["test_acc"] > 0.2     # learned beyond chance (0.1)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv", [["-m", "mpisim.localsgd", "--sync-every", "3"],
                                  ["-m", "mpisim.easgd", "--mode", "async", "--lr", "0.005"]])
def test_localsgd_and_easgd_under_mpi(argv, tmp_path):
    metrics = tmp_path / "m.jsonl"
    res = run_mpi(2, *argv, "--epochs", "2", "--hidden", "32", "--metrics", str(metrics), timeout=100)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "(MPI)" in res.stdout and "  agrees" in res.stdout and "DIFFERS" not in res.stdout
    assert "matches the formula" in res.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert len(records) == 2 and records[-1]["test_acc"] > 0.2     # learned beyond chance (0.1)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("n, module, argv", [
    (2, "pipeline", ["--hidden", "32,16", "--schedule", "gpipe", "--micro-batches", "3"]),
    (2, "tensor", ["--hidden", "32,16,8", "--dropout", "0.1", "--algorithm", "ring"]),
    (2, "zero", ["--hidden", "32", "--stage", "3", "--algorithm", "ring"]),
    (4, "hybrid", ["--hidden", "32,16", "--dp", "2", "--pp", "2", "--algorithm", "ring"]),
])
def test_model_parallel_paradigms_under_mpi_match_the_simulated_run(n, module, argv, tmp_path):
    """The same model under mpiexec as with --sim (the groups of ranks are MPI's Comm_split there)."""
    argv = [*argv, "--epochs", "1"]
    res = run_mpi(n, "-m", f"mpisim.{module}", *argv, "--checkpoint", str(tmp_path / "mpi"), timeout=200)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "(MPI)" in res.stdout and "DIFFERS" not in res.stdout and "matches the formula" in res.stdout
    import importlib
    from mpisim.train import load_checkpoint
    main = importlib.import_module(f"mpisim.{module}").main
    assert main([*argv, "--quiet", "--sim", str(n), "--checkpoint", str(tmp_path / "sim")]) == 0
    a, b = load_checkpoint(tmp_path / "mpi")[0]["params"], load_checkpoint(tmp_path / "sim")[0]["params"]
    np.testing.assert_array_equal(a, b)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("argv", [["--compress", "powersgd:2"], ["--compress", "topk:0.05", "--error-feedback"],
                                  ["--compress", "fp16", "--precision", "bf16"]])
def test_compressed_allreduce_under_mpi_matches_the_simulated_run(argv, tmp_path):
    argv = ["--epochs", "1", "--hidden", "32", "--algorithm", "ring", *argv]
    res = run_mpi(2, "-m", "mpisim.allreduce", *argv, "--checkpoint", str(tmp_path / "mpi"), timeout=200)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "(MPI)" in res.stdout and "matches the formula" in res.stdout
    from mpisim import allreduce as ar
    from mpisim.train import load_checkpoint
    assert ar.main([*argv, "--quiet", "--sim", "2", "--checkpoint", str(tmp_path / "sim")]) == 0
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "mpi")[0]["params"],
                                  load_checkpoint(tmp_path / "sim")[0]["params"])


@pytest.mark.timeout(120)
def test_sim_under_mpiexec_is_a_usage_error_said_once():
    res = run_mpi(2, "-m", "mpisim.localsgd", "--sim", "2", "--quiet", timeout=60)
    assert res.returncode == 2
    assert res.stderr.count("runs simulated ranks in one process") == 1 and "Traceback" not in res.stderr


@pytest.mark.timeout(120)
def test_paramserver_on_one_rank_is_a_clear_error():
    res = run_mpi(1, "-m", "mpisim.paramserver", "--quiet", timeout=60)
    assert res.returncode == 2
    assert "needs at least 2 ranks" in res.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("module", ["mpisim.allreduce", "mpisim.paramserver", "mpisim.pipeline", "mpisim.tensor",
                                    "mpisim.zero"])
def test_an_exception_on_a_rank_ends_the_job_naming_it(module):
    res = run_mpi(2, "-m", module, *SMALL, "--inject-fault", "1:3:raise", timeout=60)
    assert res.returncode != 0
    assert "rank 1 of 2 failed with RuntimeError: fault injected on rank 1 at step 3" in res.stderr


@pytest.mark.timeout(120)
def test_nan_under_mpi_names_rank_and_step():
    res = run_mpi(2, "-m", "mpisim.allreduce", *SMALL, "--inject-fault", "0:5:nan", timeout=60)
    assert res.returncode != 0
    assert "error: rank 0 of 2: loss became nan at epoch 1, step 5" in res.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("module", ["mpisim.allreduce", "mpisim.fedavg"])
def test_a_rank_killed_with_sigkill_ends_the_job_within_seconds(module):
    """Rank 1 kills itself (SIGKILL) mid-run; the others would wait for it forever: mpiexec must end them."""
    start = time.monotonic()
    res = run_mpi(2, "-m", module, "--quiet", "--inject-fault", "1:2:kill", timeout=60)
    elapsed = time.monotonic() - start
    assert res.returncode != 0
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end after a rank was killed"
