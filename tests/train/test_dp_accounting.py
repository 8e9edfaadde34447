"""Privacy accounting of DP-FedAvg: epsilon after each round from Google's dp-accounting (RDP accountant)."""
import json
import math
import sys

import dp_accounting as dp                 # an install requirement (setup.cfg)
import numpy as np
import pytest
from dp_accounting import rdp

from mpisim import fedavg as fa
from mpisim.train.federated import dp_epsilon, make_strategy
from tests.paradigms.helpers import run_sim

DP = ["--rounds", "4", "--dp-clip", "1", "--dp-noise", "1.1", "--quiet"]


def _direct(z, q, rounds, delta):
    acc = rdp.RdpAccountant()
    acc.compose(dp.PoissonSampledDpEvent(q, dp.GaussianDpEvent(z)), rounds)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("z, q, rounds, delta", [(1.1, 0.1, 4, 1e-5), (0.7, 0.03, 50, 1e-6), (3.0, 1.0, 10, 1e-5)])
def test_epsilon_is_the_librarys(z, q, rounds, delta):
    assert dp_epsilon(z, q, rounds, delta) == _direct(z, q, rounds, delta)


def test_epsilon_grows_with_rounds_is_finite_and_falls_with_noise():
    eps = [dp_epsilon(1.0, 0.1, r, 1e-5) for r in range(1, 30)]
    assert all(math.isfinite(e) and e > 0 for e in eps)
    assert all(b > a for a, b in zip(eps, eps[1:]))
    by_noise = [dp_epsilon(z, 0.1, 10, 1e-5) for z in (0.6, 1.0, 2.0, 5.0)]
    assert all(b < a for a, b in zip(by_noise, by_noise[1:]))
    # sampling fewer clients a round spends less; a larger delta buys a smaller epsilon
    assert dp_epsilon(1.0, 0.05, 10, 1e-5) < dp_epsilon(1.0, 0.5, 10, 1e-5)
    assert dp_epsilon(1.0, 0.1, 10, 1e-3) < dp_epsilon(1.0, 0.1, 10, 1e-7)


def test_no_rounds_no_noise_and_bad_arguments():
    assert dp_epsilon(1.0, 0.1, 0, 1e-5) == 0.0
    assert dp_epsilon(0.0, 0.1, 3, 1e-5) == math.inf
    for args in [(-1.0, 0.1, 1, 1e-5), (math.nan, 0.1, 1, 1e-5), (1.0, 0.0, 1, 1e-5), (1.0, 1.5, 1, 1e-5),
                 (1.0, 0.1, -1, 1e-5), (1.0, 0.1, 1.5, 1e-5), (1.0, 0.1, 1, 0.0), (1.0, 0.1, 1, 1.0)]:
        with pytest.raises(ValueError):
            dp_epsilon(*args)
    # where the library's own arithmetic fails: a ValueError that says so, not a ZeroDivisionError
    for z in (1e-300, 1e300):
        with pytest.raises(ValueError, match="dp-accounting cannot compute epsilon"):
            dp_epsilon(z, 0.1, 3, 1e-5)


def test_the_strategy_accounts_with_its_sampling_rate():
    s = make_strategy(num_clients=40, fraction=0.25, seed=0, dp_clip=1.0, dp_noise=0.9)
    assert s.sampling_rate() == 10 / 40
    assert s.epsilon(7, 1e-5) == _direct(0.9, 0.25, 7, 1e-5)
    assert make_strategy(num_clients=40, fraction=0.25, seed=0).epsilon(7, 1e-5) is None


def test_each_round_records_and_prints_its_epsilon(tmp_path, capsys):
    metrics = tmp_path / "m.jsonl"
    assert fa.main(["--sim", "3", *DP[:-1], "--metrics", str(metrics)]) == 0
    out = capsys.readouterr().out
    recs = [json.loads(line) for line in metrics.read_text().splitlines()]
    eps = [r["epsilon"] for r in recs]
    assert eps == [_direct(1.1, 10 / 100, r, 1e-5) for r in (1, 2, 3, 4)]       # m / K = 10 / 100
    assert all(r["delta"] == 1e-5 for r in recs) and eps == sorted(eps)
    for r, e in enumerate(eps, 1):
        assert f"privacy: epsilon {e:.4g} at delta 1e-05 after {r} round" in out
    assert "sampling rate m/K = 0.1" in out


def test_dp_delta_sets_delta(tmp_path):
    metrics = tmp_path / "m.jsonl"
    run_sim(fa, 3, [*DP, "--dp-delta", "1e-8", "--metrics", metrics])
    last = json.loads(metrics.read_text().splitlines()[-1])
    assert last["delta"] == 1e-8 and last["epsilon"] == _direct(1.1, 0.1, 4, 1e-8) > _direct(1.1, 0.1, 4, 1e-5)


def test_a_resumed_run_counts_the_rounds_before_it(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run_sim(fa, 3, [*DP, "--metrics", a])
    run_sim(fa, 3, [*DP, "--checkpoint", tmp_path / "ck", "--stop-after", "2", "--metrics", b])
    run_sim(fa, 3, [*DP, "--checkpoint", tmp_path / "ck", "--resume", "--metrics", b])
    eps = lambda p: [json.loads(line)["epsilon"] for line in p.read_text().splitlines()]   # noqa: E731
    assert eps(b) == eps(a) and len(eps(a)) == 4


def test_without_noise_epsilon_is_infinite_and_needs_no_library(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "dp_accounting", None)          # as if it were not installed
    metrics = tmp_path / "m.jsonl"
    assert fa.main(["--sim", "3", "--rounds", "2", "--dp-clip", "1", "--metrics", str(metrics)]) == 0
    out = capsys.readouterr().out
    assert "no differential-privacy guarantee" in out and "privacy: epsilon" not in out
    assert all(json.loads(line)["epsilon"] is None for line in metrics.read_text().splitlines())   # inf -> null


def test_a_missing_library_is_a_clear_usage_error_only_with_noise(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dp_accounting", None)
    with pytest.raises(SystemExit) as e:
        fa.main(["--sim", "3", "--rounds", "1", "--dp-clip", "1", "--dp-noise", "1", "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "pip install dp-accounting" in err and "Traceback" not in err
    with pytest.raises(ImportError, match="pip install dp-accounting"):
        dp_epsilon(1.0, 0.1, 1, 1e-5)


@pytest.mark.parametrize("argv, message", [
    (["--dp-delta", "1e-6"], "--dp-delta is the delta of the epsilon reported under --dp-clip"),
    (["--dp-clip", "1", "--dp-delta", "1"], "a number in (0, 1)"),
    (["--dp-clip", "1", "--dp-delta", "0"], "a number in (0, 1)"),
    (["--dp-clip", "1", "--dp-delta", "nan"], "a number in (0, 1)"),
    (["--dp-clip", "1", "--dp-delta", "1e-320"], "at least 2.3e-308"),        # subnormal: 0 once flushed
    (["--dp-clip", "1", "--dp-noise", "1e-300"], "--dp-noise must be 0 or between 1e-06 and 1e+06"),
    (["--dp-clip", "1", "--dp-noise", "1e300"], "--dp-noise must be 0 or between 1e-06 and 1e+06"),
    (["--dp-clip", "1e-320"], "at least 2.3e-308"),
])
def test_dp_option_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        fa.main(["--sim", "3", "--rounds", "1", "--quiet", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_accounting_leaves_the_training_alone():
    """epsilon is a report: the parameters of a DP run are those of the same run's noise and clipping."""
    a = run_sim(fa, 3, DP)["model"].params
    b = run_sim(fa, 3, [*DP, "--dp-delta", "1e-9"])["model"].params
    np.testing.assert_array_equal(a, b)
