"""What a training run measures each epoch (docs/algorithms.md §6–7): the validation loss and
stochastic lower bound (and the train-set bound of paper Fig. 3) of the model as it stands —
with per-step batch-norm statistics from a short statistics pass, so a fixed model is scored —
the same bounds with minibatch statistics beside them, and the infusion chains of paper Fig. 2
for fixed validation targets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..chain.model import ChainModel, given
from ..chain.nets import step_norms
from ..config import Config
from ..data import Data
from ..data.batches import batches
from ..io import save_npz
from ..methods import Method
from ..methods.statistics import compute_step_statistics


@contextlib.contextmanager
def population_statistics(model: ChainModel, method: Method, data: Data, cfg: Config
                          ) -> Iterator[None]:
    """Score a fixed model (algorithms.md §6): inside, the model is in eval mode with per-step
    statistics from a pass over ``train.valid_stats_batches`` random training batches (the
    same batches and noise every epoch); on leaving, its mode and stored statistics (none,
    during training) are restored."""
    norms, was_training = step_norms(model), model.training
    kept = [n.stats_snapshot() for n in norms]
    try:
        compute_step_statistics(model, method, data, cfg.train.batch_size, cfg.train.seed + 13,
                                max_batches=cfg.train.valid_stats_batches)
        model.eval()
        yield
    finally:
        for n, snap in zip(norms, kept):
            n.stats_restore(snap)
        model.train(was_training)


@torch.no_grad()
def validate(model: ChainModel, method: Method, data: Data, cfg: Config) -> dict[str, float]:
    """Validation loss and stochastic lower bound (algorithms.md §7, one draw per example) on
    the first ``train.valid_examples`` validation examples, nats per example.

    ``valid_loss`` and ``valid_bound_population`` score the model with per-step statistics from
    a short statistics pass (:func:`population_statistics`): the density of a fixed model,
    which selection and early stopping use. ``valid_bound_batch`` normalises each minibatch
    with its own statistics, as the paper's appendix A.1 scores during training (on the
    2×1200 MNIST model this costs it about 86 nats; algorithms.md §6) — logged with
    ``train.valid_batch_stats`` when the model has per-step batch norm. The noise is the same
    every epoch, so epochs are comparable. With ``train.train_bound_examples`` the same bounds
    on the first training examples are added as ``train_bound_*`` (paper Fig. 3).
    """
    n = min(cfg.train.valid_examples, len(data.valid))
    if n < 2:
        return {}
    bound = method.has_likelihood and method.likelihood == "bound"
    n_train = min(cfg.train.train_bound_examples, len(data.train)) if bound else 0
    jobs = [("valid_loss", method.loss, "valid", n, 1)]
    if bound:
        jobs.append(("valid_bound", method.log_weight, "valid", n, 1))
        if n_train >= 2:
            jobs.append(("train_bound", method.log_weight, "train", n_train, 2))
    out = {}
    with population_statistics(model, method, data, cfg):
        for name, fn, which, count, seed_offset in jobs:
            key = name if name == "valid_loss" else f"{name}_population"
            out[key] = _mean_score(model, fn, data, cfg, which, count, seed_offset)
    if cfg.train.valid_batch_stats and step_norms(model):
        was_training = model.training
        model.train()  # each minibatch normalised with its own statistics
        try:
            for name, fn, which, count, seed_offset in jobs[1:]:
                out[f"{name}_batch"] = _mean_score(model, fn, data, cfg, which, count, seed_offset)
        finally:
            model.train(was_training)
    return out


def _mean_score(model, fn, data: Data, cfg: Config, which: str, count_max: int,
                seed_offset: int) -> float:
    """The mean of ``fn`` (a method's loss or log-weight) over the first examples of a split."""
    split = data.train if which == "train" else data.valid
    g = torch.Generator(device=split.device).manual_seed(cfg.train.seed + seed_offset)
    total, count = 0.0, 0
    for idx in batches(count_max, cfg.train.batch_size):
        y = data.labels(which, idx)  # log p(x | y) for a class-conditional model (§15)
        total += float(fn(given(model, y), data.model_space(split[idx], g), g).sum())
        count += len(idx)
    return total / count


@torch.no_grad()
def record_infusion_chains(model: ChainModel, method: Method, data: Data, cfg: Config,
                           epoch: int, run_dir: str | Path) -> Path | None:
    """Paper Fig. 2: infusion chains for fixed validation targets at this point of training.

    Runs the method's infusion chain (algorithms.md §3) on the first validation batch with
    batch statistics, as in training, and the same noise at every epoch; keeps the first
    ``train.record_chains_n`` rows. Writes ``infusion_chains/epoch-NNNN.npz`` with ``chain``
    (T+1, n, *shape) = z̃(0) … z̃(T-1), μ_T and ``targets`` (n, *shape). None if the method
    has no infusion chain.
    """
    if not method.has_infusion_chain:
        return None
    n_batch = min(len(data.valid), cfg.train.batch_size)
    k = min(cfg.train.record_chains_n, n_batch)
    g = torch.Generator(device=data.valid.device).manual_seed(cfg.train.seed + 11)
    was_training = model.training
    model.train()
    try:
        x = data.model_space(data.valid[:n_batch], g)
        y = data.labels("valid", slice(0, n_batch))
        states = method.infusion_chain(given(model, y), x, g)
    finally:
        model.train(was_training)
    chain = torch.stack([s[:k] for s in states]).float().cpu().numpy()
    arrays = {"chain": chain.reshape(len(states), k, *data.shape),
              "targets": x[:k].float().cpu().numpy().reshape(k, *data.shape),
              "epoch": np.array(epoch)}
    return save_npz(Path(run_dir) / "infusion_chains" / f"epoch-{epoch:04d}.npz", **arrays)
