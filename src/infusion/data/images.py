"""Natural-image data sets of algorithms.md §1: CIFAR-10, SVHN, CelebA 64×64, TFD and any image folder.

Every set is cached once as ``<cache>/<name>/<name>-uint8.npz`` (uint8 images (N, C, H, W),
int64 labels where the set has them, splits ``train``/``valid``/``test``) next to a
``.sha256`` record that is verified on every load, exactly like MNIST
(:mod:`infusion.data.cache`). Downloads and archives go through :mod:`infusion.data.fetch`:
sha256-verified, and archives refused whole if any member is unsafe.

Sources:
  * ``cifar10``: the python tarball from cs.toronto.edu (sha256-verified download, or a copy
    placed at ``<cache>/cifar10/cifar-10-python.tar.gz`` or given as ``path``). train = the
    first 45,000 of the 50,000 training images, valid = the last 5,000, test = the official
    10,000.
  * ``svhn``: ``train_32x32.mat`` and ``test_32x32.mat`` from ufldl.stanford.edu (verified;
    or placed in ``<cache>/svhn/`` or in the directory ``path``). valid = the last 10% of
    the official training set; label 10 (digit 0) becomes 0.
  * ``celeba``: the aligned images (``img_align_celeba.zip`` or its extracted folder, which
    CelebA distributes through Google Drive only, so the user supplies it as ``path``); the
    centre 108×108 of each 178×218 image (the DCGAN convention) resized to 64×64; the official
    partition by file number (train 1–162,770, valid –182,637, test the rest).
  * ``tfd``: the Toronto Face Database (not public) as the user's ``TFD_48x48.mat`` (``images``
    (N, 48, 48) and ``folds`` (N, 5), the pylearn2 layout); fold 0: train = unlabelled +
    training examples (folds 0 and 1), valid = 2, test = 3.
  * ``folder``: every image under the directory ``path`` (recursively), centre-cropped to a
    square and resized to ``image_size`` (default 64), RGB unless every image is greyscale;
    a fixed permutation (seed 0) puts 10% in valid and 10% in test. The cache is keyed by the
    folder's listing (names, sizes, times), so a changed folder is read afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import pickle
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.io import loadmat
from scipy.io.matlab import MatReadError
from tqdm.auto import tqdm

from .._logging import bar_disable
from ..io import path_kind
from ..limits import IMAGE_SIDE_MAX, check_memory
from .cache import SPLITS, DataError, Split, cache_dir, verify_record, write_cache
from .fetch import (
    ArraysOnly,
    Remote,
    check_archive,
    fetch_remote,
    given_copy,
    not_a_file,
    safe_extract,
)

NAMES = ("cifar10", "svhn", "celeba", "tfd", "folder")
SHAPES = {"cifar10": (3, 32, 32), "svhn": (3, 32, 32), "celeba": (3, 64, 64), "tfd": (1, 48, 48)}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
logger = logging.getLogger(__name__)


# Module-level so that tests can point them at small local files.
CIFAR10 = Remote("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                 "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170_498_071)
CIFAR10_VALID = 5_000  # the last 5,000 of the 50,000 training images
SVHN = {  # md5s e26dedcc434d2e4c54c9b2d4a06d8373 and eb5a983be6a315427106f1b164d9cef3
    "train": Remote("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                    "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8", 182_040_794),
    "test": Remote("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                   "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b", 64_275_384),
}
CELEBA_CROP, CELEBA_SIZE = 108, 64
CELEBA_LAST = {"train": 162_770, "valid": 182_637}  # list_eval_partition.txt, by file number
CELEBA_MD5 = "00d2c5bc6d35e252742224ab0c1e8fcb"  # img_align_celeba.zip as distributed


def load_images(name: str, split: str, *, path: str | Path = "", image_size: int = 0,
                cache: str | Path | None = None, timeout: float = 30.0,
                progress: bool = True) -> Split:
    """One split ("train", "valid", "test") of data set ``name``: uint8 images (N, C, H, W) and
    int64 labels (or None), from the verified cache, filled from the source on first use."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    npz = ensure(name, path=path, image_size=image_size, cache=cache, timeout=timeout,
                 progress=progress)
    return read_cache(npz, split)


def ensure(name: str, *, path: str | Path = "", image_size: int = 0,
           cache: str | Path | None = None, timeout: float = 30.0,
           progress: bool = True) -> Path:
    """Make sure the cache holds data set ``name`` (verified) and return the npz's path.
    A status line or two is logged (``infusion.data`` loggers) when the cache is built;
    ``progress`` shows bars for downloads and image decoding on a terminal."""
    if name not in NAMES:
        raise DataError(f"unknown image data set {name!r}: expected one of {', '.join(NAMES)}")
    if not 0 <= image_size <= IMAGE_SIDE_MAX:
        raise DataError(f"image size {image_size}: expected 0 to {IMAGE_SIDE_MAX:,} pixels a "
                        "side (0 = 64)")
    root = (Path(cache) if cache is not None else cache_dir()) / name
    if name == "folder":
        npz = root / f"folder-{_folder_key(path, image_size or 64)}.npz"
    else:
        npz = root / f"{name}-uint8.npz"
    if npz.exists() or npz.with_name(npz.name + ".sha256").exists():
        read_cache(npz, None)
        return npz
    root.mkdir(parents=True, exist_ok=True)
    build = {"cifar10": lambda: _cifar10(root, path, timeout, progress),
             "svhn": lambda: _svhn(root, path, timeout, progress),
             "celeba": lambda: _celeba(path, progress),
             "tfd": lambda: _tfd(path),
             "folder": lambda: _folder(path, image_size or 64, progress)}[name]
    logger.info(f"{name}: not in the cache yet, building it once from its source")
    arrays = build()
    for s in SPLITS:
        _check_images(arrays[f"{s}_x"], f"{name} {s} split")
    write_cache(npz, arrays)
    logger.info(f"{name}: cached at {npz}")
    return npz


def read_cache(npz: Path, split: str | None) -> Split | None:
    """Verify the cache file against its sha256 record, then load one split (None: check only)."""
    fix = f"delete {npz} (and {npz.name}.sha256) and run again to rebuild it"
    verify_record(npz, "cache", fix)
    if split is None:
        return None
    try:
        with np.load(npz, allow_pickle=False) as z:
            x = z[f"{split}_x"]
            y = z[f"{split}_y"] if f"{split}_y" in z.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"cache {npz} is unreadable ({e}): {fix}") from None
    _check_images(x, npz)
    return Split(x, y)


def _check_images(x: np.ndarray, where: object) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"{where}: images are {x.dtype}{x.shape}, expected uint8 (N, 1|3, H, W)")


def _split_off_valid(x: np.ndarray, y: np.ndarray | None, n_valid: int,
                     test: tuple[np.ndarray, np.ndarray | None]) -> dict[str, np.ndarray]:
    """Cache arrays: the last n_valid training examples become the validation split."""
    parts = {"train": (x[:-n_valid], None if y is None else y[:-n_valid]),
             "valid": (x[-n_valid:], None if y is None else y[-n_valid:]), "test": test}
    out = {}
    for s, (xs, ys) in parts.items():
        out[f"{s}_x"] = np.ascontiguousarray(xs, np.uint8)
        if ys is not None:
            out[f"{s}_y"] = np.asarray(ys, np.int64).reshape(-1)
    return out


# ----------------------------------------------------------------------------- sources


def _cifar10(root: Path, path: str | Path, timeout: float,
             progress: bool) -> dict[str, np.ndarray]:
    """CIFAR-10 python tarball -> 45k/5k/10k uint8 (N, 3, 32, 32) with labels."""
    tarball = (given_copy(path, CIFAR10) if path else
               fetch_remote(CIFAR10, root / "cifar-10-python.tar.gz", timeout, progress))
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        safe_extract(tarball, tmp)
        batches = Path(tmp) / "cifar-10-batches-py"
        train = [_cifar_batch(batches / f"data_batch_{i}") for i in range(1, 6)]
        test = _cifar_batch(batches / "test_batch")
    x = np.concatenate([b[0] for b in train])
    y = np.concatenate([b[1] for b in train])
    out = _split_off_valid(x, y, min(CIFAR10_VALID, max(1, len(x) // 10)), test)
    if not path:
        tarball.unlink()  # the cache holds everything; the 170 MB tarball is no longer needed
    return out


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch: {b'data': uint8 (n, 3072), b'labels': [n ints]}."""
    try:
        with open(path, "rb") as f:
            d = ArraysOnly(f, encoding="bytes").load()
        x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], np.int64)
    except (OSError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as e:
        raise DataError(f"{path.name} in the CIFAR-10 tarball is not a CIFAR batch ({e})") from None
    if len(x) != len(y):
        raise DataError(f"{path.name}: {len(x)} images but {len(y)} labels")
    return x, y


def _svhn(root: Path, path: str | Path, timeout: float,
          progress: bool) -> dict[str, np.ndarray]:
    """SVHN cropped digits (.mat) -> train/valid (last 10%)/test uint8 (N, 3, 32, 32)."""
    loaded = {}
    for split, remote in SVHN.items():
        fname = remote.url.rsplit("/", 1)[1]
        mat = (given_copy(Path(path) / fname, remote) if path
               else fetch_remote(remote, root / fname, timeout, progress))
        loaded[split] = _svhn_mat(mat)
    x, y = loaded["train"]
    out = _split_off_valid(x, y, max(1, len(x) // 10), loaded["test"])
    if not path:
        for remote in SVHN.values():
            (root / remote.url.rsplit("/", 1)[1]).unlink()
    return out


def _svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """X (32, 32, 3, N) uint8 and y (N, 1) in 1..10 -> (N, 3, 32, 32) and labels 0..9."""
    mat = _loadmat(path)
    try:
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    except KeyError as e:
        raise DataError(f"{path}: no {e} array; not an SVHN *_32x32.mat file") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise DataError(f"{path}: X is {x.dtype}{x.shape}, expected uint8 (32, 32, 3, {len(y)})")
    return x.transpose(3, 2, 0, 1), y.astype(np.int64) % 10


def _loadmat(path: Path) -> dict:
    """The arrays of a MATLAB .mat file; a file scipy cannot parse (whatever it raises on
    it: not a .mat file, truncated, or an HDF5-based v7.3 file) is a :class:`DataError`."""
    try:
        return loadmat(path)
    except (OSError, ValueError, TypeError, LookupError, EOFError, ArithmeticError,
            NotImplementedError, struct.error, zlib.error, MatReadError) as e:
        raise DataError(f"{path} is not a readable MATLAB .mat file ({type(e).__name__}: "
                        f"{e})") from None


def _tfd(path: str | Path) -> dict[str, np.ndarray]:
    """The user's TFD_48x48.mat: images (N, 48, 48) and folds (N, 5); fold 0 splits it."""
    if not path:
        raise DataError("the Toronto Face Database is not public: pass the path of your "
                        "TFD_48x48.mat as data.path (e.g. --set data.path=/data/TFD_48x48.mat)")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.path={str(path)!r}: {not_a_file(p)}")
    mat = _loadmat(p)
    if "images" not in mat or "folds" not in mat:
        raise DataError(f"{p}: expected arrays 'images' (N, H, W) and 'folds' (N, 5), found "
                        f"{sorted(k for k in mat if not k.startswith('__'))}")
    x, folds = np.asarray(mat["images"]), np.asarray(mat["folds"])
    if x.ndim != 3 or folds.ndim != 2 or len(folds) != len(x) or x.dtype != np.uint8:
        raise DataError(f"{p}: images {x.dtype}{x.shape} and folds {folds.shape} do not match "
                        "the TFD layout (uint8 (N, H, W), (N, 5))")
    fold = folds[:, 0]
    out = {}
    for s, ids in (("train", (0, 1)), ("valid", (2,)), ("test", (3,))):
        out[f"{s}_x"] = np.ascontiguousarray(x[np.isin(fold, ids)][:, None])
    return out


def _image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder``, its subfolders' too, sorted. Links to folders are
    not followed (they may loop), so one inside ``folder`` is refused (DataError naming it)
    rather than its images silently left out; so is a symlink loop (links naming each other,
    which lead to no file or folder at all: what it was meant to name would be left out).
    The walk never follows a link, so it ends whatever links the tree holds."""
    found = []
    for root, dirs, names in os.walk(folder):
        for d in sorted(dirs):
            if os.path.islink(os.path.join(root, d)):
                raise DataError(f"{os.path.join(root, d)!r} is a link to a folder, which is not "
                                f"followed: its images would be left out of {str(folder)!r}; "
                                "copy them in, or give the linked folder itself")
        for n in sorted(names):
            p = Path(root) / n
            if p.is_symlink() and path_kind(p) == "a symlink loop":
                raise DataError(f"{str(p)!r} is a symlink loop (links that name each other, "
                                "leading to no file or folder): what it was meant to hold would "
                                f"be left out of {str(folder)!r}; remove or repair the link")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                found.append(p)
    return sorted(found)


def _directory(path: str | Path) -> Path:
    """``data.path`` of an image folder, which must be a directory: a DataError saying what it
    is instead (nothing, a file, a symlink loop …)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        kind = path_kind(folder)
        raise DataError(f"data.path={str(path)!r}: " + (
            "no such directory" if kind == "nothing" else f"{kind}, not a directory"))
    return folder


def _folder_key(path: str | Path, size: int) -> str:
    """A short hash of the folder's listing (names, sizes, mtimes) and the crop size."""
    if not path:
        raise DataError("data.name=folder needs data.path, the directory of images")
    folder = _directory(path)
    h = hashlib.sha256(f"{folder.resolve()}|{size}".encode())
    for p in _image_files(folder):
        st = p.stat()
        h.update(f"|{p.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def centre_crop(img, crop: int | None, size: int):
    """The centre square of side ``crop`` (default: the shorter side) resized to size×size."""
    w, h = img.size
    c = min(w, h) if crop is None else min(crop, w, h)
    left, top = (w - c) // 2, (h - c) // 2
    img = img.crop((left, top, left + c, top + c))
    return img if c == size else img.resize((size, size), Image.Resampling.LANCZOS)


def _decode(items: Iterable[tuple[str, Callable[[], bytes]]], n: int, crop: int | None,
            size: int, mode: str, desc: str, progress: bool) -> np.ndarray:
    """Decode, crop and resize images into a uint8 (n, C, size, size) array."""
    c = 3 if mode == "RGB" else 1
    # the decoded images, and the splits taken from them
    check_memory(2 * n * c * size * size, f"{n:,} images of {c}×{size}×{size} pixels")
    out = np.empty((n, c, size, size), np.uint8)
    bar = tqdm(items, total=n, desc=desc, leave=False, disable=bar_disable(progress))
    for i, (name, read) in enumerate(bar):
        try:
            with Image.open(io.BytesIO(read())) as img:
                arr = np.asarray(centre_crop(img.convert(mode), crop, size), np.uint8)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{name}: not a readable image ({e})") from None
        out[i] = arr.reshape(size, size, c).transpose(2, 0, 1)
    return out


def _folder(path: str | Path, size: int, progress: bool) -> dict[str, np.ndarray]:
    """Every image under a directory -> centre crops, split 80/10/10 by a fixed permutation."""
    folder = _directory(path)
    files = _image_files(folder)
    if len(files) < 3:
        raise DataError(f"data.path={str(path)!r} holds {len(files)} images "
                        f"({', '.join(IMAGE_SUFFIXES)}); need at least 3 (train, valid, test)")
    grey = all(_mode(p) in ("1", "L", "I;16", "I") for p in files)
    x = _decode(((str(p), p.read_bytes) for p in files), len(files), None, size,
                "L" if grey else "RGB", f"reading {folder}", progress)
    order = np.random.default_rng(0).permutation(len(files))
    k = max(1, len(files) // 10)
    parts = {"test": order[:k], "valid": order[k:2 * k], "train": order[2 * k:]}
    return {f"{s}_x": x[np.sort(idx)] for s, idx in parts.items()}


def _mode(path: Path) -> str:
    """An image file's mode, from its header; a file that is no image (or a decompression
    bomb: more pixels than PIL's ``Image.MAX_IMAGE_PIXELS`` allows) is a DataError."""
    try:
        with Image.open(path) as img:
            return img.mode
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def _celeba(path: str | Path, progress: bool) -> dict[str, np.ndarray]:
    """CelebA aligned images (zip or folder) -> 64×64 centre crops, official partition."""
    if not path:
        raise DataError(
            "CelebA is distributed through Google Drive only, so it cannot be fetched here. "
            "Download img_align_celeba.zip from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html "
            "('Align&Cropped Images') and pass it, or the folder it extracts to, as data.path "
            "(e.g. --set data.path=~/Downloads/img_align_celeba.zip)")
    p = Path(path).expanduser()
    with contextlib.ExitStack() as stack:
        if p.is_dir():
            files = {f.name: f.read_bytes for f in _image_files(p)}
        elif p.is_file() and zipfile.is_zipfile(p):
            names = [n for n in check_archive(p) if n.lower().endswith(IMAGE_SUFFIXES)]
            zf = stack.enter_context(zipfile.ZipFile(p))
            files = {PurePosixPath(n).name: (lambda n=n: zf.read(n)) for n in names}
            if _md5(p) != CELEBA_MD5:
                logger.warning(f"{p} is not byte-identical to the distributed "
                               f"img_align_celeba.zip (md5 {CELEBA_MD5}); using its images as "
                               "they are")
        else:
            raise DataError(f"data.path={str(path)!r}: expected img_align_celeba.zip or the "
                            "folder it extracts to")
        try:
            numbered = sorted((int(Path(n).stem), n) for n in files)
        except ValueError:
            raise DataError(f"{p}: CelebA images are named by number (000001.jpg …); found "
                            f"{sorted(files)[:3]}") from None
        if not numbered:
            raise DataError(f"{p}: no images found")
        out = {}
        for s in SPLITS:
            names = [n for k, n in numbered if _celeba_split(k) == s]
            out[f"{s}_x"] = _decode(((n, files[n]) for n in names), len(names), CELEBA_CROP,
                                    CELEBA_SIZE, "RGB", f"CelebA {s}", progress)
    return out


def _celeba_split(k: int) -> str:
    """The official partition of CelebA image number k."""
    return "train" if k <= CELEBA_LAST["train"] else "valid" if k <= CELEBA_LAST["valid"] else "test"


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
