"""Watching a training run: a callback after every epoch, sample grids during training, and
TensorBoard.

``train(cfg, run_dir, callbacks=[fn])`` calls ``fn(event)`` on the main process after every
epoch's validation with an :class:`EpochEvent` (the epoch, its ``metrics.jsonl`` row, the model,
the config, the run directory and the sample grid of that epoch, if one was drawn). Any logger
fits behind it (Weights & Biases, MLflow, a print); two are built in, switched on by the config:

* ``train.sample_every = N``: every N epochs, ``samples/epoch-NNNN.png`` — the means of
  ``sample.n`` chains (seeds ``sample.seed`` …, ``sample.steps`` steps, at most 100 images),
  drawn from a copy of the model whose per-step batch-norm statistics (algorithms.md §6) come
  from the first 5,000 training examples only: a cheap preview, not the final pass.
* ``train.tensorboard = true``: every numeric value of each row as a scalar (losses, bounds,
  throughput, seconds) and the sample grids as images, under ``RUN/tensorboard``
  (``tensorboard --logdir RUN/tensorboard``). It needs the ``tensorboard`` package
  (``pip install "infusion-training[tensorboard]"``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import figures
from ..chain.model import ChainModel
from ..chain.sampler import sample_chain
from ..config import Config
from ..data import Data
from ..errors import InputError
from ..methods import Method
from ..methods.statistics import compute_step_statistics

PREVIEW_STATS_EXAMPLES = 5000  # training examples behind the preview's §6 statistics


@dataclass
class EpochEvent:
    """What a callback receives after each epoch (on the main process)."""

    epoch: int
    row: dict  # the epoch's metrics.jsonl row
    model: ChainModel  # the training model (the EMA's weights are not applied)
    cfg: Config
    run_dir: Path
    grid: Path | None = None  # samples/epoch-NNNN.png, if drawn this epoch


Callback = Callable[[EpochEvent], None]


def sample_preview(model: ChainModel, method: Method, data: Data, cfg: Config, run_dir: Path,
                   epoch: int) -> Path:
    """Draw the preview grid ``samples/epoch-NNNN.png`` (see the module docstring)."""
    preview = copy.deepcopy(model)
    n = PREVIEW_STATS_EXAMPLES
    subset = dataclasses.replace(data, train=data.train[:n], train_labels=None if
                                 data.train_labels is None else data.train_labels[:n])
    compute_step_statistics(preview, method, subset, cfg.train.batch_size, cfg.train.seed + 5)
    means = sample_chain(preview, cfg.sample.n, cfg.sample_steps, seed=cfg.sample.seed,
                         sampler=cfg.sample.sampler, eta=cfg.sample.eta).means
    shown = means if means[0].numel() <= 2 else means[:100]
    return figures.save_grid(run_dir / "samples" / f"epoch-{epoch:04d}.png", shown)


def summary_writer() -> type:
    """torch's ``SummaryWriter``, or a clear error when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError("train.tensorboard=true needs the tensorboard package: pip install "
                         "'infusion-training[tensorboard]' (or tensorboard)") from None
    return SummaryWriter


class TensorBoard:
    """The ``train.tensorboard`` callback: scalars of every row, sample grids as images.
    ``first_epoch``: events of later epochs left by an interrupted run are purged."""

    def __init__(self, log_dir: Path, first_epoch: int = 1) -> None:
        self.writer = summary_writer()(str(log_dir), purge_step=first_epoch)

    def __call__(self, event: EpochEvent) -> None:
        for key, value in event.row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, event.epoch)
        if event.grid is not None:
            from PIL import Image

            image = np.asarray(Image.open(event.grid).convert("RGB"))
            self.writer.add_image("samples", image, event.epoch, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
