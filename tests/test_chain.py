"""Infusion mixture and schedule (algorithms.md §3), per-step batch norm (algorithms.md §2, §6), operator heads."""

from __future__ import annotations

import math

import pytest
import torch

from infusion.chain.distributions import log_q_mixture, normal_log_prob
from infusion.chain.model import GaussianChainModel
from infusion.chain.nets import StepBatchNorm
from infusion.config import ModelConfig
from infusion.methods.infusion import infuse, infusion_rates


def test_rates_follow_schedule_and_clip():
    assert infusion_rates(4, 0.0, 0.01) == pytest.approx([0.0, 0.01, 0.02, 0.03])
    assert infusion_rates(3, 0.9, 0.1) == pytest.approx([0.9, 1.0, 1.0])  # clipped to 1
    assert infusion_rates(3, 0.05, -0.1) == pytest.approx([0.05, 0.0, 0.0])  # clipped to 0
    with pytest.raises(ValueError, match="alpha0"):
        infusion_rates(3, 1.5, 0.0)


def test_rate_zero_is_the_model_draw_and_rate_one_the_target():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 50, generator=g)
    mean, std = torch.full_like(x, 5.0), torch.full_like(x, 0.5)
    z0 = infuse(mean, std, x, 0.0, torch.Generator().manual_seed(1))
    # Rate 0: exactly μ + σ·ε₂ with the same generator stream (mask draw, ε₁, then ε₂).
    g1 = torch.Generator().manual_seed(1)
    torch.rand(x.shape, generator=g1), torch.randn(x.shape, generator=g1)
    assert torch.equal(z0, mean + std * torch.randn(x.shape, generator=g1))
    z1 = infuse(mean, std, x, 1.0, torch.Generator().manual_seed(2))
    resid = z1 - x
    assert resid.std().item() == pytest.approx(0.01, rel=0.05)  # N(x, 1e-4)
    assert resid.abs().max().item() < 0.06


@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.7])
def test_mask_statistics(alpha):
    # Targets at 0 and the model far away at 10: a dimension came from the target iff |z| < 1.
    x = torch.zeros(400, 500)
    z = infuse(torch.full_like(x, 10.0), torch.full_like(x, 0.1), x, alpha,
               torch.Generator().manual_seed(3))
    frac = (z.abs() < 1).float().mean().item()
    sd = math.sqrt(alpha * (1 - alpha) / x.numel())
    assert abs(frac - alpha) < 5 * sd
    assert infuse(x, x + 1, x, 0.5, None).shape == x.shape  # works without a generator
    with pytest.raises(ValueError, match="alpha"):
        infuse(x, x + 1, x, -0.1, None)


@pytest.mark.parametrize("alpha", [0.0, 0.2, 1.0])
def test_mixture_density_integrates_to_one(alpha):
    z = torch.linspace(-2, 3, 200001).unsqueeze(1)  # 1-D grid, one dimension
    mean, var, x = torch.full_like(z, 0.4), torch.full_like(z, 0.05), torch.full_like(z, 0.7)
    dens = log_q_mixture(z.double(), mean.double(), var.double(), x.double(), alpha, 1e-4).exp()
    assert torch.trapezoid(dens, z.squeeze(1).double()).item() == pytest.approx(1.0, abs=1e-4)


def test_normal_log_prob_matches_torch():
    x, m, v = torch.randn(5, 7), torch.randn(5, 7), torch.rand(5, 7) + 0.1
    ref = torch.distributions.Normal(m, v.sqrt()).log_prob(x).sum(-1)
    assert torch.allclose(normal_log_prob(x, m, v), ref, atol=1e-5)


def test_step_batch_norm_keeps_separate_parameters_per_step():
    bn = StepBatchNorm(6, steps=3)
    h = torch.randn(32, 6)
    bn(h, 2).sum().backward()
    assert bn.weight.grad[1].abs().sum() > 0
    assert bn.weight.grad[0].abs().sum() == 0 and bn.weight.grad[2].abs().sum() == 0
    with torch.no_grad():
        bn.weight[0].fill_(2.0)
    assert not torch.allclose(bn(h, 1), bn(h, 2))
    assert torch.equal(bn(h, 3), bn(h, 7))  # steps beyond T reuse step T's
    with pytest.raises(ValueError, match="t=0"):
        bn(h, 0)


def test_statistics_pass_stores_exact_per_step_averages():
    bn = StepBatchNorm(4, steps=2)
    g = torch.Generator().manual_seed(0)
    batches = {1: [torch.randn(10, 4, generator=g) + 3 for _ in range(3)],
               2: [torch.randn(8, 4, generator=g) * 2 for _ in range(2)]}
    bn.start_collect()
    for t, hs in batches.items():
        for h in hs:
            bn(h, t)
    bn.finish_collect()
    for t, hs in batches.items():
        mean = torch.stack([h.mean(0) for h in hs]).mean(0)
        var = torch.stack([h.var(0, unbiased=False) for h in hs]).mean(0)
        assert torch.allclose(bn.stat_mean[t - 1], mean, atol=1e-6)
        assert torch.allclose(bn.stat_var[t - 1], var, atol=1e-6)
    bn.eval()
    h = torch.randn(5, 4)
    expected = (h - bn.stat_mean[0]) / torch.sqrt(bn.stat_var[0] + bn.eps)
    assert torch.allclose(bn(h, 1), expected, atol=1e-6)  # eval uses the stored statistics
    bn2 = StepBatchNorm(4, steps=2)
    bn2.start_collect()
    bn2(h, 1)
    with pytest.raises(RuntimeError, match="steps \\[2\\]"):
        bn2.finish_collect()


def test_operator_heads_are_in_range():
    model = GaussianChainModel((1, 4, 4), T=3, cfg=ModelConfig(hidden=(8,)))
    z = torch.randn(16, 16) * 10
    mean, var = model(z, 2)
    assert mean.shape == var.shape == (16, 16)
    assert ((mean > 0) & (mean < 1)).all()
    assert (var >= 1e-4 - 1e-9).all() and (var <= 0.1 + 1e-4 + 1e-9).all()  # β·sigmoid + ε
    x = torch.rand(100, 16)
    model.prior.fit(x, 1e-5)
    assert torch.allclose(model.prior.mean, x.mean(0))
    assert torch.allclose(model.prior.var, x.var(0, unbiased=False) + 1e-5, atol=1e-6)


def test_model_bn_eps_reaches_every_step_norm_and_changes_the_normalisation():
    from dataclasses import replace

    from infusion.chain.nets import step_norms
    from infusion.errors import InputError

    cfg = ModelConfig(hidden=(8, 8))
    default, authors = (GaussianChainModel((5,), 3, replace(cfg, bn_eps=e)) for e in (1e-5, 1e-4))
    assert len(step_norms(authors)) == 2 and {n.eps for n in step_norms(authors)} == {1e-4}
    assert {n.eps for n in step_norms(default)} == {1e-5}
    bn = step_norms(authors)[0]
    h = torch.randn(16, 8) * 1e-2  # a variance of 1e-4: ε matters
    expected = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-4)
    assert torch.allclose(bn(h, 1), expected, atol=1e-5)
    for bad in (0.0, -1e-4, float("nan"), 2.0):
        with pytest.raises(InputError, match="model.bn_eps"):
            replace(cfg, bn_eps=bad).validate()
