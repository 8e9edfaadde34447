"""The registry: one entry per algorithm, and every list, formula, report and plot follows it."""
import importlib
import sys
from dataclasses import replace

import numpy as np
import pytest

import mpisim.comm
from mpisim import run_simulated
from mpisim.analysis import report
from mpisim.analysis.measure import measure
from mpisim.comm import RankError, allreduce, costs, registry
from mpisim.comm._common import combine
from mpisim.comm.formulas import make_cost
from mpisim.comm.network import PRESETS, Network, parse_network

NET = parse_network("10gbe")


def _chain(t, w, ufunc, tag, src):
    """Rank r adds its vector to the partial sum of ranks 0..r-1 and passes it on; the last rank
    holds the sum and it travels back down the chain."""
    np.copyto(w, src)
    r, p = t.rank, t.size
    if r > 0:
        tmp = np.empty_like(w)
        t.recv(tmp, r - 1, tag)
        combine(t, ufunc, tmp, w, w)
    if r < p - 1:
        t.send(w, r + 1, tag)
        t.recv(w, r + 1, tag)
    if r > 0:
        t.send(w, r - 1, tag)


CHAIN = dict(
    traffic=lambda c: (2 * (c.p - 1), 2 * (c.p - 1) * c.n),
    cost=lambda c: make_cost("2(p-1)(α + nβ) + (p-1)nγ", (2 * (c.p - 1), 2 * (c.p - 1) * c.n, (c.p - 1) * c.n)),
    formula=lambda c: "2(N-1)·n",
    explain="A chain: the partial sum walks up the ranks and the result walks back down.",
)


@pytest.fixture
def chain():
    """A sixth allreduce algorithm, registered for the test only, without a plot marker."""
    with registry.registered("allreduce", "chain", _chain, **CHAIN) as alg:
        yield alg
    assert "chain" not in registry.names("allreduce")


def test_a_new_algorithm_is_listed_everywhere(chain):
    allreduce_module = importlib.import_module("mpisim.comm.allreduce")
    assert mpisim.comm.ALLREDUCE_ALGORITHMS == allreduce_module.ALLREDUCE_ALGORITHMS
    assert mpisim.comm.ALLREDUCE_ALGORITHMS[0] == "auto" and mpisim.comm.ALLREDUCE_ALGORITHMS[-1] == "chain"
    assert costs.ALGORITHMS["allreduce"] == ("naive", "tree", "recursive_doubling", "ring", "rabenseifner",
                                          "hierarchical", "chain")
    assert registry.get("allreduce", "chain") is chain


def test_a_new_algorithm_runs_on_simulated_ranks(chain):
    for p in (1, 2, 5):
        out = run_simulated(p, lambda t: allreduce(t, np.full(7, t.rank + 1, np.float32), algorithm="chain"))
        for y in out:
            np.testing.assert_array_equal(y, np.full(7, p * (p + 1) / 2, np.float32))


@pytest.mark.parametrize("p", [2, 3, 4, 7])
def test_a_new_algorithm_gets_its_traffic_and_cost_from_the_registry(chain, p):
    r = measure("allreduce", "chain", p, 4096, NET)
    assert (r.messages, r.bytes) == r.traffic == costs.allreduce_traffic("chain", 1024, 4, p)
    assert r.traffic == costs.traffic("allreduce", "chain", p, 1024, 4) == (2 * (p - 1), 2 * (p - 1) * 4096)
    assert r.cost.text == "2(p-1)(α + nβ) + (p-1)nγ" and r.ticks == r.formula_ticks
    assert costs.allreduce_formula("chain", 1024, 4, p) == "2(N-1)·n"


def test_a_new_algorithm_is_explained_in_the_report(chain):
    rows = [measure("allreduce", a, 4, 4096, NET) for a in ("ring", "chain")]
    doc = report.Doc(md=True)
    report.formulas_section(doc, rows)
    report.summary_section(doc, rows)
    text = str(doc)
    assert "**allreduce / chain**: `2(p-1)(α + nβ) + (p-1)nγ`. A chain: the partial sum walks up" in text
    assert "| allreduce | chain | 1 | 1/1 | 1/1 |" in text


def test_a_new_algorithm_gets_a_free_marker_and_plots(chain, tmp_path):
    from mpisim.analysis.plots import markers, plot_all
    marks = markers()
    assert set(marks) == set(costs.ALGORITHMS["allreduce"])
    assert marks["chain"] and marks["chain"] not in [marks[a] for a in marks if a != "chain"]
    pytest.importorskip("matplotlib")
    rows = [measure("allreduce", a, p, 1 << 20, NET) for a in ("ring", "chain") for p in (2, 4)]
    paths = plot_all(rows, NET, str(tmp_path))
    assert all((tmp_path / name).stat().st_size > 10_000 for name in ("allreduce_vs_p.png", "allreduce_vs_size.png"))
    assert len(paths) == 2


def test_after_the_with_block_the_algorithm_is_gone():
    with registry.registered("allreduce", "chain", _chain, **CHAIN):
        pass
    assert "chain" not in mpisim.comm.ALLREDUCE_ALGORITHMS and "chain" not in costs.ALGORITHMS["allreduce"]
    with pytest.raises(RankError, match="ValueError: allreduce: unknown algorithm 'chain'"):
        run_simulated(2, lambda t: allreduce(t, np.ones(3, np.float32), algorithm="chain"))
    with pytest.raises(ValueError, match="no cost formula"):
        costs.cost("allreduce", "chain", 4, 8, 4)
    with pytest.raises(ValueError, match="unknown allreduce algorithm"):
        costs.allreduce_formula("chain", 8, 4, 4)


@pytest.mark.parametrize("coll, name, words", [
    ("allreduce", "ring", "already registered"), ("bcast", "binomial", "already registered"),
    ("allreduce", "auto", "not a name"), ("alltoall", "pairwise", "unknown collective"),
])
def test_a_taken_name_or_an_unknown_collective_is_a_clear_error(coll, name, words):
    entry = {k: v for k, v in CHAIN.items() if k != "formula" or coll == "allreduce"}
    with pytest.raises(ValueError, match=words):
        registry.register(coll, name, _chain, **entry)
    assert registry.get("allreduce", "ring").run is not _chain


def test_an_allreduce_needs_its_bytes_sent_text():
    entry = {k: v for k, v in CHAIN.items() if k != "formula"}
    with pytest.raises(ValueError, match="needs a formula"):
        registry.register("allreduce", "chain", _chain, **entry)
    assert "chain" not in registry.names("allreduce")


def test_every_collective_has_its_algorithms_registered_once():
    assert list(costs.ALGORITHMS) == list(registry.COLLECTIVES)
    for coll, algs in costs.ALGORITHMS.items():
        assert algs and len(set(algs)) == len(algs)
        for name in algs:
            alg = registry.get(coll, name)
            assert alg.explain and callable(alg.run) and callable(alg.traffic) and callable(alg.cost)
            assert (alg.formula is not None) == (coll == "allreduce")
    for name in ("BCAST_ALGORITHMS", "ALLGATHER_ALGORITHMS", "REDUCE_SCATTER_ALGORITHMS"):
        coll = name[:-len("_ALGORITHMS")].lower()
        assert getattr(mpisim.comm, name) == ("auto", *costs.ALGORITHMS[coll])
    assert not hasattr(sys.modules["mpisim.comm.allreduce"], "BCAST_ALGORITHMS")


def test_a_fifth_preset_shows_in_the_report(monkeypatch):
    ib = Network(alpha=1_000_000_000, beta=50_000, gamma=200_000, name="ib-hdr", description="200 Gbit/s InfiniBand")
    monkeypatch.setitem(PRESETS, ib.name, ib)
    doc = report.Doc(md=True)
    report.model_section(doc, NET)
    report.crossover_section(doc, [4], {}, {})
    text = str(doc)
    assert "| ib-hdr | - | 1 us | 20 GB/s | 5 GB/s | 200 Gbit/s InfiniBand |" in text   # "-": one node
    assert "| shm | - | 500 ns | 10 GB/s | 5 GB/s | ranks of one node, shared memory |" in text
    assert "n* ib-hdr" in text
    assert parse_network("ib-hdr,contention").description == "200 Gbit/s InfiniBand"


def test_a_preset_description_is_not_part_of_the_model():
    for net in PRESETS.values():
        assert net.description
        back = parse_network(net.spec())
        assert replace(back, name=net.name) == net and back.description == "" and net.description not in repr(net)
    assert parse_network("wan,alpha=1ms").description == ""


def test_the_computed_tuples_are_listed_by_dir():
    import sys
    import mpisim.comm
    assert {"ALLREDUCE_ALGORITHMS", "BCAST_ALGORITHMS", "allreduce"} <= set(dir(mpisim.comm))
    assert "ALLREDUCE_ALGORITHMS" in dir(sys.modules["mpisim.comm.allreduce"])
