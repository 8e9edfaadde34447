"""What the tools print about themselves: counts, shares and units read as a person would write them."""
from __future__ import annotations

import pytest

from mpisim import fedavg, paramserver
from mpisim.train.metrics import plural, share


def test_plural_and_share():
    assert [plural(n, "epoch") for n in (1, 2, 0)] == ["1 epoch", "2 epochs", "0 epochs"]
    assert share(64, 4) == "16" and share(64, 3) == "~21.3" and share(10, 10) == "1"


def test_federated_help_counts_rounds_and_ssp_says_what_a_step_is(capsys):
    with pytest.raises(SystemExit):
        fedavg.PARADIGM.parse(["--help"])
    text = capsys.readouterr().out
    assert "--rounds R" in text and "--warmup ROUNDS" in text and "--step-size ROUNDS" in text
    assert "EPOCHS" not in text
    with pytest.raises(SystemExit):
        paramserver.PARADIGM.parse(["--help"])
    assert "one push of its gradient and one pull" in " ".join(capsys.readouterr().out.split())


def test_a_run_says_one_epoch_and_an_exact_share(capsys):
    from mpisim import allreduce
    assert allreduce.main(["--sim", "4", "--epochs", "1", "--stop-after", "1"]) == 0
    out = capsys.readouterr().out
    assert "global batch 64 (16 per rank), 1 epoch;" in out
