"""A user's own arrays as a data set (``data.name = "arrays"``, algorithms.md §1).

:func:`infusion.fit` turns whatever it is given — a numpy array, a tensor, a
``torch.utils.data.Dataset``, a ``.npy``/``.npz`` file — into examples (:func:`as_examples`),
splits off a validation set if none was given (:func:`split_valid`) and stores the splits in
the run directory as a verified ``.npz`` (:func:`store`): ``train_x``, ``valid_x`` and, if the
user gave one, ``test_x`` (with ``train_y``… holding classes, for a class-conditional model,
algorithms.md §15), next to a ``.sha256`` record. The run's config records the file's
absolute path and sha256 (``data.path``, ``data.sha256``) and, for float data, the affine map
into model space (``data.scale``, ``data.offset``, :func:`infusion.data.space.fit_affine`), so
that ``evaluate``, ``sample`` and ``figures`` read the same data the same way from anywhere.

Kinds of data, as stored and as :func:`load_arrays` returns them:
  * uint8 arrays are pixels: images (N, C, H, W) with C = 1 or 3, dequantised as MNIST is;
  * anything else numeric is float32: vectors (N, D) or images (N, C, H, W), mapped into model
    space by the recorded affine map (none for data already inside [0, 1]).
Without a test split the validation split stands in for it (``load_arrays(..., "test")``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..io import regular_file, sha256
from ..limits import check_memory, check_tensor, format_bytes
from .cache import SPLITS, DataError, Split, verify_record, write_cache
from .space import apply_affine

logger = logging.getLogger(__name__)

ARRAY_SUFFIXES = (".npy", ".npz")
FLOAT_LIMIT = 1e36  # float data beyond it: samples mapped back could overflow float32
VALID_FRACTION, SPLIT_SEED = 0.1, 0  # the validation split fit() takes when none is given
ITEM_OVERHEAD = 128  # bytes per Dataset item beyond its values: the array object, the list
SLOW_READ_SECONDS = 10.0  # a Dataset read for longer logs its estimate first


# ----------------------------------------------------------------------------- user input


def as_examples(x: Any, what: str = "data") -> np.ndarray:
    """One example a row, in the layout the models use, checked: uint8 pixels stay uint8,
    anything else numeric becomes float32. (N, D) vectors stay as they are (D >= 2); images
    (N, H, W) gain a channel axis and (N, H, W, C) become (N, C, H, W) (C = 1 or 3).
    :class:`InputError` naming ``what`` for anything else: no examples, one value per example,
    NaN or infinite values, or no numbers at all."""
    check_tensor(x, what)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.numpy() if x.dtype != torch.bfloat16 else x.float().numpy()
    try:
        x = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise InputError(f"{what}: not an array of numbers ({e})") from None
    if x.dtype.kind not in "biuf":
        raise InputError(f"{what}: expected numbers (uint8 pixels or floats), got dtype {x.dtype}")
    if x.ndim < 2:
        raise InputError(f"{what}: a {x.ndim}-D array of shape {x.shape}; expected one example "
                         "per row: (N, D) vectors with D >= 2, or images (N, H, W), "
                         "(N, C, H, W) or (N, H, W, C)")
    if x.size == 0:
        raise InputError(f"{what} is empty (shape {x.shape}): expected at least one example")
    if x.ndim > 4:
        raise InputError(f"{what}: a {x.ndim}-D array of shape {x.shape}; expected (N, D) "
                         "vectors or images (N, H, W), (N, C, H, W) or (N, H, W, C)")
    if x.ndim == 2 and x.shape[1] < 2:
        raise InputError(f"{what}: shape {x.shape} has one value per example; the chains and "
                         "their figures need at least 2 (pad with a constant column)")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3):
        if x.shape[3] not in (1, 3):
            raise InputError(f"{what}: images of shape {x.shape} have neither 1 or 3 channels "
                             "first (N, C, H, W) nor last (N, H, W, C)")
        x = x.transpose(0, 3, 1, 2)
    if math.prod(x.shape[1:]) < 2:
        raise InputError(f"{what}: images of shape {x.shape[1:]} hold one value each; the "
                         "chains and their figures need at least 2")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            first = np.argwhere(bad)[0]
            raise InputError(f"{what} holds {int(bad.sum())} NaN or infinite value(s) (the first "
                             f"at index {tuple(int(i) for i in first)} of the "
                             f"{tuple(x.shape)} array); remove or replace them")
    out = np.ascontiguousarray(x, np.float32)
    if not np.isfinite(out).all() or np.abs(out).max() > FLOAT_LIMIT:
        raise InputError(f"{what}: values up to {float(np.abs(x).max()):.3g}, too near the "
                         f"float32 limit (±3.4e38): samples mapped back to the data's scale "
                         f"would overflow (keep them within ±{FLOAT_LIMIT:.0e}); rescale them")
    return out


def from_dataset(ds: Any, what: str = "dataset") -> np.ndarray:
    """The examples of a map-style ``torch.utils.data.Dataset``, stacked: each item a tensor,
    an array, a PIL image or a number, or an (x, y, …) tuple whose x is taken.

    Its first item is read and timed before the others: a Dataset whose items cannot all be
    held in the free memory (each item's bytes twice, as items and stacked, and
    :data:`ITEM_OVERHEAD` bytes more per item) is refused then, and one whose reading will take
    longer than :data:`SLOW_READ_SECONDS` logs about how long first. An item that raises, or a
    ``len()`` that fails, is an :class:`InputError` naming ``what`` (and the item's index)."""
    try:
        n = len(ds)
    except TypeError:
        raise InputError(f"{what}: a Dataset without len(); pass a map-style Dataset or an "
                         "array") from None
    except (ValueError, OverflowError) as e:  # a negative or enormous __len__
        raise InputError(f"{what}: len() of the Dataset failed ({e}); expected its number of "
                         "examples") from None
    if n == 0:
        raise InputError(f"{what} is empty: expected at least one example")
    start = time.perf_counter()
    first = _dataset_item(ds, 0, what)
    seconds = time.perf_counter() - start
    check_memory(n * (2 * first.nbytes + ITEM_OVERHEAD),
                 f"{what}: {n:,} items of {first.dtype} {tuple(first.shape)}")
    if n * seconds > SLOW_READ_SECONDS:
        logger.info(f"{what}: reading {n:,} items one by one takes about "
                    f"{_duration(n * seconds)} ({seconds * 1e3:.3g} ms for the first); an "
                    "array or a tensor is read at once")
    items = [first] + [_dataset_item(ds, i, what) for i in range(1, n)]
    shapes = {a.shape for a in items}
    if len(shapes) > 1:
        some = ", ".join(map(str, sorted(shapes)[:3]))
        raise InputError(f"{what}: its items differ in shape ({some}…); every example must "
                         "have the same shape")
    dtypes = {a.dtype for a in items}
    return np.stack(items).astype(np.result_type(*dtypes), copy=False)


def _dataset_item(ds: Any, i: int, what: str) -> np.ndarray:
    """Item ``i`` of a Dataset as an array (its x, of an (x, y) tuple); whatever the Dataset
    raises is an :class:`InputError` naming ``what[i]``."""
    try:
        item = ds[i]
    except Exception as e:  # the user's code: whatever it raises is theirs to see
        raise InputError(f"{what}[{i}]: reading the item raised {type(e).__name__}: {e}") from e
    if isinstance(item, (tuple, list)) and item:
        item = item[0]
    if isinstance(item, dict):
        raise InputError(f"{what}[{i}] is a dict; expected a tensor, an array or an "
                         "(x, y) tuple")
    check_tensor(item, f"{what}[{i}]")
    return as_item(item)


def _duration(seconds: float) -> str:
    """``40 s``, ``12 min``, ``3.5 h``, ``2.1 days``."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.2g} {unit}"
    return f"{seconds:.0f} s"


def as_item(item: Any) -> np.ndarray:
    """One Dataset item as an array (tensors to the CPU, PIL images as their pixels)."""
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu()
        return item.float().numpy() if item.dtype == torch.bfloat16 else item.numpy()
    return np.asarray(item)


def read_file(path: Path) -> dict[str, np.ndarray]:
    """A ``.npy`` (the training examples) or ``.npz`` file -> ``{"train": …, "valid": …,
    "test": …}`` (the last two where the file has them). An ``.npz`` holds ``train`` (and
    ``valid``, ``test``), or ``train_x`` … as a run's own data file does, or ``x``, or one
    array only — beside classes (``train_y`` …, or ``y``; :func:`read_labels`). Pickled
    objects are never loaded; a path that is not a regular file (a FIFO or a device, which
    would block or never end, a symlink loop) is refused unopened."""
    regular_file(path, "data")
    if path.suffix.lower() not in ARRAY_SUFFIXES:
        raise InputError(f"{str(path)!r}: expected a .npy or .npz file or a folder of images, "
                         f"not a {path.suffix or 'suffix-less'} file")
    check_headers(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{str(path)!r} is not a readable {path.suffix} file ({e})") from None
    if isinstance(loaded, np.ndarray):
        return {"train": loaded}
    with loaded as z:
        keys = list(z.files)
        for names in (("train", "valid", "test"), ("train_x", "valid_x", "test_x")):
            if names[0] in keys:
                return {s: _member(z, k, path) for s, k in zip(SPLITS, names) if k in keys}
        if "x" in keys or len(keys) == 1:
            return {"train": _member(z, "x" if "x" in keys else keys[0], path)}
        if "train_x" not in keys and "train" not in keys and "y" in keys and len(keys) == 2:
            x_key = next(k for k in keys if k != "y")  # one array of examples and its classes
            return {"train": _member(z, x_key, path)}
    raise InputError(f"{str(path)!r} holds arrays {keys}; expected 'train' (with 'valid' and "
                     "'test' if you have them), or 'x', or a single array")


def check_headers(path: Path) -> None:
    """Refuse, from the array headers alone, a ``.npy`` (or an ``.npz`` member) that claims
    more bytes (rows × values × item size) than the file holds, or arrays that together do
    not fit in the free memory: before anything is read or allocated."""
    def claimed(f, size: int, name: str) -> int:
        fmt = np.lib.format
        try:
            read = (fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0)
                    else fmt.read_array_header_2_0)
            shape, _, dtype = read(f)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"{str(path)!r}: {name} is not a readable .npy array ({e})") from None
        nbytes = math.prod(shape) * dtype.itemsize
        if not dtype.hasobject and nbytes > size - f.tell():
            raise InputError(f"{str(path)!r}: {name}'s header claims a {dtype} array of shape "
                             f"{tuple(shape)} ({format_bytes(nbytes)}), but the file holds "
                             f"{format_bytes(size - f.tell())}: truncated or damaged")
        return nbytes

    try:
        if path.suffix.lower() == ".npy":
            with open(path, "rb") as f:
                total = claimed(f, path.stat().st_size, "the array")
        else:
            with zipfile.ZipFile(path) as zf:
                total = 0
                for info in zf.infolist():
                    if info.filename.endswith(".npy"):
                        with zf.open(info) as f:
                            total += claimed(f, info.file_size, repr(info.filename[:-4]))
    except (OSError, zipfile.BadZipFile) as e:
        raise InputError(f"{str(path)!r} is not a readable {path.suffix} file ({e})") from None
    check_memory(2 * total, f"the arrays of {str(path)!r}")  # read, then converted


def read_labels(path: Path) -> dict[str, np.ndarray]:
    """The classes an ``.npz`` file holds beside its examples (algorithms.md §15):
    ``train_y`` (and ``valid_y``, ``test_y``), or ``y`` for the training examples; {} for a
    ``.npy`` or a file without them."""
    if path.suffix.lower() != ".npz":
        return {}
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.files)
        if "y" in keys and "train_y" not in keys:
            return {"train": _member(z, "y", path)}
        return {s: _member(z, f"{s}_y", path) for s in SPLITS if f"{s}_y" in keys}


def _member(z, key: str, path: Path) -> np.ndarray:
    try:
        return z[key]
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise InputError(f"{str(path)!r}: array {key!r} is unreadable ({e}; pickled objects "
                         "are not loaded)") from None


def split_valid(x: np.ndarray, fraction: float = VALID_FRACTION,
                seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid): a fixed random ``fraction`` (at least 2 examples) of ``x`` becomes the
    validation split, chosen by ``np.random.default_rng(seed)``; both keep their order (the
    same rows of an array of labels of the same length come out of the same call)."""
    n_valid = max(2, round(len(x) * fraction))
    if len(x) - n_valid < 2:
        raise InputError(f"{len(x)} example(s) are too few to split off a validation set "
                         f"({n_valid}) and keep 2 for training (batch norm needs 2); give more "
                         "examples, or the validation set with valid=")
    order = np.random.default_rng(seed).permutation(len(x))
    return x[np.sort(order[n_valid:])], x[np.sort(order[:n_valid])]


# ----------------------------------------------------------------------------- the stored file


def file_name(splits: dict[str, np.ndarray], labels: dict[str, np.ndarray] | None = None) -> str:
    """``arrays-<hash>.npz``: 16 hex digits of the sha256 of the splits' (and labels') names,
    dtypes, shapes and bytes, so that a file's name says which data it holds."""
    h = hashlib.sha256()
    for name, a in _members(splits, labels).items():
        a = np.ascontiguousarray(a)
        h.update(f"{name.removesuffix('_x')}|{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))
    return f"arrays-{h.hexdigest()[:16]}.npz"


def _members(splits: dict[str, np.ndarray], labels: dict[str, np.ndarray] | None
             ) -> dict[str, np.ndarray]:
    """The stored file's arrays: ``train_x``… and, with labels, ``train_y``…"""
    out = {f"{s}_x": splits[s] for s in SPLITS if s in splits}
    return out | {f"{s}_y": labels[s] for s in SPLITS if s in (labels or {})}


def store(npz: Path, splits: dict[str, np.ndarray], labels: dict[str, np.ndarray] | None = None
          ) -> tuple[Path, str]:
    """Write the splits (``train_x``, ``valid_x``, ``test_x``; ``labels``: ``train_y``…) to
    ``npz`` with its ``.sha256``
    record, atomically, and return its absolute path and sha256. A file already there that
    verifies is kept: named by :func:`file_name`, it holds the same data, so nothing of another
    run is ever replaced."""
    npz = Path(npz).absolute()
    try:
        if not npz.is_file():
            raise DataError("not written yet")
        verify_record(npz, "data file", "")
    except DataError:  # missing (the usual case) or damaged: (re)write it
        write_cache(npz, _members(splits, labels))
    return npz, sha256(npz)


_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256 already checked


def _verify(path: Path, expected: str) -> None:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if _verified.get(key) == expected and expected:
        return
    fix = "the run's data file must be the one it was trained on"
    if expected:
        if sha256(path) != expected:
            raise DataError(f"data file {path} has changed since the run was made (its sha256 "
                            f"differs from data.sha256 in the config): {fix}")
    else:
        verify_record(path, "data file", fix)
    _verified[key] = expected


def load_arrays(cfg, split: str) -> Split:
    """One split of ``data.name = "arrays"`` (``cfg``: a DataConfig): the stored file verified
    against ``data.sha256`` (or its ``.sha256`` record), then uint8 pixels as they are, or
    float32 values mapped into model space by ``data.scale``/``data.offset``. The test split
    is the validation split when the user gave none."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    path = _path(cfg)
    _verify(path, cfg.sha256)
    try:
        with np.load(path, allow_pickle=False) as z:
            key = split if f"{split}_x" in z.files else "valid"
            x, y = z[f"{key}_x"], (z[f"{key}_y"] if f"{key}_y" in z.files else None)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"data file {path} is unreadable ({e})") from None
    if cfg.dtype and x.dtype != np.dtype(cfg.dtype):
        raise DataError(f"data file {path} holds {x.dtype} data, but data.dtype={cfg.dtype!r}")
    if x.dtype == np.uint8:
        return Split(x, y)
    d = int(np.prod(x.shape[1:]))
    if len(cfg.scale) not in (0, 1, d):
        raise DataError(f"data.scale has {len(cfg.scale)} values, but the data in {path} have "
                        f"{d} per example (expected 1 or {d})")
    return Split(apply_affine(x, cfg.scale, cfg.offset), y)


def stored_info(cfg) -> tuple[tuple[int, ...], np.dtype]:
    """One example's shape and the dtype of the stored training split, from the file's header
    (no data read)."""
    path = _path(cfg)
    try:
        with zipfile.ZipFile(path) as zf, zf.open("train_x.npy") as f:
            fmt = np.lib.format
            read = (fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0)
                    else fmt.read_array_header_2_0)
            shape, _, dtype = read(f)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"data file {path} is unreadable ({e})") from None
    return tuple(int(s) for s in shape[1:]), np.dtype(dtype)


def stored_dtype(cfg) -> str:
    """The dtype of a user's stored arrays, ``"uint8"`` (pixels) or ``"float32"``: the one the
    config records (``data.dtype``: :func:`infusion.fit` records it, and so does every export,
    which carries no data file), else — a run of an older version — the file's header."""
    return cfg.dtype or str(stored_info(cfg)[1])


def _path(cfg) -> Path:
    if not cfg.path:
        raise DataError("data.name=arrays needs data.path, the .npz file infusion.fit stores "
                        "in its run directory")
    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist (data.path of the run's config; was "
                        "the run directory moved or its data/ folder deleted? An export looks "
                        "for its data file beside itself)")
    return path
