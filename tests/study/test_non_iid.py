"""The non-iid study (quick run) and the client drift figure it reads from FedAvg's records."""
import json
import math

import numpy as np
import pytest

from mpisim import fedavg as fa
from mpisim.study.non_iid import QUESTION, divergence, label_skew, rounds_to, spearman
from mpisim.train.federated import client_drift, draw_partition, make_strategy

pytest.importorskip("matplotlib", reason="the studies draw their plots with matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from mpisim.study.__main__ import main
    out = tmp_path_factory.mktemp("non-iid")
    assert main(["non-iid", "--quick", "--out", str(out), "--quiet"]) == 0
    return out, json.loads((out / "non-iid.json").read_text())


def test_report_has_the_command_question_tables_and_plots(quick):
    out, doc = quick
    md = (out / "non-iid.md").read_text()
    assert md.splitlines()[0].startswith("`python -m mpisim.study non-iid --quick --out ")
    assert QUESTION in md and doc["question"] == QUESTION
    for title in ("The partitions", "Test accuracy after", "Client drift and weight divergence",
                  "Spearman rank correlation", "## Conclusions"):
        assert title in md
    for stem in ("accuracy", "partitions", "drift"):
        png = out / f"non-iid-{stem}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 1000
        assert f"({png.name})" in md
    assert "issue" not in md.lower()


def test_the_figures_are_sane(quick):
    _, doc = quick
    data = doc["data"]
    R = data["rounds"]
    points = {p["key"]: p for p in data["partitions"]}
    assert list(points) == ["iid", "dir10", "dir0.5", "dir0.1", "shards"]
    for p in points.values():
        curves = p["curves"]
        assert all(len(curves[k]) == R for k in ("test_acc", "drift", "divergence"))
        assert all(0 < a <= 1 for a in curves["test_acc"])
        assert all(math.isfinite(d) and d > 0 for d in curves["drift"] + curves["divergence"])
        assert p["final_acc"] == curves["test_acc"][-1] and p["best_acc"] == max(curves["test_acc"])
        assert 0 <= p["skew"] <= 2 and 1 <= p["classes_per_client"] <= 10
        assert p["loss_vs_iid"] == pytest.approx(points["iid"]["final_acc"] - p["final_acc"])
    assert len(data["centralized_acc"]) == R
    # the partitions are seeded, so their skew is fixed: IID least, alpha 0.1 and shards most
    assert points["iid"]["skew"] < points["dir0.5"]["skew"] < points["dir0.1"]["skew"]
    # with a margin of several points (checked over seeds 0-2 of the quick setting): the most skewed
    # partitions end below IID and drift and diverge more
    for key in ("dir0.1", "shards"):
        assert points[key]["final_acc"] < points["iid"]["final_acc"]
        assert points[key]["drift_mean"] > points["iid"]["drift_mean"]
        assert points[key]["div_final"] > points["iid"]["div_final"]
    for rho in (*data["spearman_skew"].values(), *data["spearman_alpha"].values()):
        assert rho is None or -1 <= rho <= 1
    assert len(data["accuracy"]) == 6 and len(data["drift"]) == 5 and len(data["partitions_table"]) == 5


# ---- the measures ----------------------------------------------------------------------------------------

def test_client_drift_is_the_formula():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(50)
    us = [rng.standard_normal(50) for _ in range(3)]
    n = [3, 1, 2]
    avg = sum(k * u for k, u in zip(n, us)) / sum(n)
    want = np.mean([np.linalg.norm(u - avg) for u in us]) / np.linalg.norm(w + avg)
    assert client_drift(us, n, w) == pytest.approx(want, rel=1e-12)
    assert client_drift([u.astype(np.float32) for u in us], n, w.astype(np.float32)) == pytest.approx(want, rel=1e-5)


def test_client_drift_is_zero_exactly_for_one_client_or_equal_float32_updates():
    u = np.random.default_rng(1).standard_normal(40).astype(np.float32)
    w = np.ones(40, dtype=np.float32)
    assert client_drift([u], [17], w) == 0.0
    assert client_drift([u, u.copy(), u.copy()], [5, 9, 2], w) == 0.0
    assert client_drift([u, -u], [1, 1], w) > 0


def test_client_drift_leaves_its_inputs_alone_and_checks_them():
    us = [np.arange(4.0), np.ones(4)]
    w = np.zeros(4)
    copies = [u.copy() for u in us]
    client_drift(us, [1, 2], w)
    for u, c in zip(us, copies):
        np.testing.assert_array_equal(u, c)
    with pytest.raises(ValueError, match="empty"):
        client_drift([], [], w)
    with pytest.raises(ValueError, match="differ in length"):
        client_drift(us, [1], w)
    with pytest.raises(ValueError, match="weights"):
        client_drift(us, [1, 0], w)
    with pytest.raises(ValueError, match="params"):
        client_drift([np.ones(3)], [1], w)


def test_secure_aggregation_has_no_drift_dp_has_one():
    u = [np.ones(3), np.zeros(3)]
    secure = make_strategy(num_clients=4, fraction=1, seed=0, secure_agg=True)
    assert secure.drift(u, [1, 1], np.ones(3)) is None
    dp = make_strategy(num_clients=4, fraction=1, seed=0, dp_clip=1.0)
    plain = make_strategy(num_clients=4, fraction=1, seed=0)
    # DP averages with equal weights: the same drift as the plain rule with equal counts
    assert dp.drift(u, [1, 5], np.ones(3)) == plain.drift(u, [1, 1], np.ones(3)) > 0


TINY = ["--sim", "3", "--dataset", "synthetic", "--synthetic-size", "200", "--synthetic-features", "8",
        "--hidden", "6", "--rounds", "3", "--local-epochs", "2", "--quiet"]


def _records(tmp_path, extra):
    path = tmp_path / "m.jsonl"
    assert fa.main([*TINY, *extra, "--metrics", str(path)]) == 0
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("extra", [["--clients", "6", "--fraction", "1", "--partition", "shards"],
                                   ["--clients", "8", "--fraction", "0.5", "--dp-clip", "0.5"]])
def test_fedavg_records_a_finite_drift_every_round(tmp_path, extra):
    recs = _records(tmp_path, extra)
    assert len(recs) == 3
    assert all(math.isfinite(r["drift"]) and r["drift"] > 0 for r in recs)


def test_fedavg_drift_is_zero_with_one_client_per_round_and_absent_under_secure_agg(tmp_path):
    assert [r["drift"] for r in _records(tmp_path, ["--clients", "6", "--fraction", "0.1"])] == [0.0] * 3
    assert [r["drift"] for r in _records(tmp_path, ["--clients", "6", "--fraction", "1", "--secure-agg"])] == [None] * 3


def test_label_skew():
    assert label_skew(np.full((4, 3), 5)) == 0.0
    assert label_skew(np.eye(4, dtype=int) * 10) == pytest.approx(2 * (1 - 1 / 4))   # one class per client
    with pytest.raises(ValueError):
        label_skew(np.array([[1, 0], [0, 0]]))


def test_spearman_divergence_and_rounds_to():
    assert spearman([1, 2, 3], [10, 20, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, math.inf], [0.3, 0.2, 0.1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [5, 6, 7]) == pytest.approx(math.sqrt(3) / 2)     # ties share their mean rank
    assert spearman([1, 2, 3], [4, 4, 4]) is None
    assert divergence(np.array([3.0, 4.0]), np.array([3.0, 0.0])) == pytest.approx(4 / 3)
    assert rounds_to([0.5, 0.91, 0.89, 0.95], 0.9) == 2 and rounds_to([0.5], 0.9) is None


def test_draw_partition_draws_panels_of_one_figure():
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2)
    try:
        for ax in axes:
            im = draw_partition(ax, np.arange(12).reshape(4, 3), title="t", colorbar=False)
            assert im.get_array().shape == (4, 3)
        assert len(axes[0].texts) == 12                  # counts written in the cells
        with pytest.raises(ValueError, match="non-empty"):
            draw_partition(axes[0], np.zeros(3))
    finally:
        plt.close(fig)
