"""Diffusion (algorithms.md §13): schedules, respacing, losses, gradient flow, and the bound against the
exact log-density when the reverse chain is the exact reversal of q for Gaussian data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infusion.chain.distributions import normal_log_prob
from infusion.chain.sampler import sample_chain
from infusion.config import ModelConfig
from infusion.data import toy
from infusion.evaluate.likelihood import importance_sampling, log_weights, lower_bound
from infusion.methods import build_method
from infusion.methods.diffusion import Diffusion, Schedule, make_betas

from .conftest import short_fit, tiny_config


def _setup(T=10, batch_norm=True, **kw):
    cfg = tiny_config(method={"name": "diffusion", "T": T, **kw})
    method = build_method(cfg.method)
    torch.manual_seed(0)
    return method, method.build_model((2,), ModelConfig(hidden=(32, 32), batch_norm=batch_norm))


def test_schedules_and_respacing():
    for kind in ("linear", "cosine"):
        b = make_betas(kind, 100)
        assert b.shape == (100,) and (b > 0).all() and (b < 1).all()
        assert np.prod(1 - b) < 0.01  # reaches noise
    s = Schedule.from_betas(make_betas("linear", 100))
    r = s.respace(10)
    assert len(r.alpha_bar) == 10 and r.net_index[-1] == 100 and r.net_index[0] == 1
    assert np.allclose(r.alpha_bar, s.alpha_bar[r.net_index - 1])
    with pytest.raises(ValueError, match="steps"):
        s.respace(101)


def test_eps_and_x0_heads_give_the_posterior_mean_when_exact():
    """With the true ε, x_0 or v as the prediction, every parametrisation gives the forward
    posterior's mean μ̃(x_k, x_0): (x_k − β/√(1−ᾱ)·ε)/√α = μ̃ for x_0 = (x_k − √(1−ᾱ)ε)/√ᾱ,
    and √ᾱ·x_k − √(1−ᾱ)·v = x_0 for v = √ᾱ·ε − √(1−ᾱ)·x_0."""
    _, eps_model = _setup(T=50)
    _, x0_model = _setup(T=50, diff_predict="x0")
    _, v_model = _setup(T=50, diff_predict="v")
    assert (eps_model.target, x0_model.target, v_model.target) == ("eps", "x0", "v")
    g = torch.Generator().manual_seed(0)
    y = torch.randn(64, 2, generator=g)
    k = torch.randint(1, 51, (64,), generator=g)
    eps = torch.randn(64, 2, generator=g)
    ab = eps_model._at("alpha_bar", k)
    yk = ab.sqrt() * y + (1 - ab).sqrt() * eps
    v = torch.full_like(y, 0.5)
    # μ̃ independently, by Bayes: q(x_{k-1} | x_k, x_0) ∝ N(x_k; √α_k·x_{k-1}, β_k)·
    # N(x_{k-1}; √ᾱ_{k-1}·x_0, 1 − ᾱ_{k-1}), a product of Gaussians in x_{k-1}, from the betas
    betas = torch.tensor(make_betas("linear", 50), dtype=torch.float64)
    assert torch.allclose(eps_model.betas.double(), betas, rtol=1e-5)  # the default schedule
    abar = torch.cumprod(1 - betas, 0)
    b, ab_prev = betas[k - 1][:, None], torch.where(k > 1, abar[(k - 2).clamp_min(0)], 1.0)[:, None]
    precision = (1 - b) / b + 1 / (1 - ab_prev).clamp_min(1e-300)
    post = ((1 - b).sqrt() * yk.double() / b
            + ab_prev.sqrt() * y.double() / (1 - ab_prev).clamp_min(1e-300)) / precision
    post = torch.where(k[:, None] > 1, post, y.double()).float()  # k = 1: x_0 itself
    assert torch.allclose(eps_model.posterior(y, yk, k)[0], post, atol=1e-4)
    assert torch.allclose(eps_model.posterior(y, yk, k)[1][:, 0].double(),
                          torch.where(k > 1, 1 / precision[:, 0], 0.0), atol=1e-6)
    assert torch.allclose(eps_model.reverse_from(yk, k, eps, v)[0], post, atol=1e-4)
    assert torch.allclose(x0_model.reverse_from(yk, k, y, v)[0], post, atol=2e-5)  # float32
    v_true = ab.sqrt() * eps - (1 - ab).sqrt() * y
    assert torch.allclose(v_model.reverse_from(yk, k, v_true, v)[0], post, atol=1e-4)
    assert torch.allclose(eps_model.reverse_from(yk, k, eps, v)[1],
                          x0_model.reverse_from(yk, k, y, v)[1])  # σ² does not depend on it


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_losses_shape_finite_and_gradients(target):
    for loss in ("noise", "bound"):
        method, model = _setup(diff_loss=loss, diff_predict=target)
        x = torch.rand(16, 2)
        out = method.loss(model, x, torch.Generator().manual_seed(0))
        assert out.shape == (16,) and torch.isfinite(out).all()
        out.mean().backward()
        assert model.net.head_mu.weight.grad.abs().sum() > 0
        assert model.net.head_sigma.weight.grad.abs().sum() > 0  # σ trained by both losses


def test_noise_loss_trains_sigma_only_through_the_bound_term():
    method, model = _setup(diff_loss="noise")
    x = torch.rand(16, 2)
    g = torch.Generator().manual_seed(0)
    y = model.to_diffusion(x)
    k = torch.randint(1, model.T + 1, (16,), generator=g)
    eps = torch.randn(x.shape, generator=g)
    ab = model._at("alpha_bar", k)
    xk = ab.sqrt() * y + (1 - ab).sqrt() * eps
    eps_hat, v = model.predict(xk, k)
    _, var = model.reverse_from(xk, k, eps_hat, v)
    # gradient of the loss wrt ε̂ is the simple loss's alone: μ is detached in the bound term
    eps_hat.retain_grad()
    loss = (eps - eps_hat).square().sum(-1) + 1e-3 * model.T * method.step_term(
        model, y, xk, k, model.reverse_from(xk, k, eps_hat.detach(), v)[0], var)
    loss.sum().backward()
    assert torch.allclose(eps_hat.grad, -2 * (eps - eps_hat.detach()), atol=1e-6)
    ref = method.loss(model, x, torch.Generator().manual_seed(0))
    assert torch.allclose(ref, loss.detach(), atol=1e-5)


def _oracle(model, mx: float, vx: float):
    """Make ``model`` the exact reversal of q for model-space data N(mx, vx) per dimension,
    i.e. diffusion-space data N(m, s2) = N((mx − ½)·scale, vx·scale²)."""
    m, s2 = (mx - 0.5) * model.scale, vx * model.scale**2
    ab = model.alpha_bar.double()
    ab_prev = model.alpha_bar_prev.double()
    v = ab * s2 + 1 - ab  # var(x_k)
    v_prev = ab_prev * s2 + 1 - ab_prev
    alpha = ab / ab_prev

    def transition(x, k):
        k = torch.as_tensor(k).reshape(-1).expand(x.shape[0])
        a, vk, vp = alpha[k - 1][:, None], v[k - 1][:, None], v_prev[k - 1][:, None]
        abk, abp = ab[k - 1][:, None], ab_prev[k - 1][:, None]
        mean = abp.sqrt() * m + a.sqrt() * vp / vk * (x.double() - abk.sqrt() * m)
        var = vp - a * vp * vp / vk
        return mean.float(), var.expand_as(x).float()

    model.transition = transition
    model.prior.mean.fill_(float(ab[-1].sqrt() * m / model.scale + 0.5))  # model space
    model.prior.var.fill_(float(v[-1] / model.scale**2))
    return model


@pytest.mark.parametrize("scale", [1.0, 2.0, 4.0])
def test_bound_is_exact_for_the_exact_reverse_chain(scale):
    """p(x_{0:T}) = q(x_{0:T}) when each reverse step is q's exact reversal and p(x_T) = q(x_T),
    so every draw of ℓ is log N(x; m, s²) in model space whatever the diffusion space's scale;
    the training bound agrees in expectation."""
    method, model = _setup(T=10, batch_norm=False, diff_loss="bound", diff_data_scale=scale)
    assert model.scale == scale
    m, s2 = 0.4, 0.05
    _oracle(model, m, s2)
    x = torch.tensor([[0.4, 0.1], [0.7, 0.5], [0.2, 0.9]])
    exact = normal_log_prob(x, torch.full((2,), m), torch.full((2,), s2))
    lw = log_weights(model.eval(), method, x, 20, torch.Generator().manual_seed(0))
    assert torch.allclose(lw.float(), exact[:, None].expand(3, 20), atol=2e-3)
    xs = x[:1].expand(20000, 2)
    loss = method.loss(model, xs, torch.Generator().manual_seed(1))
    assert float(loss.mean()) == pytest.approx(-float(exact[0]), abs=4 * float(loss.std()) / math.sqrt(20000))


def test_bound_is_below_log_density_for_a_mismatched_prior():
    method, model = _setup(T=5, batch_norm=False)
    _oracle(model, 0.4, 0.05)
    model.prior.mean.fill_(0.5)
    model.prior.var.fill_(1 / model.scale**2)  # N(0, I) in diffusion space: q(x_T) != p(x_T)
    x = torch.tensor([[0.4, 0.1]])
    lw = log_weights(model.eval(), method, x, 3000, torch.Generator().manual_seed(0))
    exact_q = float(normal_log_prob(x, torch.full((2,), 0.4), torch.full((2,), 0.05)))
    assert float(lower_bound(lw)) < float(importance_sampling(lw)) < exact_q + 0.5


@pytest.mark.parametrize("target", ["x0", "v"])
def test_short_run_with_other_heads_lowers_loss(target):
    method, model = _setup(T=50, diff_predict=target)
    x = torch.from_numpy(toy("circle", 512, 0).images)
    first, last = short_fit(method, model, x, steps=300, batch=128)
    assert last < first * 0.95  # v's loss keeps ε's unpredictable share at low noise
    r = (sample_chain(model, 300, 50, seed=0).samples - 0.5).norm(dim=1)
    assert float(r.median()) == pytest.approx(0.36, abs=0.08)  # the circle's radius


def test_short_run_lowers_loss_and_respaced_sampling():
    method, model = _setup(T=50)
    assert isinstance(method, Diffusion)
    x = torch.from_numpy(toy("circle", 512, 0).images)
    first, last = short_fit(method, model, x, steps=150, batch=128)
    assert last < first * 0.7
    from infusion.data import Data
    from infusion.methods.statistics import compute_step_statistics

    compute_step_statistics(model, method, Data(x, x, (2,), pixels=False), 128)
    for steps in (5, 50, 60):
        view = model.respaced(min(steps, 50))
        s = sample_chain(view, 100, steps, seed=0)
        assert torch.isfinite(s.samples).all()
        assert view.net is model.net
    # the shared sampler respaces by itself when asked for fewer steps than T
    assert torch.equal(sample_chain(model, 10, 5, seed=0).samples,
                       sample_chain(model.respaced(5), 10, 5, seed=0).samples)
    r = (sample_chain(model, 300, 50, seed=0).samples - 0.5).norm(dim=1)
    assert float(r.median()) == pytest.approx(0.36, abs=0.08)
