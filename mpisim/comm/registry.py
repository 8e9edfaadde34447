"""One registry per collective: every algorithm is registered once, with all that describes it.

An entry (:class:`Algorithm`) holds the function that carries the algorithm out, its exact
traffic, its closed-form time, for allreduce the bytes-sent text of the paradigms' tables, the
few lines the report prints about it, and its plot marker. Everything else derives from here:
the ``*_ALGORITHMS`` tuples, the dispatch inside the collectives that take ``algorithm=``
(allreduce, bcast, allgather, reduce_scatter), :data:`mpisim.comm.costs.ALGORITHMS` and the cost
functions, the report and the plots. reduce, gather, scatter and barrier have one algorithm each and
no ``algorithm=`` argument: they call it directly, and a second one would need that argument first.
Adding an algorithm is one :func:`register` call beside its code::

    register("allreduce", "chain", _chain, traffic=..., cost=..., formula=..., explain="...")

An entry's ``run`` calls the registered function through :func:`set_call_hook`'s hook when one is set
(:mod:`mpisim.trace` records each dispatched call as a span), directly otherwise.

``run`` has the signature its collective dispatches with (``w`` the flat working buffer, ``tag``
the collective's tag, ``offs`` the blocks' offsets, ``m`` elements per rank):

==============  ==============================  ==============================================
collective      run(...)                        does
==============  ==============================  ==============================================
allreduce       (t, w, ufunc, tag, src)         w = the reduction of every rank's src
bcast           (t, w, root, tag)               w = root's w, in place
reduce          (t, w, ufunc, root, tag)        w on root = the reduction, in place
gather          (t, w, m, root, tag)            w on root = every relative rank's block
scatter         (t, w, offs, root, tag)         relative rank v gets block v of root's w
allgather       (t, w, offs, tag)               rank r's block r to every rank
reduce_scatter  (t, w, offs, ufunc, tag)        block r of w reduced on rank r
barrier         (t, tag)                        returns once every rank has called it
==============  ==============================  ==============================================

``traffic`` and ``cost`` take a :class:`mpisim.comm.formulas.Call` with p >= 2 (one rank sends
nothing and costs nothing) and return (messages, bytes) all ranks send and a
:class:`~mpisim.comm.formulas.Cost`; ``formula`` takes any p.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from .formulas import Call, Cost

__all__ = ["ALGORITHMS", "Algorithm", "COLLECTIVES", "choices", "computed_tuples", "get", "names",
           "dispatch", "register", "registered", "set_call_hook"]

# the collectives, in the order the report lists them
COLLECTIVES = ("allreduce", "bcast", "reduce", "gather", "scatter", "allgather", "reduce_scatter", "barrier")


@dataclass(frozen=True)
class Algorithm:
    """One registered algorithm of one collective (see the module docstring)."""

    collective: str
    name: str
    run: Callable[..., None]
    traffic: Callable[[Call], tuple[int, int]]   # exact (messages, bytes) of all ranks, p >= 2
    cost: Callable[[Call], Cost]                 # closed-form time, p >= 2
    explain: str                                 # what the formula says, for the report
    marker: str = ""                             # matplotlib marker; "" takes a free one
    formula: Callable[[Call], str] | None = None  # allreduce: bytes sent as text in N and n


_TABLE: dict[str, dict[str, Algorithm]] = {c: {} for c in COLLECTIVES}


def register(collective: str, name: str, run: Callable[..., None], *, traffic: Callable, cost: Callable,
             explain: str, marker: str = "", formula: Callable | None = None) -> Algorithm:
    """Register algorithm ``name`` of ``collective``; ValueError if the name is taken or an entry is incomplete."""
    if collective not in _TABLE:
        raise ValueError(f"register: unknown collective {collective!r}; choose one of {', '.join(COLLECTIVES)}")
    algs = _TABLE[collective]
    if not name or name == "auto" or name in algs:
        raise ValueError(f"register: {collective} algorithm {name!r} is "
                         + ("already registered" if name in algs else "not a name an algorithm can take"))
    if collective == "allreduce" and formula is None:
        raise ValueError(f"register: allreduce algorithm {name!r} needs a formula (the bytes sent, as text)")
    alg = Algorithm(collective, name, _dispatching(collective, name, run), traffic, cost, explain, marker, formula)
    algs[name] = alg
    return alg


# A tracer (mpisim.trace) sees each dispatched call here: hook(collective, name, run, t, args, kwargs) runs
# it. None, the usual case, costs one test per call.
_call_hook: Callable | None = None


def set_call_hook(hook: Callable | None) -> Callable | None:
    """Install the function every dispatched call goes through (None: none); returns the previous one."""
    global _call_hook
    previous, _call_hook = _call_hook, hook
    return previous


def dispatch(collective: str, name: str, run: Callable[..., Any], t, *args, **kwargs) -> Any:
    """``run(t, *args, **kwargs)``, through the call hook if one is set: for a call of ``collective`` with
    algorithm ``name`` that does not go through a registry entry (a persistent plan's replay); ``args[0]``,
    when an array, is the collective's vector."""
    hook = _call_hook
    if hook is None:
        return run(t, *args, **kwargs)
    return hook(collective, name, run, t, args, kwargs)


def _dispatching(collective: str, name: str, run: Callable[..., None]) -> Callable[..., None]:
    """``run`` behind the call hook (the registry's ``Algorithm.run``; ``__wrapped__`` is ``run``)."""
    def dispatch(t, *args, **kwargs):
        hook = _call_hook
        if hook is None:
            return run(t, *args, **kwargs)
        return hook(collective, name, run, t, args, kwargs)
    dispatch.__wrapped__ = run
    dispatch.__name__ = getattr(run, "__name__", name)
    dispatch.__doc__ = run.__doc__
    return dispatch


@contextlib.contextmanager
def registered(collective: str, name: str, run: Callable[..., None], **entry) -> Iterator[Algorithm]:
    """:func:`register` for the duration of a ``with`` block (a test's algorithm), then remove it again."""
    alg = register(collective, name, run, **entry)
    try:
        yield alg
    finally:
        del _TABLE[collective][name]


def get(collective: str, name: str) -> Algorithm:
    """The entry of algorithm ``name`` of ``collective``; ValueError naming the choices if there is none."""
    try:
        return _TABLE[collective][name]
    except KeyError:
        raise ValueError(f"unknown {collective} algorithm {name!r}; choose one of "
                         f"{', '.join(_TABLE.get(collective, ()))}") from None


def names(collective: str) -> tuple[str, ...]:
    """The registered algorithms of ``collective``, in the order they were registered."""
    return tuple(_TABLE[collective])


def choices(collective: str) -> tuple[str, ...]:
    """What a collective's ``algorithm`` argument takes: ``auto`` (its own choice), then :func:`names`."""
    return ("auto", *names(collective))


class _Algorithms(Mapping):
    """{collective: tuple of algorithm names}, read from the registry on every access."""

    def __getitem__(self, collective: str) -> tuple[str, ...]:
        return names(collective)

    def __iter__(self) -> Iterator[str]:
        return iter(COLLECTIVES)

    def __len__(self) -> int:
        return len(COLLECTIVES)

    def __repr__(self) -> str:
        return repr(dict(self))


ALGORITHMS: Mapping[str, tuple[str, ...]] = _Algorithms()


def computed_tuples(module: str, **tuples: str):
    """A module's ``__getattr__`` and ``__dir__`` (PEP 562) for ``tuples`` (NAME=collective): each name is
    :func:`choices` of its collective, computed on every access so ``BCAST_ALGORITHMS`` and the like
    follow the registry, and listed by ``dir()``."""
    def __getattr__(attr: str) -> tuple[str, ...]:
        if attr in tuples:
            return choices(tuples[attr])
        raise AttributeError(f"module {module!r} has no attribute {attr!r}")

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[module]), *tuples})
    return __getattr__, __dir__
