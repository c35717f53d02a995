"""A model of the user's own data in one call: :func:`fit`.

``fit`` takes what a user has — a numpy array, a tensor, a ``torch.utils.data.Dataset``, a
``.npy``/``.npz`` file or a folder of images — and builds the run's config around it: the data
stored in the run directory as a verified ``.npz`` (:mod:`infusion.data.arrays`; a folder is
decoded first, by :mod:`infusion.data.images`), the map into model space recorded
in ``data.*``, and the network from a preset or, without one, an MLP sized by the data
(:func:`mlp_widths`). Then it calls :func:`infusion.train` and hands back the trained model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data

from .. import config as config_mod
from .._logging import messages_to
from ..chain.model import ChainModel
from ..chain.sampler import sample_chain
from ..config import Config, DataConfig
from ..data import arrays as arrays_mod
from ..data import to_data_space
from ..data.images import IMAGE_SUFFIXES, _image_files, load_images
from ..data.space import fit_affine
from ..device import resolve_device
from ..errors import InputError, UserError
from ..io import delete_own, folder_path, path_kind
from ..limits import check_tensor
from ..models import load_model
from .loop import train
from .rundir import RunError, claim, run_files
from .state import check_init_from

FOLDER_IMAGE_SIZE = 32  # a folder's crops without a preset: the `folder` preset's size
_TRAIN_KWARGS = ("device", "overwrite", "progress")
_OWN_DATA_KEYS = ("data.name", "data.path", "data.sha256", "data.dtype")  # fit() sets these itself


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained ``model`` (a :class:`ChainModel` in eval mode
    with its per-step batch-norm statistics, algorithms.md §6), its ``config``, the
    ``run_dir`` and the final ``checkpoint``. Unpacks like :func:`infusion.load_model`:
    ``model, cfg = infusion.fit(x)``."""

    model: ChainModel
    config: Config
    run_dir: Path
    checkpoint: Path

    def __iter__(self):
        return iter((self.model, self.config))

    def sample(self, n: int = 64, steps: int | None = None, seed: int = 0, *,
               means: bool = False) -> np.ndarray:
        """``n`` samples (sample i from seed ``seed + i``; the chain's final states, or its
        final means with ``means=True``) in the data's own scale
        (:func:`infusion.data.to_data_space`): floats mapped back by the recorded affine map,
        pixels as uint8 (N, C, H, W)."""
        res = sample_chain(self.model, n, steps, seed)
        return to_data_space((res.means if means else res.samples).numpy(), self.config.data)


UNET_CHANNELS = (32, 64, 64)  # model.net=unet without a preset: channels at 1, 1/2, 1/4 of the side


def mlp_widths(d: int) -> tuple[int, int]:
    """Two hidden layers of 2·d units rounded up to a multiple of 64, kept within [128, 1200]:
    128 for 2-D points (the spiral presets' width), 1200 from d = 600 on (the paper's MNIST
    network, d = 784)."""
    return (min(1200, max(128, 64 * math.ceil(2 * d / 64))),) * 2


def fit(data: Any, *, preset: str | Config | None = None, run_dir: str | Path | None = None,
        valid: Any = None, labels: Any = None, valid_labels: Any = None,
        overrides: Sequence[str] = (), **train_kwargs: Any) -> FitResult:
    """Train a model of the user's own ``data`` and return a :class:`FitResult`.

    ``data``: a numpy array or tensor of examples, a map-style ``torch.utils.data.Dataset``
    (items: tensors, arrays, PIL images, or (x, y) tuples whose x is taken), the path of a
    ``.npy`` file or of an ``.npz`` with ``train`` (and ``valid``, ``test``) or ``x``, or a
    folder of images. uint8 arrays are pixels, dequantised as MNIST is (algorithms.md §1);
    other numbers are floats: used as they are when the training set lies in [0, 1], else
    mapped into [0.05, 0.95] by its min/max (per dimension for vectors, one map for images;
    :func:`infusion.data.fit_affine`), the map recorded as ``data.scale``/``data.offset``.

    ``valid``: the validation examples (same kinds as ``data``, not a folder); else a fixed
    10% (at least 2) of the training data, drawn with ``np.random.default_rng(0)``. A folder
    is decoded into square centre crops (``data.image_size``, else 32) and split 80/10/10 by
    the image loader; its pixels are stored as arrays are, so the folder may move or change
    afterwards. Without a test split, ``evaluate`` scores the validation split.

    ``labels`` (and ``valid_labels`` with ``valid``): one integer class 0…K-1 per example,
    for a class-conditional model (algorithms.md §15; ``model.classes`` = K, the largest class
    + 1, unless the preset or an override sets it); stored beside the arrays. An ``.npz``
    with ``y`` or ``train_y`` (``valid_y``, ``test_y``) brings its own.

    ``preset`` (a name or a :class:`Config`) gives the network, method and training settings;
    without one, the defaults (the paper's: T = 15, Adam 1e-3, batch 512, early stopping)
    with an MLP of :func:`mlp_widths` (d) (with ``model.net=unet``: a U-Net of
    :data:`UNET_CHANNELS`), and a folder read at 32×32. ``overrides`` are
    ``--set`` strings (``"train.epochs=5"``); the rest (``device``, ``overwrite``,
    ``progress``) go to :func:`infusion.train`. Messages go to the ``infusion`` loggers of
    :mod:`logging` (``log=``, a callable that receives them instead, is kept for one
    version). ``run_dir`` defaults to ``runs/<file or folder name>``, or
    ``runs/fit-<hash of the data>`` for in-memory data.

    Arrays are stored in ``run_dir/data/`` (a ``.npz`` named by its content, with a
    ``.sha256`` record) and the config records its absolute path and sha256, so the run's
    ``evaluate``, ``sample`` and ``figures`` read exactly these data from any directory.
    """
    with messages_to(train_kwargs.pop("log", None)):
        return _fit(data, preset, run_dir, valid, labels, valid_labels, overrides, train_kwargs)


def _fit(data: Any, preset: str | Config | None, run_dir: str | Path | None, valid: Any,
         labels: Any, valid_labels: Any, overrides: Sequence[str], train_kwargs: dict
         ) -> FitResult:
    """:func:`fit`, its messages already routed."""
    if "resume" in train_kwargs:
        raise InputError("fit() starts a new run; continue one with "
                         "infusion.train(None, run_dir, resume=True)")
    unknown = sorted(set(train_kwargs) - set(_TRAIN_KWARGS))
    if unknown:
        raise InputError(f"fit() got unexpected argument(s) {', '.join(unknown)}; it passes "
                         f"{', '.join(_TRAIN_KWARGS)} on to infusion.train")
    owned = [o for o in overrides if o.split("=", 1)[0].strip() in _OWN_DATA_KEYS]
    if owned:
        raise InputError(f"{owned[0].split('=', 1)[0].strip()}: fit() stores the data it is "
                         "given in the run directory and records that file; pass the data "
                         "itself instead (--data PATH)")
    base = _base_config(preset)
    folder = _folder(data)
    if folder is not None:
        if labels is not None or valid_labels is not None:
            raise InputError("labels=: a folder of images has no labels; pass arrays")
        if valid is not None:
            raise InputError(f"valid=: a folder of images ({folder}) is split 80/10/10 by its "
                             "own loader; pass valid= with arrays only")
        size = config_mod.override(base, list(overrides)).data.image_size or FOLDER_IMAGE_SIZE
        splits, name, split_off = _folder_splits(folder, size, train_kwargs), folder.name, False
    else:
        splits, name, split_off = _array_splits(data, valid)
    in_file = {}  # the classes a .npz holds beside its examples
    if (folder is None and labels is None and valid_labels is None
            and isinstance(data, (str, os.PathLike))):
        in_file = arrays_mod.read_labels(Path(data).expanduser())
        labels, valid_labels = in_file.get("train"), in_file.get("valid")
    ys = _labels(splits, labels, valid_labels, split_off)
    if ys and "test" in splits:  # a file's test split: evaluate scores log p(x | y) on it
        if len(in_file.get("test", ())) != len(splits["test"]):
            raise InputError(f"{str(data)!r}: its test examples need their classes too "
                             f"(test_y, {len(splits['test'])} integers)")
        ys["test"] = _classes(in_file["test"], "test")
    if ys and not base.model.classes:
        base = replace(base, model=replace(base.model, classes=int(ys["train"].max()) + 1))
    file_name = arrays_mod.file_name(splits, ys)  # arrays-<hash of the data>.npz
    run_dir = Path(run_dir or Path("runs") / (name or f"fit-{file_name[7:15]}"))
    scale, offset = _float_map(splits["train"])
    dc = DataConfig(name="arrays", path=str(run_dir / "data" / file_name), scale=scale,
                    offset=offset, dtype=str(splits["train"].dtype))
    cfg = config_mod.override(replace(base, data=dc), list(overrides))
    cfg = replace(cfg, data=replace(cfg.data, image_size=0))  # a folder's size is in its pixels
    cfg = _size_network(cfg, preset, overrides, splits["train"].shape[1:])
    _check_run_dir(run_dir, bool(train_kwargs.get("overwrite")), cfg.data.path)
    check_init_from(cfg, run_dir, bool(train_kwargs.get("overwrite")))
    # the arrays live in the run directory, verified on every load
    stored_before = Path(cfg.data.path).is_file()
    path, digest = arrays_mod.store(Path(cfg.data.path), splits, ys)
    cfg = replace(cfg, data=replace(cfg.data, path=str(path), sha256=digest)).validate()
    try:
        final = train(cfg, run_dir, **train_kwargs)
    except UserError:
        if not stored_before and not _has_checkpoint(run_dir):
            _unstore(path)  # a refused run: the data file stored for it goes with it
        raise
    model, cfg = load_model(final, resolve_device(train_kwargs.get("device", "auto")))
    return FitResult(model.eval(), cfg, run_dir, Path(final))


def _has_checkpoint(run_dir: Path) -> bool:
    """Whether the run got as far as a resumable checkpoint (one its data must stay for)."""
    return any((Path(run_dir) / "checkpoints").glob("epoch-*.pt"))


def _unstore(path: Path) -> None:
    """Delete a data file :func:`fit` stored for a run that was refused before it began, and
    its sha256 record: a refused command leaves nothing behind."""
    for p in (path, path.with_name(path.name + ".sha256")):
        if p.exists():
            delete_own(p)


def _base_config(preset: str | Config | None) -> Config:
    if preset is None:
        return Config()
    if isinstance(preset, Config):
        return preset.validate()
    if isinstance(preset, str):
        return config_mod.preset(preset)
    raise InputError(f"preset={preset!r}: expected a preset name (see infusion.PRESETS) or a "
                     "Config")


def _folder(data: Any) -> Path | None:
    """A folder of images -> its absolute path; None for anything that is not a directory."""
    if not isinstance(data, (str, os.PathLike)):
        return None
    p = Path(data).expanduser()
    if not p.is_dir():
        return None
    n = len(_image_files(p))
    if n < 3:
        raise InputError(f"folder {str(p)!r} holds {n} image(s) ({', '.join(IMAGE_SUFFIXES)}); "
                         "expected at least 3 (split into train, valid and test)")
    return p.absolute()


def _folder_splits(folder: Path, size: int, train_kwargs: dict) -> dict[str, np.ndarray]:
    """A folder's train / valid / test images, uint8 (N, C, size, size): decoded once through
    the image cache (:func:`infusion.data.images.load_images`, an 80/10/10 split)."""
    return {s: load_images("folder", s, path=folder, image_size=size,
                           progress=train_kwargs.get("progress", True)).images
            for s in ("train", "valid", "test")}


def _array_splits(data: Any, valid: Any) -> tuple[dict[str, np.ndarray], str | None, bool]:
    """The user's train / valid (/ test) examples, checked, the file's name (None for data in
    memory), and whether the validation split was taken from the training examples."""
    if isinstance(data, (str, os.PathLike)):
        p = Path(data).expanduser()
        if path_kind(p) == "nothing":
            raise InputError(f"{str(p)!r}: no such file or folder")
        raw, name = arrays_mod.read_file(p), p.stem  # names what else p is
    else:
        raw, name = {"train": _examples_of(data, "data")}, None
    if valid is not None:
        if "valid" in raw:
            raise InputError(f"valid=: {str(data)!r} already holds a validation split")
        raw["valid"] = _examples_of(valid, "valid")
    what = ({s: f"{str(data)!r} ({s})" for s in raw} if name else
            {"train": "data", "valid": "valid", "test": "test"})
    splits = {s: arrays_mod.as_examples(x, what[s]) for s, x in raw.items()}
    train = splits["train"]
    for s, x in splits.items():
        if x.shape[1:] != train.shape[1:] or (x.dtype == np.uint8) != (train.dtype == np.uint8):
            raise InputError(f"{s} examples are {x.dtype} {x.shape[1:]} but the training "
                             f"examples {train.dtype} {train.shape[1:]}: they must match")
    split_off = "valid" not in splits
    if split_off:
        splits["train"], splits["valid"] = arrays_mod.split_valid(train)
    if len(splits["train"]) < 2:
        raise InputError(f"{len(splits['train'])} training example(s): per-step batch norm "
                         "needs at least 2")
    return splits, name, split_off


def _labels(splits: dict[str, np.ndarray], labels: Any, valid_labels: Any, split_off: bool
            ) -> dict[str, np.ndarray]:
    """The classes of the train and valid splits (algorithms.md §15), checked: integers >= 0,
    one per example; {} without labels. A validation split fit() took from the data takes
    its labels from the same rows."""
    if labels is None:
        if valid_labels is not None:
            raise InputError("valid_labels= needs labels= for the training data too")
        return {}
    given = {"train": labels} | ({} if valid_labels is None else {"valid": valid_labels})
    ys = {s: _classes(y, s) for s, y in given.items()}
    if split_off == (valid_labels is not None):
        raise InputError("valid_labels= goes with valid= (the validation examples' classes)"
                         if split_off else "valid_labels=: needed with a validation split")
    n_train = len(splits["train"]) + (len(splits["valid"]) if split_off else 0)
    if len(ys["train"]) != n_train:
        raise InputError(f"labels: {len(ys['train'])} classes for {n_train} training examples")
    if split_off:  # fit() took the validation split from the training data: the same rows
        ys["train"], ys["valid"] = arrays_mod.split_valid(ys["train"])
    elif len(ys["valid"]) != len(splits["valid"]):
        raise InputError(f"valid_labels: {len(ys['valid'])} classes for "
                         f"{len(splits['valid'])} validation examples")
    return ys


def _classes(y: Any, split: str) -> np.ndarray:
    """One split's classes as int64, checked: one integer >= 0 per example."""
    what = "labels" if split == "train" else f"{split} labels"
    check_tensor(y, what)
    try:
        y = np.asarray(y.detach().cpu() if hasattr(y, "detach") else y)
    except (ValueError, TypeError) as e:  # ragged lists
        raise InputError(f"{what}: expected one integer class >= 0 per example ({e})") from None
    if y.ndim != 1 or y.dtype.kind not in "iu" or (len(y) and y.min() < 0):
        raise InputError(f"{split} labels: expected one integer class >= 0 per example, got "
                         f"{y.dtype} of shape {y.shape}")
    return y.astype(np.int64)


def _examples_of(x: Any, what: str) -> Any:
    """An array-like as it is; a Dataset stacked; a path to a .npy/.npz read (train split)."""
    if isinstance(x, torch.utils.data.Dataset):
        return arrays_mod.from_dataset(x, what)
    if isinstance(x, (str, os.PathLike)):
        p = Path(x).expanduser()
        if not p.is_file():
            raise InputError(f"{what}={str(x)!r}: no such file")
        return arrays_mod.read_file(p)["train"]
    return x


def _float_map(train: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """No map for pixels or floats already in [0, 1]; else min/max onto [0.05, 0.95]."""
    if train.dtype == np.uint8 or (train.min() >= 0 and train.max() <= 1):
        return (), ()
    return fit_affine(train, per_dimension=train.ndim == 2)


def _size_network(cfg: Config, preset, overrides: Sequence[str], shape: tuple[int, ...]
                  ) -> Config:
    """Without a preset (or a model.hidden override), the MLP's widths from d, or the U-Net's
    :data:`UNET_CHANNELS` (the default widths are the paper's MLP's, far too many channels)."""
    if preset is not None or cfg.model.net == "conv" or any(
            o.split("=", 1)[0].strip() == "model.hidden" for o in overrides):
        return cfg
    hidden = mlp_widths(math.prod(shape)) if cfg.model.net == "mlp" else UNET_CHANNELS
    return replace(cfg, model=replace(cfg.model, hidden=hidden)).validate()


def _check_run_dir(run_dir: Path, overwrite: bool, data: str) -> None:
    """Refuse a directory that holds a run, and everything the run's claim of it would refuse
    (:func:`infusion.training.rundir.claim`, ``data``: the new run's data file), before
    anything is written into it; the replaced run's data file goes with it only then. A
    path that cannot be a folder (a file, or a path below one) is refused first."""
    folder_path(run_dir, "run_dir")
    used = [str(p.relative_to(run_dir)) for p in run_files(run_dir)]
    if used and not overwrite:
        raise RunError(f"run directory {str(run_dir)!r} already holds a run ({', '.join(used)}); "
                       "pass overwrite=True (--overwrite) to replace it, or another run_dir")
    claim(run_dir, overwrite, main=False, data=data)  # checks alone

