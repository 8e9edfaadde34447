"""Persistent allreduce plans (mpisim.comm.plan) on the simulated transport, and auto's measured table.

A plan must give bit-identical results to allreduce() with the same algorithm, for every
algorithm, dtype, op and rank count, and count the same messages, bytes, rounds, reductions and
virtual time as allreduce(check=False): only the one-time check at init differs.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpisim.comm import ALLREDUCE_ALGORITHMS, DTYPES, allreduce, choose_allreduce, run_simulated
from mpisim.comm.allreduce import load_allreduce_table, set_allreduce_table
from mpisim.comm.plan import RECORDED, AllreducePlan, allreduce_init
from tests.mpirun import run_mpi

COUNTED = ("messages_sent", "messages_received", "bytes_sent", "bytes_received", "rounds", "bytes_reduced")


def data(seed: int, rank: int, n: int, dtype, op: str, special: bool) -> np.ndarray:
    """Rank-specific values; floats get non-integers (order-sensitive sums) and, if ``special``, NaN/inf/-0."""
    rng = np.random.default_rng([seed, rank])
    if np.dtype(dtype).kind == "f":
        x = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, size=n)).astype(dtype)
        if special and n:
            picks = rng.integers(0, n, size=3)
            x[picks] = np.array([np.nan, np.inf, -0.0], dtype=dtype)[: len(picks)]
        return x
    return rng.integers(-3 if op == "prod" else -1000, 4 if op == "prod" else 1001, size=n).astype(dtype)


def calls(t, seed, n, dtype, op, algorithm, special, planned):
    """Two allreduces of new values in one buffer, plain (check=False) or by one plan made with check=False
    (which sends nothing): each call's result, counters and the virtual clock (ticks) after it."""
    x = data(seed, t.rank, n, dtype, op, special)
    run = (allreduce_init(t, x, op, algorithm, check=False) if planned
           else lambda: allreduce(t, x, op, algorithm, check=False))
    seen = []
    for k in range(2):
        x[...] = data(seed + k, t.rank, n, dtype, op, special)
        got = run().copy()
        seen.append((got, {c: getattr(t.stats, c) for c in COUNTED}, t.clock))
    return seen


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning", "ignore:overflow:RuntimeWarning")
@settings(max_examples=60, deadline=None)
@given(p=st.integers(1, 13), n=st.integers(0, 700), dtype=st.sampled_from(DTYPES),
       op=st.sampled_from(["sum", "prod", "max", "min"]), algorithm=st.sampled_from(ALLREDUCE_ALGORITHMS),
       seed=st.integers(0, 2**32 - 1), special=st.booleans(),
       network=st.sampled_from([None, "shm", "10gbe"]))
def test_a_plan_equals_allreduce_bit_for_bit_and_counts_the_same(p, n, dtype, op, algorithm, seed, special,
                                                                 network):
    plain = run_simulated(p, calls, seed, n, dtype, op, algorithm, special, False, network=network)
    planned = run_simulated(p, calls, seed, n, dtype, op, algorithm, special, True, network=network)
    for r in range(p):
        for k in range(2):
            (want, counts, clock), (got, pcounts, pclock) = plain[r][k], planned[r][k]
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.tobytes() == want.tobytes(), f"rank {r}, call {k}"
            assert (pcounts, pclock) == (counts, clock), f"rank {r}, call {k}"
    assert len({planned[r][1][0].tobytes() for r in range(p)}) == 1   # bit-identical on every rank


@pytest.mark.parametrize("algorithm", sorted(RECORDED))
def test_a_plan_reduces_in_place_and_records_its_steps(algorithm):
    def fn(t):
        x = np.arange(10, dtype=np.float64) + t.rank
        plan = allreduce_init(t, x, "sum", algorithm, out=x)
        assert plan.out is x and plan.recorded and plan.steps > 0 and plan.algorithm == algorithm
        plan()
        return x

    for x in run_simulated(5, fn):
        np.testing.assert_array_equal(x, 5 * np.arange(10) + 10)


def test_auto_resolves_at_init_and_a_call_sends_no_check_messages():
    def fn(t):
        x = np.ones(1 << 12, np.float32)
        t.reset_stats()
        allreduce(t, x, check=False)
        plain = t.stats.messages_sent
        t.reset_stats()
        plan = allreduce_init(t, x)          # the check runs here, once
        at_init = t.stats.messages_sent
        t.reset_stats()
        plan()
        plan()
        return plan.algorithm, plain, at_init, t.stats.messages_sent

    for alg, plain, at_init, sent in run_simulated(4, fn):
        assert alg == choose_allreduce(1 << 14, 1 << 12, 4)
        assert at_init == 2 and sent == 2 * plain   # the check: lg 4 exchanges; calls: the algorithm's only


def raised_on(p, fn):
    def wrapped(t):
        try:
            fn(t)
        except (ValueError, TypeError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None
    return run_simulated(p, wrapped)


@pytest.mark.parametrize("field,kw", [
    ("length", lambda r: {"array": np.ones(4 + (r == 2), np.float32)}),
    ("dtype", lambda r: {"array": np.ones(4, np.float64 if r else np.float32)}),
    ("op", lambda r: {"op": "max" if r == 1 else "sum"}),
    ("algorithm", lambda r: {"algorithm": "ring" if r == 0 else "tree"}),
])
def test_a_mismatched_init_raises_the_same_error_on_every_rank(field, kw):
    def fn(t):
        args = {"array": np.ones(4, np.float32), **kw(t.rank)}
        allreduce_init(t, **args)

    out = raised_on(3, fn)
    assert all(o and o.startswith("ValueError: allreduce_init: ranks passed inconsistent arguments")
               and f"{field} differs" in o for o in out), out


def test_init_against_a_plain_allreduce_is_named():
    def fn(t):
        x = np.ones(4, np.float32)
        allreduce_init(t, x) if t.rank else allreduce(t, x)

    out = raised_on(2, fn)
    assert all(o and "ranks called different collectives" in o for o in out), out


def test_bad_calls_after_init_are_refused():
    def fn(t):
        x = np.ones(6, np.float32)
        plan = allreduce_init(t, x)
        errors = []
        for bad in (np.ones(7, np.float32), np.ones(6, np.float64), np.ones(6, np.float32), [1.0] * 6):
            try:
                plan(bad)
            except ValueError as exc:
                errors.append(str(exc))
        x.shape = (2, 3)        # the bound array reshaped in place
        try:
            plan()
        except ValueError as exc:
            errors.append(str(exc))
        x.shape = (6,)
        plan(x)                 # the bound array itself is fine
        return errors

    for errors in run_simulated(2, fn):
        assert len(errors) == 5 and all(e.startswith("allreduce plan: it was made for one array of shape (6,)")
                                        for e in errors)
        assert "got shape (7,) and dtype float32" in errors[0] and "(another buffer)" in errors[2]
        assert "got a list" in errors[3] and "got shape (2, 3)" in errors[4]


@pytest.mark.parametrize("kw,message", [
    ({"array": [1.0, 2.0]}, "TypeError: allreduce_init: expected a numpy.ndarray, got list"),
    ({"op": "mean"}, "ValueError: allreduce_init: unknown op 'mean'"),
    ({"algorithm": "butterfly"}, "ValueError: allreduce_init: unknown algorithm 'butterfly'"),
    ({"out": np.ones(3, np.float32)}, "ValueError: allreduce_init: out has shape (3,)"),
])
def test_bad_init_arguments_are_refused(kw, message):
    out = raised_on(2, lambda t: allreduce_init(t, **{"array": np.ones(4, np.float32), **kw}))
    assert all(o and o.startswith(message) for o in out), out


def test_an_unrecorded_algorithm_runs_as_registered(monkeypatch):
    from mpisim.comm import plan as plan_module

    monkeypatch.setattr(plan_module, "RECORDED", frozenset())

    def fn(t):
        x = np.arange(5, dtype=np.int64) * (t.rank + 1)
        plan = allreduce_init(t, x, "sum", "ring")
        return plan.recorded, plan().copy()

    for recorded, got in run_simulated(3, fn):
        assert not recorded
        np.testing.assert_array_equal(got, np.arange(5) * 6)


def test_a_plan_is_an_allreduce_plan():
    out = run_simulated(1, lambda t: allreduce_init(t, np.ones(3, np.int32)))
    assert isinstance(out[0], AllreducePlan) and out[0]().tolist() == [1, 1, 1]


# -- auto's measured table --------------------------------------------------------------------------
@pytest.fixture
def table():
    yield set_allreduce_table
    set_allreduce_table(None)


def test_a_table_replaces_mpich_rule_for_its_rank_counts_and_sizes(table):
    assert choose_allreduce(4096, 1024, 2) == "rabenseifner"          # MPICH: above 2 KiB
    table({2: [(65536, "recursive_doubling"), (1 << 20, "ring")]})
    assert choose_allreduce(4096, 1024, 2) == "recursive_doubling"
    assert choose_allreduce(65536, 16384, 2) == "recursive_doubling"
    assert choose_allreduce(65537 * 4, 65537, 2) == "ring"
    assert choose_allreduce(4 << 20, 1 << 20, 2) == "rabenseifner"    # beyond the table: MPICH's rule
    assert choose_allreduce(4096, 1024, 4) == "rabenseifner"          # rank count not in the table
    assert choose_allreduce(12, 3, 8) == "recursive_doubling"         # fewer elements than ranks


def test_a_table_with_an_unknown_algorithm_or_a_bad_file_is_refused(table, tmp_path):
    with pytest.raises(ValueError, match="unknown algorithm 'butterfly' for 2 ranks"):
        table({2: [(4096, "butterfly")]})
    bad = tmp_path / "t.json"
    bad.write_text("[1, 2")
    with pytest.raises(ValueError, match=f"allreduce table {bad}: cannot be read"):
        load_allreduce_table(str(bad))
    good = tmp_path / "g.json"
    good.write_text('{"2": [[4096, "ring"]]}')
    assert load_allreduce_table(str(good)) == {2: [(4096, "ring")]}


def test_a_plan_made_with_a_table_runs_the_tables_choice(table):
    table({2: [(1 << 20, "ring")]})
    out = run_simulated(2, lambda t: allreduce_init(t, np.ones(4096, np.float32)).algorithm)
    assert out == ["ring", "ring"]


# -- under mpiexec --------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_plans_under_mpiexec_match_mpi_and_allreduce():
    res = run_mpi(2, "tests/comm/mpi_scripts/check_plan.py", timeout=100)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "plans ok on 2 ranks" in res.stdout, res.stdout + res.stderr
    for r in range(2):
        assert f"rank {r}: ValueError: allreduce_init: ranks passed inconsistent arguments: op differs" in res.stdout
