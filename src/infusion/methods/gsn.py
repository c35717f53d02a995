"""GSN / denoising-autoencoder walkback, SPEC §12 (Bengio et al. 2013; DL book §20.11–20.12).

One transition of the chain corrupts the state, x̃ ~ C(x̃ | x), and draws the next state from
the learned reconstruction distribution p(x | x̃) = N(μ, σ²) — the same operator network and
heads as infusion (μ = sigmoid(a_μ), σ² = β·sigmoid(a_σ) + ε, SPEC §2). The operator is one
stationary transition, so the model has a single batch-norm slot shared by every step.

Corruptions (both driven by one standard-normal draw ξ per dimension, so the shared sampler's
per-sample seeds fix them): Gaussian, x̃ = x + level·ξ; salt-and-pepper, with u = Φ(ξ) uniform,
x̃ = 0 where u < level/2, 1 where u > 1 − level/2, else x (each dimension is replaced by a random
bit with probability ``level``).

Walkback training: from a data point, k = ``method.T`` alternating corrupt/reconstruct steps,
every reconstruction penalised against the clean x: L = −Σ_j log p(x | x̃_j); the walk's draws
carry no gradient. Sampling: a long chain with :func:`~infusion.chain.sample_chain`, from the
prior (noise) or from data (``start=``); conditional sampling by clamping (``clamp=``).
A GSN defines no tractable likelihood, so this method has no ``log_weight``: use the Parzen
estimate and the sample-quality metrics for it.
"""

from __future__ import annotations

import math

import torch

from ..config import MethodConfig, ModelConfig
from ..operator import ChainModel, normal_log_prob


def corrupt(x: torch.Tensor, xi: torch.Tensor, kind: str, level: float) -> torch.Tensor:
    """C(x̃ | x) driven by standard-normal ξ (same shape as x), SPEC §12."""
    if kind == "gaussian":
        return x + level * xi
    if kind == "salt_pepper":
        u = 0.5 * (1 + torch.erf(xi / math.sqrt(2)))
        return torch.where(u < level / 2, torch.zeros_like(x),
                           torch.where(u > 1 - level / 2, torch.ones_like(x), x))
    raise ValueError(f"unknown corruption {kind!r}: expected 'gaussian' or 'salt_pepper'")


class GSNModel(ChainModel):
    """The GSN transition: corrupt, then N(μ, σ²) of the reconstruction operator (SPEC §12).

    ``T`` is the walkback length k (the default number of sampling steps); the operator has
    one batch-norm slot. ``aux_noise = True``: the sampler passes the corruption noise ξ.
    """

    aux_noise = True

    def __init__(self, shape: tuple[int, ...], k: int, cfg: ModelConfig, noise: str = "gaussian",
                 level: float = 0.2) -> None:
        super().__init__(shape, 1, cfg)
        self.T, self.noise, self.level = k, noise, level

    def forward(self, z: torch.Tensor, t: int, xi: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ²) of p(x | C(z; ξ)); ``xi`` (B, d) standard normal drives the corruption."""
        if xi is None:
            raise ValueError("a GSN transition corrupts its input: pass the corruption noise xi "
                             "(B, d) standard normal, as sample_chain does")
        return self.op(corrupt(z, xi, self.noise, self.level), 1)


class GSN:
    """Walkback training of a GSN / denoising autoencoder, SPEC §12."""

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg
        self.T = cfg.T

    def build_model(self, shape: tuple[int, ...], cfg: ModelConfig) -> GSNModel:
        return GSNModel(shape, self.T, cfg, self.cfg.gsn_noise, self.cfg.gsn_noise_level)

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
