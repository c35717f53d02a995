"""What a training run measures each epoch (docs/algorithms.md §7): the validation loss and
stochastic lower bound (and the train-set bound of paper Fig. 3), and the infusion chains of
paper Fig. 2 for fixed validation targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import Config
from .data import Data
from .io import save_npz
from .methods import Method
from .operator import ChainModel, given
from .runtime import batches


@torch.no_grad()
def validate(model: ChainModel, method: Method, data: Data, cfg: Config) -> dict[str, float]:
    """Validation loss and stochastic lower bound (algorithms.md §7, one draw per example) on
    the first ``train.valid_examples`` validation examples, nats per example.

    Batch statistics are used, as the paper does during training (appendix A.1), and the noise
    is the same every epoch so epochs are comparable. With ``train.train_bound_examples`` the
    same bound on the first training examples is added as ``train_bound`` (paper Fig. 3).
    """
    n = min(cfg.train.valid_examples, len(data.valid))
    if n < 2:
        return {}
    jobs = [("valid_loss", method.loss, "valid", n, 1)]
    if method.has_likelihood and method.likelihood == "bound":
        jobs.append(("valid_bound", method.log_weight, "valid", n, 1))
        n_train = min(cfg.train.train_bound_examples, len(data.train))
        if n_train >= 2:
            jobs.append(("train_bound", method.log_weight, "train", n_train, 2))
    out = {}
    for name, fn, which, count_max, seed_offset in jobs:
        split = data.train if which == "train" else data.valid
        g = torch.Generator(device=split.device).manual_seed(cfg.train.seed + seed_offset)
        total, count = 0.0, 0
        for idx in batches(count_max, cfg.train.batch_size):
            y = data.labels(which, idx)  # log p(x | y) for a class-conditional model (§15)
            total += float(fn(given(model, y), data.model_space(split[idx], g), g).sum())
            count += len(idx)
        out[name] = total / count
    return out


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
