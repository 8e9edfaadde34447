"""The command-line tools: mpisim.bench under mpiexec, the demo script, python -m mpisim."""
import csv
import os
import subprocess
import sys

import pytest

from mpisim.comm import ALLREDUCE_ALGORITHMS
from tests.mpirun import ROOT, run_mpi


@pytest.mark.timeout(120)
def test_bench_runs_every_algorithm_next_to_mpi(tmp_path):
    out = tmp_path / "bench.csv"
    res = run_mpi(2, "-m", "mpisim.bench", "--max-size", "4K", "--factor", "32", "--iters", "5",
                  "--min-iters", "2", "--repeats", "1", "--csv", str(out), timeout=100)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 ranks" in res.stdout and "MPI_Allreduce" in res.stdout
    rows = list(csv.DictReader(out.open()))
    sizes = sorted({int(r["size_bytes"]) for r in rows})
    assert sizes == [4, 128, 4096]
    names = {r["algorithm"].split(":")[0] for r in rows}
    assert names == {"MPI_Allreduce", *ALLREDUCE_ALGORITHMS}
    for r in rows:
        assert float(r["time_s"]) > 0 and r["ranks"] == "2"
        if r["algorithm"] == "MPI_Allreduce":
            assert float(r["vs_mpi"]) == 1.0


@pytest.mark.parametrize("args,message", [
    (["--algorithms", "ring,butterfly"], "unknown algorithm(s) butterfly"),
    (["--min-size", "abc"], "not a size: 'abc'"),
    (["--min-size", "1M", "--max-size", "1K"], "--max-size (1024 B) is below --min-size (1048576 B)"),
    (["--factor", "1"], "--factor must be >= 2, got 1"),
    (["--iters", "0"], "--iters must be >= 1, got 0"),
    (["--min-size", "6"], "--min-size must be a positive multiple of the float32 size (4 B), got 6"),
    (["--algorithms", ","], "--algorithms names none"),
    (["--csv", "/nonexistent/folder/x.csv"], "--csv: cannot write in /nonexistent/folder"),
    (["--dtype", "float16"], "invalid choice: 'float16'"),
    (["--csv", "/tmp/mpisim-same.json", "--trace", "/tmp/mpisim-same.json"], "--csv and --trace name the same file"),
    (["--trace", "/nonexistent/folder/t.json"], "--trace: no such folder: /nonexistent/folder"),
    (["--save-table", "/nonexistent-mpisim-table.json", "--algorithms", "auto"], "--algorithms names only auto"),
    (["--save-table", os.path.join(ROOT, "README.md")], "cannot be read as a table"),
])
def test_bench_rejects_bad_options(args, message):
    res = subprocess.run([sys.executable, "-m", "mpisim.bench", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and message in res.stderr, res.stderr


def test_demo_on_simulated_ranks():
    res = subprocess.run([sys.executable, "scripts/allreduce_demo.py", "--sim", "5", "--count", "10"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = [ln.split() for ln in res.stdout.splitlines()[2:]]
    assert [ln[0] for ln in lines] == list(ALLREDUCE_ALGORITHMS[1:])
    assert all(ln[1] == "True" for ln in lines)
    ring = next(ln for ln in lines if ln[0] == "ring")
    assert ring[2:] == ["8", str(2 * 4 * 10 * 4), "8"]  # 2(p-1) messages, 2(p-1) n bytes, 2(p-1) rounds


def test_python_m_mpisim_lists_the_tools():
    res = subprocess.run([sys.executable, "-m", "mpisim"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "mpiexec -n 2 python -m mpisim.bench" in res.stdout
    assert "python -m mpisim.centralized" in res.stdout and "python -m mpisim.study --list" in res.stdout
    for paradigm in ("allreduce", "paramserver", "fedavg", "localsgd", "easgd", "gossip"):
        assert f"python -m mpisim.{paradigm} --sim" in res.stdout and f"-m mpisim.{paradigm} " in res.stdout
    res = subprocess.run([sys.executable, "-m", "mpisim", "gossip"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "run the tool as python -m mpisim.gossip" in res.stderr


@pytest.mark.parametrize("args, words", [
    (["-m", "mpisim", "--bogus"], "unknown option --bogus"), (["-m", "mpisim", "garbage"], "unknown tool 'garbage'"),
    (["-m", "mpisim", "kernels.bench"], "run the tool as python -m kernels.bench"),
    (["-m", "mpisim", "study"], "run the tool as python -m mpisim.study"),
    (["-m", "kernels", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments_to_the_listings_exit_2_with_one_line(args, words):
    res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr


def test_python_m_kernels_help_is_help():
    res = subprocess.run([sys.executable, "-m", "kernels", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("usage: python -m kernels") and "available" not in res.stdout


def test_bench_mlp_prints_a_row_per_batch():
    res = subprocess.run([sys.executable, "scripts/bench_mlp.py", "--batch", "4", "16", "--hidden", "8",
                          "--seconds", "0.05", "--repeats", "1"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    rows = [ln.split() for ln in res.stdout.splitlines() if ln[:6].strip().isdigit()]
    assert [r[0] for r in rows] == ["4", "16"]
    assert all(float(r[1]) > 0 for r in rows)
    bad = subprocess.run([sys.executable, "scripts/bench_mlp.py", "--batch", "0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "must be positive" in bad.stderr
    for value in ("nan", "inf", "0"):
        bad = subprocess.run([sys.executable, "scripts/bench_mlp.py", "--seconds", value], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "--seconds must be in" in bad.stderr


@pytest.mark.timeout(300)
def test_parallelism_tables_quick():
    """The docs' tables in their small version: equal stages give the formula, ZeRO's memory its formula."""
    res = subprocess.run([sys.executable, "scripts/parallelism_tables.py", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=280)
    assert res.returncode == 0, res.stderr
    rows = [line.split(" | ") for line in res.stdout.splitlines() if line.startswith(("| gpipe", "| 1f1b"))]
    assert rows and all(r[3] == r[4] for r in rows)                  # formula == equal stages, to 4 digits
    zero_rows = [line for line in res.stdout.splitlines() if line.startswith("| 2 |")]
    assert len(zero_rows) == 4 and all(line.endswith("| yes |") for line in zero_rows)


@pytest.mark.timeout(600)
def test_compression_study_quick(tmp_path):
    """The study in its small version: a row per scheme with its compression, the precision rows, the plot."""
    res = subprocess.run([sys.executable, "scripts/compression_study.py", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=580, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    table = (tmp_path / "table.md").read_text()
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| 2 |")]
    assert [r[1] for r in rows] == ["none", "fp16", "topk:0.01 +EF", "powersgd:2"]
    assert rows[0][3] == "1.0x" and rows[1][3] == "2.0x"          # fp16: half the bytes of the plain allreduce
    precisions = [line.split(" | ")[0][2:] for line in table.splitlines() if line.startswith(("| fp", "| bf"))]
    assert precisions == ["fp32", "fp16", "bf16"]
    assert (tmp_path / "compression.png").read_bytes()[:4] == b"\x89PNG"
