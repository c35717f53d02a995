"""Checkpoints and exported models as plain data (docs/design.md): safe loading, a ``latest``
pointer, and the inference format ``config.json`` + ``model.safetensors``.

A checkpoint is a dict of state dicts, the config as a dict, counters and RNG states, loadable
with ``torch.load(weights_only=True)`` and written atomically (:func:`infusion.io.atomic_write`).
Everything that takes a model — a checkpoint file, a run directory, or an exported folder —
goes through :func:`load_model`, which also migrates what older versions wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import hub
from ._logging import messages_to
from .chain.model import ChainModel
from .config import Config, ConfigError, from_dict, to_dict
from .config.schema import CONFIG_FILE_MAX, parse_text
from .data import DataError, shape_of, stored_dtype
from .device import resolve_device
from .errors import InputError, UserError
from .io import all_or_nothing, atomic_write, claim_folder, path_kind
from .limits import VALUES_MAX, check_memory
from .methods import build_method, check_model_memory
from .methods.statistics import ensure_step_statistics

FORMAT = 1
LATEST = "latest"
POINTER_MAX = 255  # the longest file name the latest pointer may hold
EXPORT_FILES = ("config.json", "model.safetensors")
WEIGHTS_MARK = {"written_by": "infusion"}  # an export's model.safetensors metadata
logger = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable or not ours; the message names the path."""


def save(path: Path, payload: dict[str, Any]) -> None:
    """Atomically save a checkpoint dict (adds the format version)."""
    payload = {"format": FORMAT, **payload}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def set_latest(ckpt_dir: Path, name: str) -> None:
    atomic_write(Path(ckpt_dir) / LATEST, lambda tmp: tmp.write_text(name + "\n"))


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is an exported model folder (``config.json`` + ``model.safetensors``)."""
    p = Path(path)
    return p.is_dir() and all((p / f).is_file() for f in EXPORT_FILES)


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run directory / its ``checkpoints/`` folder -> the latest
    checkpoint (the ``latest`` pointer names a file inside that folder, nothing else)."""
    p = Path(path)
    if not p.exists():  # or a symlink loop, or a link to nothing: said so
        kind = path_kind(p)
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist"
                              + ("" if kind == "nothing" else f" (it is {kind})"))
    if p.is_dir():
        ckpt_dir = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        pointer = ckpt_dir / LATEST
        if not pointer.is_file():
            raise CheckpointError(f"{str(p)!r} is neither a run directory (no checkpoints/latest "
                                  f"pointer) nor an exported model ({' + '.join(EXPORT_FILES)})")
        try:
            with open(pointer, "rb") as f:  # a file name: a few bytes, whatever the file holds
                name = f.read(POINTER_MAX + 1).decode("utf-8", "replace").strip()
        except OSError as e:
            raise CheckpointError(f"cannot read {str(pointer)!r}: {e}") from None
        if (not name or len(name) > POINTER_MAX or Path(name).name != name
                or name in (".", "..")):
            shown = name[:60] + ("…" if len(name) > 60 else "")
            raise CheckpointError(f"{str(pointer)!r} must name a file in {str(ckpt_dir)!r}, "
                                  f"not {shown!r}")
        p = ckpt_dir / name
        if not p.exists():
            raise CheckpointError(f"{str(pointer)!r} points to {name!r}, which does not exist")
    if not p.is_file():  # a FIFO or a device would block or never end
        raise CheckpointError(f"checkpoint {str(p)!r} is not a regular file")
    return p


def load(path: str | Path, map_location: str | torch.device = "cpu", *,
         weights_only: bool = False) -> dict[str, Any]:
    """Load a checkpoint dict safely (``torch.load(weights_only=True)``); clear errors for bad
    files. ``weights_only``: also accept a file with weights but no config (``best.pt``)."""
    p = resolve(path)
    check_memory(p.stat().st_size, f"checkpoint {str(p)!r}")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 — corrupt, truncated or not a torch file
        raise CheckpointError(f"cannot read checkpoint {str(p)!r}: {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise CheckpointError(f"{str(p)!r} is not an infusion checkpoint (format {FORMAT})")
    if not weights_only and ("config" not in ckpt or "shape" not in ckpt):
        raise CheckpointError(f"{str(p)!r} holds weights only (e.g. best.pt); load the run "
                              "directory, final.pt or an epoch-*.pt training state instead")
    ckpt["path"] = str(p)
    return ckpt


def migrate_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter names of version 0.1 in today's layout: the paper's model kept its network
    under ``op.net.``, every model now has it under ``net.``."""
    return {("net." + k[len("op.net."):] if k.startswith("op.net.") else k): v
            for k, v in sd.items()}


def build_model(config: dict[str, Any], shape, state: dict[str, torch.Tensor], where: str,
                device: str | torch.device = "cpu") -> tuple[ChainModel, Config]:
    """The model and :class:`Config` for a stored config dict, data shape and state dict."""
    try:
        cfg = from_dict(config).validate()
    except ConfigError as e:
        raise CheckpointError(f"{where}: its config is not valid here: {e}") from None
    shape = check_shape(shape, cfg, where)
    method = build_method(cfg.method)
    try:
        check_model_memory(method, shape, cfg)
    except InputError as e:
        raise CheckpointError(f"{where}: {e}") from None
    model = method.build_model(shape, cfg.model)
    state = migrate_state_dict(state)
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and not (
        isinstance(v, torch.Tensor) and v.dtype == own[k].dtype)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{where}: the weights do not fit the model its config describes: "
                              f"{k!r} is {getattr(state[k], 'dtype', type(state[k]).__name__)}, "
                              f"expected {own[k].dtype}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{where}: the weights do not fit the model its config "
                              f"describes: {one_line(e)}") from None
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and
           not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{where} holds non-finite weights (NaN or inf, e.g. {bad[0]}): "
                              "the run diverged; use an earlier checkpoint")
    check_variances(model, where)
    set_sampling_defaults(model, cfg)
    return model.to(device), cfg


def check_variances(model: ChainModel, where: str) -> None:
    """Every variance a model stores is refused unless it makes sense, so that a damaged file
    is an error at load instead of NaN densities later: the prior's variance (``prior.var``)
    must be > 0, and the per-step batch-norm variances (``*.stat_var``, to which a small
    epsilon is added) >= 0."""
    for name, buf in model.named_buffers():
        floor = {"prior.var": "> 0", "stat_var": ">= 0"}.get(
            name if name == "prior.var" else name.rsplit(".", 1)[-1])
        if floor is None:
            continue
        wrong = buf <= 0 if floor == "> 0" else buf < 0
        if bool(wrong.any()):
            i = tuple(int(j) for j in wrong.nonzero()[0])
            raise CheckpointError(f"{where}: variance {name}{list(i)} = {float(buf[i]):g}, "
                                  f"expected {floor}: the file is damaged or was edited; use "
                                  "another checkpoint")


def model_fingerprint(model: ChainModel) -> str:
    """The sha256 (hex) of a model's learned weights: each parameter's name, shape and float32
    values, in order. A checkpoint, its export and the model loaded from either share it; any
    other weights give another. An evaluation report records it (``model_sha256``), and an
    export's model card takes only a report of its own model."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        t = p.detach().float().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def one_line(e: Exception) -> str:
    """torch's many-line ``load_state_dict`` error as one line: its first mismatch."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:2]) + (f" (and {len(lines) - 2} more)" if len(lines) > 2 else "")


def check_shape(shape: Any, cfg: Config, where: str) -> tuple[int, ...]:
    """The data shape a checkpoint or export stores, checked: 1 to 3 whole numbers >= 1 (at
    most :data:`~infusion.limits.VALUES_MAX` values), which fit the data set its config names."""
    if (not isinstance(shape, list | tuple) or not 1 <= len(shape) <= 3
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
            or math.prod(shape) > VALUES_MAX):
        raise CheckpointError(f"{where}: data shape {shape!r} is not the shape of one example "
                              f"(1 to 3 whole numbers >= 1, at most {VALUES_MAX:,} values)")
    shape = tuple(shape)
    data = cfg.data
    if data.name != "arrays":  # a user's arrays: their file may be elsewhere
        expected = shape_of(data)
        fits = (len(shape) == 3 and shape[1:] == expected[1:] if data.name == "folder"
                else math.prod(shape) == math.prod(expected))
        if not fits:
            raise CheckpointError(f"{where}: data shape {shape} is not that of data.name="
                                  f"{data.name!r} ({expected})")
    return shape


def set_sampling_defaults(model: ChainModel, cfg: Config) -> None:
    """The run's ``sample`` section as the model's defaults for :func:`~infusion.chain.sampler.sample_chain`
    (steps T', sampler, eta): one default for Python and every command."""
    model.sample_steps = cfg.sample_steps
    model.sampler, model.eta = cfg.sample.sampler, cfg.sample.eta


def load_model(source: str | Path, device: str | torch.device = "auto", *,
               statistics: bool = True, log: Callable[[str], object] | None = None,
               progress: bool = False) -> tuple[ChainModel, Config]:
    """The one loader: a checkpoint file, run directory, exported folder or an export on the
    Hugging Face Hub (``hf://owner/name[@revision]``, :mod:`infusion.hub`) -> (model on
    ``device`` in eval mode, config); ``infusion.load_model``.

    With ``statistics`` (the default), a model without per-step batch-norm statistics (a
    mid-training checkpoint) gets them from one pass over its training set (algorithms.md
    §6), announced on the ``infusion.models`` logger (``log``, a callable that
    receives the message instead, is kept for one version), with a progress bar if
    ``progress``; ``statistics=False`` returns the stored weights as they are. The model's
    ``sample_steps`` is the run's ``sample.steps`` (or T): the default of every sampler and
    command. ``device``: "auto" (CUDA if present), "cpu", "cuda[:N]" or a
    :class:`torch.device`."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if hub.is_hub(source):  # hf://owner/name: an export on the Hugging Face Hub
        source = hub.local_copy(source)
        if not is_export(source):
            raise InputError(f"{str(source)!r}: the Hub repository holds no infusion export "
                             "(config.json and model.safetensors)")
    if is_export(source):
        model, cfg = from_pretrained(source, dev)
    else:
        ckpt = load(source)
        model, cfg = build_model(ckpt["config"], ckpt["shape"], ckpt["model"], ckpt["path"], dev)
        cfg = relocated_data(cfg, Path(ckpt["path"]).parent.parent)
    if statistics and not model.stats_ready:
        with messages_to(log):
            logger.info("checkpoint has no per-step batch-norm statistics; computing them "
                        "(algorithms.md §6)")
            ensure_step_statistics(model, cfg, dev, progress)
    return model.eval(), cfg


load_ready_model = load_model  # the name of version 0.2


def relocated_data(cfg: Config, run_dir: Path) -> Config:
    """A run directory moved after training: the config holds the absolute path of the run's
    own ``data/arrays-*.npz`` (:func:`infusion.fit`), so when that path is gone and the file
    is in this run directory, use it (its sha256 is still checked on every load)."""
    dc = cfg.data
    if dc.name != "arrays" or not dc.path or Path(dc.path).exists():
        return cfg
    here = run_dir / "data" / Path(dc.path).name
    return replace(cfg, data=replace(dc, path=str(here.resolve()))) if here.is_file() else cfg


def save_pretrained(model: ChainModel, cfg: Config, out_dir: str | Path) -> Path:
    """Inference export: ``config.json`` (the config and data shape) + ``model.safetensors``
    (fp32 weights and buffers, the per-step batch-norm statistics included).

    Only an export the library wrote is replaced (named in the folder's manifest,
    ``.infusion-files``, which a new folder starts; :func:`infusion.io.claim_folder`): a file
    of these names that it did not write — in a folder without a manifest, any — is refused
    (:class:`~infusion.errors.InputError`) before anything is written."""
    out = Path(out_dir)
    claim_folder(out, export_files(out), hint="export to another folder")
    meta = {"format": FORMAT, "config": portable(cfg), "shape": list(model.shape)}
    tensors = {k: v.detach().float().cpu().contiguous() if v.is_floating_point()
               else v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with all_or_nothing():  # both files or neither; config.json, which marks an export, last
        atomic_write(out / "model.safetensors",
                     lambda tmp: save_file(tensors, str(tmp), metadata=WEIGHTS_MARK))
        atomic_write(out / "config.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
    return out


export = save_pretrained  # the name of version 0.1


def portable(cfg: Config) -> dict[str, Any]:
    """The config an export stores, as a dict, with no path of the machine it was made on:
    ``data.path`` and ``train.init_from`` are cut to their names (:func:`from_pretrained` looks
    for the data beside the export). Mapping samples back to a user's arrays' units
    (:func:`infusion.data.to_data_space`) must then work without the data file, so what it
    would read there, whether the data are pixels, is recorded as ``data.dtype`` (the run's
    own record, else the data file's header; where that file cannot be read, a warning says
    so, and sampling in the data's units will need the file beside the export)."""
    data = cfg.data
    if data.name == "arrays" and not data.dtype:
        try:
            cfg = replace(cfg, data=replace(data, dtype="float32" if data.scale
                                            else stored_dtype(data)))
        except DataError as e:
            logger.warning(f"the export cannot record whether its data are pixels ({e}); "
                           "to sample in the data's units, put the data file beside it")
    d = to_dict(cfg)  # a dict: a Config makes every data.path absolute again
    for section, key in (("data", "path"), ("train", "init_from")):  # init_from: provenance
        if d[section][key]:
            d[section][key] = Path(d[section][key]).name
    return d


def beside_export(config: Any, folder: Path) -> Any:
    """An export's stored config dict with its ``data.path`` looked for in the export's
    ``folder``: the name an export stores (:func:`portable`), so that a data file copied
    beside the export is found wherever it goes; or an older export's absolute path, kept
    unless it is gone and a file of its name lies beside the export. Anything that is not a
    config is left as it is (and refused where it is built)."""
    data = config.get("data") if isinstance(config, dict) else None
    path = data.get("path") if isinstance(data, dict) else None
    if not isinstance(path, str) or not path:
        return config
    here = folder.absolute() / Path(path).name
    if os.path.isabs(path) and (os.path.exists(path) or not here.exists()):
        return config
    return {**config, "data": {**data, "path": str(here)}}


def export_files(out: Path) -> list[Path]:
    """The files an export into ``out`` replaces: ``config.json`` and ``model.safetensors``,
    less the weights a killed export left there (:func:`is_half_export`), which are the
    library's by their mark."""
    return [out / "config.json", *([] if is_half_export(out) else [out / "model.safetensors"])]


def is_half_export(path: str | Path) -> bool:
    """Whether ``path`` holds what a killed :func:`save_pretrained` may leave: its
    ``model.safetensors`` (marked as infusion's) without ``config.json``, which may be replaced."""
    p = Path(path)
    weights = p / "model.safetensors"
    if os.path.lexists(p / "config.json") or weights.is_symlink() or not weights.is_file():
        return False
    try:
        with safe_open(str(weights), "pt") as f:
            return (f.metadata() or {}) == WEIGHTS_MARK
    except Exception:  # noqa: BLE001 — not a safetensors file: not ours
        return False


def from_pretrained(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[ChainModel, Config]:
    """An exported folder (:func:`save_pretrained`) -> (model in eval mode, config)."""
    p = Path(path)
    if not is_export(p):
        raise CheckpointError(f"{str(p)!r} is not an exported model: expected "
                              f"{' and '.join(EXPORT_FILES)} in it")
    where = str(p / "config.json")
    try:
        with open(p / "config.json", "rb") as f:
            meta = parse_text(f.read(CONFIG_FILE_MAX + 1), False, repr(where))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    if (not isinstance(meta, dict) or meta.get("format", FORMAT) != FORMAT
            or not {"config", "shape"} <= set(meta)):
        raise CheckpointError(f"{where!r} is not an export's config: expected a mapping with "
                              f"'config' and 'shape' (format {FORMAT})")
    config, shape = meta["config"], meta["shape"]
    weights = p / "model.safetensors"
    check_memory(weights.stat().st_size, f"{str(weights)!r}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {str(p / 'model.safetensors')!r}: {e}") from None
    model, cfg = build_model(beside_export(config, p), shape, state, str(p), device)
    return model.eval(), cfg
