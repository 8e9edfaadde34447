"""The simulated cluster at scale: cooperative ranks, deterministic clocks, O(p) memory, refusal up front."""
from __future__ import annotations

import subprocess
import sys
import threading
import tracemalloc

import numpy as np
import pytest

from mpisim.comm import ANY_SOURCE, CommTimeout, DeadlockError, RankError, SimCluster, allreduce, bcast, gather
from mpisim.comm.sim import RANK_BYTES, memory_estimate


def _arrivals(t):
    """Rank 0 takes p-1 messages from ANY_SOURCE on a contended link; the others send at different times."""
    if t.rank == 0:
        got = []
        buf = np.empty(1000, np.float32)
        for _ in range(t.size - 1):
            got.append(t.recv(buf, ANY_SOURCE).source)
        return got, t.clock
    t.compute(1e6 * (t.size - t.rank))               # later ranks are ready sooner
    t.send(np.full(1000, t.rank, np.float32), 0)
    return None, t.clock


def test_virtual_clocks_and_any_source_order_are_identical_run_to_run():
    net = "10gbe,contention,compute=1GFLOP/s"
    runs = [SimCluster(33, network=net).run(_arrivals) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    order, _ = runs[0][0]
    assert sorted(order) == list(range(1, 33))


def test_an_allreduce_on_1024_ranks_is_exact_and_repeatable():
    def body(t):
        a = np.full(64, t.rank, np.float64)
        allreduce(t, a, algorithm="rabenseifner", out=a, check=False)
        return a[0], t.clock

    runs = [SimCluster(1024, network="10gbe").run(body) for _ in range(2)]
    assert runs[0] == runs[1]
    assert {v for v, _ in runs[0]} == {1023 * 1024 / 2}


def test_the_cluster_keeps_no_per_pair_state():
    """Building and running p ranks allocates O(p): measured by allocation, not by time."""
    def body(t):
        bcast(t, np.zeros(4, np.int64))
        return None

    def peak(p):
        tracemalloc.start()
        SimCluster(p).run(body)
        size = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return size

    small, large = peak(512), peak(4096)
    assert large / 4096 < 2 * small / 512 + 1024       # per rank: flat, not growing with p
    assert large / 4096 < RANK_BYTES


def test_too_many_ranks_are_refused_with_the_estimate():
    with pytest.raises(MemoryError, match=r"99,999,999,999,999 simulated ranks need about [0-9,]+ TiB \(24 KiB per rank\) but .* is available"):
        SimCluster(99_999_999_999_999)
    assert memory_estimate(10, 100) == 10 * (RANK_BYTES + 100)
    with pytest.raises(MemoryError, match="per rank"):
        SimCluster(4, rank_bytes=2**62)


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan")])
def test_a_timeout_must_be_positive_and_finite(timeout):
    with pytest.raises(ValueError, match="timeout"):
        SimCluster(2, timeout=timeout)


def test_sleep_lets_the_other_ranks_run():
    log = []

    def body(t):
        if t.rank == 1:
            t.sleep(0.01)
        log.append(t.rank)

    SimCluster(3).run(body)
    assert log == [0, 2, 1]


def test_polling_a_request_lets_the_sender_run():
    def body(t):
        if t.rank == 0:
            buf = np.empty(3)
            req = t.irecv(buf, 1)
            polls = 0
            while not req.test():
                polls += 1
            return polls, buf.tolist()
        t.send(np.arange(3.0), 0)
        return None

    out = SimCluster(2).run(body)
    assert out[0] == (1, [0.0, 1.0, 2.0])   # one poll: then rank 1 ran and sent


def test_a_deadlock_among_many_ranks_names_them():
    def body(t):
        t.recv(np.empty(1), (t.rank + 1) % t.size)

    with pytest.raises(DeadlockError, match="rank 0 waits for rank 1 .* rank 299 waits for rank 0"):
        SimCluster(300).run(body)


def test_a_failure_on_one_of_many_ranks_unwinds_the_others():
    started, unwound = [], []

    def body(t):
        started.append(t.rank)
        try:
            if t.rank == 77:
                raise ValueError("bad input on 77")
            gather(t, np.zeros(2), root=0)
        finally:
            unwound.append(t.rank)

    with pytest.raises(RankError, match="rank 77 of 200 raised ValueError: bad input on 77"):
        SimCluster(200).run(body)
    assert sorted(unwound) == sorted(started) == list(range(78))   # ranks after 77 never started; the rest unwound


def test_ctrl_c_reaches_the_running_rank():
    """SIGINT lands in the rank that is computing, which fails as it would on its own thread."""
    code = """if True:
        import os, signal, threading, numpy as np
        from mpisim.comm import SimCluster, RankError
        signal.signal(signal.SIGINT, signal.default_int_handler)   # even where the parent ignores SIGINT
        def body(t):
            if t.rank == 1:
                threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
                while True:
                    pass
            t.recv(np.empty(1), 1)
        try:
            SimCluster(2, timeout=30).run(body)
        except RankError as e:
            print("rank", e.rank, type(e.exc).__name__)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "rank 1 KeyboardInterrupt", out.stderr


def test_a_rank_that_never_returns_to_the_scheduler_still_times_out():
    stop = threading.Event()

    def body(t):
        if t.rank == 1:
            x = 0
            while not stop.is_set():   # computing, never calling the transport (until the test ends)
                x += 1
        t.recv(np.empty(1), 1)

    try:
        with pytest.raises(CommTimeout, match="rank 0 blocked for 0.2 s waiting for a message from rank 1"):
            SimCluster(2, timeout=0.2).run(body)
    finally:
        stop.set()                     # the rank left behind stops: no thread spins through later tests


def test_the_scale_benchmark_runs_quick():
    out = subprocess.run([sys.executable, "scripts/sim_scale.py", "--quick"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [("16", "ring"), ("16", "rabenseifner"), ("64", "ring"),
                                             ("64", "rabenseifner")]
    assert all(r[-1] == "yes" for r in rows)
    assert int(rows[2][2].replace(",", "")) == 2 * 63 * 64          # ring: 2(p-1) messages per rank


def test_ranks_that_poll_forever_end_in_a_timeout_not_a_hang():
    def body(t):
        if t.rank == 0:
            req = t.irecv(np.empty(1), 1, 5)
            while not req.test():
                pass

    with pytest.raises(CommTimeout, match=r"ranks \[0\] polled requests for 0.3 s .* ranks \[1\] have returned"):
        SimCluster(2, timeout=0.3).run(body)


def test_many_ranks_computing_in_turn_are_not_a_timeout():
    """Ranks run one at a time: a rank waits for the sum of the others' turns, which is no timeout."""
    def body(t):
        x = 0
        while x < 60_000:          # about 10 ms of Python per rank, 12 ranks in turn
            x += 1
        allreduce(t, np.ones(4, np.float32), algorithm="ring", check=False)

    SimCluster(12, timeout=0.05).run(body)   # well under the ~0.1 s the others take in all


def test_polling_under_compute_wall_is_not_charged_the_others_work():
    def body(t):
        if t.rank == 0:
            req = t.irecv(np.empty(1), 1)
            while not req.test():
                pass
        elif t.rank == 1:
            t.send(np.zeros(1), 0)
        else:
            t.sendrecv(np.zeros(1), 2, np.empty(1), 2)   # computation is charged from a rank's first call on
            x = 0
            while x < 300_000:     # rank 2 computes, charged to rank 2 alone
                x += 1
            t.sendrecv(np.zeros(1), 2, np.empty(1), 2)
        return t.clock

    clocks = SimCluster(3, network="alpha=1us,beta=1GB/s,compute=wall").run(body)
    assert clocks[0] < clocks[2] / 10


def test_ctrl_c_while_every_rank_sleeps_unwinds_them_all():
    code = """if True:
        import os, signal, threading, numpy as np
        from mpisim.comm import SimCluster, RankError
        signal.signal(signal.SIGINT, signal.default_int_handler)   # even where the parent ignores SIGINT
        def body(t):
            try:
                if t.rank == 0:
                    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
                while True:
                    t.sleep(0.05)
            finally:
                print("cleanup", t.rank, flush=True)
        try:
            SimCluster(3, timeout=30).run(body)
        except RankError as e:
            print("failed", type(e.exc).__name__)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = out.stdout.split()
    assert sorted(out.stdout.splitlines()[:3]) == ["cleanup 0", "cleanup 1", "cleanup 2"], out.stderr
    assert lines[-2:] == ["failed", "KeyboardInterrupt"]
