"""The per-step batch-norm statistics pass (docs/algorithms.md §6): after training, and before
any evaluation or sampling, one pass over the training set through the method's training chain
stores, per step, the average of the batch means and variances."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .._logging import bar_disable
from ..chain.model import ChainModel, given
from ..chain.nets import step_norms
from ..config import Config
from ..data.batches import batches
from . import Method, build_method


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


def ensure_step_statistics(model: ChainModel, cfg: Config, device: torch.device | str,
                           progress: bool = False) -> bool:
    """Run the §6 pass on the run's training set if ``model`` lacks per-step statistics (e.g.
    a mid-training checkpoint); returns whether it had to."""
    if model.stats_ready:
        return False
    from ..data import load_data

    compute_step_statistics(model, build_method(cfg.method), load_data(cfg, device),
                            cfg.train.batch_size, cfg.train.seed + 5, progress)
    return True
