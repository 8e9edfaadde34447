"""Checkpoints: one file, written atomically, with a checksum; a bad one is an error, never a restart.

File layout (``DIR/checkpoint.mpisim``)::

    b"MPISIM-CHECKPOINT 1\\n"  +  sha256(payload) as 64 hex digits + b"\\n"  +  payload

where the payload is an uncompressed ``.npz`` (no pickles) holding the arrays plus one entry,
``__meta__``, with the JSON metadata (run config, epoch, metrics history). Saving writes a temporary
file in the same directory, fsyncs it and renames it over the old one, so a crash leaves either the
old checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["CheckpointError", "CHECKPOINT_NAME", "checkpoint_path", "save_checkpoint", "load_checkpoint",
           "atomic_write_bytes"]

CHECKPOINT_NAME = "checkpoint.mpisim"
_MAGIC = b"MPISIM-CHECKPOINT 1\n"


class CheckpointError(Exception):
    """A checkpoint that is missing, corrupt, or from a different run."""


def checkpoint_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / CHECKPOINT_NAME


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half a file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())     # mkstemp makes 0600; give the usual mode
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(directory: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Save ``arrays`` and JSON-able ``meta`` atomically to ``DIR/checkpoint.mpisim``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if "__meta__" in arrays:
        raise ValueError("'__meta__' is reserved")
    buf = io.BytesIO()
    meta_bytes = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    np.savez(buf, __meta__=meta_bytes, **arrays)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    path = checkpoint_path(directory)
    atomic_write_bytes(path, _MAGIC + digest + b"\n" + payload)
    return path


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) from ``DIR/checkpoint.mpisim``; CheckpointError says what is wrong and where."""
    path = checkpoint_path(directory)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint to resume: {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    if not data.startswith(_MAGIC):
        raise CheckpointError(f"{path} is not an mpisim checkpoint (bad header)")
    head = len(_MAGIC)
    digest, payload = data[head:head + 64], data[head + 65:]
    if len(data) < head + 65 or data[head + 64:head + 65] != b"\n":
        raise CheckpointError(f"{path} is truncated (no complete checksum line)")
    actual = hashlib.sha256(payload).hexdigest().encode()
    if actual != digest:
        raise CheckpointError(f"{path} is corrupt: checksum {actual[:12].decode()}... does not match the "
                              f"recorded {digest[:12].decode(errors='replace')}... (truncated or modified file)")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except Exception as e:      # checksum matched, so this is a file from another writer
        raise CheckpointError(f"{path}: cannot decode the checkpoint payload ({e})") from None
    return arrays, meta
