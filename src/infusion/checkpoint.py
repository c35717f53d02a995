"""Checkpoints as plain data (DESIGN.md): a ``latest`` pointer, safe loading, the export.

A checkpoint is a dict of state dicts, the config as a dict, counters and RNG states, loadable
with ``torch.load(weights_only=True)``. Files are written through :func:`infusion.io.atomic_write`
(a temporary name in the same directory, renamed into place), so a crash never leaves a
half-written checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .config import Config, from_dict, to_dict
from .io import atomic_write, save_npz  # noqa: F401 — train.py still calls ckpt_io.save_npz
from .operator import ChainModel

FORMAT = 1
LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not ours; the message names the path."""


def save(path: Path, payload: dict[str, Any]) -> None:
    """Atomically save a checkpoint dict (adds the format version)."""
    payload = {"format": FORMAT, **payload}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def set_latest(ckpt_dir: Path, name: str) -> None:
    atomic_write(Path(ckpt_dir) / LATEST, lambda tmp: tmp.write_text(name + "\n"))


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run directory / its ``checkpoints/`` folder -> the latest checkpoint."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    if p.is_dir():
        ckpt_dir = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        pointer = ckpt_dir / LATEST
        if not pointer.is_file():
            raise CheckpointError(f"{str(p)!r} is a directory without a checkpoints/latest pointer; "
                                  "is it a run directory?")
        p = ckpt_dir / pointer.read_text().strip()
        if not p.is_file():
            raise CheckpointError(f"{str(pointer)!r} points to {p.name!r}, which does not exist")
    return p


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``); clear errors for bad files."""
    p = resolve(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 — corrupt, truncated or not a torch file
        raise CheckpointError(f"cannot read checkpoint {str(p)!r}: {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise CheckpointError(f"{str(p)!r} is not an infusion checkpoint (format {FORMAT})")
    ckpt["path"] = str(p)
    return ckpt


def build_model(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> tuple[ChainModel, Config]:
    """The :class:`ChainModel` and :class:`Config` stored in a loaded checkpoint."""
    from .methods import build_method

    cfg = from_dict(ckpt["config"])
    model = build_method(cfg.method).build_model(tuple(ckpt["shape"]), cfg.model)
    model.load_state_dict(ckpt["model"])
    return model.to(device), cfg


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[ChainModel, Config]:
    """Checkpoint file or run directory -> (model on ``device`` in eval mode, config)."""
    model, cfg = build_model(load(path), device)
    return model.eval(), cfg


def export(model: ChainModel, cfg: Config, out_dir: str | Path) -> Path:
    """Inference export: ``config.json`` + ``model.safetensors`` (DESIGN.md)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"config": to_dict(cfg), "shape": list(model.shape)}
    atomic_write(out / "config.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "model.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    return out
