"""Checkpoints: one file, written atomically, with a checksum; a bad one is an error, never a restart.

File layout (``DIR/checkpoint.mpisim``)::

    b"MPISIM-CHECKPOINT 1\\n"  +  sha256(payload) as 64 hex digits + b"\\n"  +  payload

where the payload is an uncompressed ``.npz`` (no pickles) holding the arrays plus one entry,
``__meta__``, with the JSON metadata (run config, epoch, metrics history). Saving writes a temporary
file in the same directory, fsyncs it and renames it over the old one, so a crash leaves either the
old checkpoint or the new one, never half of one.

One run at a time per directory: :func:`lock_directory` takes an exclusive ``flock`` on ``DIR/.lock`` for
the run's lifetime (the launching process under ``--sim``, rank 0 under mpiexec: the process that writes
the checkpoints). A second run on the same DIR is refused (:class:`CheckpointBusy`, naming the holder).
The kernel drops an flock when its process dies, however it dies, so a crashed run never blocks the next.
The holder also removes temporary files a killed writer left behind (no other process may write there).
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import socket
import stat
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["CheckpointError", "CheckpointBusy", "CHECKPOINT_NAME", "LOCK_NAME", "checkpoint_path",
           "save_checkpoint", "load_checkpoint", "atomic_write_bytes", "lock_directory", "DirectoryLock",
           "saved_progress"]

CHECKPOINT_NAME = "checkpoint.mpisim"
LOCK_NAME = ".lock"
_MAGIC = b"MPISIM-CHECKPOINT 1\n"


class CheckpointError(Exception):
    """A checkpoint that is missing, corrupt, or from a different run."""


class CheckpointBusy(CheckpointError):
    """The checkpoint directory is locked by another run that is still going."""


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
    if path.exists() and not path.is_file():           # a FIFO would block the read
        raise CheckpointError(f"{path} is not a regular file (a FIFO or a device?)")
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


def saved_progress(directory: str | os.PathLike) -> tuple[str, int] | None:
    """("epoch" or "round", how many are done) of the checkpoint in ``directory``; None when there is none.
    CheckpointError when it cannot be read."""
    if not checkpoint_path(directory).exists():
        return None
    _, meta = load_checkpoint(directory)
    epoch = meta.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise CheckpointError(f"{checkpoint_path(directory)}: the metadata has no valid epoch")
    history = meta.get("history")
    last = history[-1] if isinstance(history, list) and history and isinstance(history[-1], dict) else {}
    return ("round" if "round" in last else "epoch"), epoch


# -- one run per directory -----------------------------------------------------------------------------
class DirectoryLock:
    """An exclusive flock on ``DIR/.lock``, held until :meth:`release` or the process's end."""

    def __init__(self, directory: Path, fd: int | None, created: bool) -> None:
        self.directory, self.fd, self.created = directory, fd, created

    @property
    def held(self) -> bool:
        return self.fd is not None

    def sweep(self) -> None:
        """Remove the checkpoint's temporary files (``.checkpoint.mpisim.*.tmp``): a writer killed mid-write
        leaves one, and while the lock is held no other process writes here."""
        if self.fd is None:
            return
        for p in self.directory.glob(f".{CHECKPOINT_NAME}.*.tmp"):
            try:
                p.unlink()
            except OSError:
                pass

    def release(self) -> None:
        """Unlock; remove the lock file, and the directory if this lock made it and it is empty."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        path = self.directory / LOCK_NAME
        try:       # while still locked (a newcomer checks the inode it locked), and only if it is this lock's
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
        except OSError:
            pass
        os.close(fd)                                  # the flock goes with the last descriptor
        if self.created:
            try:
                self.directory.rmdir()
            except OSError:
                pass

    def __enter__(self) -> "DirectoryLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_directory(directory: str | os.PathLike) -> DirectoryLock:
    """Lock ``directory`` (created if missing) for this run; :class:`CheckpointBusy` names the process
    holding it, CheckpointError says why it cannot be made or locked. Where the file system has no
    flock (some network file systems), the run goes on unlocked, with a warning on stderr."""
    try:
        import fcntl
    except ImportError:               # pragma: no cover - not POSIX: no locking
        return DirectoryLock(Path(directory), None, False)
    d = Path(directory)
    for _ in range(20):               # retried only when another run removes the lock file meanwhile
        created = False
        try:
            if not d.is_dir():
                d.mkdir(parents=True)
                created = True
        except FileExistsError:
            if not d.is_dir():
                raise CheckpointError(f"--checkpoint {directory}: not a directory") from None
        except OSError as e:
            raise CheckpointError(f"--checkpoint {directory}: cannot create it: {e.strerror}") from None
        path = d / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileNotFoundError:
            continue                  # the directory went away (another run removed it): again
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EROFS) and d.is_dir() and not created:
                # a directory this process cannot write to: it will save nothing here (a save would say so),
                # so it runs unlocked (resuming a finished run from a read-only copy still works)
                return DirectoryLock(d, None, False)
            raise CheckpointError(f"--checkpoint {directory}: cannot open the lock {path}: {e.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CheckpointError(f"--checkpoint {directory}: {path} is not a regular file (a FIFO or a device?): "
                                  f"remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointBusy(f"--checkpoint {directory} is in use by another run ({holder}): wait for it to "
                                     f"end, or choose another directory") from None
            import sys
            print(f"warning: cannot lock --checkpoint {directory} ({e.strerror}): another run given the same "
                  f"directory would not be stopped", file=sys.stderr, flush=True)
            return DirectoryLock(d, None, False)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:                  # locked a file its holder had just removed: lock the new one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        lock = DirectoryLock(d, fd, created)
        lock.sweep()
        return lock
    raise CheckpointError(f"--checkpoint {directory}: cannot lock it (its lock file keeps changing)")


def _holder(fd: int) -> str:
    """'process 123 on host' from a lock file's contents, or 'another process' when it says nothing yet."""
    try:
        pid, host = os.pread(fd, 256, 0).decode(errors="replace").split()[:2]
        return f"process {int(pid)} on {host}"
    except (OSError, ValueError):
        return "another process"
