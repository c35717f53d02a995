"""The variational autoencoder, algorithms.md §16 (Kingma & Welling 2014; Burda et al. 2016;
Loaiza-Ganem & Cunningham 2019): the likelihood baseline of the paper's Table 2 (VAE-50,
VAE-10), on the bodies, data, trainer, sampler and evaluation every method shares.

Model: z ~ N(0, I) of ``method.vae.latent`` dimensions and x ~ p(x | z), a factorial decoder on
an MLP over the reversed ``model.hidden``: ``gaussian``, N(μ, σ²) with infusion's last-step
heads (μ = sigmoid(a_μ), σ² = β·sigmoid(a_σ) + ε, ``model.beta``/``model.eps``), or
``bernoulli``, the continuous Bernoulli with logits a_μ, a proper density on [0, 1]^d. The
encoder q(z | x) = N(μ_z, diag σ_z²) is an MLP over ``model.hidden`` with the heads μ_z and
log σ_z².

Training: the negative ELBO per example, −log p(x | z) + KL(q(z | x) ‖ N(0, I)) with one
reparametrised draw z = μ_z + σ_z·ε (the KL in closed form). Likelihood: :meth:`Vae.log_weight`
is one draw of ℓ = log p(x | z) + log p(z) − log q(z | x), z ~ q(z | x), so the shared estimator
(algorithms.md §7) gives the ELBO (its mean) and the importance-weighted bound of Burda et al.
(IWAE; its log-mean-exp over k draws), both lower bounds on log p(x).

As a chain (the shared sampler): ``method.T`` = 1. The one transition draws the latent and
decodes it, and does not read its input state, so z(0) (the fitted factorial prior of
algorithms.md §2) is only a start that is discarded; steps past the first draw afresh, each an
independent sample of the model. The sampler's step is :meth:`VaeModel.step`: the latent from
the sample's own standard normals, then a draw of the decoder (a Gaussian draw, or the
continuous Bernoulli's inverse CDF at Φ(ε)); the reported mean is the decoder's mean.

No batch norm (``model.batch_norm`` is not used): the importance-weighted estimate scores k
copies of one example in a batch, whose batch statistics would be degenerate, and the decoder
reads latents from q(z | x) in training but from N(0, I) when sampling, so statistics stored by
a pass over the training set (algorithms.md §6) would not be those it is sampled with. Without
it every example is scored alone, ``stats_ready`` holds from the start and the §6 pass is empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..chain.distributions import (
    LOG_2PI,
    cb_icdf,
    cb_log_prob,
    cb_mean,
    cb_var,
    normal_log_prob,
    wide,
)
from ..chain.model import ChainModel, FactorialGaussianPrior
from ..chain.nets import MLP
from ..config import ModelConfig
from ..errors import InputError, require
from ..limits import WIDTH_MAX, in_range
from .base import Method

VAE_DECODERS = ("gaussian", "bernoulli")  # p(x | z): factorial Gaussian, continuous Bernoulli


@dataclass(frozen=True)
class VaeSettings:
    """The variational autoencoder (algorithms.md §16): ``method.vae.*``. ``method.T`` must be
    1: a VAE draws x in one step (z ~ N(0, I), then x ~ p(x | z)); other values are refused
    rather than ignored, so that every count derived from T (sampling steps, Parzen's steps,
    the report's training T) means what it says. Its bodies are MLPs (``model.net=mlp``)
    without batch norm (``model.batch_norm`` is not used)."""

    samplers: ClassVar[tuple[str, ...]] = ("ancestral",)
    step_embedding: ClassVar[bool] = False
    conditional: ClassVar[bool] = False
    T_max: ClassVar[int] = 1  # method.T
    T_note: ClassVar[str] = (" (a VAE draws x in one step, z ~ N(0, I) then x ~ p(x | z): "
                             "set method.T=1)")
    nets: ClassVar[tuple[str, ...]] = ("mlp",)  # the model.net values it builds

    latent: int = 50  # dimensions of z
    # p(x | z): "gaussian", the factorial Gaussian of infusion's last step (μ = sigmoid(a_μ),
    # σ² = β·sigmoid(a_σ) + ε); "bernoulli", the continuous Bernoulli, a density on [0, 1]^d
    decoder: str = "gaussian"

    def validate(self) -> None:
        p = "method.vae"
        require([
            in_range(f"{p}.latent", self.latent, 1, WIDTH_MAX, " (dimensions of z)"),
            (self.decoder in VAE_DECODERS,
             f"{p}.decoder={self.decoder!r}: expected 'gaussian' or 'bernoulli'"),
        ])


class VaeNet(nn.Module):
    """The VAE's two bodies (algorithms.md §16), :class:`~infusion.chain.nets.MLP` without
    batch norm: the encoder d → ``hidden`` → (μ_z, log σ_z²), each of size ``latent``; the
    decoder ``latent`` → reversed ``hidden`` → (a_μ, a_σ) of size d (a_μ alone for the
    continuous Bernoulli, ``sigma_head=False``)."""

    def __init__(self, d: int, hidden: tuple[int, ...], latent: int, sigma_head: bool = True
                 ) -> None:
        super().__init__()
        self.encoder = MLP(d, tuple(hidden), 1, batch_norm=False, out=latent)
        self.decoder = MLP(latent, tuple(reversed(hidden)), 1, batch_norm=False, out=d,
                           sigma_head=sigma_head)

    def compile(self, *args, **kwargs) -> None:
        """``torch.compile`` both bodies in place (``train.compile``)."""
        self.encoder.compile(*args, **kwargs)
        self.decoder.compile(*args, **kwargs)


class GaussianDecoder:
    """p(x | z) = N(mean, diag var), (B, d) each (algorithms.md §16, the Gaussian decoder)."""

    def __init__(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        self.mean, self.var = mean, var

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B,)
        return normal_log_prob(x, self.mean, self.var)

    def draw(self, eps: torch.Tensor) -> torch.Tensor:
        """x = μ + σ·ε for standard normals ε (B, d)."""
        return self.mean + self.var.sqrt() * eps


class ContinuousBernoulliDecoder:
    """p(x | z) = Π_i CB(x_i; η_i) with logits η (B, d) (algorithms.md §16)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self.mean, self.var = cb_mean(logits), cb_var(logits)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B,)
        return cb_log_prob(x, self.logits)

    def draw(self, eps: torch.Tensor) -> torch.Tensor:
        """The inverse CDF at u = Φ(ε) for standard normals ε (B, d)."""
        return cb_icdf(self.logits, torch.special.ndtr(wide(eps)))


class VaeModel(ChainModel):
    """A VAE as a one-step chain (algorithms.md §16): encoder and decoder bodies (``net``), the
    decoder ``decoder`` ("gaussian" or "bernoulli") over ``latent`` dimensions, and a fitted
    factorial prior in data space that only starts the sampler's chain."""

    aux_noise = True  # the latent; its blocks are taken by :meth:`step`
    samplers = VaeSettings.samplers
    clampable = False  # a step does not read its input: clamped pixels would condition nothing

    def __init__(self, shape: tuple[int, ...], cfg: ModelConfig, latent: int = 50,
                 decoder: str = "gaussian") -> None:
        if decoder not in VAE_DECODERS:
            raise InputError(f"VAE decoder {decoder!r}: expected one of {', '.join(VAE_DECODERS)}")
        if latent < 1:
            raise InputError(f"VAE latent={latent}: expected >= 1")
        if cfg.net != "mlp":
            raise InputError(f"model.net={cfg.net!r}: the VAE builds MLP bodies (model.net=mlp)")
        d = math.prod(shape)
        net = VaeNet(d, tuple(cfg.hidden), latent, sigma_head=decoder == "gaussian")
        super().__init__(shape, 1, net, FactorialGaussianPrior(d))
        self.latent, self.decoder = int(latent), decoder
        self.beta, self.eps = cfg.beta, cfg.eps

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x): (μ_z, log σ_z²), each (B, latent), for x (B, d)."""
        mean, log_var = self.net.encoder(x, 1)
        return wide(mean), wide(log_var)

    def decode(self, z: torch.Tensor) -> GaussianDecoder | ContinuousBernoulliDecoder:
        """p(x | z) for latents z (B, latent): the decoder body, then :meth:`observation`."""
        a_mu, a_sigma = self.net.decoder(z, 1)
        return self.observation(wide(a_mu), None if a_sigma is None else wide(a_sigma))

    def observation(self, a_mu: torch.Tensor, a_sigma: torch.Tensor | None
                    ) -> GaussianDecoder | ContinuousBernoulliDecoder:
        """The decoder distribution from its heads (B, d): N(sigmoid(a_μ), β·sigmoid(a_σ) + ε),
        or the continuous Bernoulli of logits a_μ."""
        if self.decoder == "bernoulli":
            return ContinuousBernoulliDecoder(a_mu)
        return GaussianDecoder(torch.sigmoid(a_mu), self.beta * torch.sigmoid(a_sigma) + self.eps)

    def forward(self, z: torch.Tensor, t, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's mean and variance, each (B, d), at the latent ``noise`` (B, latent);
        the state z is not read (the transition is the same at every step)."""
        if noise is None or noise.shape[-1] != self.latent:
            raise InputError(f"a VAE transition decodes a latent draw: pass noise of shape "
                             f"(B, {self.latent}), standard normal")
        p = self.decode(noise)
        return p.mean, p.var

    def step(self, z: torch.Tensor, t, noise) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampler's step (algorithms.md §16): u ~ N(0, I) from the next ⌈latent/d⌉
        (B, d) blocks of ``noise``, then x ~ p(x | u) from one more; returns (x, E[x | u])."""
        blocks = -(-self.latent // self.d)
        u = torch.cat([noise() for _ in range(blocks)], 1)[:, : self.latent]
        p = self.decode(u.to(z.dtype))
        return p.draw(noise()).to(z.dtype), p.mean.to(z.dtype)


class Vae(Method):
    """The variational autoencoder, algorithms.md §16: ELBO training, ELBO / IWAE estimates."""

    name = "vae"
    Settings = VaeSettings
    has_likelihood = True

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if cfg.T != 1:
            raise InputError(f"method.T={cfg.T}: a VAE draws x in one step (method.T=1)")

    def build_model(self, shape: tuple[int, ...], cfg: ModelConfig) -> VaeModel:
        return VaeModel(shape, cfg, self.settings.latent, self.settings.decoder)

    @staticmethod
    def posterior_draw(model: VaeModel, x: torch.Tensor, generator: torch.Generator | None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """z = μ_z + σ_z·ε ~ q(z | x), reparametrised: (z, μ_z, log σ_z², ε), each (B, latent)."""
        mean, log_var = model.encode(x)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + (0.5 * log_var).exp() * eps, mean, log_var, eps

    def loss(self, model: VaeModel, x: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
        """The negative ELBO per example, (B, d) -> (B,): −log p(x | z) for one reparametrised
        z ~ q(z | x), plus KL(q(z | x) ‖ N(0, I)) = ½·Σ(μ_z² + σ_z² − 1 − log σ_z²) (§16)."""
        z, mean, log_var, _ = self.posterior_draw(model, x, generator)
        kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum(-1)
        return kl - model.decode(z).log_prob(x)

    def log_weight(self, model: VaeModel, x: torch.Tensor, generator: torch.Generator | None,
                   final_var: float | None = None) -> torch.Tensor:
        """One draw of ℓ = log p(x | z) + log p(z) − log q(z | x), z ~ q(z | x), (B, d) -> (B,)
        (algorithms.md §16): its mean is the ELBO, its log-mean-exp over k draws the IWAE
        bound (§7). ``final_var``: the isotropic variant, p(x | z) = N(x; E[x | z], final_var·I)
        (the decoder's mean with one fixed variance, for either decoder)."""
        z, _, log_var, eps = self.posterior_draw(model, x, generator)
        log_q = -0.5 * (LOG_2PI + log_var + eps.square()).sum(-1)
        log_prior = -0.5 * (LOG_2PI + z.square()).sum(-1)
        p = model.decode(z)
        if final_var is None:
            log_px = p.log_prob(x)
        else:
            log_px = normal_log_prob(x, p.mean, torch.full_like(p.mean, final_var))
        return log_px + log_prior - log_q
