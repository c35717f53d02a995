"""Sampling to files: ``samples.npz`` (float32 ``samples`` and ``means``, (N, C, H, W), model
space) plus a PNG grid of the means (SPEC §2; the paper's figures show the means)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import figures
from .chain import sample_chain
from .io import save_npz
from .operator import ChainModel


def sample_to_file(model: ChainModel, out: str | Path, n: int, steps: int | None = None,
                   seed: int = 0, batch_size: int = 500, grid_max: int = 100) -> Path:
    """Draw ``n`` samples (sample i from seed ``seed + i``), write ``out`` (.npz) and its grid PNG."""
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"--out {str(out)!r}: expected a .npz file name")
    res = sample_chain(model, n, steps, seed, batch_size=batch_size)
    arrays = {"samples": res.samples.numpy().astype(np.float32),
              "means": res.means.numpy().astype(np.float32)}
    save_npz(out, **arrays)
    figures.save_grid(out.with_suffix(".png"), arrays["means"][:grid_max])
    return out
