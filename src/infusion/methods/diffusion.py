"""Diffusion, algorithms.md §13 (Sohl-Dickstein et al. 2015; Ho et al. 2020; Nichol & Dhariwal 2021).

Forward: a fixed Gaussian diffusion q(x_k | x_{k-1}) = N(√(1-β_k)·x_{k-1}, β_k), k = 1..T
(``method.T``), so q(x_k | x_0) = N(√ᾱ_k·x_0, 1-ᾱ_k) and p(x_T) = N(0, I) is the prior.
Betas: ``linear`` (Ho et al.'s 1e-4 … 0.02 for T = 1000, scaled by 1000/T so any T reaches
noise) or ``cosine`` (Nichol & Dhariwal). The diffusion runs in y = (x − ½)·s
(``method.diffusion.data_scale`` s, default 2: the model space [0, 1] of algorithms.md §1 onto [−1, 1] as in
Ho et al.), so that the data's spread is comparable to the unit noise it diffuses into; the
model itself reads and writes the model space x (the shared sampler's states, the prior
N(½, 1/s²)), and densities of x are those of y plus d·log s.

Reverse: p(x_{k-1} | x_k) = N(μ, σ²) on the same body as every method (algorithms.md §2,
§14: ``model.net`` mlp or unet), made step aware by a sinusoidal step embedding added to each
hidden layer (:class:`~infusion.chain.nets.StepEmbeddingMLP`, :class:`~infusion.chain.nets.UNet`) because
one training batch mixes steps; without batch norm (``model.batch_norm`` is ignored; the U-Net
uses group norm), since a batch of the reverse chain shares one step while a training batch
mixes them, so batch statistics would differ between the two.
Head a_μ predicts (``method.diffusion.predict``) the noise ε, μ = (x_k − β_k/√(1-ᾱ_k)·ε̂)/√α_k
(Ho et al.); the clean x̂_0, μ = the forward posterior's mean μ̃(x_k, x̂_0); or
v = √ᾱ_k·ε − √(1-ᾱ_k)·x_0 (Salimans & Ho 2022), x̂_0 = √ᾱ_k·x_k − √(1-ᾱ_k)·v̂, μ = μ̃(x_k, x̂_0).
On an MLP narrower than the data, ε fails at high noise, where ε ≈ x_k is a full-rank map a
784 → 512 → 512 → 784 MLP cannot carry, and x_0 fails at low noise, where x_0 ≈ x_k (both chains
diverged on MNIST: docs/results.md); v keeps the identity part out of the network at both ends (it is EDM's preconditioning with σ_data = 1). Head a_σ interpolates the
log-variance, log σ² = v·log β_k + (1-v)·log β̃_k with v = sigmoid(a_σ) and β̃_k the forward
posterior's variance.

Training (``method.diffusion.loss``): ``bound``, the variational bound estimated with one uniform
step per example, T·L_k + KL(q(x_T | x) ‖ p(x_T)) (L_1 = −log p(x | x_1), L_k = KL of the
posterior q(x_{k-1} | x_k, x) to p(x_{k-1} | x_k)); or ``noise``, the simple loss ‖ε − ε̂‖²
(‖x − x̂_0‖² or ‖v − v̂‖² for the other targets) plus 1e-3 times T·L_k with μ detached, which trains σ
(Nichol & Dhariwal's hybrid). ``log_weight`` is one draw of
log p(x, x_{1:T}) − log q(x_{1:T} | x) over a forward path: the bound and IS estimates of the
shared likelihood code. Sampling with fewer steps: :meth:`DiffusionModel.respaced` (the
schedule restricted to evenly spaced steps, betas recomputed from ᾱ), run by the shared
sampler; sampler steps past T repeat the last reverse step. Few-step deterministic and
stochastic samplers (DDIM, DPM-Solver++(2M)): :mod:`infusion.methods.diffusion_solvers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..chain.distributions import normal_log_prob
from ..chain.model import ChainModel, FactorialGaussianPrior
from ..chain.nets import STEP_EMBED, build_net
from ..config import ModelConfig
from ..errors import InputError, require
from .base import Method
from .diffusion_solvers import SolverChain


@dataclass(frozen=True)
class DiffusionSettings:
    """Gaussian diffusion (algorithms.md §13): ``method.diffusion.*``; ``method.T`` = the
    diffusion steps."""

    samplers: ClassVar[tuple[str, ...]] = ("ancestral", "ddim", "dpm++2m")
    step_embedding: ClassVar[bool] = True
    conditional: ClassVar[bool] = False

    schedule: str = "linear"  # betas: "linear" (Ho et al., scaled by 1000/T) or "cosine"
    loss: str = "noise"  # "noise": the simple loss (+ 1e-3 × bound for σ); "bound": the bound
    data_scale: float = 2.0  # diffusion space y = (x - 0.5)·scale; 2 maps [0, 1] to [-1, 1]
    predict: str = "eps"  # the mean head predicts the noise "eps", the clean "x0", or "v"

    def validate(self) -> None:
        p = "method.diffusion"
        require([
            (self.schedule in ("linear", "cosine"),
             f"{p}.schedule={self.schedule!r}: expected 'linear' or 'cosine'"),
            (self.loss in ("noise", "bound"), f"{p}.loss={self.loss!r}: expected 'noise' or 'bound'"),
            (self.predict in ("eps", "x0", "v"),
             f"{p}.predict={self.predict!r}: expected 'eps', 'x0' or 'v'"),
            (math.isfinite(self.data_scale) and self.data_scale > 0,
             f"{p}.data_scale={self.data_scale}: expected > 0"),
        ])


HYBRID_WEIGHT = 1e-3  # weight of the bound in the "noise" loss (Nichol & Dhariwal 2021)
PREDICT_TARGETS = ("eps", "x0", "v")  # what head a_μ predicts


def make_betas(kind: str, T: int) -> np.ndarray:
    """β_1 … β_T (float64) of the forward diffusion."""
    if T < 1:
        raise InputError(f"diffusion steps T={T}: expected >= 1")
    if kind == "linear":
        scale = 1000.0 / T
        return np.linspace(1e-4 * scale, min(0.02 * scale, 0.999), T, dtype=np.float64)
    if kind == "cosine":
        s = 0.008
        f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * math.pi / 2) ** 2
        return np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    raise InputError(f"unknown beta schedule {kind!r}: expected 'linear' or 'cosine'")


@dataclass(frozen=True)
class Schedule:
    """A reverse-chain schedule: ᾱ_1..ᾱ_S and the network's step index of each (1-based)."""

    alpha_bar: np.ndarray  # (S,) float64, decreasing
    net_index: np.ndarray  # (S,) int64

    @staticmethod
    def from_betas(betas: np.ndarray) -> Schedule:
        return Schedule(np.cumprod(1 - betas), np.arange(1, len(betas) + 1))

    def respace(self, steps: int) -> Schedule:
        """``steps`` evenly spaced steps of this schedule, always keeping the last (ᾱ ≈ 0)."""
        S = len(self.alpha_bar)
        if not 1 <= steps <= S:
            raise InputError(f"steps={steps}: a respaced diffusion needs 1..{S} steps")
        keep = np.unique(np.round(np.linspace(0, S - 1, steps)).astype(np.int64))
        if len(keep) < steps:  # rounding collided; fall back to the last ``steps`` indices
            keep = np.arange(S - steps, S)
        return Schedule(self.alpha_bar[keep], self.net_index[keep])


class DiffusionPrior(FactorialGaussianPrior):
    """p(x_T): N(0, I) in diffusion space, i.e. N(½, 1/s²) in model space; ``fit`` keeps it
    (the diffusion's prior is not fitted to data)."""

    def __init__(self, d: int, scale: float = 1.0) -> None:
        super().__init__(d)
        self.var.fill_(1.0 / scale**2)

    def fit(self, x: torch.Tensor, var_floor: float = 1e-5) -> DiffusionPrior:
        return self


class DiffusionModel(ChainModel):
    """The learned reverse chain of a Gaussian diffusion (algorithms.md §13).

    ``T`` = the number of reverse steps of this schedule; the shared sampler's step t runs
    reverse step k = T − t + 1 (clamped at 1). :meth:`respaced` gives a model with fewer steps
    sharing the network and prior. :meth:`transition` works in diffusion space y = (x − ½)·scale,
    :meth:`forward` (the shared sampler's step) in model space x.
    """

    def __init__(self, shape: tuple[int, ...], schedule: Schedule, cfg: ModelConfig | None = None,
                 *, net: nn.Module | None = None, prior: FactorialGaussianPrior | None = None,
                 scale: float = 1.0, target: str = "eps") -> None:
        if target not in PREDICT_TARGETS:
            raise InputError(f"diffusion target {target!r}: expected one of {PREDICT_TARGETS}")
        d = math.prod(shape)
        if net is None:
            if cfg is None:
                raise InputError("DiffusionModel needs a ModelConfig or a network")
            # no batch norm: a training batch mixes steps but a reverse chain's batch shares
            # one, so batch statistics would differ between the two (measured: the validation
            # bound, scored in batch-statistics mode, was best after epoch 1 and kept the model
            # untrained); the step embedding alone conditions on the step
            net = build_net(cfg.net, shape, tuple(cfg.hidden), 1, batch_norm=False,
                            embed=STEP_EMBED)
        super().__init__(shape, len(schedule.alpha_bar), net,
                         prior if prior is not None else DiffusionPrior(d, float(scale)))
        self.schedule = schedule
        self.scale = float(scale)
        self.target = target
        ab = schedule.alpha_bar
        ab_prev = np.r_[1.0, ab[:-1]]
        betas = 1 - ab / ab_prev
        post_var = betas * (1 - ab_prev) / (1 - ab)  # β̃_k; β̃_1 = 0
        log_min = np.log(np.r_[post_var[1], post_var[1:]] if self.T > 1 else betas)
        for name, v in (("alpha_bar", ab), ("alpha_bar_prev", ab_prev), ("betas", betas),
                        ("post_var", post_var), ("log_var_min", log_min)):
            self.register_buffer(name, torch.tensor(v, dtype=torch.float32), persistent=False)
        self.register_buffer("net_index", torch.tensor(schedule.net_index), persistent=False)

    samplers = DiffusionSettings.samplers

    def solver(self, sampler: str, steps: int, eta: float = 0.0) -> ChainModel:
        """``ancestral``: the learned reverse chain (:meth:`respaced`); ``ddim`` and
        ``dpm++2m``: :class:`~infusion.methods.diffusion_solvers.SolverChain`."""
        if sampler == "ancestral" and not eta:
            return self.respaced(steps)
        if sampler not in self.samplers[1:]:
            return super().solver(sampler, steps, eta)
        return SolverChain(self, sampler, steps, eta)

    def respaced(self, steps: int) -> DiffusionModel:
        """The same network and prior run on ``steps`` evenly spaced steps of the schedule
        (``steps`` >= T: the full schedule; the sampler repeats its last step past T)."""
        if steps >= self.T:
            return self
        view = DiffusionModel(self.shape, self.schedule.respace(steps), net=self.net,
                              prior=self.prior, scale=self.scale, target=self.target)
        return view.to(self.alpha_bar.device).train(self.training)

    def _at(self, name: str, k: torch.Tensor) -> torch.Tensor:
        return getattr(self, name)[k - 1][:, None]  # (B, 1)

    def predict(self, x: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network outputs at reverse step k (B,): the prediction (ε̂ or x̂_0, by ``target``)
        and v = sigmoid(a_σ)."""
        a_mu, a_sigma = self.net(x, self.net_index[k - 1])
        return a_mu, torch.sigmoid(a_sigma)

    def reverse_from(self, x: torch.Tensor, k: torch.Tensor, pred: torch.Tensor,
                     v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ²) of p(x_{k-1} | x_k) from the network outputs."""
        beta, ab = self._at("betas", k), self._at("alpha_bar", k)
        if self.target == "eps":
            mean = (x - beta / (1 - ab).sqrt() * pred) / (1 - beta).sqrt()
        else:
            x0 = pred if self.target == "x0" else ab.sqrt() * x - (1 - ab).sqrt() * pred
            mean = self.posterior(x0, x, k)[0]
        log_var = v * beta.log() + (1 - v) * self._at("log_var_min", k)
        return mean, log_var.exp()

    def data_and_noise(self, x: torch.Tensor, k: torch.Tensor, pred: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂_0, ε̂) at step k (B,) from the prediction of head a_μ, whichever its target."""
        ab = self._at("alpha_bar", k)
        if self.target == "eps":
            return (x - (1 - ab).sqrt() * pred) / ab.sqrt(), pred
        if self.target == "x0":
            return pred, (x - ab.sqrt() * pred) / (1 - ab).sqrt()
        return ab.sqrt() * x - (1 - ab).sqrt() * pred, ab.sqrt() * pred + (1 - ab).sqrt() * x

    def transition(self, x: torch.Tensor, k) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ²) of p(x_{k-1} | x_k); k an int or a (B,) tensor in 1..T."""
        k = torch.as_tensor(k, device=x.device).reshape(-1).expand(x.shape[0])
        return self.reverse_from(x, k, *self.predict(x, k))

    def posterior(self, x0: torch.Tensor, xk: torch.Tensor, k: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x_{k-1} | x_k, x_0) = N(μ̃, β̃)."""
        beta, ab, ab_prev = (self._at(n, k) for n in ("betas", "alpha_bar", "alpha_bar_prev"))
        mean = (ab_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - ab_prev) * xk) / (1 - ab)
        return mean, self._at("post_var", k).expand_as(x0)

    def to_diffusion(self, x: torch.Tensor) -> torch.Tensor:
        """Model space x -> diffusion space y = (x − ½)·scale."""
        return (x - 0.5) * self.scale

    def prior_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance (d,) of the prior p(x_T) in diffusion space (N(0, I) unless changed)."""
        return self.to_diffusion(self.prior.mean), self.prior.var * self.scale**2

    def forward(self, z: torch.Tensor, t, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampler step t in model space: (μ, σ²) of reverse step k = T − t + 1 mapped back."""
        mean, var = self.transition(self.to_diffusion(z), max(1, self.T - t + 1))
        return mean / self.scale + 0.5, var / self.scale**2


def gaussian_kl(m1, v1, m2, v2) -> torch.Tensor:
    """KL(N(m1, v1) ‖ N(m2, v2)) summed over the last dimension, (B,)."""
    return 0.5 * (torch.log(v2 / v1) + (v1 + (m1 - m2).square()) / v2 - 1).sum(-1)


class Diffusion(Method):
    """Gaussian diffusion with a learned reverse chain, algorithms.md §13."""

    name = "diffusion"
    Settings = DiffusionSettings
    has_likelihood = True

    def loss_steps(self) -> int:
        """One time drawn per example (not T)."""
        return 1

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.betas = make_betas(self.settings.schedule, cfg.T)

    def build_model(self, shape: tuple[int, ...], cfg: ModelConfig) -> DiffusionModel:
        return DiffusionModel(shape, Schedule.from_betas(self.betas), cfg,
                              scale=self.settings.data_scale, target=self.settings.predict)

    @staticmethod
    def prior_kl(model: DiffusionModel, y: torch.Tensor) -> torch.Tensor:
        """KL(q(y_T | y) ‖ p(y_T)) in diffusion space, (B,)."""
        ab = model.alpha_bar[-1]
        mean, var = model.prior_moments()
        return gaussian_kl(ab.sqrt() * y, (1 - ab).expand_as(y), mean.expand_as(y), var.expand_as(y))

    def step_term(self, model: DiffusionModel, x: torch.Tensor, xk: torch.Tensor, k: torch.Tensor,
                  mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """L_1 = −log p(x | x_1) where k = 1, else KL(q(x_{k-1} | x_k, x) ‖ p(x_{k-1} | x_k))."""
        post_mean, post_var = model.posterior(x, xk, k)
        kl = gaussian_kl(post_mean, post_var.clamp_min(1e-20), mean, var)
        return torch.where(k == 1, -normal_log_prob(x, mean, var), kl)

    def loss(self, model: DiffusionModel, x: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
        """Per-example loss, (B, d) -> (B,): the bound estimate (in nats of the model space x,
        like ``log_weight``) or the noise-prediction loss."""
        B, T = x.shape[0], model.T
        x = model.to_diffusion(x)
        k = torch.randint(1, T + 1, (B,), generator=generator, device=x.device)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        ab = model._at("alpha_bar", k)
        xk = ab.sqrt() * x + (1 - ab).sqrt() * eps
        if self.settings.loss == "bound":
            mean, var = model.transition(xk, k)
            return (T * self.step_term(model, x, xk, k, mean, var) + self.prior_kl(model, x)
                    - model.d * math.log(model.scale))
        pred, v = model.predict(xk, k)
        mean, var = model.reverse_from(xk, k, pred.detach(), v)
        target = {"eps": eps, "x0": x, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x}[model.target]
        simple = (target - pred).square().sum(-1)
        return simple + HYBRID_WEIGHT * T * self.step_term(model, x, xk, k, mean, var)

    @torch.no_grad()
    def log_weight(self, model: DiffusionModel, x: torch.Tensor, generator: torch.Generator | None,
                   final_var: float | None = None) -> torch.Tensor:
        """One draw of ℓ = log p(x_T) + Σ_k log p(x_{k-1} | x_k) − Σ_k log q(x_k | x_{k-1}), (B,),
        over a forward path x_1..x_T ~ q(· | x) (algorithms.md §13 and the shared estimates of algorithms.md §7),
        run in diffusion space and returned as a density of the model-space x (+ d·log scale).
        ``final_var``: the isotropic variant of algorithms.md §7: the last step's (x_1 → x)
        variance replaced by this one constant, given in model space (so final_var·scale² in
        diffusion space), for every dimension and example; the forward draws are unchanged.
        """
        ell = x.new_full((x.shape[0],), model.d * math.log(model.scale))  # dy/dx = scale
        for _k, log_p, log_q in self.path_terms(model, x, generator, final_var):
            ell = ell - log_q + log_p
        return ell

    @torch.no_grad()
    def path_terms(self, model: DiffusionModel, x: torch.Tensor,
                   generator: torch.Generator | None, final_var: float | None = None):
        """The terms of :meth:`log_weight`, step by step along one forward path: for k = 1..T,
        (k, log p(x_{k-1} | x_k), log q(x_k | x_{k-1})), each (B,); then (T + 1, log p(x_T), 0),
        the prior. Their sum, log p − log q over all k, is ℓ less d·log scale: which noise
        levels the bound gains or loses its nats at."""
        x = model.to_diffusion(x)
        prev = x
        for k in range(1, model.T + 1):
            beta = model.betas[k - 1]
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            xk = (1 - beta).sqrt() * prev + beta.sqrt() * noise
            log_q = normal_log_prob(xk, (1 - beta).sqrt() * prev, beta.expand_as(x))
            mean, var = model.transition(xk, k)
            if final_var is not None and k == 1:
                var = torch.full_like(var, final_var * model.scale**2)
            yield k, normal_log_prob(prev, mean, var), log_q
            prev = xk
        mean, var = model.prior_moments()
        yield model.T + 1, normal_log_prob(prev, mean.expand_as(prev), var.expand_as(prev)), 0.0
