"""python -m mpisim.analysis: the report runs, keeps its promises, and refuses bad options."""
import os
import re
import subprocess
import sys

import pytest

from mpisim.analysis.__main__ import main
from mpisim.analysis.measure import crossover, measure, sim_winner
from mpisim.comm.network import PRESETS, parse_network


def test_quick_markdown_report(tmp_path, capsys):
    out = tmp_path / "c.md"
    assert main(["--quick", "--markdown", "--quiet", "--sections", "collectives,crossover,paradigms,scale",
                 "--ranks", "2,3,4", "--output", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Complexity") and "python -m mpisim.analysis --quick" in text
    assert "| NO |" not in text and "DIFFERS" not in text           # every promise kept
    assert "| allreduce | ring |" in text and "<details>" in text
    for name in ("allreduce SGD (ring)", "parameter server (sync)", "FedAvg"):
        assert f"| {name} |" in text
    assert not os.path.exists(str(out) + ".tmp")


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    assert main(["--quick", "--quiet", "--sections", "crossover", "--ranks", "2,4,16", "--sizes", "8,64K",
                 "--plot", str(tmp_path / "img"), "--output", str(tmp_path / "r.txt")]) == 0
    for name in ("allreduce_vs_p.png", "allreduce_vs_size.png"):
        assert (tmp_path / "img" / name).stat().st_size > 10_000
    assert "allreduce_vs_size.png" in (tmp_path / "r.txt").read_text()


@pytest.mark.parametrize("argv, words", [
    (["--network", "fast"], "unknown preset"), (["--collectives", "alltoall"], "unknown collective"),
    (["--ranks", "0"], "rank counts"), (["--sizes", "1X"], "not a size"), (["--sections", "everything"], "section"),
    (["--network", "nodes=4x8,inter=ib"], "unknown link 'ib'"), (["--network", "nodes=4", "--quick"], "NODESxRANKS"),
    (["--network", "ppn=8,inter=wan", "--ranks", "8,12"], "--ranks 12: 8 ranks per node do not divide 12 ranks"),
])
def test_bad_options_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.parametrize("p", [4, 16])
def test_crossover_is_where_the_simulated_winner_changes(p):
    for net in (v for v in PRESETS.values() if not v.topology):
        n = crossover(p, net)
        assert n is not None and n > 0
        assert sim_winner(p, int(n / 2), net) == "tree" and sim_winner(p, int(2 * n), net) == "ring"


def test_two_ranks_ring_always_wins():
    assert crossover(2, PRESETS["10gbe"]) == 0


def test_paradigm_reports_virtual_time():
    r = subprocess.run([sys.executable, "-m", "mpisim.paramserver", "--sim", "3", "--epochs", "1", "--hidden", "8",
                        "--network", "10gbe,contention"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "virtual s" in r.stdout and "link contention" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "mpisim.allreduce", "--sim", "2", "--network", "alpha=1us"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "beta missing" in bad.stderr


def test_contention_makes_the_server_link_the_bottleneck():
    """Many ranks sending to one: with contention the naive root's time grows with p in the β term."""
    net = parse_network("10gbe,contention")
    a, b = measure("allreduce", "naive", 4, 1 << 20, net), measure("allreduce", "naive", 16, 1 << 20, net)
    assert b.seconds / a.seconds > 4.5        # (2p-2)(α+nβ): 30/6 = 5 times as long


def test_topology_section_formulas_agree_with_the_simulated_runs(tmp_path):
    out = tmp_path / "t.md"
    assert main(["--quick", "--markdown", "--quiet", "--sections", "topology", "--output", str(out)]) == 0
    text = out.read_text()
    assert "## Nodes: where the hierarchical allreduce wins" in text and "### gpu-rdma" in text
    assert "| cpu-ethernet |" in text and "DIFFERS" not in text
    m = re.search(r"Checked on the simulated cluster: (\d+) cells, formula and simulated winner agree in (\d+)", text)
    assert m and int(m.group(1)) >= 8 and m.group(1) == m.group(2)


def test_a_topology_network_runs_the_whole_grid_exactly():
    from mpisim.analysis.measure import grid
    net = parse_network("nodes=2x4,intra=nvlink,inter=10gbe")
    rows = grid({"allreduce": ("ring", "rabenseifner", "hierarchical"), "bcast": ("binomial",)}, [8], [64, 4096], net)
    assert all(r.ok for r in rows)
    assert all(r.agree == "exact" for r in rows if r.coll == "allreduce")


def _fake_mpiexec(tmp_path, monkeypatch, *, rc: int, writes: dict | None):
    """An MPIEXEC that writes ``writes`` as calibrate's --json (unless None) and exits ``rc``."""
    import json
    fake = tmp_path / "mpiexec"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"data = {json.dumps(writes)!r}\n"
                    "if data != 'null':\n"
                    "    open(sys.argv[sys.argv.index('--json') + 1], 'w').write(data)\n"
                    "print('python -m mpisim.calibrate: error: the last line', file=sys.stderr)\n"
                    f"sys.exit({rc})\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MPIEXEC", str(fake))


def test_run_validation_takes_the_json_of_a_run_outside_its_bounds(tmp_path, monkeypatch):
    from mpisim.analysis.__main__ import run_validation
    _fake_mpiexec(tmp_path, monkeypatch, rc=1, writes={"ranks": 1, "within_bounds": False})
    res = run_validation(1, lambda s: None)   # exit 1 with the JSON written: a verdict, not a failure
    assert res["within_bounds"] is False and res["cores"] == (os.cpu_count() or 1)
    _fake_mpiexec(tmp_path, monkeypatch, rc=1, writes=None)   # exit 1 and no JSON: the calibration failed
    with pytest.raises(RuntimeError, match=r"failed \(exit 1\): python -m mpisim.calibrate: error: the last line"):
        run_validation(1, lambda s: None)
    _fake_mpiexec(tmp_path, monkeypatch, rc=2, writes={"ranks": 1})   # a usage error is never a verdict
    with pytest.raises(RuntimeError, match=r"exit 2"):
        run_validation(1, lambda s: None)
    over = (os.cpu_count() or 1) + 1   # oversubscribed: informational, a failure does not stop the report
    _fake_mpiexec(tmp_path, monkeypatch, rc=1, writes=None)
    res = run_validation(over, lambda s: None)
    assert res["ranks"] == over and "exit 1" in res["failed"]


def _calibration(p: int, cores: int, slow: dict) -> dict:
    """A calibrate JSON from a known model, the calls measured at the model's time times ``slow``."""
    from mpisim.calibrate import compare, to_network
    from mpisim.comm.costs import ALGORITHMS
    from mpisim.comm.loggp import STEPS, Model, piecewise_fit
    line = lambda a, b: piecewise_fit([1, 1 << 30], [a, a + (1 << 30) * b])  # noqa: E731
    tables = {"one_way": line(3e-6, 1e-10), "exchange": line(4e-6, 1e-10), "reduce": line(1e-6, 4e-11),
              "nans": line(1e-6, 2e-11), "copy": line(4e-7, 3e-11)}
    model = Model(p, 4, {a: 1e-5 + 1e-6 * k for k, a in enumerate(ALGORITHMS["allreduce"])},
                  *(tables[k] for k in STEPS), check=9e-6)
    calls = {}
    for n in (8, 4096, 65536, 16 << 20):
        for a in ALGORITHMS["allreduce"]:
            t = model.predict("allreduce", a, p, n // 4, 4) * slow.get((a, n), 1.0)
            calls[a, n] = (t, 1.5 * t)
    sizes = [1 << k for k in range(25)]
    return {"ranks": p, "cores": cores, "network": to_network(3e-6, 1e-10, 4e-11).spec(), "model": model.to_dict(),
            "rounds": 3, "reps": 30, "validation": compare(model, p, calls),
            "steps": [{"bytes": n, **{f"{k}_min_s": tables[k](n) for k in STEPS}} for n in sizes]}


def test_validation_section_reads_its_figures_from_the_runs():
    from mpisim.analysis import report
    two = _calibration(2, 2, {("ring", 65536): 1.30, ("naive", 8): 1.2})
    four = _calibration(4, 2, {})
    doc = report.Doc(True)
    report.validation_section(doc, [two, four, {"ranks": 8, "cores": 2, "failed": "exit 1: too busy"}])
    text = str(doc)
    assert "### 2 ranks\n" in text and "### 4 ranks on 2 cores: oversubscribed, informational" in text
    assert "23 of 24 points within their bound." in text            # ring at 64 KiB is 30% slow
    assert "Largest |error| from 64 KiB: **30%** (ring, 64 KiB; bound 25%)" in text
    assert "Largest |error| below 64 KiB: **20%** (naive, 8 B; bound 50%)" in text
    assert "24 of 24 points within their bound (not held to it: oversubscribed)." in text
    assert "The run did not complete (exit 1: too busy)." in text
    assert "| ring | 64 KiB |" in text and "NOT within" in text
    assert "check 9 us per call" in text and "recursive_doubling 12 us" in text
    for old in ("median", "Hockney's model has no term for", "Why the model misses"):
        assert old not in text
