"""The one atomic file writer, npz saving and sha256 hashing (DESIGN.md: nothing half-written
is ever left behind).

Every file the library writes — checkpoints, figures, reports, data caches, downloads — goes
through :func:`atomic_write`: it is filled under a temporary name in the same directory, made
durable, and only then renamed onto its real name, so a reader sees the old file or the whole
new one, never a part.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

_CHUNK = 1 << 20


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file beside it (same file
    system, so the rename is atomic), which is fsync'd and renamed onto ``path`` with
    ``os.replace``; then the directory is fsync'd, so the rename survives a crash too.

    The temporary file is removed on any failure (``path`` is then untouched) and gets the
    usual permissions (0666 less the umask, not mkstemp's 0600). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # O_EXCL: the name is ours alone; mode 0o666 is reduced by the umask as for any file.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(tmp)  # the writer opens, fills and closes (so flushes) the file
        os.chmod(tmp, 0o666 & ~_umask())  # a writer that recreates the file (safetensors) may not
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data reach the disk before the name points at them
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(d: Path) -> None:
    """Make a rename in ``d`` durable; skipped where directories cannot be opened (Windows)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support fsync on a directory
        return
    finally:
        os.close(fd)


def save_npz(path: str | Path, **arrays) -> Path:
    """Atomically write numpy arrays (or anything ``np.savez`` takes) as an ``.npz`` file."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes as hex, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
