"""Run a study's --quick version into a temporary folder and read what it wrote."""
import json
from pathlib import Path

import pytest

from mpisim.study import STUDIES, load_study
from mpisim.study.__main__ import main


def run_quick(name: str, out: Path) -> tuple[str, dict]:
    """Run ``python -m mpisim.study NAME --quick --out OUT --quiet``; check the files every study writes;
    return the report's Markdown and its JSON."""
    pytest.importorskip("matplotlib", reason="the studies draw their plots with matplotlib")
    assert main([name, "--quick", "--out", str(out), "--quiet"]) == 0
    md = (out / f"{name}.md").read_text()
    doc = json.loads((out / f"{name}.json").read_text())
    lines = md.splitlines()
    assert lines[0].startswith(f"`python -m mpisim.study {name} --quick --out ")
    assert load_study(name).QUESTION in md and load_study(name).QUESTION.endswith("?")
    assert "## Setting" in md and "## Results" in md and "## Conclusions" in md
    assert doc["tables"] and all(t["rows"] for t in doc["tables"])
    assert md.count("\n| ") >= sum(len(t["rows"]) for t in doc["tables"])
    pngs = sorted(out.glob(f"{name}-*.png"))
    assert pngs and all(p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    for p in pngs:
        assert f"({p.name})" in md
    conclusions = md.split("## Conclusions", 1)[1]
    assert conclusions.count("\n- ") >= 1
    assert "issue" not in md.lower()
    assert name in STUDIES
    return md, doc
