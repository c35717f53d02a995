"""Sampling to files: ``samples.npz`` (float32 ``samples`` and ``means``, (N, C, H, W), model
space) plus a PNG grid of the means (algorithms.md §2; the paper's figures show the means)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import figures
from ..chain.model import ChainModel, check_model
from ..chain.sampler import sample_chain
from ..config import DataConfig
from ..data import to_data_space
from ..errors import InputError
from ..io import all_or_nothing, save_npz, stage_directory
from ..limits import SAMPLES_MAX, SEED_MAX


def sample_to_file(model: ChainModel, out: str | Path, n: int, steps: int | None = None,
                   seed: int = 0, batch_size: int = 500, grid_max: int = 100, *,
                   seeds: Sequence[int] | None = None, png_dir: str | Path | None = None,
                   reference=None, data: DataConfig | None = None,
                   labels: Sequence[int] | None = None, nrow: int | None = None,
                   progress: bool = False) -> Path:
    """Draw ``n`` samples (sample i from seed ``seed + i``, or ``seeds[i]``), write ``out``
    (.npz) and its grid PNG (the first ``grid_max`` images; 2-D points: all of them, over the
    ``reference`` points if given); with ``png_dir``, also one PNG of each mean,
    ``seed-NNNNNN.png`` (for external metric tools). With ``data`` (the run's data config)
    mapped into model space by ``data.scale``/``data.offset`` (:func:`infusion.fit` on float
    data), ``data_samples`` and ``data_means`` hold the same in the data's own units.
    ``labels``: the class of each sample of a class-conditional model (algorithms.md §15;
    default: seed modulo the number of classes), stored as ``labels``; the per-seed PNGs are
    then ``class-C-seed-NNNNNN.png``. ``nrow``: images per grid row. ``progress``: a bar
    while sampling, on a terminal."""
    check_model(model)
    out = Path(out)
    if out.suffix != ".npz":
        raise InputError(f"--out {str(out)!r}: expected a .npz file name")
    if n < 1:
        raise InputError(f"n={n}: expected at least one sample")
    if png_dir is not None:  # checked before the work, not after
        if len(model.shape) != 3:
            raise InputError(f"--png-dir: the model draws {tuple(model.shape)} vectors, not images")
        if os.path.lexists(png_dir) and not Path(png_dir).is_dir():
            raise InputError(f"--png-dir {str(png_dir)!r} exists and is not a folder")
    res = sample_chain(model, n, steps, seed, seeds=seeds, batch_size=batch_size, labels=labels,
                       progress=progress)
    arrays = {"samples": res.samples.numpy().astype(np.float32),
              "means": res.means.numpy().astype(np.float32)}
    if res.labels is not None:
        arrays["labels"] = res.labels.numpy()
    if data is not None and data.scale:
        # the samples and means, not the labels (classes are not values of the data)
        arrays |= {f"data_{k}": to_data_space(arrays[k], data) for k in ("samples", "means")}
    means = arrays["means"]
    with all_or_nothing():  # the PNGs, the grid, then the .npz: all of them or none
        if png_dir is not None:
            if not Path(png_dir).is_dir():
                stage_directory(png_dir)  # a new folder appears whole
            for i, (s, image) in enumerate(zip(seeds or range(seed, seed + n), means)):
                name = f"seed-{s:06d}.png" if res.labels is None else \
                    f"class-{int(res.labels[i])}-seed-{s:06d}.png"
                figures.save_png(Path(png_dir) / name, figures.make_grid(image[None], nrow=1,
                                                                         pad=0))
        figures.save_grid(out.with_suffix(".png"), means if means.ndim == 2 else means[:grid_max],
                          nrow, reference=reference)
        save_npz(out, **arrays)
    return out


def parse_seeds(text: str, flag: str = "--seeds", top: int = SEED_MAX) -> list[int]:
    """EDM-style seed lists: ``0-63``, ``1,5,9``, ``0-9,100-109`` (ranges inclusive, each
    value 0 to ``top``, at most :data:`~infusion.limits.SAMPLES_MAX` values); also class lists
    (``flag``: the option named in errors)."""
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            lo, hi = int(first), int(last or first)
        except ValueError:
            raise InputError(f"{flag} {text!r}: expected numbers and ranges like 0-63,100") from None
        if hi < lo:
            raise InputError(f"{flag} {text!r}: the range {part.strip()} runs backwards "
                             f"(write {hi}-{lo})")
        if lo < 0 or hi > top:
            raise InputError(f"{flag} {text!r}: expected values 0 to {top:,}")
        if len(seeds) + hi - lo + 1 > SAMPLES_MAX:
            raise InputError(f"{flag} {text!r}: more than {SAMPLES_MAX:,} values")
        seeds.extend(range(lo, hi + 1))
    return seeds
