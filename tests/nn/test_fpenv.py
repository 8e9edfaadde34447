"""Flush-to-zero for the calling thread, and only for it."""
import platform
import threading

import numpy as np
import pytest

from mpisim.nn import flush_denormals

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="flush_denormals sets the x86 MXCSR register; this CPU is not x86")


def in_thread(fn):
    """Run fn in a new thread (the mode is per thread, so the test thread stays untouched)."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(30)
    return out[0]


def test_flush_denormals_makes_subnormals_zero_in_this_thread_only():
    tiny = np.float32(1e-39)                     # a float32 subnormal
    assert tiny * np.float32(2) != 0             # default mode here

    def work():
        assert flush_denormals(True) is False          # it was off
        on = (float(tiny * np.float32(2)), float((np.full(4, tiny) @ np.ones(4, np.float32))))
        assert flush_denormals(False) is True          # it was on
        off = float(tiny * np.float32(2))
        return on, off

    (on_mul, on_dot), off = in_thread(work)
    assert on_mul == 0.0 and on_dot == 0.0
    assert off == pytest.approx(2e-39, rel=1e-3)
    assert tiny * np.float32(2) != 0             # the calling thread was not affected
