"""GSN / denoising-autoencoder walkback, algorithms.md §12 (Bengio et al. 2013; DL book §20.11–20.12).

One transition of the chain corrupts the state, x̃ ~ C(x̃ | x), and draws the next state from
the learned reconstruction distribution p(x | x̃) = N(μ, σ²) — the same operator network and
heads as infusion (μ = sigmoid(a_μ), σ² = β·sigmoid(a_σ) + ε, algorithms.md §2). The operator is one
stationary transition, so the model has a single batch-norm slot shared by every step.

Corruptions (both driven by one standard-normal draw ξ per dimension, so the shared sampler's
per-sample seeds fix them): Gaussian, x̃ = x + level·ξ; salt-and-pepper, with u = Φ(ξ) uniform,
x̃ = 0 where u < level/2, 1 where u > 1 − level/2, else x (each dimension is replaced by a random
bit with probability ``level``).

Walkback training: from a data point, k = ``method.T`` alternating corrupt/reconstruct steps,
every reconstruction penalised against the clean x: L = −Σ_j log p(x | x̃_j); the walk's draws
carry no gradient. Sampling: a long chain with :func:`~infusion.chain.sampler.sample_chain`, from the
prior (noise) or from data (``start=``); conditional sampling by clamping (``clamp=``).
A GSN defines no tractable likelihood (``has_likelihood`` is False): use the Parzen estimate
and the sample-quality metrics for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..chain.distributions import normal_log_prob
from ..chain.model import GaussianChainModel
from ..config import ModelConfig
from ..errors import InputError, require
from .base import Method


@dataclass(frozen=True)
class GSNSettings:
    """GSN / denoising-autoencoder walkback (algorithms.md §12): ``method.gsn.*``;
    ``method.T`` = the walkback steps k."""

    samplers: ClassVar[tuple[str, ...]] = ("ancestral",)
    step_embedding: ClassVar[bool] = False
    conditional: ClassVar[bool] = False

    noise: str = "gaussian"  # corruption: "gaussian" or "salt_pepper"
    noise_level: float = 0.2  # Gaussian std, or salt-and-pepper probability per dimension

    def validate(self) -> None:
        p = "method.gsn"
        require([
            (self.noise in ("gaussian", "salt_pepper"),
             f"{p}.noise={self.noise!r}: expected 'gaussian' or 'salt_pepper'"),
            (math.isfinite(self.noise_level) and self.noise_level > 0
             and (self.noise != "salt_pepper" or self.noise_level <= 1),
             f"{p}.noise_level={self.noise_level}: expected > 0 (<= 1 for salt_pepper)"),
        ])


def corrupt(x: torch.Tensor, xi: torch.Tensor, kind: str, level: float) -> torch.Tensor:
    """C(x̃ | x) driven by standard-normal ξ (same shape as x), algorithms.md §12."""
    if kind == "gaussian":
        return x + level * xi
    if kind == "salt_pepper":
        u = 0.5 * (1 + torch.erf(xi / math.sqrt(2)))
        return torch.where(u < level / 2, torch.zeros_like(x),
                           torch.where(u > 1 - level / 2, torch.ones_like(x), x))
    raise InputError(f"unknown corruption {kind!r}: expected 'gaussian' or 'salt_pepper'")


class GSNModel(GaussianChainModel):
    """The GSN transition: corrupt, then N(μ, σ²) of the reconstruction operator (§12).

    ``T`` is the walkback length k (the default number of sampling steps); the operator has
    one batch-norm slot. ``aux_noise = True``: the sampler passes the corruption noise ξ.
    """

    aux_noise = True

    def __init__(self, shape: tuple[int, ...], k: int, cfg: ModelConfig, noise: str = "gaussian",
                 level: float = 0.2) -> None:
        super().__init__(shape, k, cfg, slots=1)
        self.noise, self.level = noise, level

    def forward(self, z: torch.Tensor, t, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ²) of p(x | C(z; ξ)); ``noise`` = ξ (B, d) standard normal drives the corruption."""
        if noise is None:
            raise InputError("a GSN transition corrupts its input: pass the corruption noise "
                             "(B, d) standard normal, as sample_chain does")
        return super().forward(corrupt(z, noise, self.noise, self.level), 1)


class GSN(Method):
    """Walkback training of a GSN / denoising autoencoder, algorithms.md §12."""

    name = "gsn"
    Settings = GSNSettings

    def build_model(self, shape: tuple[int, ...], cfg: ModelConfig) -> GSNModel:
        return GSNModel(shape, self.T, cfg, self.settings.noise, self.settings.noise_level)

    def loss(self, model: GSNModel, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Per-example walkback loss −Σ_{j=1..k} log p(x | x̃_j), x: (B, d) -> (B,)."""
        z = x
        total = x.new_zeros(x.shape[0])
        for j in range(1, self.T + 1):
            xi = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            mean, var = model(z.detach(), j, xi)
            total = total - normal_log_prob(x, mean, var)
            if j < self.T:  # walk on from a draw of the reconstruction (no gradient)
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                z = (mean + var.sqrt() * noise).detach()
        return total
