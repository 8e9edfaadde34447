"""Which examples each rank or client sees.

* :func:`distributed_indices`: data-parallel sharding with the semantics of PyTorch's
  ``DistributedSampler`` (pad by wrapping around, or drop the tail), strided or contiguous.
* :func:`iid_partition`: a uniform random split into clients.
* :func:`shard_partition`: the pathological non-IID split of McMahan et al. 2017,
  "Communication-Efficient Learning of Deep Networks from Decentralized Data": sort by label,
  cut into shards, give each client a few shards.
* :func:`dirichlet_partition`: per class, client proportions drawn from Dir(alpha), as in
  Hsu, Qi and Brown 2019, "Measuring the Effects of Non-Identical Data Distribution for
  Federated Visual Classification"; small alpha is skewed, large alpha is near IID.

All randomness is seeded, so every rank that calls with the same arguments gets the same answer
without communicating. Each purpose draws from its own stream, :func:`data_rng`:
``SeedSequence(seed, spawn_key=(crc32(purpose), ...))``, never from ``default_rng(seed)`` or
``SeedSequence([seed, k])`` themselves, so a model initialized from the same seed does not
consume the same random bits as the data shuffle.
"""
from __future__ import annotations

import zlib

import numpy as np

from .idx import DataError

__all__ = ["LAYOUTS", "data_rng", "dirichlet_partition", "distributed_indices",
           "epoch_permutation", "iid_partition", "label_histogram", "shard_partition"]

LAYOUTS = ("strided", "contiguous")


def _check_count(value: int, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"labels must be a 1-D integer array, got shape {labels.shape} "
                        f"dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise DataError(f"labels must be >= 0, found {labels.min()}")
    return labels.astype(np.int64, copy=False)


def data_rng(seed: int, purpose: str, *key: int) -> np.random.Generator:
    """The generator for one data ``purpose`` (and optional integer ``key``) under ``seed``."""
    seed = _check_count(seed, "seed", 0)
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(zlib.crc32(purpose.encode()), *key)))


def epoch_permutation(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The shuffle of ``range(n)`` for ``epoch``: ``data_rng(seed, "shuffle", epoch)``.

    Every rank computes the same permutation from the same (seed, epoch), with no messages.
    """
    n = _check_count(n, "n", 0)
    rng = data_rng(seed, "shuffle", _check_count(epoch, "epoch", 0))
    return rng.permutation(n).astype(np.int64)


def distributed_indices(n: int, *, rank: int, world_size: int, shuffle: bool = True,
                        seed: int = 0, epoch: int = 0, drop_last: bool = False,
                        layout: str = "strided") -> np.ndarray:
    """The example indices of ``rank`` out of ``world_size`` for one epoch (int64).

    As PyTorch's ``DistributedSampler``: the indices (shuffled by :func:`epoch_permutation` or
    in order) are padded by repeating from the start to ``ceil(n / world) * world``, or with
    ``drop_last`` cut to ``floor(n / world) * world``, so every rank gets the same count.
    ``layout="strided"`` gives ``rank, rank + world, ...``; ``"contiguous"`` the rank's block.
    """
    n = _check_count(n, "n", 0)
    world_size = _check_count(world_size, "world_size", 1)
    rank = _check_count(rank, "rank", 0)
    if rank >= world_size:
        raise DataError(f"rank must be in [0, {world_size}) for world_size={world_size}, "
                        f"got {rank}")
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    idx = epoch_permutation(n, seed=seed, epoch=epoch) if shuffle else np.arange(n, dtype=np.int64)
    if drop_last:
        total = (n // world_size) * world_size
        idx = idx[:total]
    else:
        total = -(-n // world_size) * world_size
        if total > n:  # wrap around, more than once when n < world_size - n
            idx = np.concatenate([idx, np.resize(idx, total - n)])
    if layout == "strided":
        return np.ascontiguousarray(idx[rank:total:world_size])
    per = total // world_size
    return idx[rank * per:(rank + 1) * per].copy()


def iid_partition(n: int, num_clients: int, *, seed: int) -> list[np.ndarray]:
    """A seeded random split of ``range(n)`` into ``num_clients`` sorted parts, sizes within 1."""
    n = _check_count(n, "n", 0)
    num_clients = _check_count(num_clients, "num_clients", 1)
    if n < num_clients:
        raise DataError(f"iid_partition: {n} examples cannot give each of {num_clients} clients "
                        "one example")
    perm = data_rng(seed, "iid").permutation(n).astype(np.int64)
    return [np.sort(part) for part in np.array_split(perm, num_clients)]


def shard_partition(labels: np.ndarray, num_clients: int, *, shards_per_client: int = 2,
                    seed: int = 0) -> list[np.ndarray]:
    """McMahan et al.'s non-IID split: label-sorted shards, ``shards_per_client`` per client.

    The indices, stably sorted by label, are cut into ``num_clients * shards_per_client``
    shards of near-equal size; each client gets that many random shards (indices sorted).
    """
    labels = _check_labels(labels)
    num_clients = _check_count(num_clients, "num_clients", 1)
    shards_per_client = _check_count(shards_per_client, "shards_per_client", 1)
    num_shards = num_clients * shards_per_client
    if len(labels) < num_shards:
        raise DataError(f"shard_partition: {len(labels)} examples are fewer than the "
                        f"{num_clients} x {shards_per_client} = {num_shards} shards")
    shards = np.array_split(np.argsort(labels, kind="stable"), num_shards)
    order = data_rng(seed, "shard").permutation(num_shards)
    return [np.sort(np.concatenate([shards[s] for s in
                                    order[c * shards_per_client:(c + 1) * shards_per_client]]))
            for c in range(num_clients)]


def _round_counts(share: np.ndarray) -> np.ndarray:
    """Integers summing to ``share.sum()`` (a whole number), each within 1 of its share.

    Largest remainders (Hamilton's method): floor every share, then give the leftover units to
    the largest fractional parts. Cutting at ``floor(cumsum)`` instead hands every remainder
    to a position fixed by the client order, so with fewer examples of a class than clients
    the same clients would never get one.
    """
    counts = np.floor(share).astype(np.int64)
    left = int(round(share.sum())) - int(counts.sum())
    if left > 0:
        counts[np.argsort(counts - share, kind="stable")[:left]] += 1
    return counts


def dirichlet_partition(labels: np.ndarray, num_clients: int, *, alpha: float = 0.5,
                        seed: int = 0, min_size: int = 1,
                        max_tries: int = 100) -> list[np.ndarray]:
    """Hsu et al.'s non-IID split: each class divided among clients in Dir(alpha) proportions.

    Each class's shuffled indices are cut into per-client counts that round its proportions
    (largest remainders, so no client is favoured by its position). Redraws (up to
    ``max_tries`` times, continuing the same seeded stream) until every client holds at least
    ``min_size`` examples. Every index lands in exactly one client.
    """
    labels = _check_labels(labels)
    num_clients = _check_count(num_clients, "num_clients", 1)
    min_size = _check_count(min_size, "min_size", 0)
    max_tries = _check_count(max_tries, "max_tries", 1)
    if not alpha > 0:  # also rejects NaN
        raise DataError(f"dirichlet_partition: alpha must be > 0, got {alpha}")
    n = len(labels)
    if n < num_clients * min_size:
        raise DataError(f"dirichlet_partition: {n} examples cannot give each of {num_clients} "
                        f"clients min_size={min_size}")
    rng = data_rng(seed, "dirichlet")
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_clients, alpha))
            counts = _round_counts(p * len(idx))
            for c, piece in enumerate(np.split(idx, np.cumsum(counts)[:-1])):
                parts[c].append(piece)
        out = [np.sort(np.concatenate(p)).astype(np.int64) if p else np.empty(0, np.int64)
               for p in parts]
        if min(len(o) for o in out) >= min_size:
            return out
    raise DataError(f"dirichlet_partition: no draw in {max_tries} tries gave each of "
                    f"{num_clients} clients at least min_size={min_size} examples with "
                    f"alpha={alpha}; raise alpha, lower min_size or use fewer clients")


def label_histogram(labels: np.ndarray, parts: list[np.ndarray],
                    num_classes: int) -> np.ndarray:
    """Counts ``(num_clients, num_classes)`` int64 of each class in each client's part."""
    labels = _check_labels(labels)
    num_classes = _check_count(num_classes, "num_classes", 1)
    if labels.size and labels.max() >= num_classes:
        raise DataError(f"label_histogram: label {labels.max()} >= num_classes={num_classes}")
    hist = np.zeros((len(parts), num_classes), dtype=np.int64)
    for c, part in enumerate(parts):
        hist[c] = np.bincount(labels[np.asarray(part, dtype=np.int64)], minlength=num_classes)
    return hist
