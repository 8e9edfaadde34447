"""Run under mpiexec -n 2: the MPI transport's counters, statuses and size errors."""
import numpy as np

from mpisim.comm import ANY_SOURCE, CommError, mpi_transport

t = mpi_transport(abort_on_error=False)
other = 1 - t.rank
if t.rank == 0:
    t.send(np.arange(5, dtype=np.int64), 1, tag=7)
    t.send(np.zeros(3, np.float32), 1, tag=8)   # smaller than rank 1's buffer
    t.send(np.zeros(5, np.float32), 1, tag=9)   # larger than rank 1's buffer
    req = t.isend(np.ones(2), 1, tag=10)
    req.wait()
    assert (t.stats.messages_sent, t.stats.bytes_sent) == (4, 40 + 12 + 20 + 16), t.stats
else:
    buf = np.empty(5, np.int64)
    st = t.recv(buf, ANY_SOURCE, 7)
    assert (st.source, st.tag, st.nbytes) == (0, 7, 40) and buf.tolist() == [0, 1, 2, 3, 4]
    for tag in (8, 9):
        try:
            t.recv(np.empty(4, np.float32), 0, tag)
        except CommError as exc:
            assert "rank 1" in str(exc), exc
        else:
            raise AssertionError(f"a {tag}-tagged message of the wrong size was accepted")
    r = t.irecv(np.empty(2), 0, 10)
    st = r.wait()
    assert st.nbytes == 16 and r.wait() is st and r.test()
    assert t.stats.messages_received == 2, t.stats  # the two rejected messages are not counted
res = np.zeros(1)
t.sendrecv(np.ones(1), other, res, other, 3, 3)
assert res[0] == 1
if t.rank == 0:
    print("transport semantics ok", flush=True)
