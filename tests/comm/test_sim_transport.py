"""The simulated transport keeps MPI's point-to-point semantics and never hangs."""
import threading
import time

import numpy as np
import pytest

from mpisim import run_simulated
from mpisim.comm import ANY_SOURCE, CommError, CommTimeout, DeadlockError, RankError, SimCluster


def test_results_come_back_in_rank_order():
    assert run_simulated(5, lambda t, k: (t.rank, t.size, k), k=7) == [(r, 5, 7) for r in range(5)]


def test_sender_may_reuse_its_buffer_when_send_returns():
    def fn(t):
        if t.rank == 0:
            buf = np.arange(4, dtype=np.int64)
            t.send(buf, 1)
            buf[:] = -1  # must not change what rank 1 receives
            t.send(buf, 1)
            return None
        a, b = np.empty(4, np.int64), np.empty(4, np.int64)
        t.recv(a, 0)
        t.recv(b, 0)
        return a, b

    a, b = run_simulated(2, fn)[1]
    np.testing.assert_array_equal(a, [0, 1, 2, 3])
    np.testing.assert_array_equal(b, [-1] * 4)


def test_same_tag_messages_arrive_in_order_and_tags_can_overtake():
    def fn(t):
        if t.rank == 0:
            for i in range(50):
                t.send(np.array([i], np.int32), 1, tag=5)
            t.send(np.array([999], np.int32), 1, tag=6)
            return None
        late = np.empty(1, np.int32)
        t.recv(late, 0, tag=6)  # received first although sent last
        got = []
        for _ in range(50):
            x = np.empty(1, np.int32)
            t.recv(x, 0, tag=5)
            got.append(int(x[0]))
        return int(late[0]), got

    late, got = run_simulated(2, fn)[1]
    assert late == 999 and got == list(range(50))


def test_posted_receives_match_in_posting_order():
    def fn(t):
        if t.rank == 1:
            a, b = np.empty(1, np.int64), np.empty(1, np.int64)
            ra, rb = t.irecv(a, 0, 3), t.irecv(b, 0, 3)
            t.send(np.zeros(0, np.int8), 0, 9)  # tell rank 0 both are posted
            rb.wait()
            ra.wait()
            return int(a[0]), int(b[0])
        t.recv(np.zeros(0, np.int8), 1, 9)
        t.send(np.array([1]), 1, 3)
        t.send(np.array([2]), 1, 3)

    assert run_simulated(2, fn)[1] == (1, 2)


def test_any_source_reports_the_sender():
    def fn(t):
        if t.rank == 0:
            seen = set()
            for _ in range(t.size - 1):
                x = np.empty(1, np.int64)
                st = t.recv(x, ANY_SOURCE, 0)
                assert st.source == x[0] and st.nbytes == 8
                seen.add(st.source)
            return seen
        t.send(np.array([t.rank]), 0, 0)

    assert run_simulated(4, fn)[0] == {1, 2, 3}


def test_message_larger_or_smaller_than_buffer_is_an_error():
    def fn(t):
        if t.rank == 0:
            t.send(np.zeros(3, np.float32), 1)
        else:
            t.recv(np.zeros(4, np.float32), 0)

    with pytest.raises(RankError, match="12 bytes but the receive buffer holds 16") as info:
        run_simulated(2, fn)
    assert info.value.rank == 1 and isinstance(info.value.exc, CommError)


def test_exception_on_one_rank_stops_all_and_names_it():
    def fn(t):
        if t.rank == 2:
            raise KeyError("boom")
        t.recv(np.empty(1), 2)  # would wait forever for rank 2

    start = time.monotonic()
    with pytest.raises(RankError, match="rank 2 of 4 raised KeyError") as info:
        run_simulated(4, fn)
    assert time.monotonic() - start < 5
    assert info.value.rank == 2 and isinstance(info.value.__cause__, KeyError)


def test_deadlock_is_reported_at_once_with_what_each_rank_waits_for():
    def fn(t):
        t.recv(np.empty(2), (t.rank + 1) % t.size, tag=4)

    start = time.monotonic()
    with pytest.raises(DeadlockError, match=r"rank 0 waits for rank 1 \(tag 4, 16 bytes\)"):
        run_simulated(3, fn)
    assert time.monotonic() - start < 5


def test_waiting_for_a_rank_that_returned_is_a_deadlock():
    def fn(t):
        if t.rank == 0:
            t.recv(np.empty(1), 1)

    with pytest.raises(DeadlockError, match=r"ranks \[1\] have returned"):
        run_simulated(2, fn)


def test_a_rank_blocked_past_the_timeout_is_reported():
    release = threading.Event()

    def fn(t):
        if t.rank == 1:
            release.wait(10)  # "computing" without ever sending
            return
        t.recv(np.empty(1), 1)

    start = time.monotonic()
    with pytest.raises(CommTimeout, match="rank 0 blocked for 0.3 s"):
        SimCluster(2, timeout=0.3).run(fn)
    release.set()
    assert time.monotonic() - start < 5


def test_stats_count_messages_bytes_and_reset():
    def fn(t):
        if t.rank == 0:
            t.send(np.zeros(10, np.float64), 1)
            t.isend(np.zeros(3, np.int32), 1).wait()
        else:
            t.recv(np.empty(10, np.float64), 0)
            t.irecv(np.empty(3, np.int32), 0).wait()
        s = t.stats.as_dict()
        t.reset_stats()
        return s, t.stats.messages_sent

    (s0, z0), (s1, _) = run_simulated(2, fn)
    assert (s0["messages_sent"], s0["bytes_sent"], s0["messages_received"]) == (2, 92, 0)
    assert (s1["messages_received"], s1["bytes_received"], s1["bytes_sent"]) == (2, 92, 0)
    assert s0["comm_time"] >= 0 and z0 == 0


def test_bad_peer_and_bad_size_are_value_errors():
    with pytest.raises(RankError, match=r"dest must be a rank in \[0, 2\)"):
        run_simulated(2, lambda t: t.send(np.zeros(1), 2))
    with pytest.raises(ValueError, match="at least 1 rank"):
        run_simulated(0, lambda t: None)


def test_request_test_fills_the_buffer_and_wait_twice_counts_once():
    from mpisim.comm import barrier

    def fn(t):
        if t.rank == 0:
            t.send(np.array([42]), 1)
            barrier(t)
            return None
        barrier(t)  # rank 0's message is queued by now
        buf = np.zeros(1, np.int64)
        r = t.irecv(buf, 0)
        done = r.test()
        first = int(buf[0])
        st1, st2 = r.wait(), r.wait()
        return done, first, st1 is st2, t.stats.messages_received

    done, first, same, count = run_simulated(2, fn)[1]
    assert done and first == 42 and same
    assert count == 2  # the message plus one barrier message, each counted once


def test_a_cluster_runs_once():
    c = SimCluster(2)
    c.run(lambda t: None)
    with pytest.raises(RuntimeError, match="runs once"):
        c.run(lambda t: None)


def test_user_code_catching_exception_does_not_swallow_an_abort():
    def fn(t):
        if t.rank == 0:
            raise ValueError("rank 0 fails")
        try:
            t.recv(np.empty(1), 0)
        except Exception:  # noqa: BLE001 - must not catch the abort
            return "swallowed"

    with pytest.raises(RankError, match="rank 0 of 2 raised ValueError"):
        run_simulated(2, fn)


def test_failed_sendrecv_leaves_no_receive_posted():
    def fn(t):
        if t.rank == 1:
            with pytest.raises(ValueError):
                t.sendrecv(np.zeros(1), 5, np.empty(1), 0)  # bad dest
            buf = np.empty(1)
            t.recv(buf, 0)
            return float(buf[0])
        t.send(np.array([3.0]), 1)

    assert run_simulated(2, fn)[1] == 3.0


def test_rank_count_must_be_an_int():
    with pytest.raises(TypeError, match="must be an int, got str"):
        run_simulated("3", lambda t: None)
