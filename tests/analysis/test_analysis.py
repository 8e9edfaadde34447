"""python -m mpisim.analysis: the report runs, keeps its promises, and refuses bad options."""
import os
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
])
def test_bad_options_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.parametrize("p", [4, 16])
def test_crossover_is_where_the_simulated_winner_changes(p):
    for net in PRESETS.values():
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
