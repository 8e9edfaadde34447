"""Counting laws of the algorithms, measured on the simulated transport.

Counters are per rank (``transport.stats``); ``rounds`` is the simulated transport's logical
clock (one round per send, a receive waits for its send's round), so the largest value over all
ranks is the depth of the schedule. The cross-rank argument check is switched off so only the
algorithm's own messages are counted.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpisim import run_simulated
from mpisim.comm import allgather, allreduce, barrier, bcast, gather, reduce, reduce_scatter

ranks = st.integers(1, 16)
pow2 = st.sampled_from([1, 2, 4, 8, 16])


def stats_of(p, fn):
    def body(t):
        t.reset_stats()
        fn(t)
        return t.stats
    return run_simulated(p, body)


def log2ceil(p):
    return math.ceil(math.log2(p)) if p > 1 else 0


@given(p=ranks, k=st.integers(0, 200))
def test_ring_allreduce(p, k):
    """Ring allreduce: each rank sends 2(p-1) messages; with n = k*p elements it sends exactly
    2(p-1)/p * n elements; the schedule is 2(p-1) rounds deep."""
    n = k * p
    st_ = stats_of(p, lambda t: allreduce(t, np.ones(n, np.float32), algorithm="ring", check=False))
    for s in st_:
        assert s.messages_sent == s.messages_received == 2 * (p - 1)
        assert s.bytes_sent == 2 * (p - 1) * k * 4
    assert max(s.rounds for s in st_) == 2 * (p - 1)


@given(p=ranks, n=st.integers(0, 3000))
def test_ring_allreduce_total_bytes_any_length(p, n):
    """For any n, the ranks together send 2(p-1) n elements (each block travels p-1 hops twice)."""
    st_ = stats_of(p, lambda t: allreduce(t, np.ones(n, np.float64), algorithm="ring", check=False))
    assert sum(s.bytes_sent for s in st_) == 2 * (p - 1) * n * 8


@given(p=pow2, k=st.integers(0, 100))
def test_rabenseifner_power_of_two(p, k):
    """Rabenseifner on p = 2**j: 2 log2 p messages per rank, 2(p-1)/p n elements sent per rank."""
    n = k * p
    st_ = stats_of(p, lambda t: allreduce(t, np.ones(n, np.int64), algorithm="rabenseifner", check=False))
    for s in st_:
        assert s.messages_sent == 2 * int(math.log2(p))
        assert s.bytes_sent == 2 * (p - 1) * k * 8
    assert max(s.rounds for s in st_) == 2 * int(math.log2(p))


@given(p=ranks, n=st.integers(0, 500))
def test_recursive_doubling_allreduce(p, n):
    """Recursive doubling: with p2 = 2**floor(log2 p) and r = p - p2, the p2 active ranks send
    log2 p2 whole vectors (plus one fold message on the r odd partners); the r extra ranks send
    one. Rounds: log2 p2, plus 2 when r > 0."""
    p2 = 1 << (p.bit_length() - 1)
    r = p - p2
    st_ = stats_of(p, lambda t: allreduce(t, np.ones(n, np.int32), algorithm="recursive_doubling", check=False))
    for rank, s in enumerate(st_):
        if rank < 2 * r and rank % 2 == 0:
            assert s.messages_sent == 1
        else:
            assert s.messages_sent == int(math.log2(p2)) + (1 if rank < 2 * r else 0)
        assert s.bytes_sent == s.messages_sent * n * 4
    assert max(s.rounds for s in st_) == int(math.log2(p2)) + (2 if r else 0)


@given(p=ranks, n=st.integers(0, 500))
def test_naive_allreduce_root_is_the_bottleneck(p, n):
    """Naive: rank 0 receives p-1 vectors and sends p-1; every other rank sends one, receives one."""
    st_ = stats_of(p, lambda t: allreduce(t, np.ones(n), algorithm="naive", check=False))
    assert st_[0].messages_received == st_[0].messages_sent == p - 1
    assert st_[0].bytes_received == (p - 1) * n * 8
    assert all(s.messages_sent == s.messages_received == 1 for s in st_[1:])


@given(p=ranks, n=st.integers(0, 500))
def test_tree_allreduce(p, n):
    """Tree: 2(p-1) messages in all (p-1 up, p-1 down), at most 2 ceil(log2 p) rounds deep and
    exactly that for a power of two. (Receives cost no round in the logical clock, so when p is
    not a power of two the reduce half can be shallower: for p = 3 both leaves send in round 1.)"""
    st_ = stats_of(p, lambda t: allreduce(t, np.ones(n), algorithm="tree", check=False))
    assert sum(s.messages_sent for s in st_) == 2 * (p - 1)
    depth = max(s.rounds for s in st_)
    assert depth <= 2 * log2ceil(p)
    if p & (p - 1) == 0:
        assert depth == 2 * log2ceil(p)


@given(p=ranks, n=st.integers(0, 500), data=st.data())
def test_binomial_bcast_reaches_all_in_log_rounds(p, n, data):
    """Binomial bcast: p-1 messages of n elements in all, each non-root receives once, and the
    data reaches every rank in ceil(log2 p) rounds."""
    root = data.draw(st.integers(0, p - 1))
    st_ = stats_of(p, lambda t: bcast(t, np.ones(n), root, "binomial", check=False))
    assert sum(s.messages_sent for s in st_) == p - 1
    assert all(s.messages_received == (0 if r == root else 1) for r, s in enumerate(st_))
    assert max(s.rounds for s in st_) == log2ceil(p)


@given(p=ranks, k=st.integers(0, 100))
def test_scatter_allgather_bcast(p, k):
    """Scatter + ring allgather bcast of n = k*p elements: a binomial scatter (p-1 messages in
    all, every non-root block sent at least once) and a ring allgather (p-1 messages of one
    block per rank)."""
    n = k * p
    st_ = stats_of(p, lambda t: bcast(t, np.ones(n, np.float32), 0, "scatter_allgather", check=False))
    # scatter: p-1 messages in all; every block but the root's travels once per tree level it
    # descends; allgather: p-1 messages per rank, each rank sends p-1 blocks.
    scatter_msgs = sum(s.messages_sent for s in st_) - p * (p - 1)
    assert scatter_msgs == p - 1
    allgather_bytes = p * (p - 1) * k * 4
    assert sum(s.bytes_sent for s in st_) - allgather_bytes >= (p - 1) * k * 4  # each block at least once
    assert all(s.messages_received >= p - 1 for s in st_)


@given(p=ranks, n=st.integers(0, 300), data=st.data())
def test_reduce_and_gather_are_binomial(p, n, data):
    """Reduce and gather: p-1 messages in all, at most ceil(log2 p) rounds (exactly, for a power
    of two); the gather root receives ceil(log2 p) messages carrying (p-1) n elements in all."""
    root = data.draw(st.integers(0, p - 1))
    for fn in (lambda t: reduce(t, np.ones(n), "sum", root, check=False),
               lambda t: gather(t, np.ones(n), root, check=False)):
        st_ = stats_of(p, fn)
        assert sum(s.messages_sent for s in st_) == p - 1
        depth = max(s.rounds for s in st_)
        assert depth <= log2ceil(p) and (depth == log2ceil(p) or p & (p - 1))
    assert st_[root].messages_received == log2ceil(p)
    assert st_[root].bytes_received == (p - 1) * n * 8


@given(p=ranks, m=st.integers(0, 100))
def test_allgather_ring_and_recursive_doubling(p, m):
    """Allgather: each rank sends (p-1) blocks in all; ring in p-1 messages, recursive doubling
    in log2 p messages when p is a power of two."""
    for algo in ("ring", "recursive_doubling"):
        st_ = stats_of(p, lambda t: allgather(t, np.ones(m, np.int32), algo, check=False))
        if algo == "ring" or p & (p - 1) == 0:
            for s in st_:
                assert s.bytes_sent == (p - 1) * m * 4
                assert s.messages_sent == (p - 1 if algo == "ring" else int(math.log2(p)))


@given(p=ranks, k=st.integers(0, 100))
def test_reduce_scatter_ring(p, k):
    """Ring reduce-scatter of n = k*p elements: p-1 messages of k elements per rank."""
    st_ = stats_of(p, lambda t: reduce_scatter(t, np.ones(k * p), "sum", "ring", check=False))
    for s in st_:
        assert s.messages_sent == p - 1 and s.bytes_sent == (p - 1) * k * 8


@given(p=pow2, k=st.integers(0, 100))
def test_reduce_scatter_recursive_halving(p, k):
    """Recursive halving on p = 2**j, n = k*p: log2 p messages, (p-1)/p n elements per rank."""
    st_ = stats_of(p, lambda t: reduce_scatter(t, np.ones(k * p), "sum", "recursive_halving", check=False))
    for s in st_:
        assert s.messages_sent == int(math.log2(p)) and s.bytes_sent == (p - 1) * k * 8


@given(p=ranks)
def test_dissemination_barrier(p):
    """Dissemination barrier: ceil(log2 p) empty messages per rank, ceil(log2 p) rounds."""
    st_ = stats_of(p, barrier)
    for s in st_:
        assert s.messages_sent == log2ceil(p) and s.bytes_sent == 0
    assert max(s.rounds for s in st_) == log2ceil(p)


@pytest.mark.parametrize("p", [2, 5, 16])
def test_consistency_check_cost(p):
    """The argument check is one recursive-doubling allreduce of each compared value and its
    negation (int64). allreduce compares 5 values (collective, length, dtype, op, algorithm):
    80 bytes per message, as many messages as recursive doubling sends on each rank."""
    on = stats_of(p, lambda t: allreduce(t, np.ones(8), algorithm="ring"))
    off = stats_of(p, lambda t: allreduce(t, np.ones(8), algorithm="ring", check=False))
    rd = stats_of(p, lambda t: allreduce(t, np.ones(10, np.int64), algorithm="recursive_doubling", check=False))
    for a, b, c in zip(on, off, rd):
        assert a.messages_sent - b.messages_sent == c.messages_sent
        assert a.bytes_sent - b.bytes_sent == c.messages_sent * 80
