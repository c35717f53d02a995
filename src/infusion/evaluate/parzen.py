"""The Parzen-window estimator of algorithms.md §8 (paper Table 1; Breuleux et al. 2011): the
test log-likelihood under a Gaussian kernel density of the chain's samples, at the paper's fixed
σ = 0.17 and at σ chosen on validation data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..data import parzen_space
from ..errors import InputError
from .likelihood import Estimate, progress_bar

# The Parzen bandwidth grid: logspace(-1, 0, 10) (Breuleux et al.) plus the paper's 0.17.
SIGMA_GRID: tuple[float, ...] = tuple(float(s) for s in np.unique(np.r_[np.logspace(-1, 0, 10), 0.17]))
# Low-dimensional (e.g. 2-D toy) data need narrower kernels: logspace(-3, 0, 16) plus 0.17.
LOW_DIM_SIGMA_GRID: tuple[float, ...] = tuple(
    float(s) for s in np.unique(np.r_[np.logspace(-3, 0, 16), 0.17]))


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
    with progress_bar(len(blocks), "Parzen window", progress, unit="block") as bar:
        for i, j in blocks:
            xi = x[i: i + chunk]
            d2 = (xi.square().sum(1, keepdim=True) + s_sq[j: j + chunk] - 2 * xi @ s[j: j + chunk].T)
            d2 = d2.clamp_min_(0).neg_()
            for k, c in enumerate(inv):  # one (b, b') block at a time: memory stays at chunk²
                part = torch.logsumexp(d2 * c, -1)
                acc[k, i: i + chunk] = torch.logaddexp(acc[k, i: i + chunk], part)
            bar.update(1)
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


def parzen_estimates(samples: torch.Tensor, valid: torch.Tensor, test: torch.Tensor,
                     grid: Sequence[float] = SIGMA_GRID, fixed_sigma: float = 0.17,
                     chunk: int = 2048, progress: bool = False) -> dict[str, Estimate]:
    """The two Parzen-window test log-likelihoods of algorithms.md §8, from one pass over the
    test distances: ``"fixed"`` at σ = ``fixed_sigma`` (the paper's 0.17, the number comparable
    to Table 1) and ``"valid"`` at the σ of ``grid`` with the best mean validation log-density
    (the sound protocol). Each: the test mean and its standard error over test examples.
    ``samples`` are the chain's final means; valid and test are raw data (uint8 pixels become
    k/256, no noise)."""
    if not fixed_sigma > 0:
        raise InputError(f"Parzen fixed σ={fixed_sigma}: expected > 0")
    sigma, table = select_sigma(samples, parzen_space(valid), grid, chunk, progress)
    values = parzen_log_prob(samples, parzen_space(test), [sigma, fixed_sigma], chunk, progress)
    common = {"n_samples": len(samples)}
    return {"valid": Estimate.from_array(values[0].numpy(), sigma=sigma, chosen_on="validation",
                                         valid_by_sigma=table, n_valid=len(valid), **common),
            "fixed": Estimate.from_array(values[1].numpy(), sigma=float(fixed_sigma),
                                         chosen_on="fixed (the paper's)", **common)}


def parzen_estimate(samples: torch.Tensor, valid: torch.Tensor, test: torch.Tensor,
                    grid: Sequence[float] = SIGMA_GRID, chunk: int = 2048,
                    progress: bool = False) -> Estimate:
    """The Parzen-window test log-likelihood of algorithms.md §8 with σ chosen on ``valid`` over
    ``grid``: the ``"valid"`` estimate of :func:`parzen_estimates`."""
    return parzen_estimates(samples, valid, test, grid, chunk=chunk, progress=progress)["valid"]
