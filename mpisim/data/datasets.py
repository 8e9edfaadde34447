"""Datasets: scikit-learn's 8x8 digits (the default), MNIST from IDX files, and a synthetic one.

Every loader returns a :class:`Dataset` of flat float32 features ``(N, D)`` (pixels in [0, 1] for
the image sets, Gaussian values for synthetic) and int64 labels. :func:`load_dataset` adds the two steps a training run wants: a seeded validation split
taken from the training set, and standardization with the training set's global mean and std
(one scalar each, computed on training data only, as in LeCun et al. 1998, "Efficient BackProp").

* digits: Alpaydin and Kaynak 1998, UCI "Optical Recognition of Handwritten Digits", as bundled
  with scikit-learn: 1,797 images of 8x8 pixels with values 0..16.
* mnist: LeCun, Bottou, Bengio and Haffner 1998, read with :func:`~mpisim.data.idx.read_idx`.
* synthetic: a seeded mixture of Gaussians, two clusters per class, any size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .idx import MNIST_FILES, DataError, download_mnist, read_idx
from .partition import data_rng

__all__ = ["DATASETS", "Dataset", "dataset_shape", "load_dataset", "load_digits", "load_mnist", "make_synthetic",
           "normalize", "train_val_split", "training_size"]

DATASETS = ("digits", "mnist", "synthetic")
MNIST_CACHE = Path("~/.cache/mpisim/mnist")  # where --download puts MNIST when no dir is given


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset split into train / (optional) validation / test, features flat ``(N, D)``."""

    name: str
    x_train: np.ndarray  # (N, D) float32, C-contiguous
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    image_shape: tuple[int, ...]  # (8, 8), (28, 28); (D,) for synthetic
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    def __post_init__(self) -> None:
        d = int(np.prod(self.image_shape))
        for split in ("train", "val", "test"):
            x, y = getattr(self, "x_" + split), getattr(self, "y_" + split)
            if x is None and y is None and split == "val":
                continue
            if x is None or y is None:
                raise DataError(f"{self.name}: x_{split} and y_{split} must both be given")
            x = np.ascontiguousarray(x, dtype=np.float32)
            y = np.ascontiguousarray(y, dtype=np.int64)
            if x.ndim != 2 or x.shape[1] != d or y.shape != (x.shape[0],):
                raise DataError(f"{self.name}: x_{split} {x.shape} and y_{split} {y.shape} do not "
                                f"fit (N, {d}) and (N,) for image shape {self.image_shape}")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise DataError(f"{self.name}: y_{split} has labels in [{y.min()}, {y.max()}], "
                                f"expected 0..{self.num_classes - 1}")
            object.__setattr__(self, "x_" + split, x)
            object.__setattr__(self, "y_" + split, y)

    @property
    def num_features(self) -> int:
        """Features per example, D."""
        return self.x_train.shape[1]

    @property
    def num_train(self) -> int:
        """Training examples, N."""
        return self.x_train.shape[0]

    def describe(self) -> str:
        """One line: name, split sizes, features and classes."""
        val = f" / {len(self.y_val)} val" if self.y_val is not None else ""
        return (f"{self.name}: {self.num_train} train{val} / {len(self.y_test)} test, "
                f"{self.num_features} features, {self.num_classes} classes")


def normalize(x_train: np.ndarray, *others: np.ndarray | None,
              eps: float = 1e-8) -> tuple[np.ndarray | None, ...]:
    """``(x_train, *others)`` standardized as float32 with x_train's global mean and std.

    One scalar mean and one scalar std over all of ``x_train``; ``None`` entries pass through.
    """
    x_train = np.asarray(x_train, dtype=np.float32)
    if x_train.size == 0:
        raise DataError("normalize: x_train is empty, there is no mean or std to take")
    flat = x_train.reshape(-1)
    mean = float(np.sum(flat, dtype=np.float64)) / flat.size
    m32, sq = np.float32(mean), 0.0
    for start in range(0, flat.size, 1 << 20):  # chunks: no float64 copy of the whole array
        dev = flat[start:start + (1 << 20)] - m32
        sq += float(np.sum(dev * dev, dtype=np.float64))
    scale = np.float32(1.0 / (np.sqrt(sq / flat.size) + eps))
    out = []
    for x in (x_train, *others):
        if x is None:
            out.append(None)
            continue
        z = np.subtract(np.asarray(x, dtype=np.float32), m32)
        z *= scale
        out.append(np.ascontiguousarray(z))
    return tuple(out)


_normalize = normalize  # load_dataset's keyword argument `normalize` hides the function


def train_val_split(x: np.ndarray, y: np.ndarray, *, val_fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split ``(x, y)`` into ``(x_tr, y_tr, x_val, y_val)``: a seeded random validation subset.

    ``round(val_fraction * N)`` examples (at least one when ``val_fraction > 0``), drawn with
    ``data_rng(seed, "val_split")``, go to validation; both parts keep their original order.
    """
    n = len(x)
    if len(y) != n:
        raise DataError(f"train_val_split: x has {n} examples but y has {len(y)}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if n_val >= n and n_val > 0:
        raise DataError(f"val_fraction={val_fraction} of {n} examples leaves no training data")
    perm = data_rng(seed, "val_split").permutation(n)
    val, tr = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return x[tr], y[tr], x[val], y[val]


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits scaled to [0, 1]: a fixed split of 1,437 train / 360 test.

    The split is a permutation from ``default_rng(0)``, the same for every run seed.
    """
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError as e:
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from e
    bunch = _sk_digits()
    x = (bunch.data / 16.0).astype(np.float32)  # pixel values 0..16
    y = bunch.target.astype(np.int64)
    n = len(y)
    perm = np.random.default_rng(0).permutation(n)
    tr, te = perm[:(4 * n) // 5], perm[(4 * n) // 5:]
    return Dataset("digits", x[tr], y[tr], x[te], y[te], num_classes=10, image_shape=(8, 8))


def _mnist_dir(data_dir: str | os.PathLike | None, download: bool) -> Path:
    """The directory holding (or about to hold) the MNIST files."""
    if data_dir is None:
        env = os.environ.get("MPISIM_DATA")
        if env:
            data_dir = Path(env).expanduser()
        else:
            cache = MNIST_CACHE.expanduser()
            if download or _find(cache, MNIST_FILES[0]) is not None:
                return cache
            raise DataError("no MNIST directory given: pass --data-dir DIR, set MPISIM_DATA, "
                            "or use --download")
    d = Path(data_dir).expanduser()
    if _find(d, MNIST_FILES[0]) is None and (d / "mnist").is_dir():
        return d / "mnist"
    return d


def _find(d: Path, name: str) -> Path | None:
    """``d/name`` or ``d/name.gz``, whichever exists (raw first)."""
    for p in (d / name, d / (name + ".gz")):
        if p.is_file():
            return p
    return None


def load_mnist(data_dir: str | os.PathLike | None = None, *, download: bool = False) -> Dataset:
    """MNIST from the four IDX files in ``data_dir`` (raw or ``.gz``), pixels scaled to [0, 1].

    Without ``data_dir``: ``$MPISIM_DATA`` (its ``mnist/`` subdirectory if it has one), else
    ``~/.cache/mpisim/mnist``. ``download=True`` fetches missing files with :func:`download_mnist`.
    """
    d = _mnist_dir(data_dir, download)
    paths = [_find(d, f) for f in MNIST_FILES]
    if None in paths:
        if download:
            download_mnist(d)
            paths = [_find(d, f) for f in MNIST_FILES]
        else:
            missing = [f for f, p in zip(MNIST_FILES, paths) if p is None]
            where = "does not exist" if not d.is_dir() else f"lacks {', '.join(missing)} (or .gz)"
            raise DataError(f"MNIST directory {d} {where}: pass --data-dir DIR, set MPISIM_DATA, "
                            "or use --download")
    arrays, image_shape = [], ()
    for img_path, lab_path in (paths[:2], paths[2:]):
        x, y = read_idx(img_path, expect_ndim=3), read_idx(lab_path, expect_ndim=1)
        if y.dtype.kind not in "iu":          # float labels would be truncated to classes without a word
            raise DataError(f"{lab_path} holds {y.dtype.name} labels: class labels must be an integer type "
                            f"(IDX type 0x08 unsigned byte, 0x09, 0x0B or 0x0C)")
        if len(x) != len(y):
            raise DataError(f"{img_path} holds {len(x)} images but {lab_path} holds "
                            f"{len(y)} labels")
        if len(x) == 0:
            raise DataError(f"{img_path} holds no images (its header says 0): expected at least one")
        if 0 in x.shape[1:]:
            raise DataError(f"{img_path} holds images of shape {x.shape[1:]}: an image needs at least one pixel")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise DataError(f"{img_path} holds non-finite pixel values (NaN or inf)")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise DataError(f"{lab_path} has labels in [{y.min()}, {y.max()}], expected 0..9")
        if image_shape and x.shape[1:] != image_shape:
            raise DataError(f"{img_path} holds images of shape {x.shape[1:]}, but the training "
                            f"images are {image_shape}")
        image_shape = x.shape[1:]
        arrays += [np.divide(x.reshape(len(x), -1), np.float32(255), dtype=np.float32),
                   y.astype(np.int64)]
    return Dataset("mnist", *arrays, num_classes=10, image_shape=image_shape)


def make_synthetic(n: int, *, features: int = 64, classes: int = 10, seed: int = 0,
                   test_fraction: float = 0.2) -> Dataset:
    """``n`` examples (train and test together) from a mixture of Gaussians, seeded by ``seed``.

    Each class owns two cluster centers drawn from N(0, s^2 I) with ``s = 4 / sqrt(D)``; an
    example is a random center of its class plus N(0, I) noise. Clusters overlap, and two per
    class are not linearly separable: at the defaults (n=10000, D=64, 10 classes), 10 epochs of
    ``python -m mpisim.centralized --dataset synthetic`` reach about 83% test accuracy with
    ``--hidden none`` (logistic regression) and about 89% with ``--hidden 128``.
    """
    if classes < 2:
        raise DataError(f"make_synthetic: classes must be >= 2, got {classes}")
    if features < 1:
        raise DataError(f"make_synthetic: features must be >= 1, got {features}")
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"make_synthetic: test_fraction must be in [0, 1), got {test_fraction}")
    n_test = round(test_fraction * n)
    if n - n_test < classes:
        raise DataError(f"make_synthetic: n={n} with test_fraction={test_fraction} leaves "
                        f"{n - n_test} training examples, need at least classes={classes}")
    rng = data_rng(seed, "synthetic")
    centers = rng.normal(0.0, 4.0 / np.sqrt(features), size=(classes, 2, features))
    y = rng.permutation(np.arange(n) % classes)  # every class present, balanced
    which = rng.integers(0, 2, size=n)
    x = rng.standard_normal(size=(n, features), dtype=np.float32)     # float32 from the start
    for c in range(classes):                                           # no (n, D) float64 temporary
        for w in range(2):
            rows = np.flatnonzero((y == c) & (which == w))
            x[rows] += centers[c, w].astype(np.float32)
    y = y.astype(np.int64)
    k = n - n_test
    return Dataset("synthetic", x[:k], y[:k], x[k:], y[k:], num_classes=classes,
                   image_shape=(features,))


def dataset_shape(name: str, *, synthetic_features: int = 64, synthetic_classes: int = 10) -> tuple[int, int]:
    """(features, classes) of a dataset, without loading it (to check options before a run)."""
    if name == "digits":
        return 64, 10
    if name == "mnist":
        return 28 * 28, 10
    if name == "synthetic":
        return synthetic_features, synthetic_classes
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


DIGITS_TRAIN = 1437      # load_digits' training split: 4/5 of scikit-learn's 1,797 images


def training_size(name: str, *, data_dir: str | os.PathLike | None = None, val_fraction: float = 0.0,
                  synthetic_size: int = 10000, synthetic_classes: int = 10) -> int | None:
    """The training examples :func:`load_dataset` would return (after the validation split), without loading
    the data (to check options before a run); None when that cannot be known cheaply or the data would not
    load (MNIST files missing or broken: the run says why)."""
    if name == "digits":
        n = DIGITS_TRAIN
    elif name == "synthetic":
        n = synthetic_size - round(0.2 * synthetic_size)         # make_synthetic's default test_fraction
        if n < synthetic_classes:
            return None
    elif name == "mnist":
        try:
            path = _find(_mnist_dir(data_dir, False), MNIST_FILES[1])
            n = None if path is None else len(read_idx(path, expect_ndim=1))   # the labels: 60 KB, not 47 MB
        except (DataError, OSError):
            return None
        if not n:
            return None
    else:
        return None
    if not 0.0 <= val_fraction < 1.0:
        return None
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    return n - n_val if n_val < n else None


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, download: bool = False,
                 val_fraction: float = 0.0, seed: int = 0, normalize: bool = True,
                 synthetic_size: int = 10000, synthetic_features: int = 64,
                 synthetic_classes: int = 10) -> Dataset:
    """The dataset ``name`` (one of :data:`DATASETS`), split and standardized for training.

    ``val_fraction`` of the training set becomes ``x_val``/``y_val`` (seeded by ``seed``); with
    ``normalize`` all splits are standardized with the remaining training set's mean and std.
    ``seed`` also seeds the synthetic data; digits and MNIST have fixed test splits.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if name == "digits":
        ds = load_digits()
    elif name == "mnist":
        ds = load_mnist(data_dir, download=download)
    elif name == "synthetic":
        ds = make_synthetic(synthetic_size, features=synthetic_features,
                            classes=synthetic_classes, seed=seed)
    else:
        raise DataError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    x_tr, y_tr, x_val, y_val = ds.x_train, ds.y_train, None, None
    if val_fraction:
        x_tr, y_tr, x_val, y_val = train_val_split(x_tr, y_tr, val_fraction=val_fraction,
                                                   seed=seed)
    x_te = ds.x_test
    if normalize:
        x_tr, x_val, x_te = _normalize(x_tr, x_val, x_te)
    return Dataset(ds.name, x_tr, y_tr, x_te, ds.y_test, num_classes=ds.num_classes,
                   image_shape=ds.image_shape, x_val=x_val, y_val=y_val)
