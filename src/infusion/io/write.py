"""The one atomic file writer, npz saving and sha256 hashing (docs/design.md: nothing
half-written is ever left behind).

Every file the library writes — checkpoints, figures, reports, data caches, downloads — goes
through :func:`atomic_write`: it is filled under a temporary name in the same directory, made
durable, and only then renamed onto its real name, so a reader sees the old file or the whole
new one, never a part. Its temporary names (:func:`temp_path`) carry the writer's pid, so
that what a killed writer left behind is told apart from a live writer's and a user's files
(:func:`clean_stale_temps`). Inside :func:`all_or_nothing` the renames wait for the end of the
block: an output of several files appears whole or not at all, and can be created
exclusively. Each file written is named in the manifest that covers it (:mod:`.manifest`).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import InputError
from .manifest import (
    MANIFEST,
    _keeper,
    check_folder,
    check_own_file,
    delete_own,
    record_write,
)

_CHUNK = 1 << 20
_TEMP = re.compile(r"^\..+\.infusion-(\d{1,10})-[0-9a-f]{8}\.tmp$")  # temp_path's names


def temp_path(path: Path) -> Path:
    """The temporary name beside ``path`` that this process fills before the rename:
    ``.NAME.infusion-PID-TOKEN.tmp``."""
    return path.with_name(f".{path.name}.infusion-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def clean_stale_temps(directory: str | Path) -> None:
    """Remove from ``directory`` (not below it) the temporary files and folders of
    :func:`temp_path` whose process has gone: what a killed writer left. A live process's
    (another run's, a nested run's) and every other name are kept."""
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return
    for p in entries:
        m = _TEMP.match(p.name)
        if m is None or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OSError, OverflowError):  # no such pid
        return False
    return True


class _Pending:
    """The files (temporary name, name) and staged folders of an :func:`all_or_nothing` block."""

    def __init__(self) -> None:
        self.files: dict[Path, Path] = {}  # name -> its filled temporary file
        self.dirs: dict[Path, Path] = {}  # new folder -> the temporary folder filled instead


_pending: contextvars.ContextVar[_Pending | None] = contextvars.ContextVar("infusion_pending",
                                                                          default=None)


@contextlib.contextmanager
def all_or_nothing(overwrite: bool = True) -> Iterator[None]:
    """The files :func:`atomic_write` writes inside the block appear together when it ends
    without an error: each is filled and made durable under its temporary name, then the
    staged folders (:func:`stage_directory`) and the files are renamed onto their names, in
    the order written (so the last file written is there only if every other is). On an
    error nothing appears; a kill leaves temporary names only, which the next output into
    the same folder removes. ``overwrite=False``: the names are created exclusively, so a
    name that exists by then (another process's output) is an :class:`InputError` and
    nothing of this block appears. A block inside another joins the outer one. A file
    written inside is not there to be read back before the block ends."""
    if _pending.get() is not None:
        yield
        return
    pending = _Pending()
    token = _pending.set(pending)
    try:
        yield
    except BaseException:
        _discard(pending)
        raise
    finally:
        _pending.reset(token)
    _commit(pending, overwrite)


def stage_directory(path: str | Path) -> None:
    """Inside :func:`all_or_nothing`: the folder ``path``, which must not exist yet, is filled
    under a temporary name and renamed into place at the end (whole, or not at all)."""
    pending, path = _pending.get(), Path(path)
    if pending is None:
        raise RuntimeError("stage_directory() needs an all_or_nothing() block")
    if path not in pending.dirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        tmp.mkdir()
        pending.dirs[path] = tmp


def _discard(pending: _Pending) -> None:
    for tmp in pending.files.values():
        tmp.unlink(missing_ok=True)
    for tmp in pending.dirs.values():
        shutil.rmtree(tmp, ignore_errors=True)


def _commit(pending: _Pending, overwrite: bool) -> None:
    done: list[Path] = []
    try:
        for path, tmp in pending.dirs.items():
            if os.path.lexists(path) and not (path.is_dir() and not any(path.iterdir())):
                raise InputError(f"output {str(path)!r} exists; pass --overwrite (or another "
                                 "name) to replace it")
            os.rename(tmp, path)  # onto nothing, or onto an empty folder
            done.append(path)
        for path, tmp in pending.files.items():
            if overwrite:
                os.replace(tmp, path)
            else:
                _create(tmp, path)
                done.append(path)
            record_write(path)  # a staged folder's files were named as they were written
    except BaseException:
        _discard(pending)
        for path in done:  # this block's own new outputs: nothing appears
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else delete_own(path)
        raise
    for d in {p.parent for p in (*pending.files, *pending.dirs)}:
        _fsync_dir(d)
        clean_stale_temps(d)


def _create(tmp: Path, path: Path) -> None:
    """Give the filled ``tmp`` the name ``path``, which must not exist (no check-then-write
    race: the link or the exclusive creation is the check)."""
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: reserve the name, then replace
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
            os.replace(tmp, path)
            return
    except FileExistsError:
        raise InputError(f"output {str(path)!r} exists (written meanwhile by another process?); "
                         "pass --overwrite to replace it") from None
    os.unlink(tmp)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file beside it (same file
    system, so the rename is atomic), which is fsync'd and renamed onto ``path`` with
    ``os.replace``; then the directory is fsync'd, so the rename survives a crash too.

    The temporary file is removed on any failure (``path`` is then untouched) and gets the
    usual permissions (0666 less the umask, not mkstemp's 0600). Returns ``path``.

    A rename never writes through a link: a symbolic or hard link at ``path`` is replaced,
    its target kept. Refused before anything is written (:class:`UntrustedFileError`): a
    ``path`` whose folder is a symbolic link inside a folder with a manifest, and one whose
    manifest is not a regular file of its own. The file is then named in its manifest.
    """
    path = Path(path)
    check_folder(path.parent)
    keeper = _keeper(path)
    if keeper is not None:
        check_own_file(keeper / MANIFEST)
    pending = _pending.get()
    target = path  # where the file is filled: beside its name, or in a staged folder
    if pending is not None and path.parent in pending.dirs:
        target = pending.dirs[path.parent] / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        try:
            # O_EXCL: the name is ours alone; mode 0o666 is reduced by the umask as for any file.
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            write(tmp)  # the writer opens, fills and closes (so flushes) the file
            os.chmod(tmp, 0o666 & ~_umask())  # a writer that recreates it (safetensors) may not
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # the data reach the disk before the name points at them
            finally:
                os.close(fd)
        except Exception as e:  # noqa: BLE001 — re-raised, naming the path
            raise _named(e, tmp, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if pending is not None and target == path:  # renamed when the all_or_nothing block ends
        old = pending.files.pop(path, None)
        if old is not None:
            old.unlink(missing_ok=True)
        pending.files[path] = tmp
        return path
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    record_write(path)
    return path


def _named(e: Exception, tmp: Path, path: Path) -> Exception:
    """A write's error naming ``path``: an OSError without a file name (or with the temporary
    one) gets it; a writer's own error (torch's, safetensors') on a full disk becomes ENOSPC."""
    if isinstance(e, OSError) and e.errno is not None and e.filename in (None, str(tmp)):
        return OSError(e.errno, e.strerror or str(e), str(path))
    if not isinstance(e, OSError) and _disk_full(tmp.parent):
        return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({type(e).__name__}: "
                       f"{str(e)[:200]})", str(path))
    return e


def _disk_full(d: Path) -> bool:
    """Whether the file system of ``d`` has (almost) no space left for this user."""
    try:
        st = os.statvfs(d)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


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
    import numpy as np  # here: the command line's start-up (--help) does not load numpy

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
