"""Bad input gets a clear ValueError/TypeError; mismatched ranks all raise instead of hanging."""
import numpy as np
import pytest

from mpisim import run_simulated
from mpisim.comm import (
    CommError,
    RankError,
    allgather,
    allreduce,
    bcast,
    gather,
    reduce,
    reduce_scatter,
    scatter,
)


def raised_on(p, fn):
    """Run fn on p ranks; return the exception type name each rank raised (None if it returned)."""
    def body(t):
        try:
            fn(t)
        except Exception as exc:  # noqa: BLE001 - the test inspects what each rank raised
            return f"{type(exc).__name__}: {exc}"
        return None
    return run_simulated(p, body)


X = np.ones(8, np.float32)
CALLS = {
    "allreduce": lambda t, **kw: allreduce(t, kw.get("x", X), kw.get("op", "sum"), kw.get("algorithm", "auto")),
    "bcast": lambda t, **kw: bcast(t, kw.get("x", X), kw.get("root", 0), kw.get("algorithm", "auto")),
    "reduce": lambda t, **kw: reduce(t, kw.get("x", X), kw.get("op", "sum"), kw.get("root", 0)),
    "gather": lambda t, **kw: gather(t, kw.get("x", X), kw.get("root", 0)),
    "scatter": lambda t, **kw: scatter(t, kw.get("x", np.ones((t.size, 2))), kw.get("root", 0)),
    "allgather": lambda t, **kw: allgather(t, kw.get("x", X), kw.get("algorithm", "auto")),
    "reduce_scatter": lambda t, **kw: reduce_scatter(t, kw.get("x", X), kw.get("op", "sum"),
                                                     kw.get("algorithm", "auto")),
}


@pytest.mark.parametrize("name", ["allreduce", "bcast", "allgather", "reduce_scatter"])
def test_unknown_algorithm(name):
    out = raised_on(3, lambda t: CALLS[name](t, algorithm="butterfly"))
    assert all(o.startswith(f"ValueError: {name}: unknown algorithm 'butterfly'; choose one of") for o in out)


@pytest.mark.parametrize("name", ["allreduce", "reduce", "reduce_scatter"])
def test_unknown_op(name):
    out = raised_on(2, lambda t: CALLS[name](t, op="avg"))
    assert all("unknown op 'avg'; choose one of sum, prod, max, min" in o for o in out)


@pytest.mark.parametrize("name", ["bcast", "reduce", "gather", "scatter"])
@pytest.mark.parametrize("root", [-1, 3, 1.0, True, None])
def test_bad_root(name, root):
    out = raised_on(3, lambda t: CALLS[name](t, root=root))
    assert all(o.startswith("ValueError") and "root must be a rank in [0, 3)" in o for o in out)


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("dtype", [np.float16, np.complex64, np.bool_, np.uint8, object])
def test_unsupported_dtype(name, dtype):
    x = np.ones((2, 2), dtype=dtype)
    out = raised_on(2, lambda t: CALLS[name](t, x=x))
    assert all(o.startswith("TypeError") and "unsupported dtype" in o for o in out)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_non_contiguous(name):
    x = np.ones((2, 8))[:, ::2]
    out = raised_on(2, lambda t: CALLS[name](t, x=x))
    assert all(o.startswith("ValueError") and "not contiguous" in o for o in out)


def test_not_an_array():
    out = raised_on(2, lambda t: allreduce(t, [1.0, 2.0]))
    assert out == ["TypeError: allreduce: expected a numpy.ndarray, got list"] * 2


def test_scatter_needs_one_row_per_rank():
    out = raised_on(3, lambda t: scatter(t, np.ones((2, 4))))
    assert all("first dimension must be the rank count 3" in o for o in out)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_mismatched_lengths_raise_on_every_rank(name):
    def fn(t):
        x = np.ones(5 + (t.rank == 2), np.float32)
        return CALLS[name](t, x=np.ones((t.size, x.size), np.float32) if name == "scatter" else x)

    out = raised_on(4, fn)
    assert all(o and o.startswith(f"ValueError: {name}: ranks passed inconsistent arguments: length differs")
               for o in out), out


@pytest.mark.parametrize("field,kw", [
    ("dtype", lambda r: {"x": np.ones(4, np.float64 if r else np.float32)}),
    ("op", lambda r: {"op": "max" if r == 1 else "sum"}),
    ("algorithm", lambda r: {"algorithm": "ring" if r == 0 else "tree"}),
])
def test_mismatched_arguments_raise_on_every_rank(field, kw):
    out = raised_on(3, lambda t: CALLS["allreduce"](t, **kw(t.rank)))
    assert all(o and f"{field} differs" in o for o in out), out


def test_mismatched_root_raises_on_every_rank():
    out = raised_on(3, lambda t: bcast(t, X, root=t.rank))
    assert all(o and "root differs (min 0, max 2)" in o for o in out), out


def test_with_the_check_off_a_mismatch_is_still_an_error_not_a_hang():
    with pytest.raises((RankError, CommError)):
        run_simulated(3, lambda t: allreduce(t, np.ones(5 + t.rank), algorithm="ring", check=False))


def test_inputs_are_not_modified():
    def fn(t):
        x = np.arange(6, dtype=np.int64) + t.rank
        before = x.copy()
        for algo in ("naive", "tree", "recursive_doubling", "ring", "rabenseifner"):
            allreduce(t, x, "sum", algo)
        reduce_scatter(t, x)
        bcast(t, x, 1)
        return np.array_equal(x, before)

    assert all(run_simulated(5, fn))


def test_allreduce_out_must_match_and_not_partially_overlap():
    out = raised_on(2, lambda t: allreduce(t, np.ones(4), out=np.ones(5)))
    assert all("out has shape (5,)" in o for o in out)
    buf = np.ones(9)
    out = raised_on(1, lambda t: allreduce(t, buf[:8], out=buf[1:]))
    assert all("overlaps the input" in o for o in out)
