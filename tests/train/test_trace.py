"""--trace and --timeline: the Chrome trace, the Gantt chart, and the closing table's time per role.

The totals are recomputed here from the JSON file alone, by a sweep over elementary time segments (not
mpisim.trace's interval merging), and must equal the table's figures.
"""
import json
import os
import time

import numpy as np
import pytest

from mpisim import allreduce as dp
from mpisim import paramserver
from mpisim.comm import allreduce, bcast, run_simulated
from mpisim.comm._common import TAG_ALLREDUCE
from mpisim.trace import BUS_FACTOR, clock_offsets, traced, tracing

from ..mpirun import run_mpi
from ..paradigms.helpers import SMALL, run_sim

matplotlib = pytest.importorskip("matplotlib")


def _sweep(spans: list[tuple], start: float, end: float) -> dict[str, float]:
    """compute, comm, overlap and idle seconds of one rank's spans (cat, tid, s, e) within [start, end]:
    on one thread communication wins over computation; across threads both count."""
    cuts = np.unique(np.array([start, end, *(x for _, _, s, e in spans for x in (s, e))]))
    cuts = cuts[(cuts >= start) & (cuts <= end)]
    mids, widths = (cuts[:-1] + cuts[1:]) / 2, np.diff(cuts)
    comp_any = np.zeros(mids.size, bool)
    comm_any = np.zeros(mids.size, bool)
    for tid in {t for _, t, _, _ in spans}:
        def covered(kind):
            m = np.zeros(mids.size, bool)
            for c, t, s, e in spans:
                if t == tid and (c == "compute") == (kind == "compute"):
                    m |= (mids > s) & (mids < e)
            return m
        comm = covered("comm")
        comp_any |= covered("compute") & ~comm
        comm_any |= comm
    w = lambda m: float(widths[m].sum())
    return {"compute": w(comp_any), "comm": w(comm_any), "overlap": w(comp_any & comm_any),
            "idle": w(~comp_any & ~comm_any), "run": end - start}


def _per_rank(doc: dict) -> list[dict]:
    n = doc["otherData"]["ranks"]
    spans = [[] for _ in range(n)]
    grad = np.zeros((n, 3))
    for x in doc["traceEvents"]:
        if x["ph"] != "X":
            continue
        s, e = x["ts"] / 1e6, (x["ts"] + x["dur"]) / 1e6
        spans[x["pid"]].append((x["cat"], x["tid"], s, e))
        a = x.get("args", {})
        if x["cat"] == "collective" and a.get("category") == "payload" and not a.get("depth"):
            grad[x["pid"]] += (a["bytes"], a["bytes"] * BUS_FACTOR(x["name"], a["ranks"]), e - s)
    out = []
    for r, (lo, hi) in enumerate(doc["otherData"]["windows_us"]):
        d = _sweep(spans[r], lo / 1e6, hi / 1e6)
        d["grad"] = grad[r]
        out.append(d)
    return out


@pytest.mark.parametrize("network", [None, "10gbe,compute=10GFLOP/s"])
def test_a_4_rank_run_writes_a_trace_whose_totals_are_the_tables(tmp_path, network):
    js, png = tmp_path / "out" / "t.json", tmp_path / "t.png"
    argv = [*SMALL, "--epochs", "1", "--batch-size", "12", "--trace", js, "--timeline", png]
    res = run_sim(dp, 4, argv + (["--network", network] if network else []))
    doc = json.load(open(js))
    names = {x["pid"]: x["args"]["name"] for x in doc["traceEvents"] if x["name"] == "process_name"}
    assert names == {r: f"rank {r}" for r in range(4)}                 # one track per rank
    xs = [x for x in doc["traceEvents"] if x["ph"] == "X"]
    assert {x["pid"] for x in xs} == {0, 1, 2, 3}
    assert doc["otherData"]["clock"] == ("virtual" if network else "wall")
    for r in range(4):
        mine = [x for x in xs if x["pid"] == r]
        kinds = {(x["cat"], x["name"]) for x in mine}
        assert {("compute", "forward"), ("compute", "backward"), ("compute", "optimizer"),
                ("collective", "allreduce")} <= kinds
        grads = [x for x in mine if x["name"] == "allreduce" and x["args"].get("category") == "payload"]
        assert len(grads) == res["steps"]                               # one allreduce of the gradient a step
        assert all(x["args"]["bytes"] == res["model"].params.nbytes and x["args"]["algorithm"] != "auto"
                   for x in grads)
        msgs = [x for x in mine if x["cat"] == "message"]
        assert msgs and all({"peer", "tag", "bytes"} <= set(x["args"]) for x in msgs)
    # the messages the payload sent, as the ledger counted them
    sent = [x for x in xs if x["cat"] == "message" and x["name"] in ("send", "isend", "sendrecv")
            and x["args"].get("category") == "payload"]
    assert len(sent) == res["payload_messages"]
    assert sum(x["args"]["bytes"] for x in sent) == res["payload_bytes"]
    # the closing table's figures are the trace's span totals
    per = _per_rank(doc)
    t = res["times"]["rank"]
    for k in ("compute", "comm", "overlap", "idle", "run"):
        assert t[f"{k}_s"] == pytest.approx(np.mean([d[k] for d in per]), abs=1e-9), k
    g = np.sum([d["grad"] for d in per], axis=0)
    assert t["algbw_GBps"] == pytest.approx(g[0] / g[2] / 1e9, rel=1e-9)
    assert t["busbw_GBps"] == pytest.approx(t["algbw_GBps"] * 2 * 3 / 4, rel=1e-9)   # NCCL: 2(p-1)/p
    assert t["comm_s"] > 0 and t["compute_s"] > 0
    if network:        # virtual time: every rank's window is the same run, and its parts add up
        assert all(d["run"] == pytest.approx(d["compute"] + d["comm"] - d["overlap"] + d["idle"]) for d in per)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "time per role" in res["comm_table"] and "busbw GB/s" in res["comm_table"]


def test_a_paradigm_with_servers_has_a_time_row_per_role(tmp_path):
    js = tmp_path / "ps.json"
    res = run_sim(paramserver, 3, [*SMALL, "--epochs", "1", "--batch-size", "12", "--trace", js])
    doc = json.load(open(js))
    assert doc["otherData"]["ranks"] == 3
    assert set(res["times"]) >= {"server", "worker"} or len(res["times"]) >= 2
    per = _per_rank(doc)
    for role, fig in res["times"].items():
        assert fig["run_s"] > 0
    assert sum(f["ranks"] for f in res["times"].values()) == 3
    assert np.mean([d["comm"] for d in per]) > 0


def test_run_simulated_and_a_block_can_be_traced(tmp_path):
    js = tmp_path / "fn.json"

    def body(t):
        x = np.full(1000, t.rank, dtype=np.float32)
        y = allreduce(t, x, algorithm="ring")
        return float(bcast(t, y)[0])

    out = run_simulated(3, traced(body, str(js)), network="10gbe")
    assert out == [3.0, 3.0, 3.0]
    doc = json.load(open(js))
    xs = [x for x in doc["traceEvents"] if x["ph"] == "X"]
    ring = [x for x in xs if x["name"] == "allreduce"]
    assert len(ring) == 3 and {x["args"]["algorithm"] for x in ring} == {"ring"}
    assert all(x["args"]["bytes"] == 4000 and x["args"]["ranks"] == 3 for x in ring)
    # the ring's 2(p-1) steps per rank, each a sendrecv naming the next rank as its peer
    steps = [x for x in xs if x["name"] == "sendrecv" and x["args"]["tag"] == TAG_ALLREDUCE]
    assert len(steps) == 3 * 2 * 2
    assert {(x["pid"], x["args"]["peer"]) for x in steps} == {(r, (r + 1) % 3) for r in range(3)}

    js2 = tmp_path / "block.json"

    def block(t):
        with tracing(t, str(js2)) as tt:
            allreduce(tt, np.ones(8, np.float64))
    run_simulated(2, block)
    assert json.load(open(js2))["otherData"]["ranks"] == 2
    with pytest.raises(ValueError, match="ending in .json"):
        traced(body, str(tmp_path / "t.txt"))


@pytest.mark.parametrize("flag, value, words", [
    ("--trace", "{d}", "is a directory"),
    ("--trace", "{d}/t.txt", "ending in .json"),
    ("--timeline", "{d}/t.jpg", "ending in .png"),
    ("--trace", "/dev/null.json", None),
    ("--trace", "{f}/t.json", "is a file, not a directory"),
    ("--timeline", "{fifo}", "not a regular file"),
    ("--trace", "", "--trace needs a file name"),
    ("--timeline", "{d}/p.png --plot {d}/p.png", "--plot and --timeline name the same file"),
    ("--trace", "{d}/m.json --metrics {d}/m.json", "--metrics and --trace name the same file"),
])
def test_a_bad_trace_or_timeline_path_is_a_usage_error_before_the_run(tmp_path, capsys, flag, value, words):
    f = tmp_path / "plain"
    f.write_text("x")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    path = value.format(d=tmp_path, f=f, fifo=fifo)
    if words is None:             # /dev is not writable to a user; root may write anywhere
        if os.geteuid() == 0:
            pytest.skip("root may write in /dev")
        words = "cannot write"
    with pytest.raises(SystemExit) as e:
        dp.PARADIGM.parse([*SMALL, flag, *(path.split(" ") if path else [path]), "--sim", "2"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_an_untraced_run_records_nothing_and_prints_no_time_table():
    res = run_sim(dp, 2, [*SMALL, "--epochs", "1", "--batch-size", "12"])
    assert "times" not in res and "time per role" not in res["comm_table"]


def test_under_mpiexec_the_gathered_trace_has_a_track_per_rank_on_one_clock(tmp_path):
    js = tmp_path / "mpi.json"
    p = run_mpi(2, "-m", "mpisim.allreduce", *map(str, SMALL), "--epochs", "1", "--batch-size", "12",
                "--trace", str(js), timeout=180)
    assert p.returncode == 0, p.stderr
    doc = json.load(open(js))
    names = sorted(x["args"]["name"] for x in doc["traceEvents"] if x["name"] == "process_name")
    assert names == ["rank 0", "rank 1"]
    xs = [x for x in doc["traceEvents"] if x["ph"] == "X"]
    assert {x["pid"] for x in xs} == {0, 1}
    assert all(x["ts"] >= 0 and x["dur"] >= 0 for x in xs)
    assert min(lo for lo, _ in doc["otherData"]["windows_us"]) == 0
    # aligned: rank 1's gradient allreduces overlap rank 0's, step by step (a collective cannot end on one
    # rank before it started on the other, beyond the clock estimate's error)
    ar = {r: [x for x in xs if x["pid"] == r and x["name"] == "allreduce"] for r in (0, 1)}
    assert len(ar[0]) == len(ar[1]) > 0
    for a, b in zip(ar[0], ar[1]):
        assert a["ts"] <= b["ts"] + b["dur"] + 2000 and b["ts"] <= a["ts"] + a["dur"] + 2000   # within 2 ms


def test_the_clock_offsets_recover_a_skew_between_ranks():
    def body(t):
        return clock_offsets(t, lambda: time.perf_counter() + 5.0 * t.rank)    # rank r's clock runs 5r s ahead
    off = run_simulated(3, body)[0]
    assert len(off) == 3 and off[0] == 0.0
    assert off[1] == pytest.approx(5.0, abs=0.5) and off[2] == pytest.approx(10.0, abs=0.5)
