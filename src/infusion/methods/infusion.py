"""Infusion training, docs/algorithms.md §3–5 (Bordes, Honari & Vincent 2017, Algorithm 1).

The training chain starts from z̃(0) ~ q(0)(· | x) and at every step infuses the target x into
the model's own transition: per dimension, with probability α(t) the next state is drawn from a
narrow Gaussian at x instead of from p(t)(· | z̃(t-1)). Each step is trained to denoise towards
x, weighted by t/T (footnote 3); no gradient flows between steps. The lower-bound-based
variant (``method.infusion.loss = "bound"``, §5) instead maximises the bound ℓ of §7 with
gradients through the chain's Gaussian draws; ``"mixed"`` weighs the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..chain.distributions import log_q_mixture, normal_log_prob
from ..chain.model import ChainModel, GaussianChainModel
from ..config import MethodConfig, ModelConfig
from ..errors import InputError, require
from .base import Method


@dataclass(frozen=True)
class InfusionSettings:
    """Infusion training (algorithms.md §3–5): ``method.infusion.*``."""

    samplers: ClassVar[tuple[str, ...]] = ("ancestral",)  # sample.sampler values it runs
    step_embedding: ClassVar[bool] = False  # the network takes the (continuous) step as input
    conditional: ClassVar[bool] = True  # model.classes > 0 (algorithms.md §15)

    alpha0: float = 0.0  # infusion rate of q(0)
    omega: float = 0.01  # α(t) = α(t-1) + ω, clipped to [0, 1]
    target_var: float = 1e-4  # variance of the narrow Gaussian at the target (footnote 1)
    loss: str = "denoising"  # "denoising" (§4), "bound" (lower-bound-based, §5) or "mixed"
    bound_weight: float = 0.5  # "mixed": (1 - w)·denoising + w·(−bound) (§5)
    step_weight: str = "linear"  # "linear": t/T (footnote 3); "uniform": 1

    def validate(self) -> None:
        p = "method.infusion"
        require([
            (0.0 <= self.alpha0 <= 1.0,
             f"{p}.alpha0={self.alpha0}: an infusion rate must lie in [0, 1]"),
            (-1.0 <= self.omega <= 1.0, f"{p}.omega={self.omega}: expected in [-1, 1]"),
            (math.isfinite(self.target_var) and self.target_var > 0,
             f"{p}.target_var={self.target_var}: expected > 0"),
            (self.loss in ("denoising", "bound", "mixed"),
             f"{p}.loss={self.loss!r}: expected 'denoising', 'bound' or 'mixed'"),
            (0.0 <= self.bound_weight <= 1.0,
             f"{p}.bound_weight={self.bound_weight}: expected a weight in [0, 1]"),
            (self.step_weight in ("linear", "uniform"),
             f"{p}.step_weight={self.step_weight!r}: expected 'linear' or 'uniform'"),
        ])


def infusion_rates(T: int, alpha0: float, omega: float) -> list[float]:
    """α(0), …, α(T-1) with α(t) = α(t-1) + ω, clipped to [0, 1] (algorithms.md §3)."""
    if not 0.0 <= alpha0 <= 1.0:
        raise InputError(f"alpha0={alpha0}: an infusion rate must lie in [0, 1]")
    return [min(1.0, max(0.0, alpha0 + omega * t)) for t in range(T)]


def infuse(mean: torch.Tensor, std: torch.Tensor, x: torch.Tensor, alpha: float,
           generator: torch.Generator | None, target_std: float = 0.01) -> torch.Tensor:
    """One draw of the infusion mixture q(t), algorithms.md §3.

    Per dimension, with m ~ Bernoulli(α): z = m·(x + target_std·ε₁) + (1-m)·(μ + σ·ε₂).
    ``mean``/``std`` are the model's transition (or the prior); all tensors (B, d).
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha={alpha}: an infusion rate must lie in [0, 1]")
    kw = {"generator": generator, "device": x.device, "dtype": x.dtype}
    mask = torch.rand(x.shape, **kw) < alpha
    from_target = x + target_std * torch.randn(x.shape, **kw)
    from_model = mean + std * torch.randn(x.shape, **kw)
    return torch.where(mask, from_target, from_model)


class Infusion(Method):
    """Infusion training: denoising-based (algorithms.md §4) or lower-bound-based (§5)."""

    name = "infusion"
    Settings = InfusionSettings
    has_likelihood = True
    has_infusion_chain = True

    def __init__(self, cfg: MethodConfig) -> None:
        super().__init__(cfg)
        s = self.settings
        self.rates = infusion_rates(cfg.T, s.alpha0, s.omega)  # α(0) … α(T-1)
        self.target_var = s.target_var
        self.target_std = math.sqrt(s.target_var)

    def build_model(self, shape: tuple[int, ...], cfg: ModelConfig) -> GaussianChainModel:
        """The model this method trains: prior + operator with T batch-norm slots."""
        return GaussianChainModel(shape, self.T, cfg)

    def step_weight(self, t: int) -> float:
        """η(t)/η₀ = t/T (footnote 3), or 1."""
        return t / self.T if self.settings.step_weight == "linear" else 1.0

    def start(self, model: ChainModel, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """z̃(0) ~ q(0)(· | x) = (1-α(0)) p(0) + α(0) N(x, target_var), algorithms.md §3."""
        prior = model.prior
        mean, std = prior.mean.expand_as(x), prior.var.sqrt().expand_as(x)
        return infuse(mean, std, x, self.rates[0], generator, self.target_std)

    def loss(self, model: ChainModel, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Per-example loss, x: (B, d) -> (B,): "denoising" (algorithms.md §4), "bound" (§5) or
        "mixed", (1 − w)·denoising + w·bound with w = ``bound_weight`` (§5), each on its own
        draw of the chain."""
        if self.settings.loss == "bound":
            return self.bound_loss(model, x, generator)
        if self.settings.loss == "mixed":
            w = self.settings.bound_weight
            return ((1 - w) * self.denoising_loss(model, x, generator)
                    + w * self.bound_loss(model, x, generator))
        return self.denoising_loss(model, x, generator)

    def bound_loss(self, model: ChainModel, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Lower-bound-based infusion training, algorithms.md §5: −ℓ of algorithms.md §7 for one draw, (B,).

        The very computation of :meth:`log_weight`: each z̃(t) = μ_t + σ_t·ε (where the mask
        keeps the model's component) carries gradients into every earlier step
        (reparametrisation); the Bernoulli mask is a comparison and is not differentiated.
        """
        return -self.log_weight(model, x, generator)

    def denoising_loss(self, model: ChainModel, x: torch.Tensor,
                       generator: torch.Generator | None) -> torch.Tensor:
        """Per-example loss L = Σ_t (t/T)·(−log N(x; μ_t, σ²_t)), x: (B, d) -> (B,). algorithms.md §4."""
        z = self.start(model, x, generator)
        total = x.new_zeros(x.shape[0])
        for t in range(1, self.T + 1):
            mean, var = model(z.detach(), t)  # no gradient between steps
            total = total - self.step_weight(t) * normal_log_prob(x, mean, var)
            if t < self.T:
                z = infuse(mean.detach(), var.detach().sqrt(), x, self.rates[t], generator,
                           self.target_std)
        return total

    @torch.no_grad()
    def infusion_chain(self, model: ChainModel, x: torch.Tensor,
                       generator: torch.Generator | None) -> list[torch.Tensor]:
        """The states z̃(0) … z̃(T-1) and the final mean μ_T for targets x (paper Fig. 2)."""
        z = self.start(model, x, generator)
        states = [z]
        for t in range(1, self.T + 1):
            mean, var = model(z, t)
            if t < self.T:
                z = infuse(mean, var.sqrt(), x, self.rates[t], generator, self.target_std)
                states.append(z)
        states.append(mean)
        return states

    def log_weight(self, model: ChainModel, x: torch.Tensor, generator: torch.Generator | None,
                   final_var: float | None = None) -> torch.Tensor:
        """One draw of the log-weight ℓ of algorithms.md §7 (paper eqs. 2–3), x: (B, d) -> (B,).

        ℓ = log p(0)(z̃0) + Σ_{t<T} log p(t)(z̃t | z̃t-1) + log p(T)(x | z̃T-1)
            − log q(0)(z̃0 | x) − Σ_{t<T} log q(t)(z̃t | z̃t-1, x),   z̃ ~ q(· | x).
        ``final_var``: the isotropic variant (algorithms.md §7, Table 2 "+ isotropic"):
        p(T)(x | z̃T-1) = N(x; μ_T, final_var·I), one constant for every pixel and example; it
        changes no draw, only the last term. Uses whatever batch-norm mode the model is in.
        """
        prior = model.prior
        z = self.start(model, x, generator)
        log_p = prior.log_prob(z)
        log_q = log_q_mixture(z, prior.mean.expand_as(x), prior.var.expand_as(x), x,
                              self.rates[0], self.target_var)
        for t in range(1, self.T + 1):
            mean, var = model(z, t)
            if t == self.T:
                if final_var is not None:
                    var = torch.full_like(var, final_var)
                return log_p + normal_log_prob(x, mean, var) - log_q
            z_next = infuse(mean, var.sqrt(), x, self.rates[t], generator, self.target_std)
            log_p = log_p + normal_log_prob(z_next, mean, var)
            log_q = log_q + log_q_mixture(z_next, mean, var, x, self.rates[t], self.target_var)
            z = z_next
        raise AssertionError("unreachable")
