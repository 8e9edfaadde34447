"""Message passing for mpisim: the transports and the collectives written on them.

Transports (one rank's endpoint; see :mod:`mpisim.comm.transport`):

* :func:`mpi_transport` - real MPI through mpi4py's buffer calls, one process per rank.
* :func:`run_simulated` - N ranks as threads of this process.

Collectives, each ``f(transport, array, ...)`` and written only on send/recv/sendrecv:
:func:`allreduce`, :func:`bcast`, :func:`reduce`, :func:`gather`, :func:`scatter`,
:func:`allgather`, :func:`reduce_scatter`, :func:`barrier`. Their algorithms, with cost
formulas, explanations and plot styles, are registered in :mod:`mpisim.comm.registry`; the
hierarchical allreduce (:mod:`mpisim.comm.hierarchical`) registers itself when this package is imported.
"""
from ._common import DTYPES, OPS, set_consistency_check
from .allgather import allgather
from .allreduce import allreduce, choose_allreduce
from . import hierarchical  # noqa: F401  registers the hierarchical allreduce
from .barrier import barrier
from .reduce_scatter import reduce_scatter
from .registry import computed_tuples
from .rooted import bcast, gather, reduce, scatter
from .sim import CommTimeout, DeadlockError, RankError, SimCluster, SimTransport, run_simulated
from .transport import ANY_SOURCE, ANY_TAG, CommError, Request, Stats, Status, Transport

# ALLREDUCE_ALGORITHMS and the like: "auto", then the registered algorithms (mpisim.comm.registry)
__getattr__, __dir__ = computed_tuples(__name__, ALLREDUCE_ALGORITHMS="allreduce", BCAST_ALGORITHMS="bcast",
                                       ALLGATHER_ALGORITHMS="allgather", REDUCE_SCATTER_ALGORITHMS="reduce_scatter")


def mpi_transport(comm=None, *, abort_on_error: bool = True):
    """The MPI transport over a duplicate of ``comm`` (default ``MPI.COMM_WORLD``).

    With ``abort_on_error``, an uncaught exception on any rank aborts the job naming the rank, and a
    rank that exits while the others wait for it ends the job naming it (:mod:`mpisim.comm.mpi`).
    Imported lazily so that ``import mpisim.comm`` never initializes MPI by itself.
    """
    from .mpi import mpi_transport as _make

    return _make(comm, abort_on_error=abort_on_error)


__all__ = [
    "ALLGATHER_ALGORITHMS", "ALLREDUCE_ALGORITHMS", "ANY_SOURCE", "ANY_TAG", "BCAST_ALGORITHMS",
    "CommError", "CommTimeout", "DTYPES", "DeadlockError", "OPS", "REDUCE_SCATTER_ALGORITHMS",
    "RankError", "Request", "SimCluster", "SimTransport", "Stats", "Status", "Transport",
    "allgather", "allreduce", "barrier", "bcast", "choose_allreduce", "gather", "mpi_transport",
    "reduce", "reduce_scatter", "run_simulated", "scatter", "set_consistency_check",
]
