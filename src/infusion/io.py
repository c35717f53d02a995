"""The one atomic file writer, npz saving and sha256 hashing (docs/design.md: nothing half-written
is ever left behind).

Every file the library writes — checkpoints, figures, reports, data caches, downloads — goes
through :func:`atomic_write`: it is filled under a temporary name in the same directory, made
durable, and only then renamed onto its real name, so a reader sees the old file or the whole
new one, never a part. Its temporary names (:func:`temp_path`) carry the writer's pid, so
that what a killed writer left behind is told apart from a live writer's and a user's files
(:func:`clean_stale_temps`). Inside :func:`all_or_nothing` the renames wait for the end of the
block: an output of several files appears whole or not at all, and can be created
exclusively.

Only its own files. The library deletes or replaces a file only if it wrote that file. A
folder it creates for its output — a run directory, an evaluation's or an export's folder —
holds a manifest, ``.infusion-files``, naming each file the library wrote in it or one folder
down, one line per file (:func:`record_write`); ``--overwrite`` replaces or deletes only the
files named there, and a command refuses, before it changes anything, a file of its names
that is not (:func:`check_replace`, :func:`claim_folder`). In a folder without a manifest the
library cannot tell its files from a user's: they are not replaced (a run directory of an
earlier version is the exception, its files known by their names). The manifest and a run's
``.lock`` must be regular files of their own: one that is a symbolic link, a directory, a
FIFO or a hard link to another name is refused (:class:`UntrustedFileError`), never opened,
read or written. No write passes through a symbolic link out of a folder that has a
manifest (:func:`check_folder`).
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
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import InputError, UserError

_CHUNK = 1 << 20
_TEMP = re.compile(r"^\..+\.infusion-(\d{1,10})-[0-9a-f]{8}\.tmp$")  # temp_path's names
MANIFEST = ".infusion-files"  # in a folder of the library's: the files it wrote there
_MANIFEST_MAX = 64 << 20  # larger than any manifest the library writes


class UntrustedFileError(UserError, RuntimeError):
    """A file the library keeps for itself (a folder's manifest, a run's ``.lock``) that is
    not a regular file of its own, or a write that would pass through a symbolic link out of
    a folder the library keeps. The message names the path; nothing was changed."""


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


def _untrusted(st: os.stat_result) -> str:
    """What makes a file of this ``lstat`` no regular file of the library's own, or ""."""
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_nlink > 1:
        return f"a hard link (one of {st.st_nlink} names of the same file)"
    return ""


def _refuse(path: Path, what: str) -> UntrustedFileError:
    return UntrustedFileError(
        f"{str(path)!r} is {what}; infusion keeps this file for itself and reads or writes it "
        "only as a regular file with no other name: remove it, or use another folder")


def check_own_file(path: str | Path) -> bool:
    """Whether the file the library keeps for itself at ``path`` (a folder's manifest, a
    run's ``.lock``) exists; one that is a symbolic link, a directory, a FIFO or another
    special file, or a hard link (writing it would write a file of another name) is refused
    with :class:`UntrustedFileError`. Looked at with ``lstat``, never opened: a FIFO cannot
    block."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    what = _untrusted(st)
    if what:
        raise _refuse(Path(path), what)
    return True


def open_own_file(path: str | Path, flags: int) -> int:
    """Open (``os.open`` with ``flags``; ``O_CREAT`` creates it) the file the library keeps for
    itself at ``path``, checked by :func:`check_own_file` first and what was opened checked
    again (no link followed, no blocking on a FIFO): a file descriptor."""
    check_own_file(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as e:  # replaced between the look and the opening
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise _refuse(Path(path), "not a regular file") from None
        raise
    try:
        what = _untrusted(os.fstat(fd))
        if what:
            raise _refuse(Path(path), what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def start_manifest(directory: str | Path, names: Iterable[str] = ()) -> None:
    """Give ``directory`` (a new run's, or a folder created for an output) a manifest naming
    ``names`` (files already there that the library wrote; none by default): from now on every
    file the library writes in it, or one folder down, is named there (:func:`record_write`).
    Refused (:class:`UntrustedFileError`) where the folder is a link inside a folder the
    library keeps, or the manifest there is not a regular file of its own."""
    directory = Path(directory)
    check_folder(directory)
    fd = open_own_file(directory / MANIFEST, os.O_WRONLY | os.O_CREAT)
    try:
        os.ftruncate(fd, 0)
        text = "".join(f"{n}\n" for n in dict.fromkeys(names))
        if text:
            os.write(fd, text.encode())
    finally:
        os.close(fd)


def read_manifest(directory: str | Path) -> set[str] | None:
    """The files the library wrote in ``directory``, as named in its manifest (paths relative
    to it, one a line: ``config.json``, ``checkpoints/final.pt``; a line ``/NAME`` strikes
    out a file it has deleted since), or None where it has none (a folder the library did not
    create, or a run of an earlier version). A manifest that is not a regular file of its own
    is refused (:func:`check_own_file`), never read."""
    path = Path(directory) / MANIFEST
    if not check_own_file(path):
        return None
    fd = open_own_file(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        data = f.read(_MANIFEST_MAX + 1)
    if len(data) > _MANIFEST_MAX:
        raise _refuse(path, "larger than any manifest of infusion's")
    names: set[str] = set()
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("/"):  # deleted since (names are relative: none starts with "/")
            names.discard(line[1:])
        elif line:
            names.add(line)
    return names


def manifest_name(path: str | Path, directory: str | Path) -> str:
    """How ``path``, inside ``directory``, is named in its manifest: its path relative to
    ``directory`` (``samples.npz``, ``checkpoints/final.pt``)."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(directory))).as_posix()


def _keeper(path: str | Path) -> Path | None:
    """The folder whose manifest covers ``path``: its own folder or the one above, the first
    that has one (whatever it is; it is checked where it is read)."""
    p = Path(os.path.abspath(path))
    for d in (p.parent, p.parent.parent):
        if os.path.lexists(d / MANIFEST):
            return d
    return None


def written_here(path: str | Path) -> bool | None:
    """Whether the library wrote ``path``: whether the manifest covering it (its folder's or
    the one above's) names it; None where no manifest covers it. (An entry naming a folder, as
    the first manifests had, covers the files of the library's names in it: callers ask only
    about those.)"""
    keeper = _keeper(path)
    if keeper is None:
        return None
    names = read_manifest(keeper) or set()
    name = manifest_name(path, keeper)
    folder, _, rest = name.partition("/")
    return name in names or (bool(rest) and "/" not in rest and folder in names)


def not_written_here(paths: Iterable[str | Path], *, names_decide: bool = False) -> list[Path]:
    """The existing ``paths`` that the library did not write, and so may neither replace nor
    delete: a directory at a file's name; in a folder with a manifest, a file it does not
    name; in a folder without one, every file — unless ``names_decide`` (a run directory of an
    earlier version, whose files are known by their names: the caller passes only those)."""
    out = []
    for p in map(Path, paths):
        if not os.path.lexists(p):
            continue
        own = None if os.path.isdir(p) and not os.path.islink(p) else written_here(p)
        if own is False or (own is None and not (names_decide and not p.is_dir())):
            out.append(p)
    return out


def own_files(paths: Iterable[str | Path]) -> list[Path]:
    """The existing ``paths`` the library may delete: those it wrote (:func:`not_written_here`
    with ``names_decide``: the caller passes only files of the library's names)."""
    paths = [Path(p) for p in paths if os.path.lexists(p)]
    foreign = set(not_written_here(paths, names_decide=True))
    return [p for p in paths if p not in foreign]


def check_replace(paths: Iterable[str | Path], error: type[Exception] = InputError, *,
                  hint: str = "use another folder", names_decide: bool = False) -> None:
    """Refuse (``error``) to replace or delete any of ``paths`` that the library did not write
    (:func:`not_written_here`), even with ``--overwrite``: the message names the first and
    says what to do (move it away, or ``hint``). Checks only; nothing is changed."""
    foreign = not_written_here(paths, names_decide=names_decide)
    if not foreign:
        return
    p = foreign[0]
    keeper = _keeper(p)
    if os.path.isdir(p) and not os.path.islink(p):
        why = "it is a directory"
    elif keeper is not None:
        why = f"it is not named in {str(keeper / MANIFEST)!r}"
    else:
        why = (f"its folder has no {MANIFEST} naming the files infusion wrote there, so none "
               "of them is replaced")
    raise error(f"{str(p)!r} was not written by infusion ({why}); infusion replaces or "
                f"deletes only its own files, --overwrite included: move it away, or {hint}")


def check_folder(folder: str | Path) -> None:
    """Refuse (:class:`UntrustedFileError`) to write into ``folder`` when it is a symbolic link
    inside a folder that has a manifest: what the library writes there would land in a folder
    it did not create. (A link of the user's own elsewhere, named as an output, is followed.)"""
    folder = Path(folder)
    if folder.is_symlink() and os.path.lexists(folder.parent / MANIFEST):
        raise UntrustedFileError(
            f"{str(folder)!r} is a symbolic link inside {str(folder.parent)!r}, a folder "
            f"infusion keeps (it has a {MANIFEST}); infusion does not write through links "
            "there: remove the link, or write elsewhere (--out)")


def check_outputs(folder: str | Path, paths: Iterable[str | Path],
                  error: type[Exception] = InputError, *, hint: str = "use another folder") -> None:
    """Check, changing nothing, that the library may write its output files ``paths`` into
    ``folder``: the folder is not a link inside a folder the library keeps
    (:func:`check_folder`), its manifest (or the one above's) is a regular file of its own,
    and no existing file of ``paths`` is one the library did not write (:func:`check_replace`:
    in a folder without a manifest, none may exist)."""
    folder = Path(folder)
    check_folder(folder)
    keeper = _keeper(folder / MANIFEST)
    if keeper is not None:
        check_own_file(keeper / MANIFEST)
    check_replace(paths, error, hint=hint)


def claim_folder(folder: str | Path, paths: Iterable[str | Path],
                 error: type[Exception] = InputError, *, hint: str = "use another folder") -> None:
    """Make ``folder`` ready for the library's output files ``paths`` (in it): everything is
    checked first (:func:`check_outputs`), then a folder created here, or found empty, starts
    a manifest."""
    folder = Path(folder)
    check_outputs(folder, paths, error, hint=hint)
    fresh = not os.path.lexists(folder) or (folder.is_dir() and not any(folder.iterdir()))
    folder.mkdir(parents=True, exist_ok=True)
    if fresh:
        start_manifest(folder)


def record_write(path: str | Path) -> None:
    """Name ``path`` in the manifest that covers it (its folder's or the one above's, the first
    there is), appended whole (O_APPEND) so that two writers' lines never mix; nothing where
    there is none. A manifest that is not a regular file of its own is refused, not written."""
    keeper = _keeper(path)
    if keeper is None:
        return
    name = manifest_name(path, keeper)
    if name != MANIFEST and name not in (read_manifest(keeper) or ()):
        _append(keeper, name)


def delete_own(path: str | Path) -> None:
    """Delete ``path``, a file the library wrote, and strike it out of the manifest that
    covers it, so that a user's file given its name later is not taken for the library's."""
    path = Path(path)
    path.unlink(missing_ok=True)
    keeper = _keeper(path)
    if keeper is not None:
        _append(keeper, "/" + manifest_name(path, keeper))


def _append(keeper: Path, line: str) -> None:
    """Append ``line`` to the manifest of ``keeper`` whole (O_APPEND: two writers' lines never
    mix), never through a link (:func:`open_own_file`)."""
    try:
        fd = open_own_file(keeper / MANIFEST, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:  # removed meanwhile
        return
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


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


# ----------------------------------------------------------------------------- reading inputs

JSON_READ_MAX = 64 << 20  # bytes of a JSON or JSONL file read back (a report is a few KiB)
JSON_DEPTH_MAX = 64  # nesting of what such a file holds


def path_kind(path: str | Path) -> str:
    """What ``path`` names, in words for a message: ``"a regular file"``, ``"a folder"``,
    ``"a FIFO (named pipe)"``, ``"a device"``, ``"a socket"``, ``"a symlink loop"``,
    ``"a link to nothing"`` or ``"nothing"`` (links are followed)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop"
        if os.path.islink(path):
            return "a link to nothing"
        return "nothing" if isinstance(e, (FileNotFoundError, NotADirectoryError)) else \
            f"unreadable ({e.strerror})"
    except (TypeError, ValueError):  # not a path, or one with a NUL byte
        return "not a path"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def regular_file(path: str | Path, what: str) -> Path:
    """``path`` as a :class:`Path`, if it names a regular file (links followed). Anything
    else is an :class:`InputError` naming ``what`` and saying what the path is instead: no
    such file, a folder, a symlink loop, or a FIFO, device or socket, which are never opened
    (reading one could block forever or never end)."""
    kind = path_kind(path)
    if kind == "a regular file":
        return Path(path)
    if kind == "nothing":
        raise InputError(f"{what} {str(path)!r}: no such file")
    raise InputError(f"{what} {str(path)!r} is {kind}, not a regular file")


def folder_path(path: str | Path, what: str) -> Path:
    """``path`` as a :class:`Path`, if it is a folder or can be made one: a path that is a
    file (or lies below one), a symlink loop, a FIFO or a device is an :class:`InputError`
    naming ``what``."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"{what}={path!r}: expected a folder's path (a str or Path)")
    p = Path(path)
    for above in (p, *p.parents):
        kind = path_kind(above)
        if kind == "a folder":
            return p
        if kind != "nothing":
            raise InputError(f"{what} {str(p)!r} is {kind}, not a folder" if above == p else
                             f"{what} {str(p)!r} is not a folder: {str(above)!r} is {kind}")
    return p


def resolved(path: str | Path, what: str) -> Path:
    """``Path(path).resolve()``, links followed; a symlink loop is an :class:`InputError`
    naming ``what``."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:  # RuntimeError: Python before 3.13's "Symlink loop"
        raise InputError(f"{what} {str(path)!r}: cannot follow its links (a symlink loop?): "
                         f"{e}") from None


def _read_capped(path: str | Path, what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (:func:`regular_file`), refused when larger
    than ``max_bytes``: opened without blocking and checked again once open."""
    p = regular_file(path, what)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise InputError(f"{what} {str(p)!r}: cannot read it: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since it was checked
            raise InputError(f"{what} {str(p)!r} is not a regular file")
        text = f.read(max_bytes + 1)
    if len(text) > max_bytes:
        raise InputError(f"{what} {str(p)!r} is larger than {max_bytes:,} bytes: not a file "
                         "infusion wrote")
    return text


def read_json(path: str | Path, what: str, max_bytes: int = JSON_READ_MAX):
    """The JSON value in the file ``path``. The file must be a regular file
    (:func:`regular_file`) of at most ``max_bytes`` bytes holding valid JSON nested at most
    :data:`JSON_DEPTH_MAX` deep; anything else is an :class:`InputError` naming ``what``.
    What the value must hold is the caller's to check."""
    import json

    text = _read_capped(path, what, max_bytes)
    try:
        value = json.loads(text)
    except RecursionError:
        value = None
        too_deep = True
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError too
        raise InputError(f"{what} {str(path)!r}: not valid JSON ({e})") from None
    else:
        too_deep = _depth(value) > JSON_DEPTH_MAX
    if too_deep:
        raise InputError(f"{what} {str(path)!r}: JSON nested more than {JSON_DEPTH_MAX} "
                         "levels deep; not a file infusion wrote")
    return value


def read_jsonl(path: str | Path, what: str, max_bytes: int = JSON_READ_MAX) -> list[dict]:
    """The JSON objects of the lines of the file ``path`` (one object a line; blank lines
    ignored). The file itself must pass :func:`regular_file` and be at most ``max_bytes``
    bytes, else :class:`InputError` naming ``what``; a line that is not a JSON object is
    skipped, and one warning on the ``infusion`` logger names the file and those lines."""
    import json
    import logging

    text = _read_capped(path, what, max_bytes)
    rows, bad = [], []
    for i, line in enumerate(text.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        if isinstance(row, dict) and _depth(row) <= JSON_DEPTH_MAX:
            rows.append(row)
        else:
            bad.append(i)
    if bad:
        lines = ", ".join(f"line {i}" for i in bad[:5]) + (
            f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        logging.getLogger("infusion.io").warning(
            f"{what} {str(path)!r}: skipped {lines}: not a JSON object")
    return rows


def _depth(value) -> int:
    """How deep mappings and lists nest in ``value`` (iterative: any depth is measured)."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d + 1)
            todo.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest
