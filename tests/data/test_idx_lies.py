"""IDX files whose header lies, or whose contents are not what MNIST holds: a DataError naming the file,
never a numpy traceback and never a silently changed value. Files are written with ``struct`` from the
format description, not with the reader's code."""
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mpisim.data import DataError, load_dataset, load_mnist, read_idx
from mpisim.data.datasets import DIGITS_TRAIN, training_size

from ..mpirun import ROOT
from .test_idx import NAMES, idx_bytes, write_mnist


def header(code: int, dims) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("dims", [
    (2 ** 31, 2 ** 31),                      # 2^62 items: the count fits in int64, the bytes nowhere
    (2 ** 31, 2 ** 31, 4),                   # 2^64 items: an int64 product wraps to 0
    (2 ** 31, 2 ** 31, 2 ** 31),             # 2^93 items: wraps to 0 as well
    (2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1),
])
@pytest.mark.parametrize("code", [0x08, 0x0E])
def test_a_header_claiming_more_than_the_file_holds_is_a_data_error(tmp_path, dims, code):
    p = tmp_path / "lies-idx3-ubyte"
    p.write_bytes(header(code, dims) + b"\x00" * 16)
    with pytest.raises(DataError) as e:
        read_idx(p)
    msg = str(e.value)
    want = int(np.prod(np.array(dims, dtype=object))) * np.dtype(np.uint8 if code == 0x08 else np.float64).itemsize
    assert str(p) in msg and "truncated" in msg and str(dims) in msg
    assert f"= {want} bytes" in msg and "only 16 bytes" in msg           # what it claims, what it has


def test_an_empty_array_whose_other_dimensions_overflow_is_a_data_error(tmp_path):
    p = tmp_path / "zero"
    p.write_bytes(header(0x08, (0, 2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1)))
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert str(p) in str(e.value) and "(0, 4294967295" in str(e.value)


def test_a_header_counting_fewer_items_than_the_file_has_is_a_data_error(tmp_path):
    p = tmp_path / "short-header"
    p.write_bytes(header(0x08, (2, 3)) + bytes(range(12)))
    with pytest.raises(DataError, match="6 trailing bytes"):
        read_idx(p)


def _mnist_with(d: Path, name: str, data: bytes) -> Path:
    write_mnist(d, gz=False)
    (d / name).write_bytes(data)
    return d / name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_labels_are_refused_not_truncated(tmp_path, dtype):
    labels = np.array([1.7, 2.2, 3.9, 0.5] * 5, dtype=dtype)       # 20, as many as the images
    p = _mnist_with(tmp_path, NAMES[1], idx_bytes(labels))
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path)
    msg = str(e.value)
    assert str(p) in msg and np.dtype(dtype).name in msg and "integer" in msg


def test_integer_labels_of_any_integer_type_load(tmp_path):
    write_mnist(tmp_path, gz=False)
    y = np.arange(20, dtype=np.int32) % 10
    (tmp_path / NAMES[1]).write_bytes(idx_bytes(y))
    assert (load_mnist(tmp_path).y_train == y).all()


def test_images_of_zero_pixels_are_refused(tmp_path):
    p = _mnist_with(tmp_path, NAMES[0], header(0x08, (20, 0, 28)))
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path)
    assert str(p) in str(e.value) and "(0, 28)" in str(e.value)


def test_non_finite_float_pixels_are_refused(tmp_path):
    x = np.zeros((20, 28, 28), np.float32)
    x[3, 4, 5] = np.nan
    p = _mnist_with(tmp_path, NAMES[0], idx_bytes(x))
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path)
    assert str(p) in str(e.value) and "non-finite" in str(e.value)


@pytest.mark.parametrize("name, dims", [(NAMES[1], (20, 1)), (NAMES[0], (20, 784))])
def test_a_file_of_the_wrong_dimensions_is_refused(tmp_path, name, dims):
    p = _mnist_with(tmp_path, name, header(0x08, dims) + bytes(int(np.prod(dims))))
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path)
    assert str(p) in str(e.value) and "dimensions" in str(e.value)


def test_the_trainer_says_what_is_wrong_with_the_file_in_one_line(tmp_path):
    """From the command line: a lying header and float labels end the run with exit 1 and one line."""
    for name, data in ((NAMES[0], header(0x08, (2 ** 31, 2 ** 31, 4))),
                       (NAMES[1], idx_bytes(np.linspace(0, 9, 20).astype(np.float32)))):
        d = tmp_path / name
        p = _mnist_with(d, name, data)
        res = subprocess.run([sys.executable, "-m", "mpisim.centralized", "--dataset", "mnist", "--data-dir", str(d),
                              "--epochs", "1", "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode == 1, res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert str(p) in res.stderr


# -- the training set's size, known before loading (for --inject-fault's step) -------------------------------
@pytest.mark.parametrize("val", [0.0, 0.1, 0.5])
def test_training_size_is_what_load_dataset_returns(tmp_path, val):
    assert training_size("digits", val_fraction=val) == load_dataset("digits", val_fraction=val).num_train
    for n in (50, 200, 1001):
        assert (training_size("synthetic", synthetic_size=n, val_fraction=val)
                == load_dataset("synthetic", synthetic_size=n, val_fraction=val).num_train)
    write_mnist(tmp_path, n_train=20)
    assert training_size("mnist", data_dir=tmp_path, val_fraction=val) == load_dataset(
        "mnist", data_dir=tmp_path, val_fraction=val).num_train
    assert DIGITS_TRAIN == load_dataset("digits").num_train


def test_training_size_is_unknown_where_the_data_would_not_load(tmp_path):
    assert training_size("mnist", data_dir=tmp_path / "none") is None
    (tmp_path / NAMES[1]).write_bytes(b"junk")
    assert training_size("mnist", data_dir=tmp_path) is None
    assert training_size("synthetic", synthetic_size=5) is None          # fewer than the classes: the run says why
