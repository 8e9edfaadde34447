"""Shamir's secret sharing: any t shares rebuild the secret, t - 1 do not."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mpisim.train.shamir import PRIME, reconstruct, share


@settings(max_examples=60, deadline=None)
@given(secret=st.integers(0, PRIME - 1), n=st.integers(1, 9), data=st.data())
def test_any_t_shares_rebuild_the_secret(secret, n, data):
    t = data.draw(st.integers(1, n))
    shares = share(secret, n, t, np.random.default_rng(data.draw(st.integers(0, 2 ** 32))))
    assert [x for x, _ in shares] == list(range(1, n + 1))
    pick = data.draw(st.permutations(shares))[:data.draw(st.integers(t, n))]
    assert reconstruct(pick, t) == secret


def test_fewer_than_t_shares_are_refused():
    rng = np.random.default_rng(0)
    shares = share(12345, 5, 3, rng)
    with pytest.raises(ValueError, match="3 are needed"):
        reconstruct(shares[:2], 3)
    # one share of a 2-of-n sharing is the secret plus a uniform random coefficient (mod p): the same
    # coefficient with another secret moves the share by exactly the difference, so it hides the secret
    a, b = share(7, 3, 2, np.random.default_rng(1)), share(8, 3, 2, np.random.default_rng(1))
    assert (b[0][1] - a[0][1]) % PRIME == 1

def test_every_subset_of_size_t():
    secret = PRIME - 2
    shares = share(secret, 6, 4, np.random.default_rng(7))
    for subset in itertools.combinations(shares, 4):
        assert reconstruct(subset, 4) == secret


@pytest.mark.parametrize("args, why", [((-1, 3, 2), "integer in"), ((PRIME, 3, 2), "integer in"), ((5, 3, 4), "1 <= t <= n"),
                                       ((5, 3, 0), "1 <= t <= n"), ((1.5, 3, 2), "integer in")])
def test_bad_arguments(args, why):
    with pytest.raises(ValueError, match=why):
        share(*args, np.random.default_rng(0))
    with pytest.raises(ValueError, match="same x"):
        reconstruct([(1, 2), (1, 3)], 2)
