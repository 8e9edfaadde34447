"""Topologies in the network model, and the hierarchical allreduce that uses them."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mpisim.comm.hierarchical as hier
from mpisim.analysis.measure import measure
from mpisim.comm import DTYPES, SimCluster, allreduce, run_simulated
from mpisim.comm.costs import cost, traffic
from mpisim.comm.network import LINKS, PRESETS, Network, parse_network

REFERENCE = {"sum": np.sum, "prod": np.prod, "max": np.max, "min": np.min}


# -- the spec ----------------------------------------------------------------------------------------------
def test_nodes_intra_and_inter_links():
    net = parse_network("nodes=4x8,intra=nvlink,inter=100gbe-rdma")
    assert (net.nodes, net.ppn) == (4, 8)
    assert (net.alpha, net.beta) == (LINKS["nvlink"].alpha, LINKS["nvlink"].beta)
    assert (net.inter_alpha, net.inter_beta) == (LINKS["100gbe-rdma"].alpha, LINKS["100gbe-rdma"].beta)
    shm = parse_network("ppn=16,inter=10gbe,oversub=4:1,contention")     # intra defaults to shared memory
    assert (shm.alpha, shm.beta, shm.oversub, shm.contention) == (LINKS["shm"].alpha, LINKS["shm"].beta, 4, True)
    assert shm.inter == (LINKS["10gbe"].alpha, 4 * LINKS["10gbe"].beta)
    assert parse_network("ppn=2,inter=wan,inter-beta=1GB/s").inter == (LINKS["wan"].alpha, 10**6)
    over = parse_network("gpu-rdma,nodes=2x8")
    assert over.name == "gpu-rdma" and over.nodes == 2 and over.inter_alpha == PRESETS["gpu-rdma"].inter_alpha


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_whole(name):
    net = PRESETS[name]
    back = parse_network(net.spec())
    assert Network(**{**vars(back), "name": net.name}) == net and net.description


@pytest.mark.parametrize("spec, words", [
    ("nodes=4,inter=wan", "NODESxRANKS"), ("nodes=4x8,inter=ib", "unknown link 'ib'"),
    ("nodes=4x8", "inter-node link"), ("inter=wan", "give nodes=NxM"), ("10gbe,oversub=2", "give nodes=NxM"),
    ("ppn=8,nodes=2x4,inter=wan", "not both"), ("nodes=2x4,ppn=8,inter=wan", "not both"),
    ("ppn=0,inter=wan", ">= 1"), ("ppn=4,inter=wan,oversub=0", ">= 1"), ("nodes=0x8,inter=wan", "NODESxRANKS"),
    ("10gbe,ranks=4", "keys: alpha, beta, gamma, contention, compute, nodes, ppn, intra, inter, inter-alpha"),
])
def test_bad_topologies_say_what_is_wrong(spec, words):
    with pytest.raises(ValueError, match=words):
        parse_network(spec)


def test_a_layout_that_does_not_fit_the_ranks_is_refused():
    parse_network("ppn=8,inter=wan").check_size(4)            # less than a node: one node
    parse_network("ppn=8,inter=wan").check_size(24)
    with pytest.raises(ValueError, match="8 ranks per node do not divide 12 ranks"):
        parse_network("ppn=8,inter=wan").check_size(12)
    with pytest.raises(ValueError, match="describes 32 ranks, not 16"):
        parse_network("nodes=4x8,inter=wan").check_size(16)
    with pytest.raises(ValueError, match="do not divide"):
        SimCluster(12, network="gpu-rdma")


# -- the links ---------------------------------------------------------------------------------------------
NET = Network(alpha=1000, beta=10, gamma=1, ppn=2, inter_alpha=5000, inter_beta=100, oversub=3)


def test_a_message_takes_its_link():
    assert NET.send_ticks(0, 1, 7) == 1000 + 70                 # same node
    assert NET.send_ticks(1, 2, 7) == 5000 + 3 * 700            # across nodes, 3:1 oversubscribed
    links = NET.links(4)
    assert links.arrival(0, 1, 50, 7) == 50 + 1070 and links.arrival(3, 0, 50, 7) == 50 + 7100


def test_contention_queues_a_nodes_uplink_and_downlink_not_its_intra_links():
    links = parse_network("ppn=2,alpha=1ns,beta=0ns,inter-alpha=10ns,inter-beta=0ns,contention").links(6)
    t = 10**7   # 10 ns in ticks
    assert links.arrival(0, 2, 0, 0) == t and links.arrival(1, 3, 0, 0) == 2 * t     # node 0's uplink
    assert links.arrival(4, 3, 0, 0) == 3 * t                                       # node 1's downlink
    assert links.arrival(5, 4, 0, 0) == 10**6                                        # intra: free
    assert links.arrival(2, 5, 0, 0) == t          # node 1's uplink and node 2's downlink were free


def test_nodes_of_a_sub_group_follow_its_world_ranks():
    net = parse_network("ppn=2,inter=10gbe")

    def body(t):
        g = t.split(t.rank % 2, t.rank)          # world ranks 0,2,4 | 1,3,5: one per node each
        return hier.node_keys(g), hier.node_keys(t)
    out = run_simulated(6, body, network=net)
    assert out[0] == ([0, 1, 2], [0, 0, 1, 1, 2, 2]) and out[1][0] == [0, 1, 2]


# -- the hierarchical allreduce ----------------------------------------------------------------------------
def _data(seed, p, n, dtype, op):
    rng = np.random.default_rng(seed)
    pool = np.array([-2, -1, 0, 1, 1, 1, 2]) if op == "prod" else np.arange(-1000, 1001)
    return [rng.choice(pool, size=n).astype(dtype) for _ in range(p)]


@st.composite
def layouts(draw):
    """(p, ppn): ppn divides p, or is at least p (one node)."""
    per, nodes = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    return per * nodes, per


@settings(max_examples=100, deadline=None)
@given(layout=layouts(), n=st.integers(0, 700), dtype=st.sampled_from(DTYPES), op=st.sampled_from(sorted(REFERENCE)),
       seed=st.integers(0, 2**32 - 1), contention=st.booleans())
def test_equals_numpy_bit_identical_and_counts_exact(layout, n, dtype, op, seed, contention):
    p, ppn = layout
    data = _data(seed, p, n, dtype, op)
    net = parse_network(f"ppn={ppn},inter=10gbe" + (",contention" if contention else ""))

    def body(t):
        hier.hierarchy(t)
        t.reset_stats()
        return allreduce(t, data[t.rank], op, "hierarchical", check=False), t.stats

    out = run_simulated(p, body, network=net)
    want = REFERENCE[op](np.stack(data), axis=0).astype(dtype)
    for r, (res, _) in enumerate(out):
        assert res.dtype == dtype
        np.testing.assert_array_equal(res, want, err_msg=f"rank {r}")
        assert res.tobytes() == out[0][0].tobytes()
    sent = (sum(s.messages_sent for _, s in out), sum(s.bytes_sent for _, s in out))
    assert sent == traffic("allreduce", "hierarchical", p, n, dtype.itemsize, ppn=ppn)


@settings(max_examples=100, deadline=None)
@given(layout=layouts(), k=st.integers(1, 300), nets=st.tuples(*[st.integers(0, 10**7)] * 5))
def test_virtual_time_equals_the_formula_without_contention(layout, k, nets):
    """Blocks that divide evenly: the simulated time is the closed form to the femtosecond whenever the
    inter-node algorithm's own formula is exact, and never above it otherwise."""
    p, ppn = layout
    a, b, g, ea, eb = nets
    net = Network(alpha=a, beta=b // 100, gamma=g // 1000, ppn=ppn, inter_alpha=ea, inter_beta=eb // 100)
    r = measure("allreduce", "hierarchical", p, 4 * k * ppn * p, net)
    assert r.counts_agree
    if r.cost.kind == "exact":
        assert r.ticks == r.formula_ticks, (p, ppn, k, r.cost)
    else:
        assert r.ok, (p, ppn, k, r.cost)


@pytest.mark.parametrize("alg", ["ring", "rabenseifner"])
def test_flat_algorithms_on_nodes_match_their_two_link_forms(alg):
    net = parse_network("nodes=4x4,intra=nvlink,inter=10gbe")
    r = measure("allreduce", alg, 16, 1 << 16, net)
    assert r.cost.kind == "exact" and r.ticks == r.formula_ticks and len(r.cost.forms[0]) == 5


def test_hierarchical_beats_the_flat_algorithms_across_slow_links():
    net = parse_network("nodes=4x8,intra=nvlink,inter=10gbe")
    times = {a: measure("allreduce", a, 32, 1 << 20, net).ticks for a in ("ring", "rabenseifner", "hierarchical")}
    assert times["hierarchical"] < min(times["ring"], times["rabenseifner"])
    c = cost("allreduce", "hierarchical", 32, 1 << 18, 4, ppn=8)
    assert c.kind == "exact" and times["hierarchical"] == c.ticks(net)


def test_groups_are_split_once_per_transport():
    splits = []

    def body(t):
        real = t.split
        t.split = lambda *a: (splits.append(t.rank), real(*a))[1]
        x = np.arange(5, dtype=np.float32)
        for _ in range(3):
            allreduce(t, x, algorithm="hierarchical")
        return allreduce(t, x, algorithm="hierarchical")
    out = run_simulated(6, body, network="ppn=3,inter=10gbe")
    assert sorted(splits) == sorted(list(range(6)) * 2)            # local and cross, once each
    np.testing.assert_array_equal(out[0], 6 * np.arange(5))
    assert run_simulated(6, body, network="10gbe") and len(splits) == 12   # one node: no split at all


@pytest.mark.parametrize("keys", [[0, 1, 2, 0, 1, 2], [5, 5, 9, 9, 7, 7], [0, 0, 0, 1, 1, 2]])
def test_any_host_placement_round_robin_or_unequal(monkeypatch, keys):
    """Hosts as MPI reports them: ranks of a node need not be adjacent; unequal nodes run as one node."""
    monkeypatch.setattr(hier, "node_keys", lambda t: keys)
    data = _data(3, 6, 37, np.dtype(np.float64), "sum")
    out = run_simulated(6, lambda t: (allreduce(t, data[t.rank], algorithm="hierarchical"), hier.hierarchy(t)))
    for res, h in out:
        np.testing.assert_array_equal(res, np.sum(data, axis=0))
    unequal = len(set(keys)) == 3 and keys.count(0) == 3
    assert {(h.per_node, h.nodes) for _, h in out} == ({(6, 1)} if unequal else {(2, 3)})


def test_without_a_network_attribute_the_host_names_decide():
    class Bare:          # a transport that knows nothing of a topology (as the MPI one)
        def __init__(self, t):
            self._t = t

        def __getattr__(self, name):
            if name == "network":
                raise AttributeError(name)
            return getattr(self._t, name)

    def body(t):
        b = Bare(t)
        keys = hier.node_keys(b)
        return keys, t.stats.messages_sent
    out = run_simulated(3, body, network="ppn=1,inter=10gbe")
    assert all(k == [out[0][0][0]] * 3 and m == 0 for k, m in out)   # one host; the exchange is not counted


@pytest.mark.parametrize("spec, words", [
    ("nodes=2x4,inter-alpha=1us", "inter-alpha without inter-beta"),
    ("nodes=2x4,inter-beta=1GB/s", "inter-beta without inter-alpha"),
])
def test_half_an_inter_node_link_is_refused(spec, words):
    with pytest.raises(ValueError, match=words):
        parse_network(spec)
    assert parse_network(spec.replace("nodes=2x4", "nodes=2x4,inter=10gbe")).inter_alpha > 0
