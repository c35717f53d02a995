"""Watching a training run: a callback after every epoch, sample grids during training,
TensorBoard and Weights & Biases.

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
  (``pip install "infusion-training[tensorboard]"``); ``train.tracker = "tensorboard"`` is the
  same.
* ``train.tracker = "wandb"``: the config, the same scalars and the sample grids in a Weights &
  Biases run named after the run directory (project ``$WANDB_PROJECT``, default "infusion"),
  its files under ``RUN/wandb``; a resumed run continues the same W&B run. ``WANDB_MODE=offline``
  keeps everything on the machine (``wandb sync`` uploads it later). It needs the ``wandb``
  package (``pip install "infusion-training[wandb]"``).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .. import figures
from ..chain.model import ChainModel
from ..chain.sampler import sample_chain
from ..config import Config, to_dict
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
        # here: it needs the tensorboard package, the optional extra [tensorboard]
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
            image = np.asarray(Image.open(event.grid).convert("RGB"))
            self.writer.add_image("samples", image, event.epoch, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_module():
    """The ``wandb`` package, or a clear error when it is missing (an optional extra: imported
    only when asked for)."""
    try:
        return importlib.import_module("wandb")
    except ImportError:
        raise InputError("train.tracker=wandb needs the wandb package: pip install "
                         "'infusion-training[wandb]' (or wandb)") from None


class WandB:
    """The ``train.tracker = "wandb"`` callback: the config once, then each epoch's numeric
    row values and sample grid at step = epoch. The W&B run's id is kept in
    ``RUN/wandb/infusion-run-id``: a fresh run (``first_epoch`` 1) draws a new one, a resumed
    run continues it."""

    def __init__(self, run_dir: Path, cfg: Config, first_epoch: int = 1) -> None:
        self.wandb = wandb_module()
        folder = Path(run_dir) / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "infusion-run-id"
        if first_epoch > 1 and id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(4)
            id_file.write_text(run_id + "\n")
        self.run = self.wandb.init(project=os.environ.get("WANDB_PROJECT", "infusion"),
                                   name=Path(run_dir).resolve().name, id=run_id,
                                   resume="allow", dir=str(run_dir), config=to_dict(cfg))

    def __call__(self, event: EpochEvent) -> None:
        data = {k: v for k, v in event.row.items()
                if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if event.grid is not None:
            data["samples"] = self.wandb.Image(str(event.grid))
        self.run.log(data, step=event.epoch)

    def close(self) -> None:
        self.run.finish()
