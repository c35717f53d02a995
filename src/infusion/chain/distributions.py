"""Pure log-densities shared by every method: the diagonal Gaussian and the infusion mixture
(docs/algorithms.md §2, §3, §7). No state, no randomness; tested alone."""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def normal_log_prob(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag var), summed over the last dimension: (B, d) -> (B,)."""
    return -0.5 * (LOG_2PI + torch.log(var) + (x - mean).square() / var).sum(-1)


def log_q_mixture(
    z: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, x: torch.Tensor, alpha: float,
    target_var: float,
) -> torch.Tensor:
    """log q(t)(z | ·, x) = Σ_i log[(1-α) N(z_i; μ_i, σ²_i) + α N(z_i; x_i, target_var)], (B,).

    The infusion mixture of algorithms.md §3, computed stably as a logaddexp of the two weighted
    components (§7).
    """
    log_model = -0.5 * (LOG_2PI + torch.log(var) + (z - mean).square() / var)
    if alpha <= 0.0:
        return log_model.sum(-1)
    log_target = -0.5 * (math.log(2 * math.pi * target_var) + (z - x).square() / target_var)
    if alpha >= 1.0:
        return log_target.sum(-1)
    return torch.logaddexp(math.log1p(-alpha) + log_model, math.log(alpha) + log_target).sum(-1)
