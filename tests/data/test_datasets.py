"""Datasets: digits, synthetic, the shared MNIST subset, normalize and the validation split."""
from pathlib import Path

import numpy as np
import pytest

from mpisim.data import (
    DATASETS,
    DataError,
    Dataset,
    load_dataset,
    load_digits,
    load_mnist,
    make_synthetic,
    normalize,
    train_val_split,
)

SHARED_MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


def check_layout(ds: Dataset) -> None:
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test), (ds.x_val, ds.y_val)):
        if x is None:
            continue
        assert x.dtype == np.float32 and x.flags.c_contiguous and x.ndim == 2
        assert y.dtype == np.int64 and y.shape == (len(x),)
        assert x.shape[1] == ds.num_features == int(np.prod(ds.image_shape))
        assert 0 <= y.min() and y.max() < ds.num_classes


def test_digits_raw():
    ds = load_digits()
    check_layout(ds)
    assert (ds.num_train, len(ds.y_test), ds.num_features, ds.num_classes) == (1437, 360, 64, 10)
    assert ds.image_shape == (8, 8)
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert set(np.unique(ds.y_train)) == set(range(10))
    assert ds.describe() == "digits: 1437 train / 360 test, 64 features, 10 classes"


def test_digits_normalized_and_split_independent_of_seed():
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=12345)
    check_layout(a)
    assert abs(float(a.x_train.mean())) < 1e-5 and abs(float(a.x_train.std()) - 1.0) < 1e-4
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert a.x_val is None and a.y_val is None


def test_digits_normalize_uses_train_stats_only():
    raw = load_digits()
    ds = load_dataset("digits")
    mean, std = raw.x_train.astype(np.float64).mean(), raw.x_train.astype(np.float64).std()
    np.testing.assert_allclose(ds.x_test, (raw.x_test - mean) / std, atol=1e-5)
    assert abs(float(ds.x_test.mean())) > 1e-4  # the test set's own mean is not subtracted


def test_validation_split():
    ds = load_dataset("digits", val_fraction=0.1, seed=1)
    check_layout(ds)
    assert (ds.num_train, len(ds.y_val), len(ds.y_test)) == (1293, 144, 360)
    assert ds.describe() == "digits: 1293 train / 144 val / 360 test, 64 features, 10 classes"
    again = load_dataset("digits", val_fraction=0.1, seed=1)
    other = load_dataset("digits", val_fraction=0.1, seed=2)
    np.testing.assert_array_equal(ds.y_val, again.y_val)
    assert not np.array_equal(ds.x_val, other.x_val)
    # train + val together are the 1437 training images (compare the raw rows as sets)
    raw = load_dataset("digits", val_fraction=0.1, seed=1, normalize=False)
    rows = {r.tobytes() for r in np.concatenate([raw.x_train, raw.x_val])}
    assert rows == {r.tobytes() for r in load_digits().x_train}


def test_train_val_split_exact():
    x, y = np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10)
    xt, yt, xv, yv = train_val_split(x, y, val_fraction=0.3, seed=0)
    assert len(yt) == 7 and len(yv) == 3
    assert sorted(np.concatenate([yt, yv]).tolist()) == list(range(10))
    np.testing.assert_array_equal(xt[:, 0], 2 * yt)
    assert len(train_val_split(x, y, val_fraction=0.01, seed=0)[3]) == 1
    assert len(train_val_split(x, y, val_fraction=0.0, seed=0)[3]) == 0
    for bad in (-0.1, 1.0, 0.99):
        with pytest.raises(DataError, match="val_fraction"):
            train_val_split(x, y, val_fraction=bad, seed=0)
    with pytest.raises(DataError, match="10 examples but y has 9"):
        train_val_split(x, y[:9], val_fraction=0.5, seed=0)


def test_normalize():
    rng = np.random.default_rng(0)
    a = rng.normal(3.0, 2.0, size=(500, 7))
    b = rng.normal(0.0, 1.0, size=(50, 7)).astype(np.float32)
    na, nb, none = normalize(a, b, None)
    assert na.dtype == nb.dtype == np.float32 and none is None
    assert abs(float(na.mean())) < 1e-5 and abs(float(na.std()) - 1) < 1e-5
    np.testing.assert_allclose(nb, (b - a.mean()) / a.std(), rtol=1e-5, atol=1e-5)
    (c,) = normalize(np.full((3, 3), 5.0))  # constant: std 0, eps keeps it finite
    assert np.all(c == 0)
    with pytest.raises(DataError, match="empty"):
        normalize(np.zeros((0, 3)))


def test_synthetic_reproducible_and_seeded():
    a = make_synthetic(500, features=12, classes=4, seed=7)
    b = make_synthetic(500, features=12, classes=4, seed=7)
    c = make_synthetic(500, features=12, classes=4, seed=8)
    check_layout(a)
    assert (a.num_train, len(a.y_test), a.num_features, a.image_shape) == (400, 100, 12, (12,))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert np.bincount(np.concatenate([a.y_train, a.y_test])).tolist() == [125] * 4


def test_synthetic_learnable():
    # nearest class mean on the training set beats chance by far, but is not perfect
    ds = make_synthetic(3000, seed=0)
    means = np.stack([ds.x_train[ds.y_train == c].mean(0) for c in range(10)])
    pred = ((ds.x_test[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    acc = float((pred == ds.y_test).mean())
    assert 0.4 < acc < 0.98


def test_synthetic_via_load_dataset():
    ds = load_dataset("synthetic", synthetic_size=300, synthetic_features=5,
                      synthetic_classes=3, seed=4, val_fraction=0.2)
    check_layout(ds)
    assert (ds.num_train, len(ds.y_val), len(ds.y_test), ds.num_classes) == (192, 48, 60, 3)
    assert abs(float(ds.x_train.mean())) < 1e-5


@pytest.mark.parametrize("kwargs", [dict(n=5, classes=10), dict(n=100, classes=1),
                                    dict(n=100, features=0), dict(n=100, test_fraction=1.0)])
def test_synthetic_bad_sizes(kwargs):
    with pytest.raises(DataError):
        make_synthetic(**kwargs)


def test_unknown_dataset():
    assert DATASETS == ("digits", "mnist", "synthetic")
    with pytest.raises(DataError) as e:
        load_dataset("cifar10")
    assert "cifar10" in str(e.value) and all(n in str(e.value) for n in DATASETS)
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.5)


def test_dataset_validates_shapes():
    x, y = np.zeros((4, 6)), np.zeros(4, dtype=np.int32)
    ds = Dataset("t", x, y, x, y, num_classes=2, image_shape=(2, 3))
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    with pytest.raises(DataError, match="image shape"):
        Dataset("t", x, y, x, y, num_classes=2, image_shape=(5,))
    with pytest.raises(DataError, match="labels in"):
        Dataset("t", x, y + 3, x, y, num_classes=2, image_shape=(6,))
    with pytest.raises(DataError, match="both"):
        Dataset("t", x, y, x, y, num_classes=2, image_shape=(6,), x_val=x)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"no MNIST subset at {SHARED_MNIST}")
def test_shared_mnist_subset():
    ds = load_mnist(SHARED_MNIST)
    check_layout(ds)
    assert ds.x_train.shape == (24000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.y_train.min() == 0 and ds.y_train.max() == 9
    assert ds.y_test.min() == 0 and ds.y_test.max() == 9
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
