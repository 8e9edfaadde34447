"""python -m mpisim.study: the list, and bad command lines."""
import subprocess
import sys

import pytest

from mpisim.study import STUDIES, Study, fmt, pct


def _run(*argv):
    return subprocess.run([sys.executable, "-m", "mpisim.study", *argv], capture_output=True, text=True, timeout=120)


def test_list_names_the_eight_studies():
    r = _run("--list")
    assert r.returncode == 0
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names == list(STUDIES) and len(names) == 8
    assert set(names) == {"batch-size", "scaling", "large-batch", "non-iid", "taylor", "activations", "blas", "eval"}


def test_every_study_has_a_question_and_a_run():
    from mpisim.study import load_study
    for name in STUDIES:
        mod = load_study(name)
        assert mod.QUESTION.endswith("?") and callable(mod.run)


@pytest.mark.parametrize("argv, why", [
    ([], "name a study"),
    (["nope"], "unknown study 'nope'"),
    (["--list", "blas"], "--list takes no study name"),
    (["blas", "--bogus"], "unrecognized arguments"),
])
def test_usage_errors(argv, why):
    r = _run(*argv)
    assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr


def test_out_must_be_a_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = _run("blas", "--quick", "--out", str(f))
    assert r.returncode == 2 and "is a file" in r.stderr
    assert f.read_text() == "x"


def test_a_failing_run_is_one_line_and_writes_no_report(tmp_path, monkeypatch):
    from mpisim.study import StudyError, __main__ as cli, batch_size

    def broken(study):
        study.table("t", ["a"], [[1]])
        raise StudyError("the run failed")
    monkeypatch.setattr(batch_size, "run", broken)
    assert cli.main(["batch-size", "--out", str(tmp_path), "--quiet"]) == 1
    assert not (tmp_path / "batch-size.md").exists()


def test_cells():
    assert fmt(1234567) == "1,234,567" and fmt(0.012345) == "0.0123" and fmt(None) == "-"
    assert fmt(12345.6) == "12,346" and fmt(0.0) == "0" and fmt(2.5e-5) == "2.5e-05"
    assert pct(0.5) == "50.0%" and pct(None) == "-"


def test_tables_print_and_go_to_the_report(tmp_path, capsys):
    s = Study("batch-size", quick=True, out=tmp_path, command="python -m mpisim.study batch-size")
    s.table("T", ["x", "y"], [[1, 0.5], [2, 0.25]], key="k")
    s.conclude("c")
    s.write()
    s.close()
    md = (tmp_path / "batch-size.md").read_text()
    assert "| x | y |" in md and "| 2 | 0.25 |" in md and "- c" in md
    assert s.data["k"] == [{"x": 1, "y": 0.5}, {"x": 2, "y": 0.25}]
    assert "T" in capsys.readouterr().out
