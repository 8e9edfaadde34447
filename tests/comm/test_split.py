"""Sub-communicators on the simulated transport: ``t.split(color, key)``.

hypothesis draws the rank count (1..13) and every rank's color (None for MPI_UNDEFINED) and key.
Each group must hold the right ranks in (key, rank) order, run every collective correctly while
all the other groups run theirs, count exactly what a world of its size counts, and roll its
counts up into the world's; messages never cross from one context to another.
"""
import functools
import re
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpisim.analysis.measure import run_collective
from mpisim.comm import (
    ALLGATHER_ALGORITHMS,
    ALLREDUCE_ALGORITHMS,
    ANY_SOURCE,
    ANY_TAG,
    BCAST_ALGORITHMS,
    CommTimeout,
    DTYPES,
    REDUCE_SCATTER_ALGORITHMS,
    DeadlockError,
    RankError,
    SimCluster,
    allgather,
    allreduce,
    barrier,
    bcast,
    gather,
    reduce,
    reduce_scatter,
    run_simulated,
    scatter,
)
from mpisim.comm.costs import ALGORITHMS, traffic
from mpisim.comm.network import TICK, parse_network
from tests.comm.test_collectives_property import REFERENCE, expected, rank_data

COUNTERS = ("messages_sent", "messages_received", "bytes_sent", "bytes_received", "bytes_reduced")
PAIRS = [(c, a) for c, algs in ALGORITHMS.items() for a in algs]


@st.composite
def splits(draw, max_colors: int = 3):
    """(p, colors, keys): a color per rank (None about one time in max_colors + 1) and a key per rank."""
    p = draw(st.integers(1, 13), label="p")
    colors = draw(st.lists(st.integers(-1, max_colors - 1).map(lambda c: None if c < 0 else c),
                           min_size=p, max_size=p), label="colors")
    keys = draw(st.lists(st.integers(0, 3), min_size=p, max_size=p), label="keys")
    return p, colors, keys


def groups_of(colors, keys) -> dict[int, tuple[int, ...]]:
    """{color: its ranks in (key, rank) order}: what split must build."""
    out = {}
    for r in sorted(range(len(colors)), key=lambda r: (keys[r], r)):
        if colors[r] is not None:
            out.setdefault(colors[r], []).append(r)
    return {c: tuple(m) for c, m in out.items()}


def stats(t) -> dict[str, int]:
    return {k: getattr(t.stats, k) for k in (*COUNTERS, "rounds")}


# -- who is in which group -------------------------------------------------------------------------------
@given(case=splits())
def test_groups_have_their_ranks_in_key_then_rank_order(case):
    p, colors, keys = case

    def fn(t):
        g = t.split(colors[t.rank], keys[t.rank])
        untouched = not any(stats(t).values())  # the split's own messages are not counted
        return untouched, None if g is None else (g.rank, g.size, g.members, g.parent is t)

    want = groups_of(colors, keys)
    for r, (untouched, got) in enumerate(run_simulated(p, fn)):
        assert untouched
        if colors[r] is None:
            assert got is None
        else:
            members = want[colors[r]]
            assert got == (members.index(r), len(members), members, True)


def test_bad_color_or_key_is_a_value_error_on_every_rank():
    for color, key in [(-1, 0), (1.0, 0), ("a", 0), (True, 0), (2**31, 0), (0, -1), (0, 0.5), (0, None)]:
        def fn(t):
            with pytest.raises(ValueError, match="split: (color|key) must be an int"):
                t.split(color, key)
            return t.split(t.rank % 2).size  # nothing was left half done: a good split still works
        assert run_simulated(3, fn) == [2, 1, 2]
    with pytest.raises(RankError, match="ValueError: split: color must be an int") as info:
        run_simulated(3, lambda t: t.split(-1 if t.rank == 1 else 0))  # one bad rank: no hang either
    assert info.value.rank == 1


# -- every collective in every group at once -------------------------------------------------------------
@given(case=splits(), n=st.integers(0, 300), dtype=st.sampled_from(DTYPES), op=st.sampled_from(sorted(REFERENCE)),
       bcast_alg=st.sampled_from(BCAST_ALGORITHMS), allgather_alg=st.sampled_from(ALLGATHER_ALGORITHMS),
       rs_alg=st.sampled_from(REDUCE_SCATTER_ALGORITHMS), root_seed=st.integers(0, 12), seed=st.integers(0, 2**32 - 1))
def test_every_collective_is_right_in_every_group_at_once(case, n, dtype, op, bcast_alg, allgather_alg, rs_alg,
                                                          root_seed, seed):
    p, colors, keys = case
    data = rank_data(seed, p, n, dtype, op)

    def fn(t):
        g = t.split(colors[t.rank], keys[t.rank])
        if g is None:
            return None
        x, root = data[t.rank], root_seed % g.size
        out = {algo: allreduce(g, x, op, algo) for algo in ALLREDUCE_ALGORITHMS}
        out["bcast"] = bcast(g, x, root, bcast_alg)
        out["reduce"] = reduce(g, x, op, root)
        out["gather"] = gather(g, x, root)
        full = out["gather"] if g.rank == root else np.empty((g.size, n), dtype=x.dtype)
        out["scatter"] = scatter(g, full, root)
        out["allgather"] = allgather(g, x, allgather_alg)
        out["reduce_scatter"] = reduce_scatter(g, x, op, rs_alg)
        barrier(g)
        return out

    want = groups_of(colors, keys)
    for r, out in enumerate(run_simulated(p, fn)):
        if colors[r] is None:
            assert out is None
            continue
        members = want[colors[r]]
        mine = [data[m] for m in members]
        g_rank, root = members.index(r), root_seed % len(members)
        total = expected(mine, op)
        for algo in ALLREDUCE_ALGORITHMS:
            np.testing.assert_array_equal(out[algo], total, err_msg=f"rank {r} {algo}")
        np.testing.assert_array_equal(out["bcast"], mine[root])
        if g_rank == root:
            np.testing.assert_array_equal(out["reduce"], total)
            np.testing.assert_array_equal(out["gather"], np.stack(mine))
        else:
            assert out["reduce"] is None and out["gather"] is None
        np.testing.assert_array_equal(out["scatter"], data[r])
        np.testing.assert_array_equal(out["allgather"], np.stack(mine))
        np.testing.assert_array_equal(out["reduce_scatter"], np.array_split(total, len(members))[g_rank])


# -- counters ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def world_stats(size: int, coll: str, algorithm: str, count: int) -> tuple:
    """Each rank's counters for one call on a world of ``size`` ranks (the reference a group must match)."""
    return tuple(run_simulated(size, lambda t: (run_collective(t, coll, algorithm, count), stats(t))[1]))


@given(case=splits(), pair=st.sampled_from(PAIRS), k=st.integers(0, 20))
def test_a_group_counts_what_a_world_of_its_size_counts_and_the_world_sums_them(case, pair, k):
    """In every group: per rank, the counters a world of that size shows for the same call; in all, the
    registry's closed form. On every rank the world's counters are its group's plus its own."""
    p, colors, keys = case
    coll, algo = pair

    def fn(t):
        g = t.split(colors[t.rank], keys[t.rank])
        if g is not None:
            run_collective(g, coll, algo, k * g.size)
        in_group = None if g is None else stats(g)
        after_group = stats(t)
        run_collective(t, "allreduce", "ring", k)  # the world's own traffic
        return in_group, after_group, stats(t)

    out = run_simulated(p, fn)
    for color, members in groups_of(colors, keys).items():
        size = len(members)
        ref = world_stats(size, coll, algo, k * size)
        for g_rank, r in enumerate(members):
            assert out[r][0] == ref[g_rank], (color, g_rank)
        assert (sum(out[r][0]["messages_sent"] for r in members), sum(out[r][0]["bytes_sent"] for r in members)) \
            == traffic(coll, algo, size, k * size, 4)
    world = world_stats(p, "allreduce", "ring", k)
    for r, (in_group, after_group, end) in enumerate(out):
        for c in COUNTERS:
            assert after_group[c] == (in_group[c] if in_group else 0), (r, c)
            assert end[c] == after_group[c] + world[r][c], (r, c)


def test_counters_roll_up_through_nested_groups_and_resets():
    """world <- halves <- pairs: a count lands on every level; reset_stats on one level leaves the others,
    and the next count lands in the new Stats of every level."""
    def fn(t):
        half = t.split(t.rank // 4, key=7 - t.rank)        # ranks 3,2,1,0 and 7,6,5,4
        pair = half.split(half.rank // 2)                  # group ranks (0,1) and (2,3) of each half
        assert t.stats.messages_sent == half.stats.messages_sent == 0   # nested split: uncounted at every level
        total = allreduce(pair, np.array([t.rank], np.int64), check=False)
        levels = [stats(x) for x in (pair, half, t)]
        half.reset_stats()
        barrier(pair)
        return pair.members, [half._wranks[m] for m in pair.members], int(total[0]), levels, stats(pair), \
            stats(half), stats(t)

    for r, (members, world_ranks, total, levels, pair_s, half_s, world_s) in enumerate(run_simulated(8, fn)):
        assert members == ((0, 1) if r % 4 >= 2 else (2, 3))
        assert sorted(world_ranks) == sorted({r, r ^ 1}) and total == r + (r ^ 1)
        assert levels[0] == levels[1] and levels[1] == levels[2] and levels[0]["messages_sent"] == 1
        assert pair_s["messages_sent"] == world_s["messages_sent"] == 2 and half_s["messages_sent"] == 1


def test_the_logical_clock_runs_through_groups():
    """rounds is kept per level: a chain group -> world -> other group is 3 rounds deep in the world and
    1 in each group."""
    def fn(t):
        g, one = t.split(t.rank // 2), np.zeros(1)
        if t.rank == 0:
            g.send(one, 1)
        elif t.rank == 1:
            g.recv(one, 0)
            t.send(one, 2)
        elif t.rank == 2:
            t.recv(one, 1)
            g.send(one, 1)
        else:
            g.recv(one, 0)
        return t.stats.rounds, g.stats.rounds

    assert run_simulated(4, fn) == [(1, 1), (2, 1), (3, 1), (3, 1)]


def test_split_messages_are_not_counted_but_take_virtual_time():
    """The split's exchange advances the clock but no counter; a group's declared work and reductions go
    on the rank's one clock (and its reductions into the world's counters)."""
    net = parse_network("10gbe,compute=1GFLOP/s")

    def fn(t):
        before = t.clock
        g = t.split(0)
        s, split_at = stats(t), t.clock
        g.compute(1e6)
        g.reduced(1000)
        return s, split_at > before, t.clock - split_at, g.clock == t.clock, t.stats.bytes_reduced

    for s, later, spent, same, reduced in SimCluster(4, network=net).run(fn):
        assert not any(s.values()) and later and same and reduced == 1000
        assert spent == round(1e-3 / TICK) + 1000 * net.gamma


# -- contexts --------------------------------------------------------------------------------------------
def test_any_source_any_tag_never_cross_contexts():
    """Ranks 0,1 and 2,3 form two groups; each has a group rank 0. Messages of the world and of the
    other group that reach a rank first never match its group's ANY_SOURCE/ANY_TAG receive, nor the
    other way round, whether the receive was posted before or after they arrived."""
    def fn(t):
        g = t.split(t.rank // 2)
        one = np.empty(1, np.int64)
        if t.rank == 0:
            posted = g.irecv(one, ANY_SOURCE, ANY_TAG)          # posted before anything arrives
            t.send(np.zeros(0, np.int8), 1, tag=1)               # tell the world it is posted
            t.send(np.zeros(0, np.int8), 2, tag=1)
            barrier(t)                                           # world messages to 0 are queued by now
            got = [posted.wait(), int(one[0])]
            w = [t.recv(one, ANY_SOURCE, ANY_TAG) for _ in range(2)]   # then the world's two, unexpected
            got += [sorted((s.source, s.tag) for s in w)]
            second = g.recv(one, ANY_SOURCE, ANY_TAG)             # and the group's second, also queued
            return got + [second, int(one[0])]
        if t.rank in (1, 2):
            t.recv(np.zeros(0, np.int8), 0, tag=1)
            t.send(np.array([100 + t.rank]), 0, tag=5)           # world messages to rank 0
        if t.rank == 3:
            g.send(np.array([-3]), 0, tag=5)                     # group rank 0 of the other group is rank 2
        barrier(t)
        if t.rank == 1:
            g.send(np.array([11]), 0, tag=9)
            g.send(np.array([12]), 0, tag=8)
        if t.rank == 2:
            st_ = g.recv(one, ANY_SOURCE, ANY_TAG)
            return st_, int(one[0])

    out = run_simulated(4, fn)
    first, v1, world, second, v2 = out[0]
    assert (first.source, first.tag, v1) == (1, 9, 11)          # group rank 1 = world rank 1
    assert world == [(1, 5), (2, 5)]
    assert (second.source, second.tag, v2) == (1, 8, 12)
    st_, v = out[2]
    assert (st_.source, st_.tag, v) == (1, 5, -3)               # from group rank 1 = world rank 3


def test_two_splits_with_the_same_colors_are_different_contexts():
    def fn(t):
        a, b = t.split(0), t.split(0)
        other = 1 - t.rank
        a.send(np.array([1]), other, tag=3)
        b.send(np.array([2]), other, tag=3)
        x, y = np.empty(1, np.int64), np.empty(1, np.int64)
        b.recv(y, ANY_SOURCE, ANY_TAG)                            # the later one, in its own context
        a.recv(x, ANY_SOURCE, ANY_TAG)
        return int(x[0]), int(y[0]), a.members == b.members

    assert run_simulated(2, fn) == [(1, 2, True)] * 2


# -- time, failure ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm, network", [("ring", "10gbe"), ("recursive_doubling", "10gbe"),
                                                ("naive", "10gbe,contention")])
def test_a_groups_virtual_time_is_its_ranks_time(algorithm, network):
    """An allreduce in a group moves each member's clock exactly as on a world of the group's size whose
    clocks (and incoming links) start where the members' did; the rank's world clock shows the same time."""
    def in_groups(t):
        g = t.split(t.rank % 2)
        rx = t.cluster.links.rx_free            # when each rank's incoming link is next free (contention)
        start = t.clock, rx[t.rank] if rx else 0
        allreduce(g, np.ones(1000, np.float32), algorithm=algorithm, check=False)
        return g.members, start, g.clock, t.clock, t.vtime == g.vtime

    out = SimCluster(5, network=network).run(in_groups)
    for members in {o[0] for o in out}:
        starts = [out[m][1] for m in members]

        def alone(t):
            t.clock = starts[t.rank][0]
            if t.cluster.links.rx_free:
                t.cluster.links.rx_free[t.rank] = starts[t.rank][1]
            allreduce(t, np.ones(1000, np.float32), algorithm=algorithm, check=False)
            return t.clock

        want = SimCluster(len(members), network=network).run(alone)
        assert [out[m][2] for m in members] == want
    assert all(g_clock == w_clock > start[0] and same for _, start, g_clock, w_clock, same in out)


def test_a_deadlock_inside_a_group_is_reported_with_world_ranks_and_context():
    def fn(t):
        g = t.split(t.rank % 2)
        if g.members == (0, 2):            # world ranks 0 and 2 wait for each other; 1 and 3 return
            g.recv(np.empty(2), 1 - g.rank, tag=4)

    with pytest.raises(DeadlockError) as info:
        run_simulated(4, fn)
    text = str(info.value)
    assert re.search(r"rank 0 waits for rank 2 \(tag 4, 16 bytes; in group context \d+ of world ranks \[0, 2\], "
                     r"its rank 1\)", text), text
    assert "rank 2 waits for rank 0" in text and "ranks [1, 3] have returned" in text


def test_a_rank_blocked_in_a_group_past_the_timeout_is_reported():
    cl = SimCluster(4, timeout=0.3)

    def fn(t):
        g = t.split(t.rank % 2)
        if t.rank == 2:
            while cl.failed is None:  # "computing" without ever sending, until the timeout ends the run
                time.sleep(0.01)
        elif t.rank == 0:
            g.recv(np.empty(1), 1)

    with pytest.raises(CommTimeout, match=r"rank 0 blocked for 0.3 s waiting for a message from rank 2 "
                                          r"\(any tag, 8 bytes; in group context \d+ of world ranks \[0, 2\]"):
        cl.run(fn)


def test_a_failure_in_one_group_stops_ranks_blocked_in_another():
    def fn(t):
        g = t.split(t.rank % 2)
        if t.rank == 1:
            raise KeyError("boom")
        if t.rank % 2 == 0:
            g.recv(np.empty(1), 1 - g.rank)  # would wait forever: nobody sends

    with pytest.raises(RankError, match="rank 1 of 4 raised KeyError"):
        run_simulated(4, fn)
