"""Partitions: DistributedSampler semantics for ranks; IID, shard and Dirichlet client splits.

hypothesis draws the example count (0..500), world size (1..16), seed, epoch, drop_last and
layout; expected counts are computed from n and world as PyTorch's DistributedSampler does.
"""
import math
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpisim.data import (
    DataError,
    dirichlet_partition,
    distributed_indices,
    epoch_permutation,
    iid_partition,
    label_histogram,
    shard_partition,
)

sizes = st.integers(0, 500)
worlds = st.integers(1, 16)
seeds = st.integers(0, 2**32 - 1)
epochs = st.integers(0, 1000)
layouts = st.sampled_from(["strided", "contiguous"])


def all_ranks(n, world, **kw):
    return [distributed_indices(n, rank=r, world_size=world, **kw) for r in range(world)]


@given(n=sizes, world=worlds, seed=seeds, epoch=epochs, drop_last=st.booleans(), layout=layouts,
       shuffle=st.booleans())
def test_distributed_indices_properties(n, world, seed, epoch, drop_last, layout, shuffle):
    kw = dict(seed=seed, epoch=epoch, drop_last=drop_last, layout=layout, shuffle=shuffle)
    parts = all_ranks(n, world, **kw)
    total = (n // world if drop_last else math.ceil(n / world)) * world
    for p in parts:
        assert p.dtype == np.int64 and len(p) == total // world
        assert np.all((0 <= p) & (p < max(n, 1)))
    allidx = np.concatenate(parts)
    counts = np.bincount(allidx, minlength=n)
    if drop_last or n % world == 0:
        assert counts.max(initial=0) <= 1  # no duplicates
    if not drop_last:
        assert np.all(counts >= 1)  # every example seen
        assert len(allidx) - n == total - n == int(np.sum(counts - 1))  # padding
    if n % world == 0:
        assert np.array_equal(np.sort(allidx), np.arange(n))
    again = all_ranks(n, world, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


@given(n=sizes, world=worlds, seed=seeds, epoch=epochs, drop_last=st.booleans())
def test_layouts_hold_the_same_padded_order(n, world, seed, epoch, drop_last):
    kw = dict(seed=seed, epoch=epoch, drop_last=drop_last)
    strided = all_ranks(n, world, layout="strided", **kw)
    contiguous = all_ranks(n, world, layout="contiguous", **kw)
    # the padded/truncated list, rebuilt from each layout, is the same list
    interleaved = np.stack(strided, axis=1).reshape(-1) if strided[0].size else np.empty(0)
    np.testing.assert_array_equal(interleaved, np.concatenate(contiguous))


def test_distributed_indices_examples():
    # PyTorch DistributedSampler(shuffle=False): 10 items, 4 replicas, padded with 0, 1
    assert [p.tolist() for p in all_ranks(10, 4, shuffle=False)] == [
        [0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1]]
    assert [p.tolist() for p in all_ranks(10, 4, shuffle=False, layout="contiguous")] == [
        [0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 0, 1]]
    assert [p.tolist() for p in all_ranks(10, 4, shuffle=False, drop_last=True)] == [
        [0, 4], [1, 5], [2, 6], [3, 7]]
    # padding longer than n wraps around more than once
    assert [p.tolist() for p in all_ranks(1, 4, shuffle=False)] == [[0], [0], [0], [0]]
    assert np.concatenate(all_ranks(2, 7, shuffle=False)).tolist() == [0, 1, 0, 1, 0, 1, 0]
    assert all(p.size == 0 for p in all_ranks(3, 4, shuffle=False, drop_last=True))
    assert all(p.size == 0 for p in all_ranks(0, 3))


def test_shuffle_follows_epoch_permutation():
    perm = epoch_permutation(12, seed=5, epoch=2)
    ss = np.random.SeedSequence(5, spawn_key=(zlib.crc32(b"shuffle"), 2))
    np.testing.assert_array_equal(perm, np.random.default_rng(ss).permutation(12))
    np.testing.assert_array_equal(distributed_indices(12, rank=1, world_size=3, seed=5, epoch=2),
                                  perm[1::3])


@given(seed=seeds, epoch=st.integers(0, 5))
def test_data_streams_are_not_the_plain_seed_streams(seed, epoch):
    # a model initialized with default_rng(seed) or SeedSequence([seed, k]) must not draw the
    # same bits as the shuffle (SeedSequence([seed, 0]) is SeedSequence(seed), zero padding)
    perm = epoch_permutation(200, seed=seed, epoch=epoch)
    for other in (np.random.default_rng(seed),
                  np.random.default_rng(np.random.SeedSequence([seed, epoch]))):
        assert not np.array_equal(perm, other.permutation(200))
    labels = np.arange(200) % 10
    parts = iid_partition(200, 4, seed=seed)
    assert not np.array_equal(np.concatenate(parts),
                              np.concatenate(iid_partition(200, 4, seed=seed + 1)))
    assert len(dirichlet_partition(labels, 4, seed=seed)) == 4


@given(seed=seeds, epoch=epochs)
def test_epoch_permutation_changes_with_epoch(seed, epoch):
    a = epoch_permutation(100, seed=seed, epoch=epoch)
    assert np.array_equal(np.sort(a), np.arange(100)) and a.dtype == np.int64
    np.testing.assert_array_equal(a, epoch_permutation(100, seed=seed, epoch=epoch))
    assert not np.array_equal(a, epoch_permutation(100, seed=seed, epoch=epoch + 1))
    assert not np.array_equal(a, epoch_permutation(100, seed=seed + 1, epoch=epoch))


@pytest.mark.parametrize("kw", [dict(rank=4, world_size=4), dict(rank=-1, world_size=4),
                                dict(rank=0, world_size=0), dict(rank=0, world_size=2, layout="x"),
                                dict(rank=0, world_size=2.0)])
def test_distributed_indices_bad_args(kw):
    with pytest.raises(DataError):
        distributed_indices(10, **kw)
    with pytest.raises(ValueError):  # DataError is a ValueError
        distributed_indices(10, **kw)


def check_exact_cover(parts, n):
    assert all(p.dtype == np.int64 for p in parts)
    allidx = np.concatenate(parts) if parts else np.empty(0, np.int64)
    assert np.array_equal(np.sort(allidx), np.arange(n))


@given(n=st.integers(1, 500), k=st.integers(1, 16), seed=seeds)
def test_iid_partition(n, k, seed):
    if n < k:
        with pytest.raises(DataError):
            iid_partition(n, k, seed=seed)
        return
    parts = iid_partition(n, k, seed=seed)
    assert len(parts) == k
    check_exact_cover(parts, n)
    sizes_ = [len(p) for p in parts]
    assert max(sizes_) - min(sizes_) <= 1


@given(labels=st.lists(st.integers(0, 9), min_size=0, max_size=500), k=st.integers(1, 16),
       s=st.integers(1, 4), seed=seeds)
def test_shard_partition_covers(labels, k, s, seed):
    labels = np.array(labels, dtype=np.int64)
    if len(labels) < k * s:
        with pytest.raises(DataError, match="shards"):
            shard_partition(labels, k, shards_per_client=s, seed=seed)
        return
    parts = shard_partition(labels, k, shards_per_client=s, seed=seed)
    assert len(parts) == k
    check_exact_cover(parts, len(labels))


@given(k=st.integers(1, 12), s=st.integers(1, 3), size=st.integers(1, 6), seed=seeds,
       data=st.data())
def test_shard_partition_label_pure_shards(k, s, size, seed, data):
    # every class fills a whole number of shards, so every shard holds a single label
    shards = k * s
    classes = data.draw(st.sampled_from([c for c in range(1, shards + 1) if shards % c == 0]))
    labels = np.random.default_rng(seed % 1000).permutation(
        np.repeat(np.arange(classes), shards // classes * size))
    parts = shard_partition(labels, k, shards_per_client=s, seed=seed)
    check_exact_cover(parts, len(labels))
    for p in parts:
        assert len(p) == s * size
        assert len(np.unique(labels[p])) <= s
    if classes == shards:  # one class per shard: exactly s labels each
        assert all(len(np.unique(labels[p])) == s for p in parts)


def test_shard_partition_mcmahan_mnist_shape():
    labels = np.repeat(np.arange(10), 600)  # 6000 examples: 100 clients x 2 shards of 30
    parts = shard_partition(labels, 100, shards_per_client=2, seed=0)
    hist = label_histogram(labels, parts, 10)
    assert hist.shape == (100, 10) and hist.sum() == 6000
    assert np.all((hist > 0).sum(1) <= 2)


@given(k=st.integers(1, 8), data=st.data(), classes=st.integers(1, 10),
       alpha=st.sampled_from([0.5, 1.0, 10.0, 100.0]), seed=seeds)
def test_dirichlet_partition_covers(k, data, classes, alpha, seed):
    # at least 20 examples per client: a draw leaving a client empty is rare, 100 tries suffice
    n = data.draw(st.integers(20 * k, 500))
    labels = np.random.default_rng(seed % 1000).integers(0, classes, size=n)
    parts = dirichlet_partition(labels, k, alpha=alpha, seed=seed, min_size=1)
    assert len(parts) == k and min(len(p) for p in parts) >= 1
    check_exact_cover(parts, n)
    again = dirichlet_partition(labels, k, alpha=alpha, seed=seed, min_size=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_dirichlet_small_classes_reach_every_client():
    # fewer examples per class than clients: cutting at floor(cumsum) would never give the
    # first clients an example at alpha=10; largest-remainder rounding does
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 6])
    for seed in range(5):
        parts = dirichlet_partition(labels, 8, alpha=10.0, seed=seed)
        check_exact_cover(parts, 20)
        assert min(len(p) for p in parts) >= 1


def test_dirichlet_alpha_controls_skew():
    labels = np.repeat(np.arange(10), 100)

    def mean_max_fraction(alpha):
        hist = label_histogram(labels, dirichlet_partition(labels, 10, alpha=alpha, seed=0), 10)
        return float((hist.max(1) / hist.sum(1)).mean())

    skewed, even = mean_max_fraction(0.05), mean_max_fraction(100.0)
    assert skewed > 0.5 and even < 0.25 and skewed > 2 * even


def test_dirichlet_errors():
    labels = np.repeat(np.arange(3), 4)
    for alpha in (0.0, -1.0, float("nan")):
        with pytest.raises(DataError, match="alpha"):
            dirichlet_partition(labels, 3, alpha=alpha)
    with pytest.raises(DataError, match="min_size=5"):
        dirichlet_partition(labels, 3, min_size=5)
    with pytest.raises(DataError, match="tries"):
        dirichlet_partition(labels, 12, alpha=0.01, min_size=1, max_tries=3)
    with pytest.raises(DataError, match="1-D integer"):
        dirichlet_partition(np.zeros(5, np.float32) + 0.5, 2)


def test_label_histogram():
    labels = np.array([0, 1, 1, 2, 2, 2])
    hist = label_histogram(labels, [np.array([0, 1]), np.array([2, 3, 4, 5])], 4)
    assert hist.dtype == np.int64
    assert hist.tolist() == [[1, 1, 0, 0], [0, 1, 3, 0]]
    with pytest.raises(DataError, match="num_classes"):
        label_histogram(labels, [np.arange(6)], 2)
