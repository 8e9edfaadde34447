"""Secure aggregation's dropout recovery: Shamir shares of each client's mask key let the server remove the
masks of clients that dropped out after masking, and the sum is the survivors' exact sum."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mpisim import fedavg
from mpisim.train import federated as f
from tests.paradigms.helpers import run_sim


def _recover(seed, rnd, sampled, dropped, size=40):
    rng = np.random.default_rng(seed)
    q = {c: f.quantize(rng.normal(size=size)) for c in sampled}
    masked = {c: f.mask(q[c], c, sampled, seed=seed, round=rnd) for c in sampled}
    shares = {c: f.key_shares(seed, rnd, c, sampled) for c in sampled}
    survivors = [c for c in sampled if c not in dropped]
    keys = {}
    for d in dropped:
        opened = [(sampled.index(j) + 1, *f.open_share(shares[d][sampled.index(j)], seed, rnd, owner=d, holder=j))
                  for j in survivors]
        keys[d] = f.rebuild_key(opened, len(sampled))
    total = f.add_wrapping(f.secure_sum([masked[c] for c in survivors]),
                           f.unmask_correction(keys, survivors, seed, rnd, size))
    return total, f.secure_sum([q[c] for c in survivors]), keys


@pytest.mark.parametrize("dropped", [[9], [4, 22]])
def test_one_and_two_dropped_clients_leave_the_survivors_exact_sum(dropped):
    sampled = [4, 9, 17, 22, 30]
    total, expected, keys = _recover(3, 2, sampled, dropped)
    assert np.array_equal(total, expected)                       # bit for bit, int64
    assert all(keys[d] == f.mask_key(3, 2, d) for d in dropped)
    # without the correction the masks are still there
    rng = np.random.default_rng(3)
    q = {c: f.quantize(rng.normal(size=40)) for c in sampled}
    plain = f.secure_sum([f.mask(q[c], c, sampled, seed=3, round=2) for c in sampled if c not in dropped])
    assert not np.array_equal(plain, expected)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31), rnd=st.integers(0, 50), m=st.integers(3, 8), data=st.data())
def test_recovery_for_any_dropouts_the_threshold_allows(seed, rnd, m, data):
    sampled = sorted(data.draw(st.sets(st.integers(0, 99), min_size=m, max_size=m)))
    t = f.secagg_threshold(m)
    k = data.draw(st.integers(1, m - t))
    dropped = data.draw(st.permutations(sampled))[:k]
    total, expected, _ = _recover(seed, rnd, sampled, dropped, size=16)
    assert np.array_equal(total, expected)


def test_the_threshold_and_the_shares_secrecy():
    assert [f.secagg_threshold(m) for m in (2, 3, 4, 5, 10)] == [2, 2, 3, 3, 6]
    sampled = [1, 2, 3, 4, 5]
    shares = f.key_shares(0, 0, 1, sampled)
    opened = [(k + 1, *f.open_share(shares[k], 0, 0, owner=1, holder=j)) for k, j in enumerate(sampled)]
    assert f.rebuild_key(opened[1:4], 5) == f.mask_key(0, 0, 1)
    with pytest.raises(ValueError, match="3 are needed"):
        f.rebuild_key(opened[1:3], 5)
    # a share opened with the wrong holder's pad is garbage: the key does not come back
    wrong = [(k + 1, *f.open_share(shares[k], 0, 0, owner=1, holder=j + 1)) for k, j in enumerate(sampled[:3])]
    assert f.rebuild_key(wrong, 5) != f.mask_key(0, 0, 1)
    # what the server holds is not the share itself
    plain = [(k + 1, *f.open_share(shares[k], 0, 0, owner=1, holder=j)) for k, j in enumerate(sampled)]
    assert all((int(c[0]), int(c[1])) != (lo, hi) for c, (_, lo, hi) in zip(shares, plain))


ARGS = ["--clients", "10", "--fraction", "0.5", "--rounds", "2", "--dataset", "digits", "--dtype", "float64", "--quiet"]


def _records(tmp_path, name, argv):
    path = tmp_path / f"{name}.jsonl"
    out = run_sim(fedavg, 3, [*argv, "--metrics", str(path)])
    return out, [json.loads(line) for line in open(path)]


@pytest.mark.parametrize("bad", [["--bad-client", "3:dropout"], ["--bad-clients", "0.2:dropout"]])
def test_a_round_with_dropped_clients_completes_with_the_survivors(bad, tmp_path):
    secure, recs = _records(tmp_path, "s", [*ARGS, "--secure-agg", *bad])
    assert secure["comm_agrees"]
    dropped = [r.get("recovered", []) for r in recs]
    assert any(dropped), recs
    for r, d in zip(recs, dropped):
        assert r["accepted"] == r["clients"] - len(d)
    # the same survivors averaged in the clear: equal up to the fixed point's 2**-32
    plain, _ = _records(tmp_path, "p", [*ARGS, *bad])
    np.testing.assert_allclose(secure["model"].params, plain["model"].params, rtol=0, atol=1e-6)
    # and not the model of a run that kept it as it was
    base, _ = _records(tmp_path, "b", [*ARGS, "--rounds", "1", "--secure-agg"])
    assert not np.array_equal(secure["model"].params, base["model"].params)


def test_secure_aggregation_of_one_client_is_refused():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "mpisim.fedavg", "--sim", "3", "--secure-agg", "--clients", "10",
                        "--fraction", "0.1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "at least 2 clients per round" in r.stderr
