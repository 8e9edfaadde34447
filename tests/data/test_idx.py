"""IDX reading, the MNIST loader on tiny hand-written files, and the download over file:// URLs.

The IDX files here are written with ``struct`` from the format description, not with the
reader's own code, so a reader bug cannot cancel out a writer bug.
"""
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from mpisim.data import DataError, download_mnist, load_dataset, load_mnist, read_idx

CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D,
         np.float64: 0x0E}
NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(a: np.ndarray) -> bytes:
    """The IDX encoding of ``a``: magic, big-endian dims, big-endian data."""
    code = CODES[a.dtype.type]
    head = struct.pack(">BBBB", 0, 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes, *, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist(d: Path, *, n_train: int = 20, n_test: int = 7, gz: bool = True,
                seed: int = 0) -> dict:
    """Tiny MNIST-shaped IDX files in ``d``; returns the arrays written, by file name."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        NAMES[0]: rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        NAMES[1]: rng.integers(0, 10, size=n_train, dtype=np.uint8),
        NAMES[2]: rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        NAMES[3]: rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    for name, a in arrays.items():
        write(d / (name + (".gz" if gz else "")), idx_bytes(a), gz=gz)
    return arrays


# --- read_idx --------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", list(CODES))
def test_roundtrip_every_dtype(tmp_path, gz, dtype):
    a = (np.arange(3 * 5 * 2) - 7).astype(dtype).reshape(3, 5, 2)
    if dtype is np.uint8:
        a = np.arange(30, dtype=np.uint8).reshape(3, 5, 2) * 7
    got = read_idx(write(tmp_path / "a.idx", idx_bytes(a), gz=gz))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    assert got.shape == a.shape
    np.testing.assert_array_equal(got, a)
    assert got.flags.writeable and got.flags.c_contiguous


def test_gzip_detected_by_magic_not_name(tmp_path):
    a = np.arange(12, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "plain", idx_bytes(a), gz=True)), a)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "x.gz", idx_bytes(a))), a)


def test_empty_array(tmp_path):
    got = read_idx(write(tmp_path / "e", idx_bytes(np.zeros((0, 28, 28), np.uint8))))
    assert got.shape == (0, 28, 28)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found") as e:
        read_idx(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)


@pytest.mark.parametrize("head", [b"\x01\x00\x08\x01", b"\x00\x00\x07\x01", b"PK\x03\x04",
                                  b"\x00\x00\x08\x00"])
def test_bad_magic(tmp_path, head):
    p = write(tmp_path / "bad", head + b"\x00\x00\x00\x01" + b"\x05")
    with pytest.raises(DataError, match="bad magic number 0x") as e:
        read_idx(p)
    assert str(p) in str(e.value) and "0x00000803" in str(e.value)


def test_too_short_for_header(tmp_path):
    for data in (b"", b"\x00\x00", b"\x00\x00\x08\x03\x00\x00\x00\x02"):
        p = write(tmp_path / "short", data)
        with pytest.raises(DataError, match="short|truncated") as e:
            read_idx(p)
        assert str(p) in str(e.value)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated(tmp_path, gz):
    data = idx_bytes(np.ones((4, 3, 3), np.uint8))
    p = write(tmp_path / "t", data[:-5], gz=gz)
    with pytest.raises(DataError) as e:
        read_idx(p)
    msg = str(e.value)
    assert str(p) in msg and "truncated" in msg and "4 items of shape (4, 3, 3) = 36 bytes" in msg
    assert "only 31 bytes" in msg


def test_trailing_bytes(tmp_path):
    p = write(tmp_path / "t", idx_bytes(np.ones(6, np.int32)) + b"\x00\x01")
    with pytest.raises(DataError, match="2 trailing bytes") as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    for name, data in (("cut.gz", good[:len(good) // 2]),
                       ("flip.gz", good[:20] + bytes(b ^ 0xFF for b in good[20:40]) + good[40:])):
        p = write(tmp_path / name, data)
        with pytest.raises(DataError, match="corrupt gzip") as e:
            read_idx(p)
        assert str(p) in str(e.value)


def test_expect_ndim(tmp_path):
    p = write(tmp_path / "img", idx_bytes(np.zeros((2, 4, 4), np.uint8)))
    assert read_idx(p, expect_ndim=3).shape == (2, 4, 4)
    with pytest.raises(DataError, match="3-dimensional.*expected 1") as e:
        read_idx(p, expect_ndim=1)
    assert str(p) in str(e.value)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


# --- load_mnist ------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_tiny(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    ds = load_mnist(tmp_path)
    assert ds.name == "mnist" and ds.image_shape == (28, 28) and ds.num_classes == 10
    assert ds.x_train.shape == (20, 784) and ds.x_test.shape == (7, 784)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train, arrays[NAMES[0]].reshape(20, -1) / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, arrays[NAMES[3]])
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_load_mnist_mixed_raw_and_gz(tmp_path):
    arrays = write_mnist(tmp_path, gz=True)
    (tmp_path / (NAMES[1] + ".gz")).unlink()
    write(tmp_path / NAMES[1], idx_bytes(arrays[NAMES[1]]))
    np.testing.assert_array_equal(load_mnist(tmp_path).y_train, arrays[NAMES[1]])


def test_load_mnist_count_mismatch(tmp_path):
    write_mnist(tmp_path, gz=False)
    write(tmp_path / NAMES[3], idx_bytes(np.zeros(6, np.uint8)))
    with pytest.raises(DataError, match="7 images.*6 labels") as e:
        load_mnist(tmp_path)
    assert NAMES[2] in str(e.value) and NAMES[3] in str(e.value)


def test_load_mnist_bad_labels(tmp_path):
    write_mnist(tmp_path, gz=False)
    write(tmp_path / NAMES[3], idx_bytes(np.full(7, 12, np.uint8)))
    with pytest.raises(DataError, match="expected 0..9"):
        load_mnist(tmp_path)


def test_load_mnist_missing_dir_and_files(tmp_path, monkeypatch):
    monkeypatch.delenv("MPISIM_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.cache/mpisim/mnist
    with pytest.raises(DataError) as e:
        load_mnist()
    assert "--data-dir" in str(e.value) and "MPISIM_DATA" in str(e.value)
    with pytest.raises(DataError, match="does not exist.*--data-dir"):
        load_mnist(tmp_path / "nowhere")
    write_mnist(tmp_path / "part")
    (tmp_path / "part" / (NAMES[2] + ".gz")).unlink()
    with pytest.raises(DataError, match=f"lacks {NAMES[2]}.*--download"):
        load_mnist(tmp_path / "part")


def test_mpisim_data_env(tmp_path, monkeypatch):
    write_mnist(tmp_path / "root" / "mnist", n_train=11)  # $MPISIM_DATA/mnist
    monkeypatch.setenv("MPISIM_DATA", str(tmp_path / "root"))
    assert load_mnist().num_train == 11
    write_mnist(tmp_path / "flat", n_train=13)  # $MPISIM_DATA itself
    monkeypatch.setenv("MPISIM_DATA", str(tmp_path / "flat"))
    assert load_mnist().num_train == 13
    assert load_mnist(tmp_path / "root").num_train == 11  # an explicit dir wins over the env


def test_load_dataset_mnist_normalized(tmp_path):
    write_mnist(tmp_path, n_train=40)
    ds = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.25, seed=3)
    assert (ds.num_train, len(ds.y_val), len(ds.y_test)) == (30, 10, 7)
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std()) - 1) < 1e-4


# --- download_mnist --------------------------------------------------------------------------

def mirror(d: Path, arrays_seed: int = 0) -> dict:
    """A file:// mirror of tiny gzipped MNIST files in ``d``; returns their md5s."""
    write_mnist(d, seed=arrays_seed, gz=True)
    return {n + ".gz": hashlib.md5((d / (n + ".gz")).read_bytes()).hexdigest() for n in NAMES}


def test_download_from_file_mirror(tmp_path, capsys):
    sums = mirror(tmp_path / "m")
    target = tmp_path / "out" / "mnist"
    got = download_mnist(target, mirrors=[(tmp_path / "m").as_uri()], checksums=sums)
    assert got == target
    assert sorted(p.name for p in target.iterdir()) == sorted(sums)
    for name in sums:
        assert (target / name).read_bytes() == (tmp_path / "m" / name).read_bytes()
    assert capsys.readouterr().err.count("md5 ok") == 4
    # a second call finds every file present and downloads nothing
    download_mnist(target, mirrors=["file:///nonexistent/"], checksums=sums)
    assert load_mnist(target).num_train == 20


def test_download_checksum_mismatch_leaves_nothing(tmp_path):
    mirror(tmp_path / "m")
    target = tmp_path / "out"
    bad = {n + ".gz": "0" * 32 for n in NAMES}
    with pytest.raises(DataError) as e:
        download_mnist(target, mirrors=[(tmp_path / "m").as_uri()], checksums=bad,
                       progress=False)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "0" * 32 in msg and "got" in msg
    assert list(target.iterdir()) == []


def test_download_falls_back_to_second_mirror(tmp_path, monkeypatch):
    sums = mirror(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("MPISIM_MNIST_MIRRORS",
                       f"{(tmp_path / 'empty').as_uri()}, {(tmp_path / 'good').as_uri()}/")
    download_mnist(tmp_path / "out", checksums=sums, progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(sums)


def test_download_no_mirror_has_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="could not download train-images"):
        download_mnist(tmp_path / "out", mirrors=[(tmp_path / "empty").as_uri()],
                       progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_load_mnist_download(tmp_path, monkeypatch):
    sums = mirror(tmp_path / "m")
    monkeypatch.setenv("MPISIM_MNIST_MIRRORS", (tmp_path / "m").as_uri())
    import mpisim.data.idx as idx
    monkeypatch.setattr(idx, "MNIST_MD5", sums)
    ds = load_mnist(tmp_path / "new", download=True)
    assert ds.x_train.shape == (20, 784)


def test_load_mnist_empty_test_set(tmp_path):
    write_mnist(tmp_path, n_test=0)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz holds no images"):
        load_mnist(tmp_path)
