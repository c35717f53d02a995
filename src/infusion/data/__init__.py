"""The data entrance (algorithms.md §1): which data set, which split, and raw data → model space.

:func:`load_split` is the one dispatch over every ``data.name`` of the config (MNIST,
Fashion-MNIST, the 2-D toys, the image sets, a user's arrays); :func:`shape_of` gives one
example's shape without reading data; :func:`load_data` keeps the training and validation splits on a device as
:class:`Data`. Splits come raw — uint8 pixels (N, C, H, W), or float32 values already in
model space (toy points (N, 2); a user's floats after the config's affine map) — and
:func:`to_model_space` (training, likelihoods: fresh dequantisation) or :func:`parzen_space`
(Parzen, k/256 without noise) map them into model space; :func:`to_data_space` takes model
space back to the data's own scale.

The sources live beside this file: :mod:`.mnist` (and the format it shares with
:mod:`.fashion`), :mod:`.images` (CIFAR-10, SVHN, CelebA, TFD, a folder), :mod:`.toys`,
:mod:`.arrays` (a user's arrays, stored by :func:`infusion.fit`); :mod:`.cache` holds the verified cache every set is kept in,
:mod:`.fetch` verified downloads and safe archive extraction, :mod:`.space` the maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import Config, DataConfig
from ..errors import InputError
from ..limits import check_tensor
from .arrays import load_arrays, stored_dtype, stored_info
from .cache import SPLITS, DataError, Split, cache_dir, verify_record, write_cache
from .fashion import ensure_fashion, load_fashion
from .fetch import Remote, check_archive, safe_extract
from .images import NAMES, SHAPES, ensure, load_images
from .mnist import ensure_mnist, load_mnist, read_idx
from .space import (
    affine_log_det,
    apply_affine,
    dequantize,
    fit_affine,
    from_unit,
    invert_affine,
    parzen_space,
    to_model_space,
    to_unit,
)
from .toys import TOYS, toy, toy_split

__all__ = [
    "NAMES",
    "SHAPES",
    "SPLITS",
    "TOYS",
    "Data",
    "DataError",
    "Remote",
    "Split",
    "affine_log_det",
    "apply_affine",
    "cache_dir",
    "check_archive",
    "class_labels",
    "dequantize",
    "ensure",
    "ensure_fashion",
    "ensure_mnist",
    "fit_affine",
    "from_unit",
    "invert_affine",
    "is_pixels",
    "load_data",
    "load_fashion",
    "load_images",
    "load_mnist",
    "load_split",
    "parzen_space",
    "read_idx",
    "safe_extract",
    "shape_of",
    "stored_dtype",
    "to_data_space",
    "to_model_space",
    "to_unit",
    "toy",
    "toy_split",
    "verify_record",
    "write_cache",
]

_NAMES = ("mnist", "fashion", *TOYS, *NAMES, "arrays")


def load_split(cfg: DataConfig, split: str, *, progress: bool = True) -> Split:
    """Split ``split`` ("train", "valid" or "test") of the data set ``cfg`` names, raw: uint8
    images (N, C, H, W) with int64 labels (or None), or float32 values in model space (toy
    points (N, 2); a user's float arrays after the affine map ``data.scale``/``data.offset``).

    Image sets come from their verified caches (filled from the source on first use, with a
    status line and, if ``progress``, bars); toys are drawn afresh (:func:`toy_split`); a
    user's arrays come from the file ``data.path``, verified against ``data.sha256``
    (:func:`~.arrays.load_arrays`). ``cfg.n_train`` > 0 keeps only the first n examples of the
    training split."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    name = cfg.name
    if name == "mnist":
        s = load_mnist(split, progress=progress)
    elif name == "fashion":
        s = load_fashion(split, progress=progress)
    elif name in TOYS:
        s = toy_split(name, split, cfg.toy_size, cfg.seed)
    elif name in NAMES:
        s = load_images(name, split, path=cfg.path, image_size=cfg.image_size, progress=progress)
    elif name == "arrays":
        s = load_arrays(cfg, split)
    else:
        raise DataError(f"unknown data set data.name={name!r}: expected one of {', '.join(_NAMES)}")
    if split == "train" and cfg.n_train:
        n = cfg.n_train
        s = Split(s.images[:n], None if s.labels is None else s.labels[:n])
    return s


def shape_of(cfg: DataConfig) -> tuple[int, ...]:
    """The shape of one example of the data set ``cfg`` names, without reading any data (an
    image folder is taken to be RGB; a user's arrays: from their file's header)."""
    if cfg.name in ("mnist", "fashion"):
        return (1, 28, 28)
    if cfg.name in TOYS:
        return (2,)
    if cfg.name == "folder":
        side = cfg.image_size or 64
        return (3, side, side)
    if cfg.name in SHAPES:
        return SHAPES[cfg.name]
    if cfg.name == "arrays":
        return stored_info(cfg)[0]
    raise DataError(f"unknown data set data.name={cfg.name!r}: expected one of {', '.join(_NAMES)}")


def is_pixels(cfg: DataConfig) -> bool:
    """Whether the data set ``cfg`` names is uint8 pixels (dequantised, algorithms.md §1) rather
    than continuous values (the toys, a user's float arrays)."""
    if cfg.name in TOYS:
        return False
    if cfg.name == "arrays":  # recorded in the config (data.dtype), or read from the file
        return stored_dtype(cfg) == "uint8"
    return True


def to_data_space(x: torch.Tensor | np.ndarray, cfg: DataConfig
                  ) -> torch.Tensor | np.ndarray:
    """Model-space outputs (samples, means; (N, ...)) in the data's own scale: pixel data as
    uint8 pixels floor(256·x) (:func:`from_unit`), float data through the inverse of the
    config's affine map (``data.scale``/``data.offset``; the identity when none is recorded),
    float32. Tensors stay tensors, arrays stay arrays. ``x`` must hold numbers, one example a
    row, with as many values per example as the map has scales (where it has one per value);
    anything else, a meta-device or sparse tensor too, is an ``InputError`` naming ``x``."""
    x = _examples_arg(x, cfg)
    if is_pixels(cfg):
        return from_unit(x)
    return invert_affine(x, cfg.scale, cfg.offset)


def _examples_arg(x, cfg: DataConfig):
    """``x`` of :func:`to_data_space`, checked (an array-like becomes an array)."""
    check_tensor(x, "x")
    if not isinstance(x, torch.Tensor):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as e:
            raise InputError(f"x: expected an array of numbers ({e})") from None
        if x.dtype.kind not in "biuf":
            raise InputError(f"x: expected numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise InputError(f"x: shape {tuple(x.shape)}; expected one example a row, (N, ...)")
    d = int(np.prod(x.shape[1:]))
    if len(cfg.scale) > 1 and d != len(cfg.scale):
        raise InputError(f"x: {d} values per example, but the data's map (data.scale) has "
                         f"{len(cfg.scale)}, one per value")
    return x


@dataclass
class Data:
    """Splits as stored (uint8 pixels, or float 2-D points), and the map into model space;
    for a class-conditional model (algorithms.md §15) the classes of both splits, (N,) int64."""

    train: torch.Tensor
    valid: torch.Tensor
    shape: tuple[int, ...]
    pixels: bool  # uint8 pixels that get dequantised (algorithms.md §1); else continuous toy points
    train_labels: torch.Tensor | None = None
    valid_labels: torch.Tensor | None = None

    def labels(self, split: str, idx) -> torch.Tensor | None:
        """The classes of examples ``idx`` of ``split`` ("train" or "valid"), or None for an
        unconditional model."""
        y = self.train_labels if split == "train" else self.valid_labels
        return None if y is None else y[idx]

    def model_space(self, raw: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Flat model-space batch (B, d): dequantised pixels (algorithms.md §1) or the points as they are."""
        return to_model_space(raw, generator)


def load_data(cfg: Config, device: torch.device | str = "cpu", *,
              progress: bool = True) -> Data:
    """Training and validation splits for ``cfg.data``, kept on ``device``; with their classes
    when ``model.classes`` > 0 (:func:`class_labels`)."""
    splits = {s: load_split(cfg.data, s, progress=progress) for s in ("train", "valid")}
    train = splits["train"].images
    t, v = (torch.from_numpy(np.ascontiguousarray(splits[s].images)).to(device)
            for s in ("train", "valid"))
    labels = [None, None]
    if cfg.model.classes:
        labels = [class_labels(splits[s], cfg, s).to(device) for s in ("train", "valid")]
    return Data(t, v, tuple(train.shape[1:]), train.dtype == np.uint8, *labels)


def class_labels(split: Split, cfg: Config, name: str) -> torch.Tensor:
    """The int64 classes of a split for a class-conditional model (algorithms.md §15), checked
    against ``model.classes``."""
    k = cfg.model.classes
    if split.labels is None:
        raise DataError(f"model.classes={k} needs labelled data, but the {name} split of "
                        f"data.name={cfg.data.name!r} has no labels")
    y = torch.from_numpy(np.asarray(split.labels, np.int64))
    if len(y) != len(split.images):
        raise DataError(f"the {name} split has {len(split.images)} examples but {len(y)} labels")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
        raise DataError(f"the {name} split's labels span {int(y.min())}..{int(y.max())}; "
                        f"model.classes={k} needs classes 0..{k - 1}")
    return y
