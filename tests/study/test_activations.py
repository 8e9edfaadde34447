"""The activations study: its quick run writes a sane report, and its measuring helpers do what they say."""
import json
import math

import numpy as np
import pytest

from mpisim.nn import ACTIVATIONS, GELU, MLP, LeakyReLU, ReLU, Sigmoid, Tanh
from mpisim.study import activations as act
from mpisim.study.__main__ import main

NAMES = list(ACTIVATIONS)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    d = tmp_path_factory.mktemp("activations")
    assert main(["activations", "--quick", "--out", str(d), "--quiet"]) == 0
    return d


@pytest.fixture(scope="module")
def doc(out):
    return json.loads((out / "activations.json").read_text())


def test_report_has_command_question_tables_and_conclusions(out):
    md = (out / "activations.md").read_text()
    assert md.splitlines()[0].startswith("`python -m mpisim.study activations --quick --out ")
    assert act.QUESTION in md
    for title in ("Time per element (ns)", "against the scale of the inputs", "Memory per element (bytes)",
                  "Training the MLP on digits"):
        assert title in md
    assert md.count("\n| ") >= 4 * 2
    conclusions = md.split("## Conclusions", 1)[1]
    assert conclusions.count("\n- ") >= 5
    for cls in ACTIVATIONS.values():
        assert cls.__name__ in conclusions


def test_plots_are_pngs(out):
    for stem in ("time", "training"):
        png = out / f"activations-{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 5000


def test_timings_are_positive_and_complete(doc):
    data = doc["data"]
    assert doc["quick"] is True and doc["question"] == act.QUESTION
    assert set(data["timing"]) == set(NAMES)
    sizes = set(data["copy_ns"])
    assert len(sizes) >= 2
    for a in NAMES:
        assert set(data["timing"][a]) == sizes
        for t in data["timing"][a].values():
            assert 0 < t["forward_ns"] < math.inf and 0 < t["backward_ns"] < math.inf
        assert len(data["scale"][a]) == 3
        for t in data["scale"][a].values():
            assert 0 < t["forward_ns"] < math.inf and 0 < t["backward_ns"] < math.inf
    assert all(0 < v < math.inf for v in data["copy_ns"].values())
    assert len(doc["tables"]) == 4
    assert len(doc["tables"][0]["rows"]) == len(sizes) * (len(NAMES) + 1)
    assert data["cheapest"] in NAMES and data["dearest"] in NAMES


def test_memory_is_what_the_layers_keep(doc):
    mem = doc["data"]["memory"]
    elems = 100 * act.COLS
    for a in NAMES:
        m = mem[a]
        assert len(m["kept"]) == 1                            # one float32 array per element: input or output
        assert m["kept"][0]["bytes"] == 4 * elems
        assert m["kept"][0]["what"] in ("input", "output")
        assert m["own_fwd"] == 4 * elems                      # the output buffer
        assert m["own_bwd"] >= m["own_fwd"]
    # ReLU's backward works in place on dY from its output; Sigmoid's needs a scratch array besides
    assert mem["relu"]["own_bwd"] <= mem["sigmoid"]["own_bwd"]
    assert mem["relu"]["kept"][0]["what"] == "output" and mem["gelu"]["kept"][0]["what"] == "input"


def test_training_figures_are_sane(doc):
    train = doc["data"]["train"]
    assert set(train) == set(NAMES)
    for a, t in train.items():
        assert t["seconds"] > 0 and t["replay_ms"] > 0 and t["predicted_ms"] > 0
        assert 0 <= t["acc_min"] <= t["acc"] <= t["acc_max"] <= 1
        assert 0 < t["input_rms"] < math.inf
        assert t["n_train"] == 1437
        assert t["init"] == ("xavier_uniform" if a in ("sigmoid", "tanh") else "he_uniform")
    for row in doc["data"]["training"]:
        assert row["activation"] in {c.__name__ for c in ACTIVATIONS.values()}


# -- the helpers --------------------------------------------------------------------------------------------
def test_layer_memory_names_what_is_kept():
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    m = act.layer_memory(ReLU, x)
    assert m["kept"] == [{"name": "y", "bytes": x.nbytes, "what": "output"}]
    assert m["own_fwd"] == m["own_bwd"] == x.nbytes
    m = act.layer_memory(GELU, x)
    assert m["kept"] == [{"name": "x", "bytes": x.nbytes, "what": "input"}]
    for cls in (Sigmoid, Tanh):
        m = act.layer_memory(cls, x)
        assert m["own_bwd"] == 2 * x.nbytes                 # output buffer + backward's scratch
    assert act.layer_memory(LeakyReLU, x)["kept"][0]["what"] == "input"


def test_time_calls_counts_calls_and_runs_before_each():
    calls = {"fn": 0, "before": 0}

    def fn():
        calls["fn"] += 1

    def before():
        calls["before"] += 1

    t = act.time_calls(fn, before=before, target=0.0, min_calls=7, warmup=2)
    assert t > 0
    assert calls["fn"] == calls["before"] == 9


def test_pool_gives_distinct_arrays_of_the_shape():
    xs = act._pool(3 * act.COLS, 2.0, np.random.default_rng(0))
    assert 2 <= len(xs) <= 8
    assert all(x.shape == (3, act.COLS) and x.dtype == np.float32 for x in xs)
    assert not np.array_equal(xs[0], xs[1])


def test_bench_layer_restores_dy_and_gives_positive_figures():
    f, b = act.bench_layer(Sigmoid, act.COLS, target=0.0, rng=np.random.default_rng(0))
    assert f > 0 and b > 0


def test_input_rms_matches_a_manual_forward():
    model = MLP([6, 5, 4, 3], activation="tanh", seed=1)
    x = np.random.default_rng(2).standard_normal((7, 6)).astype(np.float32)
    h1 = x @ model.layers[0].params["W"] + model.layers[0].params["b"]
    h2 = np.tanh(h1) @ model.layers[2].params["W"] + model.layers[2].params["b"]
    want = math.sqrt((np.square(h1, dtype=np.float64).sum() + np.square(h2, dtype=np.float64).sum())
                     / (h1.size + h2.size))
    assert act.input_rms(model, x) == pytest.approx(want, rel=1e-5)


def test_replay_seconds_is_positive():
    model = MLP([6, 5, 3], activation="gelu", seed=0)
    x = np.random.default_rng(0).standard_normal((10, 6)).astype(np.float32)
    assert act.replay_seconds(model, x, 4, repeats=2, rng=np.random.default_rng(0)) > 0


def test_interp_is_exact_at_the_points_and_clamped():
    sizes, vals = [10, 100, 1000], [4.0, 2.0, 1.0]
    assert act._interp(sizes, vals, 100) == pytest.approx(2.0)
    assert act._interp(sizes, vals, 1) == pytest.approx(4.0)
    assert act._interp(sizes, vals, 10 ** 6) == pytest.approx(1.0)
    assert 1.0 < act._interp(sizes, vals, 300) < 2.0
