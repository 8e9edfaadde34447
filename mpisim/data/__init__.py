"""Data for mpisim: datasets, IDX files, and how examples are split among ranks and clients.

* :mod:`~mpisim.data.datasets` - :class:`Dataset`, :func:`load_dataset` (digits, MNIST,
  synthetic), :func:`normalize`, :func:`train_val_split`.
* :mod:`~mpisim.data.idx` - :func:`read_idx` and :func:`download_mnist`.
* :mod:`~mpisim.data.partition` - :func:`distributed_indices` (data parallel, per epoch) and
  the federated splits :func:`iid_partition`, :func:`shard_partition`,
  :func:`dirichlet_partition`, with :func:`label_histogram` to inspect them.

Every data problem raises :class:`DataError`, a ``ValueError``.
"""
from .datasets import (
    DATASETS,
    Dataset,
    dataset_shape,
    load_dataset,
    load_digits,
    load_mnist,
    make_synthetic,
    normalize,
    train_val_split,
)
from .idx import DataError, download_mnist, read_idx
from .partition import (
    dirichlet_partition,
    distributed_indices,
    epoch_permutation,
    iid_partition,
    label_histogram,
    shard_partition,
)

__all__ = [
    "DATASETS", "DataError", "Dataset", "dataset_shape", "dirichlet_partition", "distributed_indices",
    "download_mnist", "epoch_permutation", "iid_partition", "label_histogram", "load_dataset",
    "load_digits", "load_mnist", "make_synthetic", "normalize", "read_idx", "shard_partition",
    "train_val_split",
]
