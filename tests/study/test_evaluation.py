import pytest

from mpisim.study import mpiexec_path
from tests.study.helpers import run_quick


@pytest.mark.skipif(mpiexec_path() is None, reason="mpiexec not found (pip install -e . brings the mpich wheel)")
@pytest.mark.timeout(300)
def test_eval_quick_gives_the_same_accuracy(tmp_path):
    md, doc = run_quick("eval", tmp_path)
    data = doc["data"]
    assert [r["ranks"] for r in data["mpiexec"]] == [1, 2]
    assert all(r["same_accuracy"] and r["max_loss_difference"] < 1e-4 for r in data["mpiexec"])
    assert {r["paradigm"] for r in data["sim"]} == {"paramserver", "fedavg", "gossip", "pipeline"}
    assert all(r["same_accuracy"] for r in data["sim"])
    assert all(r["rank0_s"] > 0 and r["distributed_s"] > 0 for r in data["mpiexec"])
