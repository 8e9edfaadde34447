"""mpisim: a simulated cluster for distributed machine learning on pure message passing.

``mpisim.comm`` holds the transports (MPI and simulated) and the hand-written collectives;
:func:`run_simulated` runs a function on N in-process ranks.
"""
from .comm import run_simulated

__version__ = "0.1.0"
__all__ = ["run_simulated", "__version__"]
