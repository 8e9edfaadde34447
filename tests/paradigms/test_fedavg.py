"""mpisim.fedavg: the FedAvg loop on simulated ranks (the strategy's math is tested in tests/train)."""
import json

import numpy as np
import pytest

from mpisim import fedavg as fa
from mpisim.train import load_checkpoint

from .helpers import SMALL, assert_close, run_centralized, run_sim

FAST = ["--rounds", "4", "--quiet"]


def test_default_learns_and_the_bytes_agree_with_the_formula(tmp_path):
    metrics = tmp_path / "m.jsonl"
    got = run_sim(fa, 3, ["--rounds", "12", "--quiet", "--metrics", metrics])
    assert got["test_acc"] > 0.85 and got["comm_agrees"]
    P = got["model"].num_params
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        assert r["clients"] == 10 and r["accepted"] == 10 and r["rejected"] == []
        assert r["server_payload_bytes"] == 10 * P * 4 and r["server_payload_messages"] == 10


def test_the_result_does_not_depend_on_the_number_of_ranks():
    a = run_sim(fa, 2, FAST)["model"].params
    b = run_sim(fa, 5, FAST)["model"].params
    np.testing.assert_array_equal(a, b)


def test_fedsgd_with_every_client_is_full_batch_gradient_descent():
    """E=1, B=inf, C=1, SGD: the weighted average of the clients' steps is one full-batch step."""
    argv = [*SMALL, "--optimizer", "sgd", "--lr", "0.3"]
    fed = run_sim(fa, 3, [*argv, "--rounds", "3", "--clients", "7", "--fraction", "1", "--local-epochs", "1",
                          "--local-batch", "inf"])["model"]
    want = run_centralized([*argv, "--epochs", "3", "--batch-size", "40"])
    assert_close(fed.params, want.params)


def test_secure_aggregation_gives_the_plain_average():
    plain = run_sim(fa, 3, FAST)
    secure = run_sim(fa, 3, [*FAST, "--secure-agg"])
    np.testing.assert_allclose(secure["model"].params, plain["model"].params, atol=1e-6)
    assert secure["comm_agrees"]


@pytest.mark.parametrize("kind", ["nan", "size"])
def test_a_bad_update_is_rejected_with_a_reason_not_averaged(kind, tmp_path, capsys):
    metrics = tmp_path / "m.jsonl"
    got = run_sim(fa, 3, ["--rounds", "2", "--fraction", "1", "--clients", "20", "--bad-client", f"7:{kind}",
                          "--metrics", metrics])
    assert np.isfinite(got["model"].params).all() and got["test_acc"] > 0.5
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        assert r["accepted"] == 19 and [x["client"] for x in r["rejected"]] == [7]
        assert ("non-finite" if kind == "nan" else "elements, expected") in r["rejected"][0]["reason"]
    assert "client 7 rejected" in capsys.readouterr().out


def test_dp_clipping_and_noise_run_and_noise_changes_the_model():
    a = run_sim(fa, 3, [*FAST, "--dp-clip", "1"])["model"].params
    b = run_sim(fa, 3, [*FAST, "--dp-clip", "1", "--dp-noise", "1"])["model"].params
    assert np.isfinite(b).all() and not np.allclose(a, b)


def test_partition_plot_and_non_iid_partitions(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra) not installed")
    png = tmp_path / "new" / "folder" / "parts.png"          # missing folders are created
    assert fa.main(["--sim", "3", "--rounds", "1", "--partition", "shards", "--plot-partition", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2.0 classes per client" in capsys.readouterr().out
    assert fa.main(["--sim", "3", "--rounds", "1", "--partition", "dirichlet", "--quiet"]) == 0
    # too skewed for 100 clients on 1,437 examples: a clear error, not an empty client
    assert fa.main(["--sim", "3", "--rounds", "1", "--partition", "dirichlet", "--alpha", "0.1", "--quiet"]) == 1
    assert "raise alpha" in capsys.readouterr().err


def test_stopped_and_resumed_equals_uninterrupted(tmp_path):
    a = run_sim(fa, 3, [*FAST, "--checkpoint", tmp_path / "a"])["model"]
    run_sim(fa, 3, [*FAST, "--checkpoint", tmp_path / "b", "--stop-after", "2"])
    assert load_checkpoint(tmp_path / "b")[1]["epoch"] == 2
    b = run_sim(fa, 3, [*FAST, "--checkpoint", tmp_path / "b", "--resume"])["model"]
    np.testing.assert_array_equal(a.params, b.params)


@pytest.mark.parametrize("argv, code, message", [
    (["--sim", "1"], 2, "at least 2 ranks"),
    (["--fraction", "0"], 2, "--fraction"),
    (["--fraction", "1.5"], 2, "--fraction must be in (0, 1]"),
    (["--dp-noise", "1"], 2, "--dp-noise needs --dp-clip"),
    (["--local-batch", "0"], 2, "positive integer or inf"),
    (["--bad-client", "100:nan"], 2, "clients are 0..99"),
    (["--clients", "5000"], 1, "more than the 1437 training examples"),
    (["--plot-partition", "x.svg"], 2, "PNG"),
    (["--inject-fault", "1:1:nan"], 2, "use --bad-client CLIENT:nan"),
    (["--plot-partition", "setup.cfg/x.png"], 2, "is a file, not a directory"),
])
def test_bad_options_get_clear_errors(argv, code, message, capsys):
    try:
        got = fa.main(["--sim", "3", *argv, "--rounds", "1", "--quiet"] if "--sim" not in argv else
                      [*argv, "--rounds", "1", "--quiet"])
    except SystemExit as e:
        got = e.code
    assert got == code
    assert message in capsys.readouterr().err
