"""Reading what a user names: a path's kind (regular file, folder, FIFO, device, symlink
loop) said before anything is opened, and JSON / JSONL files read back with a size and nesting
cap, each problem an error that names the file.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from pathlib import Path

from ..errors import InputError

logger = logging.getLogger(__name__)
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

    text = _read_capped(path, what, max_bytes)
    try:
        value = json.loads(text)
    except RecursionError:
        value = None
        too_deep = True
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError too
        raise InputError(f"{what} {str(path)!r}: not valid JSON ({e})") from None
    else:
        too_deep = nesting(value) > JSON_DEPTH_MAX
    if too_deep:
        raise InputError(f"{what} {str(path)!r}: JSON nested more than {JSON_DEPTH_MAX} "
                         "levels deep; not a file infusion wrote")
    return value


def read_jsonl(path: str | Path, what: str, max_bytes: int = JSON_READ_MAX) -> list[dict]:
    """The JSON objects of the lines of the file ``path`` (one object a line; blank lines
    ignored). The file itself must pass :func:`regular_file` and be at most ``max_bytes``
    bytes, else :class:`InputError` naming ``what``; a line that is not a JSON object is
    skipped, and one warning on the ``infusion`` logger names the file and those lines."""
    text = _read_capped(path, what, max_bytes)
    rows, bad = [], []
    for i, line in enumerate(text.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        if isinstance(row, dict) and nesting(row) <= JSON_DEPTH_MAX:
            rows.append(row)
        else:
            bad.append(i)
    if bad:
        lines = ", ".join(f"line {i}" for i in bad[:5]) + (
            f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        logger.warning(
            f"{what} {str(path)!r}: skipped {lines}: not a JSON object")
    return rows


def nesting(value) -> int:
    """How deep mappings and lists nest in ``value`` (0 for a plain value); iterative, so any
    depth is measured."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, dict | list | tuple):
            deepest = max(deepest, d + 1)
            todo.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest
