"""Only its own files. The library deletes or replaces a file only if it wrote that file. A
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

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError, UserError

MANIFEST = ".infusion-files"  # in a folder of the library's: the files it wrote there
_MANIFEST_MAX = 64 << 20  # larger than any manifest the library writes


class UntrustedFileError(UserError, RuntimeError):
    """A file the library keeps for itself (a folder's manifest, a run's ``.lock``) that is
    not a regular file of its own, or a write that would pass through a symbolic link out of
    a folder the library keeps. The message names the path; nothing was changed."""


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
