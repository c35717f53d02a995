"""The per-step batch-norm statistics pass (docs/algorithms.md §6): after training, and before
any evaluation or sampling, one pass over the training set through the method's training chain
stores, per step, the average of the batch means and variances."""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from .._logging import bar_disable
from ..chain.model import ChainModel, check_model, given
from ..chain.nets import step_norms
from ..config import Config
from ..data import load_data
from ..data.batches import batches
from . import Method, build_method

logger = logging.getLogger(__name__)


@torch.no_grad()
def compute_step_statistics(model: ChainModel, method: Method, data, batch_size: int,
                            seed: int = 0, progress: bool = False, max_batches: int = 0,
                            average: str = "exact") -> None:
    """algorithms.md §6: one pass over the whole training set through the method's training
    chain (with targets, no gradient, batch statistics), storing per step the exact average of
    the batch means and variances. ``data``: a :class:`~infusion.data.Data`.

    ``max_batches`` > 0: a short pass over that many batches drawn at random (by ``seed``)
    from the training set, as validation during training uses. ``average="moving"``: the
    authors' moving average (rate 0.1) of the batch mean and inverse std instead of the
    exact average (:class:`~infusion.chain.nets.StepBatchNorm`)."""
    check_model(model, stand_ins=True)
    norms = step_norms(model)
    if not norms:
        return
    g = torch.Generator(device=data.train.device).manual_seed(seed)
    order = None
    if max_batches > 0:  # a random subset: a user's file may be sorted by class
        order = torch.Generator().manual_seed(seed)
    for n in norms:
        n.start_collect(average)
    try:
        total = -(-len(data.train) // batch_size)
        if max_batches > 0:
            total = min(total, max_batches)
        chosen = batches(len(data.train), batch_size, order)
        for _, idx in tqdm(zip(range(total), chosen), total=total, leave=False,
                           desc="batch-norm statistics (algorithms.md §6)",
                           disable=bar_disable(progress)):
            y = data.labels("train", idx)  # a class-conditional model's classes (§15)
            method.loss(given(model, y), data.model_space(data.train[idx], g), g)
    except BaseException:
        for n in norms:
            n.collecting = False
        raise
    for n in norms:
        n.finish_collect()


def statistics_from_training_set(model: ChainModel, cfg: Config, device: torch.device | str,
                                 progress: bool = False, average: str = "exact") -> None:
    """The §6 pass over the run's own training set (``cfg.data``), which this function reads
    and says so on the ``infusion.methods.statistics`` logger: the one door through which a
    loaded model's statistics come from the training data. (Training, validation and the
    previews hold their data already and call :func:`compute_step_statistics`.) An export
    carries its statistics and never comes here."""
    data = load_data(cfg, device, progress=progress)
    logger.info(f"reading the training set ({cfg.data.name}, {len(data.train):,} examples) for "
                "the per-step batch-norm statistics (algorithms.md §6)")
    compute_step_statistics(model, build_method(cfg.method), data, cfg.train.batch_size,
                            cfg.train.seed + 5, progress, average=average)


def ensure_step_statistics(model: ChainModel, cfg: Config, device: torch.device | str,
                           progress: bool = False) -> bool:
    """The §6 pass on the run's training set (:func:`statistics_from_training_set`) if
    ``model`` lacks per-step statistics (e.g. a mid-training checkpoint); returns whether it
    had to."""
    if model.stats_ready:
        return False
    statistics_from_training_set(model, cfg, device, progress)
    return True
