from tests.study.helpers import run_quick


def test_batch_size_quick(tmp_path):
    md, doc = run_quick("batch-size", tmp_path)
    points = doc["data"]["points"]
    assert [p["batch"] for p in points] == [16, 128, 1024]
    for p in points:
        assert p["seconds"] > 0 and p["samples_per_s"] > 0 and 0 <= p["acc"] <= 1
        assert p["steps"] == -(-4800 // p["batch"])          # 80% of 6,000 examples for training
    assert "steps per epoch" in md
