"""The network model: the spec syntax, the virtual clocks, and the formulas they must reproduce."""
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpisim.analysis.measure import measure, run_collective
from mpisim.comm import SimCluster, run_simulated
from mpisim.comm.costs import ALGORITHMS, cost, traffic
from mpisim.comm.network import PRESETS, Network, parse_network

PAIRS = [(c, a) for c, algs in ALGORITHMS.items() for a in algs]


# -- the spec ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_their_spec(name):
    net = PRESETS[name]
    back = parse_network(net.spec())
    assert (back.alpha, back.beta, back.gamma) == (net.alpha, net.beta, net.gamma)


def test_custom_spec_units():
    net = parse_network("alpha=5us,beta=1GB/s,gamma=0.25ns")
    assert net.alpha == 5 * 10**9 and net.beta == 10**6 and net.gamma == 250_000
    assert parse_network("alpha=2ms,beta=8Gb/s").beta == 10**6          # bits
    assert parse_network("alpha=1us,beta=1GiB/s").beta == round(1e15 / 2**30)
    assert parse_network("alpha=1us,beta=0.5ns/B").beta == 500_000


def test_preset_with_overrides():
    net = parse_network("10gbe,contention,compute=2GFLOP/s")
    assert net.contention and net.compute == "rate" and net.flops == 2e9
    assert (net.alpha, net.beta) == (PRESETS["10gbe"].alpha, PRESETS["10gbe"].beta)
    assert parse_network("shm,alpha=1us").alpha == 10**9
    assert parse_network("wan,compute=wall").compute == "wall"


@pytest.mark.parametrize("spec, words", [
    ("10gx", "unknown preset"), ("alpha=5us", "beta missing"), ("alpha=5,beta=1GB/s", "unit"),
    ("alpha=5us,beta=fast", "rate"), ("10gbe,delta=1", "unknown key"), ("10gbe,alpha=1us,alpha=2us", "twice"),
    ("10gbe,,contention", "empty"), ("10gbe,contention=maybe", "on or off"), ("10gbe,compute=fast", "compute"),
    ("alpha=1us,beta=0GB/s", "> 0"),
])
def test_bad_specs_say_what_is_wrong(spec, words):
    with pytest.raises(ValueError, match=words):
        parse_network(spec)


# -- the clocks -------------------------------------------------------------------------------------------
NET = Network(alpha=3_000_000, beta=700, gamma=300)


def test_a_message_arrives_after_alpha_plus_n_beta_and_the_receiver_waits_for_it():
    def body(t):
        buf = np.zeros(1000, np.uint8)
        if t.rank == 0:
            t.send(buf, 1)
        else:
            t.recv(buf, 0)
        return t.clock
    assert run_simulated(2, body, network=NET) == [NET.message(1000)] * 2

    def late(t):                      # a receiver already later than the arrival keeps its own time
        buf = np.zeros(10, np.uint8)
        if t.rank == 0:
            t.send(buf, 1)
        else:
            t.compute(0)
            t.clock = 10**12
            t.recv(buf, 0)
        return t.clock
    assert run_simulated(2, late, network=NET)[1] == 10**12


def test_reductions_and_declared_work_are_charged():
    net = parse_network("alpha=1us,beta=1ns,gamma=0.5ns,compute=1GFLOP/s")

    def body(t):
        t.reduced(1000)
        t.compute(2000)
        return t.clock, t.stats.bytes_reduced
    assert run_simulated(1, body, network=net) == [(1000 * 500_000 + 2000 * 10**6, 1000)]


def test_compute_wall_charges_measured_cpu_time():
    """CPU time after the first transport call counts (set-up before it does not)."""
    def burn(seconds):
        t0 = time.thread_time()
        while time.thread_time() - t0 < seconds:
            pass

    def body(t):
        burn(0.05)                               # set-up: not charged
        buf = np.zeros(1, np.uint8)
        t.sendrecv(buf, 0, np.zeros(1, np.uint8), 0)
        burn(0.05)                               # charged when fn returns
    cl = SimCluster(1, network="shm,compute=wall")
    cl.run(body)
    assert 0.05 <= cl.transports[0].vtime < 0.09


def test_without_a_network_the_clock_stays_zero():
    assert run_simulated(3, lambda t: (run_collective(t, "allreduce", "ring", 30), t.clock)[1]) == [0, 0, 0]


# -- the formulas -----------------------------------------------------------------------------------------
nets = st.builds(Network, alpha=st.integers(0, 10**10), beta=st.integers(0, 10**7), gamma=st.integers(0, 10**7),
                 contention=st.booleans())


@settings(max_examples=60, deadline=None)
@given(pair=st.sampled_from(PAIRS), p=st.sampled_from([2, 4, 8, 16]), k=st.integers(1, 40), net=nets)
def test_power_of_two_virtual_time_equals_the_formula_exactly(pair, p, k, net):
    """p = 2^j and a count that divides by p: the simulated time is the closed form, to the femtosecond."""
    coll, alg = pair
    r = measure(coll, alg, p, 4 * k * p, net)
    assert (r.messages, r.bytes) == r.traffic
    assert r.ticks == r.formula_ticks, (coll, alg, p, k, r.agree)


@settings(max_examples=60, deadline=None)
@given(pair=st.sampled_from(PAIRS), p=st.integers(2, 13), nbytes=st.integers(4, 4000), net=nets)
def test_any_p_counts_are_exact_and_time_keeps_the_formulas_promise(pair, p, nbytes, net):
    coll, alg = pair
    r = measure(coll, alg, p, nbytes, net)
    assert (r.messages, r.bytes) == r.traffic
    assert r.ok, (coll, alg, p, nbytes, r.cost.kind, r.agree)


def test_contention_queues_the_naive_root_and_nothing_else():
    plain, queued = parse_network("10gbe"), parse_network("10gbe,contention")
    a = measure("allreduce", "naive", 8, 1 << 16, plain)
    b = measure("allreduce", "naive", 8, 1 << 16, queued)
    assert b.ticks > a.ticks and b.ticks == b.formula_ticks and a.ticks == a.formula_ticks
    for alg in ("tree", "ring", "rabenseifner", "recursive_doubling"):
        assert measure("allreduce", alg, 8, 1 << 16, plain).ticks == measure("allreduce", alg, 8, 1 << 16, queued).ticks


def test_ring_allreduce_costs_what_the_course_says():
    """2(p-1)α + 2(p-1)/p·nβ + (p-1)/p·nγ, written out by hand for p = 4, n = 4096 bytes."""
    net = parse_network("alpha=5us,beta=1GB/s,gamma=0.25ns")
    r = measure("allreduce", "ring", 4, 4096, net)
    expected = 2 * 3 * 5e-6 + 2 * 3 / 4 * 4096 * 1e-9 + 3 / 4 * 4096 * 0.25e-9
    assert r.seconds == pytest.approx(expected, rel=1e-12) and r.agree == "exact"


def test_traffic_rejects_unknown_algorithms():
    with pytest.raises(ValueError, match="no cost formula"):
        cost("allreduce", "butterfly", 4, 8, 4)
    assert traffic("barrier", "dissemination", 5, 0, 4) == (15, 0)


@pytest.mark.timeout(120)
def test_64_ranks_1_mib_allreduce_is_practical():
    """The scale case of the issue: it runs (its wall time is reported by python -m mpisim.analysis)."""
    for alg in ("ring", "rabenseifner"):
        r = measure("allreduce", alg, 64, 1 << 20, parse_network("10gbe"))
        assert r.agree == "exact" and r.messages == traffic("allreduce", alg, 64, 1 << 18, 4)[0]
