"""FedAvg against attacking clients: the server's header checks and norm bound, the robust rules (median,
trimmed mean, Krum, Multi-Krum), the attacks, and the table's claim on a small setting."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mpisim import fedavg as fa
from mpisim.train.federated import (
    Attack, CoordinateMedian, Krum, NormBound, TrimmedMean, WeightedAverage, aggregate_problem, check_claim,
    check_header, check_report, choose_attackers, clip_update, coordinate_median, krum_scores, krum_select,
    make_strategy, parse_aggregate, parse_attack, trimmed_mean, update_norm)
from tests.paradigms.helpers import run_sim

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--rounds", "3", "--clients", "20", "--fraction", "0.5", "--local-epochs", "1", "--quiet"]


def _updates(k=7, size=50, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(size).astype(dtype) for _ in range(k)]


# ---- the robust rules, against their definitions -----------------------------------------------

def test_median_and_trimmed_mean_are_their_formulas():
    us = _updates(k=7)
    U = np.stack(us).astype(np.float64)
    np.testing.assert_array_equal(coordinate_median(us), np.median(U, axis=0))
    for beta, k in [(0.1, 0), (0.15, 1), (0.3, 2), (0.49, 3)]:          # floor(beta * 7) dropped at each end
        want = np.array([np.sort(U[:, j])[k:7 - k].mean() for j in range(U.shape[1])])
        np.testing.assert_allclose(trimmed_mean(us, beta), want, rtol=1e-12, atol=1e-15)
    assert coordinate_median(us).dtype == trimmed_mean(us, 0.2).dtype == np.float64
    many = _updates(k=100, size=5, seed=9)            # beta as written: 0.29 x 100 drops 29 at each end
    M = np.sort(np.stack(many).astype(np.float64), axis=0)
    np.testing.assert_allclose(trimmed_mean(many, 0.29), M[29:71].mean(axis=0), rtol=1e-12)
    even = [np.array([1.0, 5.0]), np.array([2.0, 6.0]), np.array([3.0, 7.0]), np.array([40.0, -80.0])]
    np.testing.assert_array_equal(coordinate_median(even), [2.5, 5.5])    # the mean of the middle two


def test_median_and_trimmed_mean_ignore_a_minority_of_huge_values():
    honest = _updates(k=8, seed=1)
    bad = [np.full(50, 1e30, np.float32), np.full(50, -1e30, np.float32)]
    lo, hi = np.min(honest, axis=0), np.max(honest, axis=0)
    for got in (coordinate_median(honest + bad), trimmed_mean(honest + bad, 0.2)):
        assert np.all(got >= lo) and np.all(got <= hi)                   # within the honest range, coordinate-wise


def test_krum_scores_are_the_sum_of_the_nearest_squared_distances():
    us = _updates(k=9, seed=2)
    U = np.stack(us).astype(np.float64)
    for f in (0, 1, 3):
        near = 9 - f - 2
        want = [sorted(float(np.sum((U[i] - U[j]) ** 2)) for j in range(9) if j != i)[:near] for i in range(9)]
        np.testing.assert_allclose(krum_scores(us, f), [sum(w) for w in want], rtol=1e-12)
    assert krum_scores(us[:1], 2).tolist() == [0.0]
    # too few updates for f (after rejections): the neighbour count is kept at 1..k-1, not an error
    assert np.isfinite(krum_scores(us[:3], 5)).all()


def test_krum_never_picks_an_outlier_and_multi_krum_averages_the_best():
    rng = np.random.default_rng(3)
    honest = [(1 + 0.01 * rng.standard_normal(40)).astype(np.float32) for _ in range(7)]
    bad = [np.full(40, 50.0, np.float32), (-3 + rng.standard_normal(40)).astype(np.float32)]
    us = honest[:3] + bad + honest[3:]                                  # the attackers in the middle
    assert krum_select(us, 2, 1)[0] not in (3, 4)
    picks = krum_select(us, 2, 5)
    assert len(picks) == 5 and not set(picks.tolist()) & {3, 4}
    got = Krum(f=2, select=5).combine(us, [10] * 9, 0)
    np.testing.assert_allclose(got, np.mean([us[i].astype(np.float64) for i in picks], axis=0), rtol=1e-6)
    one = Krum(f=2).combine(us, [10] * 9, 0)
    np.testing.assert_array_equal(one, us[krum_select(us, 2)[0]].astype(np.float64))


def test_multi_krum_weighs_its_picks_by_examples_or_equally():
    us = _updates(k=6, seed=4)
    counts = [10, 200, 30, 4, 50, 60]
    picks = krum_select(us, 1, 3)
    w = Krum(f=1, select=3).combine(us, counts, 0)
    want = sum(counts[i] * us[i].astype(np.float64) for i in picks) / sum(counts[i] for i in picks)
    np.testing.assert_allclose(w, want, rtol=1e-6, atol=1e-7)
    eq = Krum(f=1, select=3, equal=True).combine(us, counts, 0)
    np.testing.assert_allclose(eq, np.mean([us[i].astype(np.float64) for i in picks], axis=0), rtol=1e-6, atol=1e-7)


def test_robust_rules_check_their_inputs():
    with pytest.raises(ValueError, match="empty"):
        coordinate_median([])
    with pytest.raises(ValueError, match="updates\\[1\\]"):
        trimmed_mean([np.zeros(3), np.zeros(4)], 0.1)
    with pytest.raises(ValueError, match="beta"):
        trimmed_mean([np.zeros(3)], 0.5)
    with pytest.raises(ValueError, match="f must be"):
        krum_scores([np.zeros(3)], -1)


@pytest.mark.parametrize("text, rule", [
    ("mean", WeightedAverage()), ("median", CoordinateMedian()), ("trimmed-mean:0.2", TrimmedMean(beta=0.2)),
    ("krum:3", Krum(f=3)), ("multi-krum:2,5", Krum(f=2, select=5))])
def test_parse_aggregate(text, rule):
    got = parse_aggregate(text)
    assert got == rule and type(got) is type(rule) and got.spec() == text
    assert parse_aggregate(text, equal=True).equal is True


@pytest.mark.parametrize("text, message", [
    ("avg", "expected mean, median"), ("median:3", "expected mean"), ("trimmed-mean", "expected mean"),
    ("trimmed-mean:0.5", "0 < BETA < 0.5"), ("trimmed-mean:nan", "0 < BETA < 0.5"), ("krum", "expected mean"),
    ("krum:-1", "F >= 0"), ("krum:1.5", "expected mean"), ("multi-krum:2", "expected mean"),
    ("multi-krum:2,0", "M >= 1")])
def test_parse_aggregate_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_aggregate(text)


def test_aggregate_problem_says_when_a_round_is_too_small():
    assert aggregate_problem(parse_aggregate("krum:3"), 9) is None
    assert "more than 2F+2 = 8" in aggregate_problem(parse_aggregate("krum:3"), 8)
    assert "at most m - F = 6" in aggregate_problem(parse_aggregate("multi-krum:3,7"), 9)
    assert "= 0 updates" in aggregate_problem(parse_aggregate("trimmed-mean:0.05"), 10)
    assert aggregate_problem(parse_aggregate("trimmed-mean:0.1"), 10) is None
    assert aggregate_problem(parse_aggregate("median"), 1) is None


# ---- the server's checks: the header, the norm -------------------------------------------------

@pytest.mark.parametrize("examples", [math.nan, math.inf, -math.inf, 1e12, 0.0, -3.0, 14.5, 15.0])
def test_a_claimed_example_count_must_be_the_partitions(examples):
    reason = check_header(examples, 3.0, 10.0, expected_examples=14, local_epochs=2)
    assert reason.startswith(f"claims {examples:g} examples") and "holds 14" in reason
    assert check_header(14.0, 3.0, 10.0, expected_examples=14, local_epochs=2) is None


@pytest.mark.parametrize("loss, correct, fragment", [
    (math.nan, 1.0, "loss sum of nan"), (-1.0, 1.0, "loss sum of -1"), (math.inf, 1.0, "loss sum of inf"),
    (1.0, math.nan, "nan correct"), (1.0, 29.0, "29 correct predictions of 28"), (1.0, -1.0, "-1 correct"),
    (1.0, 2.5, "2.5 correct")])
def test_an_impossible_loss_or_correct_count_is_refused(loss, correct, fragment):
    assert fragment in check_header(14.0, loss, correct, expected_examples=14, local_epochs=2)


def test_check_header_is_the_claim_then_the_report():
    assert check_claim(14.0, expected_examples=14) is None
    assert check_report(3.0, 10.0, examples=14, local_epochs=2) is None
    both = check_header(math.nan, math.nan, 10.0, expected_examples=14, local_epochs=2)
    assert both == check_claim(math.nan, expected_examples=14)
    assert check_header(14.0, math.nan, 10.0, expected_examples=14, local_epochs=2) == check_report(
        math.nan, 10.0, examples=14, local_epochs=2)


def test_a_diverged_client_is_rejected_for_its_update_not_its_loss(tmp_path):
    """Noise far beyond the updates' scale ruins the model; next round the clients' losses and updates are
    NaN, and the reason given is the update's."""
    metrics = tmp_path / "m.jsonl"
    assert fa.main(["--sim", "3", "--rounds", "2", "--clients", "10", "--fraction", "1", "--local-epochs", "1",
                    "--dp-clip", "1", "--dp-noise", "1e6", "--quiet", "--metrics", str(metrics)]) == 0
    last = _records(metrics)[-1]
    assert last["accepted"] == 0 and len(last["rejected"]) == 10
    assert all("non-finite" in r["reason"] for r in last["rejected"])


def test_norm_bound_clips_above_and_leaves_a_client_clipped_update_alone():
    rng = np.random.default_rng(5)
    bound = NormBound(2.0)
    for dtype in (np.float32, np.float64):
        for _ in range(200):                      # an honest client's own clipping, bit for bit untouched
            u = (rng.standard_normal(300) * rng.uniform(0.1, 10)).astype(dtype)
            clip_update(u, 2.0)
            before = u.copy()
            assert bound.apply(u) is None
            assert u.tobytes() == before.tobytes()
        big = (100 * rng.standard_normal(300)).astype(dtype)
        norm = update_norm(big)
        direction = big / norm
        assert bound.apply(big) == pytest.approx(norm)
        assert update_norm(big) == pytest.approx(2.0, rel=1e-6) and big.dtype == dtype
        np.testing.assert_allclose(big / 2.0, direction, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError):
        NormBound(0.0)
    with pytest.raises(ValueError):
        NormBound(math.inf)


def test_make_strategy_bounds_where_the_server_sees_updates():
    assert make_strategy(num_clients=10, fraction=0.5, seed=0).bound is None
    assert make_strategy(num_clients=10, fraction=0.5, seed=0, dp_clip=1.5).bound == NormBound(1.5, "--dp-clip")
    assert make_strategy(num_clients=10, fraction=0.5, seed=0, max_update_norm=3.0).bound == NormBound(3.0)
    assert make_strategy(num_clients=10, fraction=0.5, seed=0, secure_agg=True, dp_clip=1.0).bound is None
    s = make_strategy(num_clients=10, fraction=0.5, seed=0, aggregate="multi-krum:1,2", dp_clip=1.0)
    assert s.rule == Krum(equal=True, f=1, select=2)
    for bad in (dict(secure_agg=True, aggregate="median"), dict(secure_agg=True, max_update_norm=1.0),
                dict(dp_clip=1.0, max_update_norm=1.0)):
        with pytest.raises(ValueError):
            make_strategy(num_clients=10, fraction=0.5, seed=0, **bad)


# ---- the attacks ------------------------------------------------------------------------------

def test_attacks_do_what_they_say():
    rng = np.random.default_rng(0)
    u = np.arange(1, 15, dtype=np.float32)
    assert np.isnan(Attack("nan").corrupt(u.copy(), rng)[::7]).all()
    assert Attack("size").corrupt(u.copy(), rng).size == 13
    np.testing.assert_array_equal(Attack("scale", 10.0).corrupt(u.copy(), rng), u * 10)
    np.testing.assert_array_equal(Attack("signflip").corrupt(u.copy(), rng), -u)
    z = Attack("noise", 3.0).corrupt(np.zeros(100_000, np.float32), rng)
    assert z.dtype == np.float32 and z.std() == pytest.approx(3.0, rel=0.02)
    np.testing.assert_array_equal(Attack("labelflip").corrupt(u.copy(), rng), u)
    assert Attack("labelflip").flips_labels and not Attack("signflip").flips_labels
    assert Attack("examples", 1e12).claimed_examples(14) == 1e12 and Attack("scale", 2.0).claimed_examples(14) == 14
    with np.errstate(all="raise"):                      # overflow is the attack's point, not a warning
        assert np.isinf(Attack("scale", 1e30).corrupt(np.full(3, 1e20, np.float32), rng)).all()
        assert not np.isfinite(Attack("scale", 1e300).corrupt(np.zeros(3, np.float32), rng)).any()
        assert not np.isfinite(Attack("noise", 1e300).corrupt(np.zeros(3, np.float32), rng)).any()


@pytest.mark.parametrize("text, attack", [
    ("nan", Attack("nan")), ("scale:-4", Attack("scale", -4.0)), ("examples:1e12", Attack("examples", 1e12)),
    ("noise:0.5", Attack("noise", 0.5)), ("signflip", Attack("signflip")), ("labelflip", Attack("labelflip"))])
def test_parse_attack(text, attack):
    assert parse_attack(text) == attack
    assert parse_attack("examples:nan").claimed_examples(3) != parse_attack("examples:nan").claimed_examples(3)


@pytest.mark.parametrize("text, message", [("bogus", "expected an attack"), ("scale", "needs a number"),
                                           ("scale:x", "needs a number"), ("scale:inf", "finite FACTOR"),
                                           ("noise:-1", "STD >= 0"), ("signflip:2", "takes no value"),
                                           ("nan:", "takes no value")])
def test_parse_attack_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_attack(text)


def test_attackers_are_a_seeded_fraction():
    a = choose_attackers(100, 0.3, seed=4)
    assert len(a) == 30 and len(set(a.tolist())) == 30 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, choose_attackers(100, 0.3, seed=4))
    assert not np.array_equal(a, choose_attackers(100, 0.3, seed=5))
    with pytest.raises(ValueError, match="no client"):
        choose_attackers(100, 0.004, seed=0)


# ---- in the loop ------------------------------------------------------------------------------

def _records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.parametrize("claim", ["nan", "inf", "-5", "1e12"])
@pytest.mark.parametrize("secure", [False, True])
def test_a_false_example_count_is_rejected_never_a_traceback(claim, secure, tmp_path, capsys):
    metrics = tmp_path / "m.jsonl"
    argv = ["--sim", "3", "--rounds", "2", "--clients", "10", "--fraction", "1", "--local-epochs", "1",
            "--bad-client", f"4:examples:{claim}", "--metrics", str(metrics)] + (["--secure-agg"] if secure else [])
    assert fa.main(argv) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    for r in _records(metrics):
        assert r["rejected"][0]["client"] == 4 and r["rejected"][0]["reason"].startswith("claims")
        assert r["attackers"] == [4]
        assert r["accepted"] == 9                 # under --secure-agg its masks are removed with the others' shares
        assert r.get("recovered") == ([4] if secure else None)


def test_a_false_claim_does_not_change_the_average():
    """The weights are the partition's counts: a client claiming 1e12 examples is rejected, and its claim
    weighs nothing; the rest average as if it had sent nothing usable."""
    claim = run_sim(fa, 3, [*SMALL, "--bad-client", "3:examples:1e12"])["model"].params
    nan = run_sim(fa, 3, [*SMALL, "--bad-client", "3:nan"])["model"].params
    np.testing.assert_array_equal(claim, nan)


def test_server_clipping_leaves_nothing_to_gain_by_skipping_the_clients_own(tmp_path):
    """Under --dp-clip a client that skips its clipping and scales its update up is clipped by the server to
    the same norm in the same direction: the run ends where the honest one does (to float rounding)."""
    argv = [*SMALL, "--dp-clip", "0.1"]
    honest = run_sim(fa, 3, argv)["model"].params
    metrics = tmp_path / "m.jsonl"
    attacked = run_sim(fa, 3, [*argv, "--bad-client", "3:scale:1000", "--metrics", metrics])["model"].params
    np.testing.assert_allclose(attacked, honest, rtol=1e-4, atol=1e-6)
    recs = _records(metrics)
    sampled = [r for r in recs if r["attackers"]]
    assert sampled and all([c["client"] for c in r["clipped"]] == [3] for r in sampled)
    assert all(c["norm"] > 1 for r in sampled for c in r["clipped"])              # about 1000 times 0.1
    assert all(r["clipped"] == [] for r in recs if not r["attackers"])             # the honest ones clipped themselves


def test_max_update_norm_clips_and_records(tmp_path):
    metrics = tmp_path / "m.jsonl"
    got = run_sim(fa, 3, [*SMALL, "--max-update-norm", "0.5", "--bad-client", "3:scale:1e30", "--metrics", metrics])
    assert np.isfinite(got["model"].params).all() and got["test_acc"] > 0.5
    recs = _records(metrics)
    assert all(r["rejected"] == [] for r in recs)
    assert any(c["client"] == 3 and c["norm"] > 1e20 for r in recs for c in r["clipped"])


@pytest.mark.parametrize("rule", ["median", "trimmed-mean:0.2", "krum:1", "multi-krum:2,4"])
def test_robust_rules_learn_and_do_not_depend_on_the_rank_count(rule):
    a = run_sim(fa, 2, [*SMALL, "--aggregate", rule])
    b = run_sim(fa, 4, [*SMALL, "--aggregate", rule])
    np.testing.assert_array_equal(a["model"].params, b["model"].params)
    assert a["test_acc"] > 0.5                          # chance is 0.1; Krum learns from one update a round


def test_bad_clients_records_the_sampled_attackers(tmp_path):
    metrics = tmp_path / "m.jsonl"
    run_sim(fa, 3, [*SMALL, "--bad-clients", "0.2:labelflip", "--metrics", metrics])
    attackers = set(choose_attackers(20, 0.2, seed=0).tolist())
    for r in _records(metrics):
        sampled = fa.make_strategy(num_clients=20, fraction=0.5, seed=0).sampler.sample(r["round"] - 1)
        assert r["attackers"] == sorted(attackers & set(sampled.tolist()))
        assert r["accepted"] == 10                       # a label-flipper's update looks like any other


def test_labelflip_trains_on_other_labels():
    clean = run_sim(fa, 3, SMALL)
    flipped = run_sim(fa, 3, [*SMALL, "--bad-clients", "1:labelflip"])
    assert flipped["test_acc"] < 0.2 < 0.7 < clean["test_acc"]           # everyone learns c -> 9 - c


@pytest.mark.parametrize("argv, message", [
    (["--aggregate", "median", "--secure-agg"], "shows the server only their masked sum"),
    (["--max-update-norm", "1", "--secure-agg"], "--max-update-norm needs each client's update"),
    (["--max-update-norm", "1", "--dp-clip", "1"], "give one of them"),
    (["--aggregate", "krum:4"], "more than 2F+2 = 10 clients per round"),
    (["--aggregate", "multi-krum:2,9"], "at most m - F = 8"),
    (["--aggregate", "trimmed-mean:0.05"], "raise BETA to at least 0.1"),
    (["--aggregate", "bogus"], "expected mean, median"),
    (["--aggregate", "median", "--dp-clip", "1", "--dp-noise", "1"], "calibrated to the mean"),
    (["--bad-clients", "0.001:nan"], "is no client"),
    (["--bad-clients", "1.5:nan"], "FRACTION in (0, 1]"),
    (["--bad-clients", "0.1"], "expected an attack"),
    (["--bad-client", "3:scale"], "needs a number"),
    (["--bad-client", "x:nan"], "CLIENT a client number"),
    (["--bad-client", "3:scale:nan"], "finite FACTOR"),
    (["--max-update-norm", "0"], "a finite number > 0"),
    (["--max-update-norm", "inf"], "a finite number > 0"),
    (["--max-update-norm", "1e-320"], "at least 2.3e-308"),
])
def test_bad_options_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        fa.main(["--sim", "3", "--rounds", "1", "--quiet", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


# ---- the table's claim on a small setting ------------------------------------------------------

def test_with_10_percent_attackers_the_right_defence_stays_within_2_points(tmp_path):
    out = tmp_path / "t.json"
    res = subprocess.run([sys.executable, "scripts/byzantine_table.py", "--quick", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    got = json.loads(out.read_text())
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import byzantine_table as bt
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    clean, runs = got["clean"], got["runs"]["0.1"]
    assert clean > 0.9
    assert set(runs) == set(bt.ATTACKS)
    for attack, accs in runs.items():
        assert accs[bt.RIGHT[attack]] >= clean - 0.02, (attack, accs)
    # the attacks are real: without a defence the mean falls apart under these two
    for attack in ("scale:100", "noise:1"):
        assert runs[attack]["mean"] < clean - 0.10, (attack, runs[attack])
    assert "| scale:100 | mean, norm <= 1 |" in res.stdout
