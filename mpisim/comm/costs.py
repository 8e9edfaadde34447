"""What each allreduce algorithm sends, in closed form: messages and bytes summed over all ranks.

For a vector of ``n`` bytes on ``p`` ranks, with p2 the largest power of two <= p, r = p - p2 and
L = log2 p2 (the fold of :class:`mpisim.comm._common.Fold` adds 2r whole-vector messages):

=====================  ===================  ===========================
algorithm              messages (all ranks) bytes sent (all ranks)
=====================  ===================  ===========================
naive                  2(p-1)               2(p-1) n
tree                   2(p-1)               2(p-1) n
recursive_doubling     p2 L + 2r            (p2 L + 2r) n
ring                   2p(p-1)              2(p-1) n
rabenseifner           2 p2 L + 2r          (2(p2-1) + 2r) n
=====================  ===================  ===========================

These totals are exact for any n, also when n does not split evenly into blocks: every block
that travels is a whole range of the vector, and the ranges of one step tile it. (The per-rank
split of ring and Rabenseifner is uneven then; the sum is not.) Bytes received equal bytes sent.
"""
from __future__ import annotations

from .allreduce import ALLREDUCE_ALGORITHMS, choose_allreduce

__all__ = ["allreduce_traffic", "allreduce_formula"]


def _fold(p: int) -> tuple[int, int, int]:
    p2 = 1 << (p.bit_length() - 1)
    return p2, p - p2, p2.bit_length() - 1


def allreduce_traffic(algorithm: str, count: int, itemsize: int, p: int) -> tuple[int, int]:
    """(messages, bytes) sent by all ``p`` ranks together in one allreduce of ``count`` elements."""
    if algorithm == "auto":
        algorithm = choose_allreduce(count * itemsize, count, p)
    if algorithm not in ALLREDUCE_ALGORITHMS:
        raise ValueError(f"unknown allreduce algorithm {algorithm!r}")
    n = count * itemsize
    if p == 1:
        return 0, 0
    p2, r, L = _fold(p)
    if algorithm in ("naive", "tree"):
        return 2 * (p - 1), 2 * (p - 1) * n
    if algorithm == "recursive_doubling":
        return p2 * L + 2 * r, (p2 * L + 2 * r) * n
    if algorithm == "ring":
        return 2 * p * (p - 1), 2 * (p - 1) * n
    return 2 * p2 * L + 2 * r, (2 * (p2 - 1) + 2 * r) * n      # rabenseifner


def allreduce_formula(algorithm: str, count: int, itemsize: int, p: int) -> str:
    """The bytes-sent formula of :func:`allreduce_traffic` as text in N (ranks) and n (bytes)."""
    if algorithm == "auto":
        algorithm = choose_allreduce(count * itemsize, count, p)
    p2, r, _ = _fold(p)
    if algorithm in ("naive", "tree", "ring") or (algorithm == "rabenseifner" and not r):
        return "2(N-1)·n"
    if algorithm == "recursive_doubling":
        return "N·log2(N)·n" if not r else f"(p2·log2(p2) + 2r)·n [p2={p2}, r={r}]"
    return f"(2(p2-1) + 2r)·n [p2={p2}, r={r}]"
