"""Flow matching / rectified flow, algorithms.md §14 (Lipman et al. 2023; Liu et al. 2023).

Space: y = (x − ½)·s (``method.flow.data_scale`` s, as diffusion's §13), prior N(0, I) in y;
densities are reported for the model-space x (+ d·log s).

Path and loss: y_τ = (1 − τ)·y + τ·ε with τ ~ U(0, 1) per example and ε ~ N(0, I); the
network regresses the velocity u = ε − y, loss ‖v̂(y_τ, τ) − u‖² summed over dimensions. The
body is every method's (``model.net`` mlp or unet, algorithms.md §14), conditioned on τ through
diffusion's sinusoidal step embedding (of 1000·τ), without batch norm (a training batch mixes τ).

Sampling: the ODE dy/dτ = v̂(y, τ) from τ = 1 (the prior) to τ = 0 in S equal steps of
h = 1/S (S = ``method.T`` unless ``sample.steps`` says otherwise), deterministic (σ² = 0):
"euler" (the model's own chain, so also "ancestral"), y ← y − h·v̂(y, τ); or "heun", the
Euler step corrected by the mean of the velocities at both ends (EDM's second-order step
without noise).

Likelihood: log p(x) = log N(y_1; 0, I) + ∫₀¹ div v̂(y_τ, τ) dτ + d·log s, the ODE run from the
data (τ = 0) to τ = 1 with ``method.flow.likelihood_steps`` Heun steps, the divergence by
Hutchinson's estimator εᵀ(∂v̂/∂y)ε with one Rademacher ε per path (FFJORD). Each draw is an
unbiased estimate of the discretised log p(x), not a bound, so the evaluation reports the mean
of the draws and no importance-sampling estimate (``Flow.likelihood = "estimate"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..chain.distributions import normal_log_prob
from ..chain.model import ChainModel, FactorialGaussianPrior
from ..chain.nets import STEP_EMBED, build_net
from ..config import ModelConfig
from ..errors import InputError, require
from ..limits import STEPS_MAX, in_range
from .base import Method
from .diffusion import DiffusionPrior


@dataclass(frozen=True)
class FlowSettings:
    """Flow matching / rectified flow (algorithms.md §14): ``method.flow.*``; ``method.T`` = the
    default number of sampling (ODE) steps."""

    samplers: ClassVar[tuple[str, ...]] = ("ancestral", "euler", "heun")
    step_embedding: ClassVar[bool] = True
    conditional: ClassVar[bool] = False

    data_scale: float = 2.0  # flow space y = (x - 0.5)·scale, as diffusion's
    likelihood_steps: int = 50  # Heun steps of the probability-flow ODE for log p(x)
    # training times s: "uniform", U(0, 1); "logit_normal", sigmoid of N(0, 1) (Esser et al.
    # 2024), more of them near s = ½ where the velocity is hardest to predict
    time_sampling: str = "uniform"

    def validate(self) -> None:
        p = "method.flow"
        require([
            (self.time_sampling in ("uniform", "logit_normal"),
             f"{p}.time_sampling={self.time_sampling!r}: expected 'uniform' or 'logit_normal'"),
            (math.isfinite(self.data_scale) and self.data_scale > 0,
             f"{p}.data_scale={self.data_scale}: expected > 0"),
            in_range(f"{p}.likelihood_steps", self.likelihood_steps, 1, STEPS_MAX),
        ])


TIME_SCALE = 1000.0  # τ ∈ [0, 1] is embedded as the step 1000·τ


class FlowModel(ChainModel):
    """The velocity field v̂(y, τ) and its ODE sampler on ``T`` equal steps (``integrator``
    "euler" or "heun"); :meth:`respaced` and :meth:`solver` give views on other step counts
    sharing the network and prior."""

    samplers = FlowSettings.samplers

    def __init__(self, shape: tuple[int, ...], steps: int, cfg: ModelConfig | None = None, *,
                 net: nn.Module | None = None, prior: FactorialGaussianPrior | None = None,
                 scale: float = 1.0, integrator: str = "euler") -> None:
        d = math.prod(shape)
        if net is None:
            if cfg is None:
                raise InputError("FlowModel needs a ModelConfig or a network")
            net = build_net(cfg.net, shape, tuple(cfg.hidden), 1, batch_norm=False,
                            embed=STEP_EMBED)
        super().__init__(shape, steps, net, prior if prior is not None else DiffusionPrior(d, scale))
        self.scale, self.integrator = float(scale), integrator

    def velocity(self, y: torch.Tensor, tau) -> torch.Tensor:
        """v̂(y, τ), y (B, d) in flow space, τ a number or (B,)."""
        tau = torch.as_tensor(tau, dtype=y.dtype, device=y.device).reshape(-1).expand(y.shape[0])
        return self.net(y, TIME_SCALE * tau)[0]

    def to_flow(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) * self.scale

    def respaced(self, steps: int) -> FlowModel:
        return self.solver("euler" if self.integrator == "euler" else "heun", steps)

    def solver(self, sampler: str, steps: int, eta: float = 0.0) -> FlowModel:
        """``euler`` (also ``ancestral``, the model's own chain) or ``heun`` on ``steps`` steps."""
        if sampler not in self.samplers:
            return super().solver(sampler, steps, eta)
        if eta:
            raise InputError(f"eta={eta}: the flow's ODE samplers are deterministic")
        if steps < 1:
            raise InputError(f"steps={steps}: expected >= 1")
        integrator = "heun" if sampler == "heun" else "euler"
        if steps == self.T and integrator == self.integrator:
            return self
        view = FlowModel(self.shape, steps, net=self.net, prior=self.prior, scale=self.scale,
                         integrator=integrator)
        return view.to(self.prior.mean.device).train(self.training)

    def forward(self, z: torch.Tensor, t, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampler step t: from τ = 1 − (t − 1)/T to τ − 1/T, in model space; σ² = 0."""
        if not 1 <= t <= self.T:
            raise InputError(f"flow step {t}: this chain has {self.T} steps (ask for T' = {t})")
        h, tau = 1.0 / self.T, 1.0 - (t - 1) / self.T
        y = self.to_flow(z)
        v = self.velocity(y, tau)
        y_next = y - h * v
        if self.integrator == "heun":
            y_next = y - 0.5 * h * (v + self.velocity(y_next, tau - h))
        return y_next / self.scale + 0.5, torch.zeros_like(y_next)


def training_times(kind: str, n: int, generator: torch.Generator | None,
                   like: torch.Tensor) -> torch.Tensor:
    """n training times s in (0, 1) (``method.flow.time_sampling``, algorithms.md §14):
    "uniform" draws U(0, 1); "logit_normal" draws sigmoid(u), u ~ N(0, 1)."""
    if kind == "logit_normal":
        u = torch.randn(n, generator=generator, device=like.device, dtype=like.dtype)
        return torch.sigmoid(u)
    return torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)


class Flow(Method):
    """Flow matching with the linear (rectified) path, algorithms.md §14."""

    name = "flow"
    Settings = FlowSettings
    has_likelihood = True
    likelihood = "estimate"

    def loss_steps(self) -> int:
        """One time drawn per example (not T)."""
        return 1

    def build_model(self, shape: tuple[int, ...], cfg: ModelConfig) -> FlowModel:
        return FlowModel(shape, self.T, cfg, scale=self.settings.data_scale)

    def loss(self, model: FlowModel, x: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
        """‖v̂(y_τ, τ) − (ε − y)‖² per example, (B, d) -> (B,)."""
        y = model.to_flow(x)
        tau = training_times(self.settings.time_sampling, y.shape[0], generator, y)
        eps = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        y_tau = (1 - tau[:, None]) * y + tau[:, None] * eps
        return (model.velocity(y_tau, tau) - (eps - y)).square().sum(-1)

    def log_weight(self, model: FlowModel, x: torch.Tensor, generator: torch.Generator | None,
                   final_var: float | None = None) -> torch.Tensor:
        """One Hutchinson draw of log p(x) through the probability-flow ODE, (B, d) -> (B,)."""
        if final_var is not None:
            raise InputError("the flow has no final-step variance: the isotropic variant of "
                             "algorithms.md §7 does not apply")
        y = model.to_flow(x)
        probe = torch.randint(0, 2, y.shape, generator=generator, device=y.device).to(y.dtype)
        probe = 2 * probe - 1  # Rademacher
        n, ell = self.settings.likelihood_steps, x.new_zeros(x.shape[0])
        h = 1.0 / n
        for i in range(n):  # Heun on (y, ∫ div v̂) from τ = 0 to 1
            tau = i * h
            v1, div1 = _velocity_and_divergence(model, y, tau, probe)
            v2, div2 = _velocity_and_divergence(model, y + h * v1, tau + h, probe)
            y = y + 0.5 * h * (v1 + v2)
            ell = ell + 0.5 * h * (div1 + div2)
        mean, var = (model.prior.mean - 0.5) * model.scale, model.prior.var * model.scale**2
        prior = normal_log_prob(y, mean.expand_as(y), var.expand_as(y))
        return prior + ell + model.d * math.log(model.scale)


def _velocity_and_divergence(model: FlowModel, y: torch.Tensor, tau: float, probe: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """v̂(y, τ) and Hutchinson's estimate probeᵀ (∂v̂/∂y) probe of its divergence, (B,)."""
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        v = model.velocity(y, tau)
        (vjp,) = torch.autograd.grad((v * probe).sum(), y)
    return v.detach(), (vjp * probe).sum(-1)
