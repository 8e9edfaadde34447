from tests.study.helpers import run_quick


def test_large_batch_quick_shows_the_loss_and_the_recovery(tmp_path):
    md, doc = run_quick("large-batch", tmp_path)
    data = doc["data"]
    acc = data["accuracy"]
    # the fixed rate loses accuracy at the largest batch, and linear scaling with warmup wins back at least half
    assert acc["8192:base lr"] < acc["64:base lr"] - 0.05
    assert data["lost"] > 0.05
    assert data["recovered:linear + warmup"] >= 0.5
    # at the base batch linear and sqrt scaling do not change the rate: the same run
    assert acc["64:linear"] == acc["64:sqrt"] == acc["64:linear + warmup"] == acc["64:base lr"]
    assert "recovers" in md
