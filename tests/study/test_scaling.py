import pytest

from mpisim.study import mpiexec_path
from tests.study.helpers import run_quick


@pytest.mark.skipif(mpiexec_path() is None, reason="mpiexec not found (pip install -e . brings the mpich wheel)")
@pytest.mark.timeout(300)
def test_scaling_quick(tmp_path):
    md, doc = run_quick("scaling", tmp_path)
    res = doc["data"]["results"]
    assert set(res) == {"mpiexec-strong", "mpiexec-weak", "sim-strong", "sim-weak"}
    for key, rows in res.items():
        assert rows[0]["ranks"] == 1 and rows[0]["speedup"] == 1.0
        for r in rows:
            assert r["seconds"] > 0 and r["ranks"] * r["per_rank_batch"] == r["global_batch"]
            shares = r["compute_share"] + r["comm_share"] + r["idle_share"]
            assert shares == pytest.approx(1.0, abs=0.02)
            if r["ranks"] > 1:
                assert r["algbw_GBps"] > 0 and r["busbw_GBps"] == pytest.approx(
                    r["algbw_GBps"] * 2 * (r["ranks"] - 1) / r["ranks"], rel=0.05)
            else:
                assert r["comm_share"] == 0
        if key.endswith("weak"):                    # weak scaling: the work per rank is constant
            assert len({r["per_rank_batch"] for r in rows}) == 1
        else:
            assert len({r["global_batch"] for r in rows}) == 1
    # virtual time is exact: with the modelled compute, more simulated ranks finish an epoch sooner here
    sim = res["sim-strong"]
    assert all(b["seconds"] < a["seconds"] for a, b in zip(sim, sim[1:]))
    assert "oversubscribed" not in md or "cores" in md
