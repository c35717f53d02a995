"""Reading files from outside, safely (algorithms.md §1): sha256-verified downloads, user-supplied
copies checked against the same sums, archive extraction that refuses unsafe members, and an
unpickler that builds numpy arrays and nothing else.

A download is written through :func:`infusion.io.atomic_write`: its file appears only once
every byte has arrived and the sha256 matches. Archives are checked member by member before
anything is read out of them: a member whose path is absolute or climbs out of the target
directory (``..``), or that is a link or a device, makes the whole archive refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import pickle
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from .._logging import bar_disable
from ..io import atomic_write, path_kind
from ..io import sha256 as sha256_of
from .cache import DataError

_CHUNK = 1 << 20
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Remote:
    """A file at a canonical address, with its sha256 and size in bytes."""

    url: str
    sha256: str
    size: int


def download(url: str, dest: Path, sha256: str, *, timeout: float,
             max_bytes: int | None = None, progress: bool = False) -> None:
    """Fetch url to dest through a temporary file; dest appears only if the sha256 matches.
    ``progress``: a byte-count bar while it downloads."""
    def fetch(tmp: Path) -> None:
        h, n = hashlib.sha256(), 0
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f, \
                tqdm(total=max_bytes, unit="B", unit_scale=True, desc=Path(dest).name,
                     leave=False, disable=bar_disable(progress)) as bar:
            while chunk := r.read(_CHUNK):
                n += len(chunk)
                if max_bytes is not None and n > max_bytes:
                    raise DataError(f"{url}: more than the expected {max_bytes} bytes")
                h.update(chunk)
                f.write(chunk)
                bar.update(len(chunk))
        if h.hexdigest() != sha256:
            raise DataError(f"{url}: sha256 {h.hexdigest()} does not match the expected {sha256}")

    try:
        atomic_write(dest, fetch)
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, timeouts, ...
        reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise DataError(f"{url}: {reason}") from None


def fetch_remote(remote: Remote, dest: Path, timeout: float, progress: bool = False) -> Path:
    """dest if it already holds the verified file, else a verified download of it."""
    if dest.is_file():
        if sha256_of(dest) == remote.sha256:
            return dest
        raise DataError(f"{dest} does not match the sha256 of {remote.url} ({remote.sha256}): "
                        "delete it to download afresh")
    logger.info(f"downloading {remote.url} ({remote.size / 1e6:.0f} MB)")
    try:
        download(remote.url, dest, remote.sha256, timeout=timeout, max_bytes=remote.size,
                 progress=progress)
    except DataError as e:
        raise DataError(f"could not download {remote.url} ({e}). If this machine is offline, "
                        f"copy the file there by hand to {dest} (sha256 {remote.sha256})") from None
    return dest


def not_a_file(p: Path) -> str:
    """What ``p`` is instead of a regular file, for a message ("no such file" or its kind)."""
    kind = path_kind(p)
    return "no such file" if kind == "nothing" else f"{kind}, not a regular file"


def given_copy(path: str | Path, remote: Remote) -> Path:
    """A user-supplied copy of a remote file, checked against its sha256."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.path={str(path)!r}: {not_a_file(p)}")
    if sha256_of(p) != remote.sha256:
        raise DataError(f"data.path={str(path)!r} is not {remote.url} (sha256 differs from "
                        f"{remote.sha256})")
    return p


# ----------------------------------------------------------------------------- archives


def _unsafe_reason(name: str, kind: str) -> str | None:
    """Why an archive member may not be extracted (None if it may)."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or (p.parts and p.parts[0].endswith(":")):
        return "an absolute path"
    if ".." in p.parts:
        return "a path that climbs out of the target directory"
    if kind not in ("file", "dir"):
        return f"a {kind}"
    return None


def _tar_kind(m: tarfile.TarInfo) -> str:
    return ("file" if m.isfile() else "dir" if m.isdir() else "symlink" if m.issym()
            else "hard link" if m.islnk() else "device or fifo")


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symlink"
    return "dir" if info.is_dir() else "file"


def check_archive(path: str | Path) -> list[str]:
    """The member names of a tar or zip archive, after checking that every member is a plain
    file or directory inside the target directory; DataError naming the first one that is not."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                members = [(i.filename, _zip_kind(i)) for i in zf.infolist()]
        else:
            with tarfile.open(path) as tf:
                members = [(m.name, _tar_kind(m)) for m in tf.getmembers()]
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path} is not a readable tar or zip archive ({e})") from None
    for name, kind in members:
        reason = _unsafe_reason(name, kind)
        if reason:
            raise DataError(f"{path}: refusing the archive, member {name!r} is {reason}")
    return [n for n, k in members if k == "file"]


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a tar or zip archive into dest after :func:`check_archive` (all members are
    checked before anything is written); every written path is confirmed to lie under dest."""
    archive, dest = Path(archive), Path(dest)
    files = check_archive(archive)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with _reader(archive) as read:
        for name in files:
            target = (root / name).resolve()
            if root not in target.parents:
                raise DataError(f"{archive}: refusing member {name!r} (it resolves outside {dest})")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as f:
                f.write(read(name))
    return dest


@contextlib.contextmanager
def _reader(archive: Path) -> Iterator[Callable[[str], bytes]]:
    """A function reading one member's bytes out of a zip or tar archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            yield zf.read
    else:
        with tarfile.open(archive) as tf:
            yield lambda name: tf.extractfile(name).read()


# ----------------------------------------------------------------------------- pickles

# What pickled numpy arrays need (old and new numpy; protocol 2 under Python 3 adds
# _codecs.encode, protocol 5 numpy's _frombuffer); nothing else gets resolved.
_PICKLE_OK = frozenset({("numpy", "dtype"), ("numpy", "ndarray"), ("_codecs", "encode")} | {
    (f"numpy.{core}.{mod}", fn) for core in ("core", "_core")
    for mod, fn in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer"))})


class ArraysOnly(pickle.Unpickler):
    """Unpickle numpy arrays and nothing else (a pickle can otherwise run code)."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_OK:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)
