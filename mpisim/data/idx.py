"""IDX files (the MNIST format, LeCun, Bottou, Bengio and Haffner 1998) and the MNIST download.

An IDX file is a 4-byte magic number (two zero bytes, a dtype code, the number of dimensions),
one big-endian uint32 per dimension, then the items row-major and big-endian. Files may be
gzipped; gzip is recognized by its magic bytes ``1f 8b``, not by the file name.
:func:`read_idx` checks every length before it builds an array, so it either returns the whole
array or raises :class:`DataError`; :func:`download_mnist` verifies each file's MD5 before it
moves the file into place, so a failed download leaves no file behind.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["DataError", "MNIST_FILES", "MNIST_MD5", "MNIST_MIRRORS", "download_mnist", "read_idx"]


class DataError(ValueError):
    """A data problem: missing or malformed file, bad checksum, unknown dataset, bad sizes."""


# IDX dtype codes (third magic byte); every multi-byte type is big-endian.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# The four files of the official distribution, without ".gz".
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# MD5 of the official gzipped files.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# Tried in order; MPISIM_MNIST_MIRRORS (comma-separated base URLs) replaces them.
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/")
_EXAMPLE = "expected an IDX file (e.g. 0x00000803 for images, 0x00000801 for labels)"


def read_idx(path: str | os.PathLike, *, expect_ndim: int | None = None) -> np.ndarray:
    """The array stored in the IDX file ``path`` (raw or gzipped), in native byte order.

    ``expect_ndim`` (1 for labels, 3 for images) is checked against the header.
    Raises :class:`DataError` naming ``path`` for a missing, malformed or truncated file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"corrupt gzip file {path}: {e}") from e
    if len(raw) < 4:
        raise DataError(f"{path} is too short for an IDX header: expected at least 4 bytes, "
                        f"found {len(raw)}")
    magic = int.from_bytes(raw[:4], "big")
    code, ndim = raw[2], raw[3]
    if raw[:2] != b"\x00\x00" or code not in IDX_DTYPES:
        raise DataError(f"bad magic number 0x{magic:08x} in {path}: {_EXAMPLE}")
    if ndim == 0:
        raise DataError(f"bad magic number 0x{magic:08x} in {path}: 0 dimensions; {_EXAMPLE}")
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{path} holds a {ndim}-dimensional array (magic 0x{magic:08x}), "
                        f"expected {expect_ndim} dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: its header needs {header} bytes for {ndim} "
                        f"dimensions but the file has {len(raw)}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[code])
    count = math.prod(shape)            # Python integers: a header of 2^31 x 2^31 x ... cannot wrap around
    want, have = count * dtype.itemsize, len(raw) - header
    if have < want:
        raise DataError(f"{path} is truncated: header says {shape[0]} items of shape {shape} "
                        f"= {want} bytes but only {have} bytes present")
    if have > want:
        raise DataError(f"{path} has {have - want} trailing bytes: header says {shape[0]} items "
                        f"of shape {shape} = {want} bytes but {have} bytes present")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header)
    try:
        return data.astype(dtype.newbyteorder("="), copy=True).reshape(shape)
    except ValueError:     # an empty array whose other dimensions overflow numpy's size (0 x 2^32 x 2^32 x 2^32)
        raise DataError(f"{path}: header says shape {shape}, {count} items, which is not an array "
                        f"numpy can hold") from None


def _mirrors(mirrors: Sequence[str] | None) -> list[str]:
    if mirrors is None:
        env = os.environ.get("MPISIM_MNIST_MIRRORS", "")
        mirrors = [m.strip() for m in env.split(",") if m.strip()] or MNIST_MIRRORS
    if isinstance(mirrors, str):
        mirrors = [mirrors]
    if not mirrors:
        raise DataError("download_mnist needs at least one mirror URL")
    return [m if m.endswith("/") else m + "/" for m in mirrors]


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, directory: Path, name: str) -> tuple[Path, str, int]:
    """Download ``url`` to a temporary file in ``directory``; return (temp path, md5, size)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    h, size = hashlib.md5(usedforsecurity=False), 0
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp), h.hexdigest(), size


def download_mnist(directory: str | os.PathLike, *, mirrors: Sequence[str] | None = None,
                   progress: bool = True, checksums: Mapping[str, str] | None = None) -> Path:
    """Download the four gzipped MNIST files into ``directory`` and return it.

    Each file is tried on every mirror in order (default :data:`MNIST_MIRRORS`, or the
    comma-separated ``MPISIM_MNIST_MIRRORS``), written to a temporary file, checked against its
    MD5 (``checksums`` overrides :data:`MNIST_MD5`, by file name) and only then moved into place.
    Files already present with the right MD5 are kept. Raises :class:`DataError` when no mirror
    delivers a file with the right checksum.
    """
    directory = Path(directory).expanduser()
    urls = _mirrors(mirrors)
    md5s = {**MNIST_MD5, **(checksums or {})}
    directory.mkdir(parents=True, exist_ok=True)
    for name in (f + ".gz" for f in MNIST_FILES):
        target, expected = directory / name, md5s[name]
        if target.is_file() and _md5(target) == expected:
            if progress:
                print(f"mnist: {target} already present, md5 ok", file=sys.stderr)
            continue
        failures, mismatch = [], None
        for base in urls:
            url = base + name
            try:
                tmp, got, size = _fetch(url, directory, name)
            except (urllib.error.URLError, OSError, ValueError) as e:
                failures.append(f"{url}: {getattr(e, 'reason', e)}")
                continue
            if got != expected:
                tmp.unlink(missing_ok=True)
                mismatch = (url, got)
                failures.append(f"{url}: md5 {got}, expected {expected}")
                continue
            os.replace(tmp, target)
            if progress:
                print(f"mnist: {name} <- {url} ({size} bytes, md5 ok)", file=sys.stderr)
            break
        else:
            if mismatch is not None:
                raise DataError(f"checksum mismatch for {name}: expected md5 {expected}, got "
                                f"{mismatch[1]} from {mismatch[0]} (tried: {'; '.join(failures)})")
            raise DataError(f"could not download {name} from any mirror: {'; '.join(failures)}")
    return directory
