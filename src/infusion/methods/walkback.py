"""Variational walkback, algorithms.md §11 (Goyal, Ke, Ganguli & Bengio 2017, Algorithm 1,
eq. 10, appendices F and H).

The operator at temperature T is p_T(s' | s) = N(μ, T·σ²) with μ = (1-a)·s + a·F_μ(s) and
σ = softplus(F_σ(s)): the temperature multiplies the *variance* (std √T·σ), as Algorithm 1
("injects noise of variance Tσ²"), appendix F and the authors' code do. F_μ and F_σ are the two
heads of the shared MLP body (§2), with one batch-norm slot per temperature level (appendix I:
batch norm not shared across steps). A training trajectory heats a data point with the
operator itself: n ~ U{0..N1} steps at temperature 1, then the temperature grows by ×2 (or ×√2,
appendix F) per step over L = ``method.T`` levels, so step t of K = n + L uses level
max(0, t-n-1), temperature base^level. The loss is the walk back,
−Σ_t log p_{T_t}(s_{t-1} | s_t) − log p*(s_K), with no gradient through the draws. p* (the
model's ``prior``) starts at the data's moments (the trainer fits it) and is moved, during
training steps, towards the moments of the hottest states s_K.

Sampling cools: the shared sampler's step t runs at level max(0, L - t), so steps 1..L go from
the hottest level down to temperature 1 and every further step (``method.walkback.extra`` of
them in the presets) is a temperature-1 step. The eq. 10 estimate (``log_weight``) scores
exactly that chain with n = ``extra``. :func:`reversibility` is the appendix H measure.

Where the released code (github.com/anirudh9119/walkback_nips17) differs, we follow the paper
(§11): it scores each state under its own mean and trains with L1/L2 reconstruction losses,
and uses near-zero noise for CIFAR; here each step is the Gaussian log-density of the previous
state, as Algorithm 1 and the bound of eq. 5 require, so that eq. 10 is a likelihood.
Choices the paper leaves open: the temperature-1 noise σ is learned, so the number of heated
levels is the setting ``method.T`` rather than ceil(log2(σ²_max/σ²)), and σ is capped at
σ_max/√T_max (``sigma_max``; T_max = base^(L-1)) so that the hottest step's std is at most
σ_max: Algorithm 1's T_max = σ²_max/σ² read the other way round. Without the cap the learned σ
and the heating feed each other (the walk back fits any σ the heating used) and the heated
states ran away (p* variance ~10⁴ on the spiral after 15 epochs, measured with version 0.1).
Version 0.1 multiplied the std by the temperature (variance ×4 per doubling); its checkpoints
load with ``temperature_scales = "std"`` and keep that behaviour. Parameters are updated once
per minibatch on the summed steps (the paper reports online per-step updates as slightly
better) because the shared trainer makes one step per batch.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..chain.distributions import normal_log_prob
from ..chain.model import ChainModel, FactorialGaussianPrior
from ..chain.nets import build_net, step_norms, with_bn_eps
from ..config import ModelConfig
from ..errors import InputError, require
from ..limits import STEPS_MAX, in_range
from .base import Method


@dataclass(frozen=True)
class WalkbackSettings:
    """Variational walkback (algorithms.md §11): ``method.walkback.*``; ``method.T`` = the
    heated levels L, temperatures base^0 … base^(L-1)."""

    samplers: ClassVar[tuple[str, ...]] = ("ancestral",)
    step_embedding: ClassVar[bool] = False
    conditional: ClassVar[bool] = False
    # method.T: the hottest temperature base^(T-1) must stay a finite float32 noise scale
    T_max: ClassVar[int] = 100

    alpha: float = 0.5  # a in μ = (1-a)·s + a·F_μ(s)
    schedule: str = "double"  # temperature ×2 per heated step; "sqrt2": ×√2 (appendix F)
    # "variance": temperature T multiplies the variance (std √T·σ), as Algorithm 1, appendix F
    # and the authors' code; "std": it multiplies the std (checkpoints made before 0.2)
    temperature_scales: str = "variance"
    n1: int = 5  # N1: n ~ U{0..N1} initial temperature-1 steps of a heating trajectory
    extra: int = 5  # extra temperature-1 sampling steps (= the n of the eq. 10 estimate)
    sigma_offset: float = 0.0  # σ = softplus(F_σ(s) + offset)
    sigma_max: float = 0.5  # σ_max: noise std of the hottest step (caps σ at σ_max/√T_max)
    prior_momentum: float = 0.99  # p* moments: moving average over the hottest states s_K

    def validate(self) -> None:
        p = "method.walkback"
        require([
            (0.0 < self.alpha <= 1.0, f"{p}.alpha={self.alpha}: expected in (0, 1]"),
            (self.schedule in ("double", "sqrt2"),
             f"{p}.schedule={self.schedule!r}: expected 'double' or 'sqrt2'"),
            (self.temperature_scales in ("variance", "std"),
             f"{p}.temperature_scales={self.temperature_scales!r}: expected 'variance' or 'std'"),
            in_range(f"{p}.n1", self.n1, 0, STEPS_MAX),
            in_range(f"{p}.extra", self.extra, 0, STEPS_MAX),
            (math.isfinite(self.sigma_offset), f"{p}.sigma_offset={self.sigma_offset}: expected finite"),
            (math.isfinite(self.sigma_max) and self.sigma_max > 0,
             f"{p}.sigma_max={self.sigma_max}: expected > 0"),
            (0.0 <= self.prior_momentum < 1.0,
             f"{p}.prior_momentum={self.prior_momentum}: expected in [0, 1)"),
        ])


class WalkbackModel(ChainModel):
    """Temperature-scaled Gaussian operator and its start distribution p* (algorithms.md §11).

    ``prior`` is p*, ``T`` the L heated levels (= batch-norm slots). ``variance_scaling``:
    the temperature multiplies the variance (the paper), else the std (version 0.1).
    """

    def __init__(self, shape: tuple[int, ...], T: int, cfg: ModelConfig, alpha: float = 0.5,
                 base: float = 2.0, sigma_offset: float = 0.0, sigma_max: float = 0.5,
                 variance_scaling: bool = True) -> None:
        d = math.prod(shape)
        net = build_net(cfg.net, shape, tuple(cfg.hidden), T, cfg.batch_norm)
        super().__init__(shape, T, with_bn_eps(net, cfg.bn_eps), FactorialGaussianPrior(d))
        self.alpha, self.base, self.sigma_offset = alpha, base, sigma_offset
        self.variance_scaling = variance_scaling
        # Tmax = σ²_max/σ² read the other way: the temperature-1 noise σ is at most
        # σ_max/√T_max, so that the hottest step's std is at most σ_max
        self.sigma_cap = sigma_max / self.std_factor(T - 1)

    def temperature(self, level: int) -> float:
        return self.base ** level

    def std_factor(self, level: int) -> float:
        """What the temperature does to the noise std: √T (the paper), or T (version 0.1)."""
        t = self.temperature(level)
        return math.sqrt(t) if self.variance_scaling else t

    def level(self, t: int) -> int:
        """Temperature level of the sampler's step t (1-based): cooling, then temperature 1."""
        return max(0, self.T - t)

    def transition(self, s: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """p_T(· | s) at temperature base^level: (μ, σ²), each (B, d)."""
        if not 0 <= level < self.T:
            raise InputError(f"temperature level {level}: expected 0..{self.T - 1}")
        f_mu, f_sigma = self.net(s, level + 1)
        mean = (1 - self.alpha) * s + self.alpha * f_mu
        sigma = F.softplus(f_sigma + self.sigma_offset).clamp(1e-6, self.sigma_cap)
        std = self.std_factor(level) * sigma
        return mean, std.square()

    def forward(self, z: torch.Tensor, t, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transition(z, self.level(t))


class Walkback(Method):
    """Variational walkback training (Algorithm 1), the eq. 10 estimate, algorithms.md §11."""

    name = "walkback"
    Settings = WalkbackSettings
    has_likelihood = True
    has_reversibility = True

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.base = 2.0 if self.settings.schedule == "double" else math.sqrt(2.0)

    def build_model(self, shape: tuple[int, ...], cfg: ModelConfig) -> WalkbackModel:
        s = self.settings
        return WalkbackModel(shape, self.T, cfg, s.alpha, self.base, s.sigma_offset, s.sigma_max,
                             variance_scaling=s.temperature_scales == "variance")

    def levels(self, n: int) -> list[int]:
        """Temperature level of heating steps t = 1..n+L: n+1 steps at level 0, then 1..L-1."""
        return [max(0, t - n - 1) for t in range(1, n + self.T + 1)]

    @torch.no_grad()
    def heat(self, model: WalkbackModel, x: torch.Tensor, n: int,
             generator: torch.Generator | None) -> list[torch.Tensor]:
        """A heating trajectory s_0 = x, s_t ~ p_{T_t}(· | s_{t-1}): the K+1 states, no gradient.

        Batch norm does not collect statistics here: the stored per-level statistics describe
        the operator's inputs on the walk back (and in sampling), s_t at level T_t.
        """
        states = [x]
        with _not_collecting(model):
            for level in self.levels(n):
                mean, var = model.transition(states[-1], level)
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                states.append(mean + var.sqrt() * noise)
        return states

    def loss(self, model: WalkbackModel, x: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
        """Per-example −[Σ_t log p_{T_t}(s_{t-1} | s_t) + log p*(s_K)], x: (B, d) -> (B,).

        One n ~ U{0..N1} per minibatch (so a batch shares each step's temperature and batch
        norm slot). In a training step (gradients enabled, train mode) p* moves towards the
        moments of s_K.
        """
        n = int(torch.randint(0, self.settings.n1 + 1, (), generator=generator,
                              device=x.device))
        n = self.shared_choice(n)  # one n per global minibatch under DDP
        states = self.heat(model, x, n, generator)
        total = -model.prior.log_prob(states[-1])
        for t, level in enumerate(self.levels(n), start=1):
            mean, var = model.transition(states[t], level)
            total = total - normal_log_prob(states[t - 1], mean, var)
        if torch.is_grad_enabled() and model.training:
            self.update_prior(model, states[-1])
        return total

    @torch.no_grad()
    def update_prior(self, model: WalkbackModel, hot: torch.Tensor) -> None:
        """p* ← moving average (``prior_momentum``) of the batch moments of s_K (Algorithm 1)."""
        m = self.settings.prior_momentum
        prior = model.prior
        prior.mean.mul_(m).add_((1 - m) * hot.mean(0))
        prior.var.mul_(m).add_((1 - m) * hot.var(0, unbiased=False).clamp_min(1e-8))

    @torch.no_grad()
    def log_weight(self, model: WalkbackModel, x: torch.Tensor, generator: torch.Generator | None,
                   final_var: float | None = None) -> torch.Tensor:
        """One draw of the eq. 10 log-weight over a heated path with n = ``extra``, (B,):

        ℓ = Σ_t [log p_{T_t}(s_{t-1} | s_t) − log q_{T_t}(s_t | s_{t-1})] + log p*(s_K),
        q being the same operator run forwards (heating). Its mean over draws is the bound of
        eq. 5 and its log-mean-exp the importance-sampling estimate, for the chain that the
        sampler runs with T + extra steps. ``final_var``: the last step's (s_1 → x) variance
        replaced by this one constant for every dimension and example, the isotropic variant
        of algorithms.md §7 (the heating draws are unchanged).
        """
        n = self.settings.extra
        states = self.heat(model, x, n, generator)
        ell = model.prior.log_prob(states[-1])
        for t, level in enumerate(self.levels(n), start=1):
            mean_q, var_q = model.transition(states[t - 1], level)
            ell = ell - normal_log_prob(states[t], mean_q, var_q)
            mean_p, var_p = model.transition(states[t], level)
            if final_var is not None and t == 1:
                var_p = torch.full_like(var_p, final_var)
            ell = ell + normal_log_prob(states[t - 1], mean_p, var_p)
        return ell


@torch.no_grad()
def reversibility(model, n_chains: int = 100, steps: int = 1000, burn_in: int = 50, seed: int = 0,
                  level: int = 0, trace: bool = False) -> dict:
    """Departure from detailed balance of p_T (VW appendix H), nats per step.

    Runs ``n_chains`` chains from p* through the cooling steps, ``burn_in`` steps at
    ``level``, then ``steps`` more, and averages over steps and chains
    kl = ln p_T(s_{t+1} | s_t) − ln p_T(s_t | s_{t+1})   (0 for a reversible operator) and
    entropy = −ln p_T(s_{t+1} | s_t) (the chain's entropy rate). Returns ``kl``, its standard
    error over chains ``kl_se``, ``entropy`` and ``ratio`` = kl / entropy (the paper's 3.6%).
    ``model`` needs ``prior.sample``, ``d``, ``T`` and ``transition(s, level)``; it is put in
    eval mode (stored batch-norm statistics) and restored. ``trace``: also ``running_kl``, the
    estimate of ``kl`` after each of the ``steps`` (a list, for a convergence figure).
    The entropy here is differential, so it is negative when the steps' noise is small (a
    narrow 2-D operator); ``ratio`` reads as the paper's relative measure only when it is > 0.
    """
    g = torch.Generator(device=model.prior.mean.device).manual_seed(seed)
    dev = model.prior.mean.device

    def draw(mean, var):
        return mean + var.sqrt() * torch.randn(mean.shape, generator=g, device=dev)

    was_training = model.training
    model.eval()
    try:
        s = model.prior.sample(torch.randn(n_chains, model.d, generator=g, device=dev))
        for lev in range(model.T - 1, 0, -1):  # cool down to temperature 1
            s = draw(*model.transition(s, lev))
        for _ in range(burn_in):
            s = draw(*model.transition(s, level))
        kl = torch.zeros(n_chains, dtype=torch.float64, device=dev)
        ent = torch.zeros(n_chains, dtype=torch.float64, device=dev)
        running = []
        mean, var = model.transition(s, level)
        for _ in range(steps):
            s_next = draw(mean, var)
            fwd = normal_log_prob(s_next, mean, var)
            mean, var = model.transition(s_next, level)
            bwd = normal_log_prob(s, mean, var)
            kl += (fwd - bwd).double()
            ent -= fwd.double()
            s = s_next
            if trace:
                running.append(float(kl.mean()) / (len(running) + 1))
    finally:
        model.train(was_training)
    kl, ent = kl / steps, ent / steps
    kl_mean, ent_mean = float(kl.mean()), float(ent.mean())
    se = float(kl.std() / math.sqrt(n_chains)) if n_chains > 1 else float("nan")
    out = {"kl": kl_mean, "kl_se": se, "entropy": ent_mean,
           "ratio": kl_mean / ent_mean if ent_mean != 0 else float("nan")}
    if trace:
        out["running_kl"] = running
    return out


@contextmanager
def _not_collecting(model):
    """Pause the algorithms.md §6 statistics collection of every per-step batch norm in ``model``."""
    norms = [n for n in step_norms(model) if n.collecting]
    for n in norms:
        n.collecting = False
    try:
        yield
    finally:
        for n in norms:
            n.collecting = True
