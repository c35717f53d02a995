"""Likelihood estimates: log-weights ℓ, the stochastic lower bound, importance sampling
(algorithms.md §7, paper eqs. 2–3) and the Parzen-window estimator (algorithms.md §8).

One code path serves every method: :func:`log_weights` only calls the method's hook
``method.log_weight(model, x, generator, isotropic=...)``, which returns one draw of ℓ per
example, (B,). The k draws of many examples are laid out along the batch axis and chunked, so
memory stays bounded for any k. Evaluation uses the stored per-step batch-norm statistics
(algorithms.md §6): the model is put in eval mode, so examples never influence each other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .data import parzen_space, to_model_space
from .errors import InputError

# The Parzen bandwidth grid: logspace(-1, 0, 10) (Breuleux et al.) plus the paper's 0.17.
SIGMA_GRID: tuple[float, ...] = tuple(float(s) for s in np.unique(np.r_[np.logspace(-1, 0, 10), 0.17]))
# Low-dimensional (e.g. 2-D toy) data need narrower kernels: logspace(-3, 0, 16) plus 0.17.
LOW_DIM_SIGMA_GRID: tuple[float, ...] = tuple(
    float(s) for s in np.unique(np.r_[np.logspace(-3, 0, 16), 0.17]))


def _check_ready(model) -> None:
    if not model.stats_ready:
        raise RuntimeError(
            "the model has no stored per-step batch-norm statistics; run the statistics pass of "
            "algorithms.md §6 (infusion.runtime.compute_step_statistics) before evaluating likelihoods")


@torch.no_grad()
def log_weights(model, method, x: torch.Tensor, k: int, generator: torch.Generator | None,
                batch_size: int = 1000, isotropic: bool = False,
                progress: bool = False) -> torch.Tensor:
    """ℓ for ``k`` independent proposal draws of every example, algorithms.md §7: (N, d) -> (N, k).

    ``x`` is in model space (already dequantised). Each forward pass holds at most
    ``batch_size`` rows: a chunk of examples, each repeated along the batch axis for a chunk of
    its k draws. Runs on the model's device in eval mode (stored per-step statistics); the
    result is float64 on the CPU.
    """
    if not method.has_likelihood:
        raise InputError(f"method {method.name!r} has no likelihood estimate")
    if k < 1 or batch_size < 1:
        raise InputError(f"log_weights: k={k} and batch_size={batch_size} must be >= 1")
    _check_ready(model)
    device = model_device(model)
    x = x.reshape(len(x), -1)
    draws = min(k, batch_size)  # draws per chunk
    per = max(1, batch_size // draws)  # examples per chunk
    out = torch.empty(len(x), k, dtype=torch.float64)
    jobs = [(lo, j) for lo in range(0, len(x), per) for j in range(0, k, draws)]
    bar = _tqdm(len(jobs), f"log-weights (k={k})", progress)
    was_training = model.training
    model.eval()
    try:
        for lo, j in jobs:
            xs = x[lo: lo + per].to(device)
            kk = min(draws, k - j)
            rows = xs.repeat_interleave(kk, 0)  # (b·kk, d): example i's draws are adjacent
            lw = method.log_weight(model, rows, generator, isotropic=isotropic)
            out[lo: lo + len(xs), j: j + kk] = lw.reshape(len(xs), kk).double().cpu()
            if bar is not None:
                bar.update(1)
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return out


def lower_bound(lw: torch.Tensor) -> torch.Tensor:
    """Stochastic lower bound per example: the mean of ℓ over its k draws, (N, k) -> (N,)."""
    return lw.mean(-1)


def importance_sampling(lw: torch.Tensor) -> torch.Tensor:
    """Importance-sampling estimate per example: logsumexp(ℓ_1..ℓ_k) − log k, (N, k) -> (N,)."""
    return torch.logsumexp(lw, -1) - math.log(lw.shape[-1])


@dataclass
class Estimate:
    """A per-example estimate over ``repeats`` evaluations (nats per example).

    ``per_example`` (repeats, N); ``mean`` over everything; ``stderr`` the standard error over
    examples (of the per-example averages across repeats); ``spread`` the standard deviation of
    the repeat means (Table 2's ±; None with one repeat).
    """

    per_example: np.ndarray
    mean: float
    stderr: float
    spread: float | None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_array(cls, values: np.ndarray, **extra) -> Estimate:
        v = np.atleast_2d(np.asarray(values, np.float64))
        per = v.mean(0)
        stderr = float(per.std(ddof=1) / math.sqrt(len(per))) if len(per) > 1 else 0.0
        spread = float(v.mean(1).std(ddof=1)) if len(v) > 1 else None
        return cls(v, float(v.mean()), stderr, spread, dict(extra))

    def summary(self) -> dict:
        """JSON-able numbers (without the per-example array)."""
        return {"mean": self.mean, "stderr": self.stderr, "spread": self.spread,
                "n": int(self.per_example.shape[1]), "repeats": int(self.per_example.shape[0]),
                **self.extra}


def estimate_likelihood(model, method, data: torch.Tensor, k: int, *, seed: int = 0,
                        repeats: int = 1, batch_size: int = 1000, isotropic: bool = False,
                        ks: Sequence[int] | None = None,
                        progress: bool = False) -> dict[str, Estimate]:
    """Lower bound and IS estimate of log p(x) for every example of ``data``, algorithms.md §7.

    ``data``: uint8 pixels (N, ...) — dequantised afresh in every repeat, once per example,
    all k draws scoring the same point — or continuous points used as they are. Each repeat
    uses its own generator (seed + repeat), on the model's device. Returns
    ``{"lb": Estimate, "is": Estimate}`` with k draws, plus ``"is@k'"`` for each k' in ``ks``
    (IS from the first k' of the same draws, so nested in k).
    """
    if repeats < 1:
        raise InputError(f"repeats={repeats}: expected >= 1")
    ks = sorted({int(c) for c in (ks or ()) if 1 <= int(c) < k})
    device = model_device(model)
    lbs, iss, sub = [], [], {c: [] for c in ks}
    for r in range(repeats):
        g = torch.Generator(device=device).manual_seed(seed + r)
        x = to_model_space(torch.as_tensor(data).to(device), g)
        lw = log_weights(model, method, x, k, g, batch_size, isotropic, progress)
        lbs.append(lower_bound(lw).numpy())
        iss.append(importance_sampling(lw).numpy())
        for c in ks:
            sub[c].append(importance_sampling(lw[:, :c]).numpy())
    common = {"k": k, "isotropic": isotropic, "seed": seed}
    out = {"lb": Estimate.from_array(np.stack(lbs), **common),
           "is": Estimate.from_array(np.stack(iss), **common)}
    for c in ks:
        out[f"is@{c}"] = Estimate.from_array(np.stack(sub[c]), **{**common, "k": c})
    return out


# ----------------------------------------------------------------------------- Parzen window
@torch.no_grad()
def parzen_log_prob(samples: torch.Tensor, x: torch.Tensor, sigma: float | Sequence[float],
                    chunk: int = 2048, progress: bool = False) -> torch.Tensor:
    """Parzen-window log-density of each row of x, algorithms.md §8 (Breuleux et al. 2011):

    log p̂(x) = logmeanexp_i(−‖x − s_i‖² / (2σ²)) − (d/2)·log(2πσ²).

    samples (M, d), x (N, d); computed in (chunk × chunk) blocks with a running logsumexp, so
    10,000 × 10,000 needs a few chunk² floats. A sequence of σ shares the distances and gives
    (len(σ), N); a single σ gives (N,). Float64 on the CPU.
    """
    if len(samples) == 0:
        raise InputError("parzen_log_prob needs at least one sample")
    s = torch.as_tensor(samples).reshape(len(samples), -1).double()
    x = torch.as_tensor(x).reshape(len(x), -1).double()
    if s.shape[1] != x.shape[1]:
        raise InputError(f"parzen_log_prob: samples have {s.shape[1]} dimensions, x {x.shape[1]}")
    sigmas = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
    if bool((sigmas <= 0).any()):
        raise InputError(f"Parzen σ must be > 0, got {sigmas.tolist()}")
    inv = (1.0 / (2 * sigmas.square())).tolist()
    d = x.shape[1]
    s_sq = s.square().sum(1)
    acc = torch.full((len(sigmas), len(x)), -math.inf, dtype=torch.float64)
    blocks = [(i, j) for i in range(0, len(x), chunk) for j in range(0, len(s), chunk)]
    bar = _tqdm(len(blocks), "Parzen window", progress)
    for i, j in blocks:
        xi = x[i: i + chunk]
        d2 = (xi.square().sum(1, keepdim=True) + s_sq[j: j + chunk] - 2 * xi @ s[j: j + chunk].T)
        d2 = d2.clamp_min_(0).neg_()
        for k, c in enumerate(inv):  # one (b, b') block at a time: memory stays at chunk²
            part = torch.logsumexp(d2 * c, -1)
            acc[k, i: i + chunk] = torch.logaddexp(acc[k, i: i + chunk], part)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    out = acc - math.log(len(s)) - 0.5 * d * torch.log(2 * math.pi * sigmas.square())[:, None]
    return out[0] if torch.as_tensor(sigma).ndim == 0 else out


def select_sigma(samples: torch.Tensor, valid: torch.Tensor,
                 grid: Sequence[float] = SIGMA_GRID, chunk: int = 2048,
                 progress: bool = False) -> tuple[float, dict[float, float]]:
    """σ of the grid with the highest mean Parzen log-density on validation data (algorithms.md §8);
    returns it and the mean for every σ."""
    scores = parzen_log_prob(samples, valid, list(grid), chunk, progress).mean(1)
    table = {float(s): float(v) for s, v in zip(grid, scores)}
    return max(table, key=table.get), table


def parzen_estimate(samples: torch.Tensor, valid: torch.Tensor, test: torch.Tensor,
                    grid: Sequence[float] = SIGMA_GRID, chunk: int = 2048,
                    progress: bool = False) -> Estimate:
    """The Parzen-window test log-likelihood of algorithms.md §8: σ chosen on ``valid`` over ``grid``,
    then the test mean and standard error. ``samples`` are the chain's final means; valid and
    test are raw data (uint8 pixels become k/256, no noise)."""
    sigma, table = select_sigma(samples, parzen_space(valid), grid, chunk, progress)
    values = parzen_log_prob(samples, parzen_space(test), sigma, chunk, progress)
    return Estimate.from_array(values.numpy(), sigma=sigma, valid_by_sigma=table,
                               n_samples=len(samples), n_valid=len(valid))


def model_device(model) -> torch.device:
    """The device of the model's first parameter or buffer (CPU if it has none)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _tqdm(total: int, desc: str, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
