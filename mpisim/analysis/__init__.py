"""``python -m mpisim.analysis``: the complexity report, measured on the simulated cluster next to the formulas.

* :mod:`.measure` runs each collective on p simulated ranks with a network model and sets the counters and
  the virtual time beside the closed forms of :mod:`mpisim.comm.costs`;
* :mod:`.paradigms` runs the training paradigms with a small model and collects their data volume;
* :mod:`.report` renders it all as text or Markdown (docs/complexity.md is generated from it);
* :mod:`.plots` draws time against p and against the message size (log-log).
"""
from .measure import Row, crossover, measure, run_collective

__all__ = ["Row", "crossover", "measure", "run_collective"]
