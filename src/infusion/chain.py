"""Chains: the infusion-rate schedule and mixture (SPEC §3) and the sampler (SPEC §2, §9).

The sampler is a plain function: start from the prior, apply the operator ``steps`` times,
optionally clamp observed dimensions (inpainting), optionally return the whole trajectory.
Each sample's noise comes from its own seed, so sample i is the same at any batch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .operator import ChainModel


def infusion_rates(T: int, alpha0: float, omega: float) -> list[float]:
    """α(0), …, α(T-1) with α(t) = α(t-1) + ω, clipped to [0, 1] (SPEC §3)."""
    if not 0.0 <= alpha0 <= 1.0:
        raise ValueError(f"alpha0={alpha0}: an infusion rate must lie in [0, 1]")
    return [min(1.0, max(0.0, alpha0 + omega * t)) for t in range(T)]


def infuse(
    mean: torch.Tensor,
    std: torch.Tensor,
    x: torch.Tensor,
    alpha: float,
    generator: torch.Generator | None,
    target_std: float = 0.01,
) -> torch.Tensor:
    """One draw of the infusion mixture q(t), SPEC §3.

    Per dimension, with m ~ Bernoulli(α): z = m·(x + target_std·ε₁) + (1-m)·(μ + σ·ε₂).
    ``mean``/``std`` are the model's transition (or the prior); all tensors (B, d).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: an infusion rate must lie in [0, 1]")
    kw = {"generator": generator, "device": x.device, "dtype": x.dtype}
    mask = torch.rand(x.shape, **kw) < alpha
    from_target = x + target_std * torch.randn(x.shape, **kw)
    from_model = mean + std * torch.randn(x.shape, **kw)
    return torch.where(mask, from_target, from_model)


def log_q_mixture(
    z: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, x: torch.Tensor, alpha: float,
    target_var: float,
) -> torch.Tensor:
    """log q(t)(z | ·, x) = Σ_i log[(1-α) N(z_i; μ_i, σ²_i) + α N(z_i; x_i, target_var)], (B,).

    Computed stably as a logaddexp of the two weighted components (SPEC §7).
    """
    log_model = -0.5 * (math.log(2 * math.pi) + torch.log(var) + (z - mean).square() / var)
    if alpha <= 0.0:
        return log_model.sum(-1)
    log_target = -0.5 * (math.log(2 * math.pi * target_var) + (z - x).square() / target_var)
    if alpha >= 1.0:
        return log_target.sum(-1)
    return torch.logaddexp(math.log1p(-alpha) + log_model, math.log(alpha) + log_target).sum(-1)


@dataclass
class Samples:
    """Output of :func:`sample_chain`. ``samples``/``means``: (N, *shape) after the last step.

    With ``return_trajectory``: ``states`` (steps+1, N, *shape) = z(0) … z(T'), and
    ``trajectory_means`` (steps+1, N, *shape) = prior mean, μ(1) … μ(T').
    """

    samples: torch.Tensor
    means: torch.Tensor
    states: torch.Tensor | None = None
    trajectory_means: torch.Tensor | None = None


def sample_noise(seeds: Sequence[int], steps: int, d: int, aux: bool = False) -> torch.Tensor:
    """Standard normal noise (B, steps+1, d), row i drawn from a generator seeded by seeds[i].

    ``aux``: a second (steps+1, d) block is drawn after the first from the same generator and
    appended on the last axis, (B, steps+1, 2d); the first d columns are unchanged.
    """
    out = torch.empty(len(seeds), steps + 1, 2 * d if aux else d)
    g = torch.Generator()
    for i, s in enumerate(seeds):
        g.manual_seed(int(s))
        out[i, :, :d] = torch.randn(steps + 1, d, generator=g)
        if aux:
            out[i, :, d:] = torch.randn(steps + 1, d, generator=g)
    return out


@torch.no_grad()
def sample_chain(
    model: ChainModel,
    n: int,
    steps: int | None = None,
    seed: int = 0,
    *,
    seeds: Sequence[int] | None = None,
    batch_size: int = 500,
    clamp: tuple[torch.Tensor, torch.Tensor] | None = None,
    return_trajectory: bool = False,
    start: torch.Tensor | None = None,
) -> Samples:
    """Run the sampling chain of SPEC §2: z(0) ~ p(0), z(t) ~ p(t)(· | z(t-1)), t = 1..T'.

    Sample i uses the seed ``seed + i`` (or ``seeds[i]``), so it does not depend on the batch.
    ``steps`` = T' defaults to the training T; T' > T reuses step T's batch norm. T' < T needs
    a model with ``respaced(T')`` (diffusion, SPEC §13), which is then run instead.
    ``clamp = (mask, values)``, each (N, d) or (d,): dimensions where mask is true are set to
    ``values`` at z(0) and after every transition (inpainting, SPEC §9).
    ``start`` (N, d) or (N, *shape): z(0) = start instead of a prior draw (chains from data).
    A model with ``aux_noise = True`` (a transition that draws internal noise, e.g. the GSN
    corruption of SPEC §12) is called as ``model(z, t, aux)`` with a second per-sample
    standard-normal block, so its samples too depend only on their own seeds.
    Uses the stored per-step batch-norm statistics (SPEC §6); raises if they are missing.
    Results are on the CPU, float32.
    """
    steps = model.T if steps is None else int(steps)
    if steps < model.T and hasattr(model, "respaced"):  # e.g. diffusion on a shorter schedule
        model = model.respaced(steps)
    if steps < model.T:
        raise ValueError(f"steps={steps}: sampling needs T' >= the training T={model.T} (SPEC §2)")
    if not model.stats_ready:
        raise RuntimeError(
            "the model has no stored per-step batch-norm statistics; run the statistics pass of "
            "SPEC §6 (infusion.train.compute_step_statistics) before sampling")
    seeds = list(range(seed, seed + n)) if seeds is None else list(seeds)
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for n={n} samples")
    device = model.prior.mean.device
    if start is not None:
        start = torch.as_tensor(start).reshape(-1, model.d)
        if start.shape[0] != n:
            raise ValueError(f"start has {start.shape[0]} rows for n={n} samples")
    aux = bool(getattr(model, "aux_noise", False))
    was_training = model.training
    model.eval()
    try:
        parts: list[tuple[torch.Tensor, ...]] = []
        for lo in range(0, n, batch_size):
            idx = slice(lo, min(n, lo + batch_size))
            noise = sample_noise(seeds[idx], steps, model.d, aux).to(device)
            mask, values = _clamp_rows(clamp, idx, model.d, device)
            z0 = None if start is None else start[idx].to(device=device, dtype=noise.dtype)
            parts.append(_run(model, noise, steps, mask, values, return_trajectory, z0))
    finally:
        model.train(was_training)
    cat = [torch.cat(p, dim=1 if k >= 2 else 0) for k, p in enumerate(zip(*parts))]
    shape = model.shape
    out = Samples(cat[0].reshape(n, *shape), cat[1].reshape(n, *shape))
    if return_trajectory:
        out.states = cat[2].reshape(steps + 1, n, *shape)
        out.trajectory_means = cat[3].reshape(steps + 1, n, *shape)
    return out


def _clamp_rows(clamp, idx: slice, d: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if clamp is None:
        return None, None
    mask, values = (torch.as_tensor(c) for c in clamp)
    mask = mask.reshape(-1, d).bool()
    values = values.reshape(-1, d).float()
    mask = mask if mask.shape[0] == 1 else mask[idx]
    values = values if values.shape[0] == 1 else values[idx]
    return mask.to(device), values.to(device)


def _run(model, noise, steps, mask, values, keep, z0=None):
    """One batch of the chain; noise (B, steps+1, d), or (B, steps+1, 2d) with aux noise."""
    d = model.d
    aux = noise[..., d:] if noise.shape[-1] > d else None
    noise = noise[..., :d]
    if z0 is None:
        z = model.prior.sample(noise[:, 0])
        mean = model.prior.mean.expand_as(z)
    else:
        z, mean = z0, z0
    if mask is not None:
        z, mean = torch.where(mask, values, z), torch.where(mask, values, mean)
    states, means = ([z.cpu()], [mean.cpu()]) if keep else (None, None)
    for t in range(1, steps + 1):
        mean, var = model(z, t) if aux is None else model(z, t, aux[:, t])
        z = mean + var.sqrt() * noise[:, t]
        if mask is not None:
            z, mean = torch.where(mask, values, z), torch.where(mask, values, mean)
        if keep:
            states.append(z.cpu())
            means.append(mean.cpu())
    out = (z.float().cpu(), mean.float().cpu())
    if keep:
        out += (torch.stack(states).float(), torch.stack(means).float())
    return out
