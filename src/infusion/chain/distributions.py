"""Pure log-densities shared by every method: the diagonal Gaussian, the infusion mixture and
the continuous Bernoulli (docs/algorithms.md §2, §3, §7, §16). No state, no randomness; tested
alone."""

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


# The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019), algorithms.md §16, in terms of its
# logit η = log(λ / (1 − λ)): p(x; η) = C(η)·λ^x·(1 − λ)^(1−x) on [0, 1], with
# C(η) = η / tanh(η/2) (= 2·atanh(1 − 2λ)/(1 − 2λ); C(0) = 2). Each closed form below loses
# precision as η → 0 (λ → ½), where it is replaced by its Taylor series (|η| < CB_TAYLOR).
CB_TAYLOR = 0.5


def wide(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (the closed forms need it, also under bf16 autocast)."""
    return t if t.dtype == torch.float64 else t.float()


def _near_half(eta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask |η| < CB_TAYLOR and η with those entries set to 1 (so that the closed forms,
    evaluated everywhere by ``torch.where``, stay finite there, gradients included)."""
    small = eta.abs() < CB_TAYLOR
    return small, torch.where(small, torch.ones_like(eta), eta)


def cb_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(η) of the continuous Bernoulli, elementwise (algorithms.md §16).

    |η| >= ½: log|η| − log(1 − e^{−|η|}) + log(1 + e^{−|η|}), i.e. log(|η| / tanh(|η|/2));
    |η| < ½: log 2 + u²/3 − 7u⁴/90 + 62u⁶/2835 − 127u⁸/18900 with u = η/2 (error < 1e-9)."""
    eta = wide(logits)
    small, safe = _near_half(eta)
    a = safe.abs()
    far = torch.log(a) - torch.log(-torch.expm1(-a)) + torch.log1p(torch.exp(-a))
    u2 = (eta / 2).square()
    near = math.log(2.0) + u2 * (1 / 3 + u2 * (-7 / 90 + u2 * (62 / 2835 - u2 * 127 / 18900)))
    return torch.where(small, near, far)


def cb_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(x; η) of the factorial continuous Bernoulli, summed over the last dimension:
    log C(η) + x·η − softplus(η) per dimension (= log C + x·log λ + (1−x)·log(1−λ)),
    (B, d) -> (B,); x in [0, 1] (algorithms.md §16)."""
    eta = wide(logits)
    return (cb_log_norm(eta) + x * eta - torch.nn.functional.softplus(eta)).sum(-1)


def cb_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x] of the continuous Bernoulli, elementwise: 1/(1 − e^{−η}) − 1/η, and near η = 0
    ½ + η/12 − η³/720 + η⁵/30240 (algorithms.md §16)."""
    eta = wide(logits)
    small, safe = _near_half(eta)
    far = -1 / torch.expm1(-safe) - 1 / safe
    e2 = eta.square()
    near = 0.5 + eta * (1 / 12 + e2 * (-1 / 720 + e2 / 30240))
    return torch.where(small, near, far)


def cb_var(logits: torch.Tensor) -> torch.Tensor:
    """Var[x] of the continuous Bernoulli, elementwise: 1/η² − 1/(4·sinh²(η/2)), and near
    η = 0 1/12 − η²/240 + η⁴/6048 (algorithms.md §16)."""
    eta = wide(logits)
    small, safe = _near_half(eta)
    far = 1 / safe.square() - 0.25 / torch.sinh(safe / 2).square()
    e2 = eta.square()
    near = 1 / 12 + e2 * (-1 / 240 + e2 * (1 / 6048 - e2 / 172800))
    return torch.where(small, near, far)


def cb_icdf(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The continuous Bernoulli's inverse CDF at u ∈ [0, 1], elementwise (a draw for uniform
    u): x = log(1 + u·(e^η − 1))/η, written for η <= 0 (where e^η − 1 ∈ (−1, 0]) and mapped to
    η > 0 by the symmetry x(η, u) = 1 − x(−η, 1 − u); u + η·u(1 − u)/2 near η = 0."""
    eta = wide(logits)
    neg = -eta.abs()  # η <= 0
    v = torch.where(eta > 0, 1 - u, u)
    small = neg > -1e-4
    safe = torch.where(small, -torch.ones_like(neg), neg)
    far = torch.log1p(v * torch.expm1(safe)) / safe
    x = torch.where(small, v + neg * v * (1 - v) / 2, far)
    return torch.where(eta > 0, 1 - x, x).clamp(0.0, 1.0)
