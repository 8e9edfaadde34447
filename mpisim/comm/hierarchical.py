"""Hierarchical allreduce: reduce-scatter inside each node, allreduce across nodes, allgather inside.

The two-level scheme of Horovod's hierarchical allreduce (Sergeev and Del Balso 2018) and of NCCL
across nodes, the "hierarchical ring" of Jia et al. 2018 (Highly scalable deep learning training
system with mixed-precision): with L ranks on each of M nodes (p = L·M ranks),

1. every node reduce-scatters the vector over its L ranks (ring, intra-node links): local rank j
   holds block j of the node's sum, n/L bytes;
2. the M ranks with local rank j, one per node, allreduce block j across the nodes, L such
   allreduces side by side (MPICH's rule picks recursive doubling or Rabenseifner for n/L bytes);
3. every node allgathers the L blocks over its ranks (ring).

Only n/L bytes per rank cross the slow inter-node links, in 2 lg M messages for Rabenseifner,
instead of the flat ring's 2(p-1) inter-node steps. Time, α β intra-node and αₑ βₑ inter-node::

    2(L-1)(α + n/L·β) + (L-1)/L·nγ + [allreduce of n/L bytes on M ranks, in αₑ βₑ]

Where the nodes are: on the simulated transport, the network's topology (world rank w on node
w // ppn; one node without a topology); on any other transport, the host each rank runs on (a hash
of ``MPI.Get_processor_name()``, or of the host name outside MPI, exchanged with the project's
allgather on an int64 buffer). Nodes of unequal size cannot be cut into equal blocks: such a layout
runs as one node (the ring). The groups are made once per transport with ``t.split`` (collective,
as MPI's Comm_split) and kept; every rank computes the same layout, so every rank takes the same
path. Each element is reduced along one chain (the ring), then by the inter-node algorithm, which
leaves its ranks bit-identical, then copied: replicas stay identical.
"""
from __future__ import annotations

import hashlib
import socket
import sys
import weakref
from collections import Counter
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from ._common import block_offsets
from .allgather import allgather, ring_allgather
from .allreduce import ALLREDUCE_SHORT_MSG
from .formulas import UNEVEN, Call, Cost, make_cost
from .group import uncounted
from .reduce_scatter import ring_reduce_scatter
from .registry import get, register
from .transport import Transport

__all__ = ["Hierarchy", "hierarchy", "inter_algorithm", "known_ranks_per_node", "node_keys", "ranks_per_node"]


class Hierarchy(NamedTuple):
    """One rank's two groups: ``local`` (its node's ranks, or None for one rank per node) and ``cross``
    (the ranks with its local rank, one per node, or None for one node); ``per_node`` L and ``nodes`` M."""

    local: Transport | None
    cross: Transport | None
    per_node: int
    nodes: int


def _world_rank(t: Transport, rank: int) -> int:
    while t.parent is not None:
        rank, t = t.members[rank], t.parent
    return rank


def _host_key() -> int:
    mpi = sys.modules.get("mpi4py.MPI")
    name = mpi.Get_processor_name() if mpi is not None and mpi.Is_initialized() else socket.gethostname()
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little", signed=True)


def node_keys(t: Transport) -> list[int]:
    """A key per rank of ``t`` naming its node (collective under MPI: an allgather of the host hashes)."""
    if hasattr(t, "network"):        # the simulated transport: the model's topology, or one node without one
        net = t.network
        if net is None or not getattr(net, "ppn", 0):
            return [0] * t.size
        return [net.node_of(_world_rank(t, r)) for r in range(t.size)]
    with uncounted(t):               # set-up, like the split's own exchange: not the algorithm's traffic
        return allgather(t, np.array([_host_key()], dtype=np.int64), check=False).reshape(-1).tolist()


def _layout(keys: list[int]) -> tuple[list[int], int]:
    """(node index of each rank, ranks per node); nodes of unequal size are taken as one node."""
    index: dict[int, int] = {}
    node = [index.setdefault(k, len(index)) for k in keys]
    sizes = set(Counter(node).values())
    if len(sizes) != 1:
        return [0] * len(keys), len(keys)
    return node, sizes.pop()


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # for a transport that takes no attributes


def hierarchy(t: Transport) -> Hierarchy:
    """This rank's node groups (made on the first call, collective over ``t``; kept on ``t`` after)."""
    h = getattr(t, "_mpisim_hierarchy", None) or _CACHE.get(t)
    if h is not None:
        return h
    node, L = _layout(node_keys(t))
    N = t.size // L
    me = node[t.rank]
    j = sum(1 for r in range(t.rank) if node[r] == me)      # local rank: place among its node's ranks
    local = None if L == 1 else t if N == 1 else t.split(me, t.rank)
    cross = None if N == 1 else t if L == 1 else t.split(j, me)
    h = Hierarchy(local, cross, L, N)
    try:
        t._mpisim_hierarchy = h
    except AttributeError:
        _CACHE[t] = h
    return h


def ranks_per_node(t: Transport) -> int:
    """L, the ranks per node the hierarchical allreduce uses on ``t`` (``Call.ppn`` for its formulas;
    collective under MPI on first use)."""
    return hierarchy(t).per_node


def known_ranks_per_node(t: Transport) -> int:
    """L as :func:`ranks_per_node` knows it without communicating (for formulas printed on one rank): the
    layout already made on ``t``, else the simulated topology's; 0 (one node) under MPI before the first
    hierarchical allreduce on ``t``."""
    h = getattr(t, "_mpisim_hierarchy", None) or _CACHE.get(t)
    if h is not None:
        return h.per_node
    if hasattr(t, "network"):
        return _layout(node_keys(t))[1]
    return 0


def inter_algorithm(nbytes: int, count: int, nodes: int) -> str:
    """The allreduce across nodes for a block of ``count`` elements (``nbytes``): MPICH's rule."""
    p2 = 1 << (nodes.bit_length() - 1)
    return "recursive_doubling" if nbytes <= ALLREDUCE_SHORT_MSG or count < p2 else "rabenseifner"


def _hierarchical(t: Transport, w: np.ndarray, ufunc, tag: int, src: np.ndarray) -> None:
    local, cross, L, N = hierarchy(t)
    offs = block_offsets(w.size, L)
    j = local.rank if local is not None else 0
    if local is not None:
        ring_reduce_scatter(local, w, offs, ufunc, tag, src)     # block j of the node's sum on local rank j
        src = w
    if cross is not None:
        blk = slice(offs[j], offs[j + 1])
        inter = inter_algorithm(w[blk].nbytes, w[blk].size, N)
        get("allreduce", inter).run(cross, w[blk], ufunc, tag, src[blk])   # across nodes, in place
    elif local is None and src is not w:
        np.copyto(w, src)
    if local is not None:
        ring_allgather(local, w, offs, tag)


def _blocks(c: Call) -> list[tuple[int, int]]:
    """(elements, how many) of the L blocks (numpy.array_split's)."""
    q, r = divmod(c.count, c.per_node)
    return [(k, m) for k, m in ((q + 1, r), (q, c.per_node - r)) if m]


def _traffic(c: Call) -> tuple[int, int]:
    L, N = c.per_node, c.nodes
    msgs, nbytes = 2 * N * L * (L - 1), 2 * N * (L - 1) * c.n     # ring RS and AG inside each node
    if N > 1:
        for k, m in _blocks(c):
            a, b = get("allreduce", inter_algorithm(k * c.itemsize, k, N)).traffic(Call(N, k, c.itemsize))
            msgs, nbytes = msgs + m * a, nbytes + m * b
    return msgs, nbytes


_ORDER = {"exact": 0, "bound": 1, "approx": 2}


def _cost(c: Call) -> Cost:
    L, N = c.per_node, c.nodes
    b = Fraction(c.n, L)
    kind, why = ("exact", "") if c.count % L == 0 else ("approx", UNEVEN)
    intra = "2(L-1)(α + n/L·β) + (L-1)/L·nγ"
    if N == 1:
        return make_cost(intra, (2 * (L - 1), 2 * (L - 1) * b, (L - 1) * b, 0, 0), kind=kind, why=why)
    k = -(-c.count // L)                                             # the largest block
    inter = inter_algorithm(k * c.itemsize, k, N)
    sub = get("allreduce", inter).cost(Call(N, k, c.itemsize))
    if _ORDER[sub.kind] > _ORDER[kind]:
        kind, why = sub.kind, sub.why
    s = L if c.contention else 1          # contention: the node's L ranks queue on its one uplink
    if c.contention:
        kind, why = "approx", "contention: the L ranks of a node share its uplink, taken as L times the inter-node time"
    forms = [(2 * (L - 1), 2 * (L - 1) * b, (L - 1) * b + f[2], s * f[0], s * f[1]) for f in sub.forms]
    text = f"{intra} + {inter}(n/L on M nodes, αₑ βₑ) [L={L}, M={N}]" if L > 1 else \
        f"{inter}(n on M nodes, αₑ βₑ) [L=1, M={N}]"
    return make_cost(text, *forms, kind=kind, why=why)


def _formula(c: Call) -> str:
    L, N = c.per_node, c.nodes
    if N == 1:
        return "2(N-1)·n"
    k = -(-c.count // L)
    sub = get("allreduce", inter_algorithm(k * c.itemsize, k, N)).formula(Call(N, k, c.itemsize))
    if L == 1:
        return sub
    return f"2(N-M)·n + {sub.replace('N', 'M')} [M={N} nodes]"


register("allreduce", "hierarchical", _hierarchical, traffic=_traffic, cost=_cost, formula=_formula, marker="*",
         explain="Reduce-scatter inside each node (ring, L ranks), allreduce of each n/L block across the M nodes "
         "(recursive doubling or Rabenseifner, L of them side by side), allgather inside each node: only n/L "
         "bytes per rank cross the slow inter-node links, in few messages. As Horovod and NCCL do across nodes; "
         "on one node it is the ring.")
