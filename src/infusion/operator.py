"""The transition operator and the factorial prior, SPEC §2.

``TransitionOperator(z, t) -> (μ, σ²)`` with μ = sigmoid(a_μ), σ² = β·sigmoid(a_σ) + ε, each
(B, d), on flat states. :class:`ChainModel` bundles the prior p(0) and the operator p(t), which
together define the sampling chain that every method trains.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig
from .nets import build_net, step_norms

LOG_2PI = math.log(2 * math.pi)


def normal_log_prob(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag var), summed over the last dimension: (B, d) -> (B,)."""
    return -0.5 * (LOG_2PI + torch.log(var) + (x - mean).square() / var).sum(-1)


class FactorialGaussianPrior(nn.Module):
    """p(0): a factorial Gaussian with the training set's per-dimension mean and variance (SPEC §2).

    The variance gets a floor (authors' code: + 1e-5) because MNIST border pixels are constant.
    """

    def __init__(self, d: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((d,), 0.5))
        self.register_buffer("var", torch.ones(d))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, var_floor: float = 1e-5) -> FactorialGaussianPrior:
        """Set the moments from training data x (N, d) in model space."""
        x = x.reshape(x.shape[0], -1).double()
        self.mean.copy_(x.mean(0).to(self.mean.dtype))
        self.var.copy_((x.var(0, unbiased=False) + var_floor).to(self.var.dtype))
        return self

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        """z(0) = mean + sqrt(var)·noise, noise ~ N(0, I) of shape (B, d)."""
        return self.mean + self.var.sqrt() * noise

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B,)
        return normal_log_prob(z, self.mean, self.var)


class TransitionOperator(nn.Module):
    """p(t)(z(t) | z(t-1)) = N(μ, diag σ²), (μ, σ²) = f_θ(z(t-1), t) (SPEC §2)."""

    def __init__(self, net: nn.Module, beta: float = 0.1, eps: float = 1e-4) -> None:
        super().__init__()
        self.net, self.beta, self.eps = net, beta, eps

    def forward(self, z: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        a_mu, a_sigma = self.net(z, t)
        return torch.sigmoid(a_mu), self.beta * torch.sigmoid(a_sigma) + self.eps


class ChainModel(nn.Module):
    """The generative Markov chain: prior p(0) and operator p(t), on states of shape ``shape``.

    ``T`` is the number of steps the operator was trained for (= its batch-norm slots).
    """

    def __init__(self, shape: tuple[int, ...], T: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.d = math.prod(self.shape)
        self.T = T
        self.prior = FactorialGaussianPrior(self.d)
        net = build_net(cfg.net, self.d, tuple(cfg.hidden), T, cfg.batch_norm)
        self.op = TransitionOperator(net, cfg.beta, cfg.eps)

    def forward(self, z: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.op(z, t)

    @property
    def stats_ready(self) -> bool:
        """True once the per-step batch-norm statistics of SPEC §6 are stored (or there is no BN)."""
        return all(n.has_stats for n in step_norms(self))
