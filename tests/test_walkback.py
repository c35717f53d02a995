"""Variational walkback (algorithms.md §11): loss, detached heating, p* refit, eq. 10 against a closed
form, the reversibility measure of appendix H."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infusion import config
from infusion.chain.distributions import normal_log_prob
from infusion.config import ModelConfig
from infusion.evaluate.likelihood import importance_sampling, log_weights, lower_bound
from infusion.methods import build_method
from infusion.methods.walkback import Walkback, reversibility

from .conftest import tiny_config


def _method(**kw) -> Walkback:
    cfg = tiny_config(method={"name": "walkback", "T": 3, "vw_n1": 2, "vw_extra": 2, **kw})
    return build_method(cfg.method)


def _model(method, d=2, batch_norm=True, seed=0):
    torch.manual_seed(seed)
    return method.build_model((d,), ModelConfig(hidden=(16,), batch_norm=batch_norm))


def test_levels_follow_algorithm_1():
    m = _method()  # L = 3 heated levels, temperatures 1, 2, 4
    assert m.levels(0) == [0, 1, 2]
    assert m.levels(2) == [0, 0, 0, 1, 2]  # n = 2 extra temperature-1 steps first
    model = _model(m)
    assert [model.level(t) for t in range(1, 7)] == [2, 1, 0, 0, 0, 0]  # sampler: cooling
    assert model.temperature(2) == 4.0
    assert _model(_method(vw_schedule="sqrt2")).temperature(2) == pytest.approx(2.0)


def test_operator_temperature_scales_the_variance():
    # variance T·σ² (Algorithm 1): at level 2 (temperature 4) the variance is 4×, the std 2×;
    # batch norm off, since its per-level slots would give each level its own F. Version 0.1
    # scaled the std (temperature_scales="std"): 4× the std.
    s = torch.rand(8, 2)
    for scales, factor in (("variance", 4.0), ("std", 16.0)):
        model = _model(_method(walkback={"temperature_scales": scales}), batch_norm=False)
        _, v0 = model.transition(s, 0)
        _, v2 = model.transition(s, 2)
        assert torch.allclose(v2, factor * v0), scales


def test_loss_shape_finite_and_no_gradient_through_heating():
    m = _method()
    model = _model(m)
    x = torch.rand(16, 2)
    prior = {k: v.clone() for k, v in model.prior.state_dict().items()}
    loss = m.loss(model, x, torch.Generator().manual_seed(0))
    model.prior.load_state_dict(prior)  # the training step also moved p*; undo for the check
    assert loss.shape == (16,) and torch.isfinite(loss).all()
    loss.mean().backward()
    grad = [p.grad.clone() for p in model.parameters()]
    # the same trajectory rebuilt by hand from Algorithm 1 (the same generator: n, then one
    # block of noise per heating step), with detached states, gives the same gradient
    model.zero_grad()
    g = torch.Generator().manual_seed(0)
    n = int(torch.randint(0, m.settings.n1 + 1, (), generator=g))
    levels = [0] * (n + 1) + [1, 2]  # n + 1 steps at temperature 1, then 2 and 4 (L = 3)
    states = [x]
    with torch.no_grad():
        for lev in levels:
            mean, var = model.transition(states[-1], lev)
            states.append(mean + var.sqrt() * torch.randn(x.shape, generator=g))
    ref = -model.prior.log_prob(states[-1])
    for t, lev in enumerate(levels, start=1):
        mean, var = model.transition(states[t], lev)
        ref = ref - normal_log_prob(states[t - 1], mean, var)
    assert torch.allclose(ref, loss.detach(), atol=1e-5)
    ref.mean().backward()
    for a, b in zip(grad, model.parameters()):
        assert torch.allclose(a, b.grad, atol=1e-6)


def test_prior_moves_to_hot_moments_in_training_only():
    m = _method(vw_prior_momentum=0.0)
    model = _model(m)
    model.prior.fit(torch.rand(100, 2))
    before = model.prior.mean.clone()
    with torch.no_grad():
        m.loss(model, torch.rand(32, 2), torch.Generator().manual_seed(1))
    assert torch.equal(model.prior.mean, before)  # validation / statistics pass: untouched
    g = torch.Generator().manual_seed(1)
    x = torch.rand(32, 2)
    m.loss(model, x, g)
    g = torch.Generator().manual_seed(1)
    n = int(torch.randint(0, m.settings.n1 + 1, (), generator=g))
    hot = m.heat(model, x, n, g)[-1]
    assert torch.allclose(model.prior.mean, hot.mean(0), atol=1e-5)
    assert torch.allclose(model.prior.var, hot.var(0, unbiased=False), atol=1e-5)


def _log_normal(x, mean, var):
    """log N(x; mean, diag var) in numpy, summed over the last axis."""
    return (-0.5 * np.log(2 * np.pi * var) - (x - mean) ** 2 / (2 * var)).sum(-1)


def test_the_loss_and_log_weight_are_the_walk_back_written_out_by_hand():
    """A walkback operator without hidden layers (F_μ(s) = W_μ s + b_μ, F_σ(s) = W_σ s + b_σ),
    its weights and p* fixed, written out in numpy from algorithms.md §11: at level l (temperature
    2^l) μ = (1 − a)·s + a·F_μ(s), σ = softplus(F_σ(s) + offset) capped at σ_max/√(2^(L−1)),
    variance 2^l·σ². The loss heats x with the generator's n ~ U{0..N1} and one block of
    standard normals per step (n + 1 steps at level 0, then levels 1 … L−1) and is
    −log p*(s_K) − Σ_t log N(s_{t−1}; μ(s_t), var(s_t)); the log-weight heats with n = extra
    and is log p*(s_K) + Σ_t [log N(s_{t−1}; μ(s_t), var(s_t)) − log N(s_t; μ(s_{t−1}), var(s_{t−1}))]."""
    a, offset, sigma_max = 0.3, 0.2, 1.0
    m = _method(vw_alpha=a, vw_sigma_max=sigma_max, walkback={"sigma_offset": offset})
    model = m.build_model((2,), ModelConfig(hidden=(), batch_norm=False)).double()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.net.parameters():
            p.copy_(0.8 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        model.prior.mean.copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))
        model.prior.var.copy_(torch.tensor([0.5, 2.0], dtype=torch.float64))
    w = {k: v.detach().numpy() for k, v in model.net.state_dict().items()}
    cap = sigma_max / np.sqrt(2.0 ** (m.T - 1))  # L = 3 levels: temperatures 1, 2, 4
    sigmas = []

    def operator(s, level):
        f_mu = s @ w["head_mu.weight"].T + w["head_mu.bias"]
        f_sigma = s @ w["head_sigma.weight"].T + w["head_sigma.bias"]
        sigma = np.clip(np.log1p(np.exp(f_sigma + offset)), 1e-6, cap)
        sigmas.append(sigma)
        return (1 - a) * s + a * f_mu, 2.0**level * sigma**2

    def heat(x, n, gen):
        levels = [0] * (n + 1) + list(range(1, m.T))
        states = [x]
        for level in levels:
            mean, var = operator(states[-1], level)
            eps = torch.randn(x.shape, generator=gen, dtype=torch.float64).numpy()
            states.append(mean + np.sqrt(var) * eps)
        return levels, states

    prior = (np.array([0.3, -0.2]), np.array([0.5, 2.0]))
    x = torch.rand(6, 2, generator=g, dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    n = int(torch.randint(0, m.settings.n1 + 1, (), generator=gen))
    levels, s = heat(x.numpy(), n, gen)
    loss = -_log_normal(s[-1], *prior)
    for t, level in enumerate(levels, start=1):
        loss -= _log_normal(s[t - 1], *operator(s[t], level))
    levels, s = heat(x.numpy(), m.settings.extra, torch.Generator().manual_seed(5))
    ell = _log_normal(s[-1], *prior)
    for t, level in enumerate(levels, start=1):
        ell += _log_normal(s[t - 1], *operator(s[t], level))
        ell -= _log_normal(s[t], *operator(s[t - 1], level))
    sigmas = np.concatenate(sigmas)
    assert (sigmas == cap).any() and (sigmas < cap).any()  # the cap binds on some values only
    with torch.no_grad():  # no gradient: p* stays as it is
        ours = m.loss(model, x, torch.Generator().manual_seed(4)).numpy()
        ours_ell = m.log_weight(model, x, torch.Generator().manual_seed(5)).numpy()
    # float64 on both sides, the same draws: they differ by rounding only (sums of ~10 terms
    # of order 1 to 10); 1e-9 leaves room for it and none for a formula
    np.testing.assert_allclose(ours, loss, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours_ell, ell, rtol=0, atol=1e-9)


def _linear_gaussian_model(m, a=0.5, b=-1.0):
    """Operator μ = (1-a)·s (F_μ = 0), σ = T·softplus(b): every step linear-Gaussian."""
    model = _model(m, batch_norm=False)
    with torch.no_grad():
        net = model.net
        net.head_mu.weight.zero_()
        net.head_mu.bias.zero_()
        net.head_sigma.weight.zero_()
        net.head_sigma.bias.fill_(b)
    model.prior.mean.copy_(torch.tensor([0.3, -0.2]))
    model.prior.var.copy_(torch.tensor([0.5, 2.0]))
    return model


def test_eq10_importance_sampling_matches_closed_form():
    m = _method(vw_alpha=0.5, vw_sigma_max=10.0)
    model = _linear_gaussian_model(m).eval()
    c = 1 - m.settings.alpha
    sigma = float(torch.nn.functional.softplus(torch.tensor(-1.0)))
    levels = m.levels(m.settings.extra)  # heating step t uses levels[t-1]
    K = len(levels)
    # p(s_0): s_K ~ p*, s_{t-1} = c·s_t + T_t·σ·ε  =>  Gaussian with these moments
    mean = c ** K * model.prior.mean
    var = c ** (2 * K) * model.prior.var + sum(
        c ** (2 * (t - 1)) * (model.temperature(lev) * sigma) ** 2 for t, lev in enumerate(levels, 1))
    x = torch.tensor([[0.1, 0.4], [-0.5, 0.2]])
    exact = normal_log_prob(x, mean, var)
    lw = log_weights(model, m, x, 4000, torch.Generator().manual_seed(0))  # shared code path
    bound, is_ = lower_bound(lw).float(), importance_sampling(lw).float()
    # the heating proposal is not the posterior: bound < IS <= log p(x) (IS biased low)
    assert (bound < is_ - 0.1).all() and (is_ < exact + 0.05).all() and (is_ > exact - 1.0).all()


def test_eq10_is_exact_for_a_reversible_stationary_chain():
    """One temperature level, p* = the stationary law of s' = c·s + σ·ε (an AR(1), which is
    reversible): heating is then the exact posterior and every draw of ℓ equals log p(x)."""
    m = _method(T=1, vw_alpha=0.4, vw_sigma_max=10.0)
    model = _linear_gaussian_model(m, b=-0.5)
    c = 1 - m.settings.alpha
    sigma2 = float(torch.nn.functional.softplus(torch.tensor(-0.5))) ** 2
    model.prior.mean.zero_()
    model.prior.var.fill_(sigma2 / (1 - c * c))
    x = torch.tensor([[0.1, 0.4], [-0.5, 0.2], [1.0, -1.3]])
    exact = normal_log_prob(x, model.prior.mean, model.prior.var)
    lw = log_weights(model.eval(), m, x, 50, torch.Generator().manual_seed(0))
    assert torch.allclose(lw.float(), exact[:, None].expand(3, 50), atol=1e-4)


def test_reversibility_known_answers():
    class Toy(torch.nn.Module):  # a stand-in with the model surface reversibility() needs
        d, T = 2, 1

        def __init__(self, rotate):
            super().__init__()
            self.rotate = rotate
            self.prior = type("P", (), {"mean": torch.zeros(2),
                                        "sample": staticmethod(lambda e: e)})()

        def transition(self, s, level):
            if self.rotate:  # a noisy rotation: stationary but not reversible
                th = 0.5
                R = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
                return 0.8 * s @ R.T, torch.full_like(s, 0.36)
            return 0.8 * s, torch.full_like(s, 0.36)  # Gaussian AR(1): reversible

    rev = reversibility(Toy(False), n_chains=200, steps=200, burn_in=50)
    assert abs(rev["kl"]) < 4 * rev["kl_se"] + 1e-3
    # entropy rate of N(·, 0.36 I) in 2-D
    assert rev["entropy"] == pytest.approx(math.log(2 * math.pi * math.e * 0.36), abs=0.05)
    irr = reversibility(Toy(True), n_chains=200, steps=200, burn_in=50)
    assert irr["kl"] > 0.1 and irr["kl"] > 10 * irr["kl_se"]


def test_spiral_preset_trains_and_samples(tmp_path):
    from infusion import train
    from infusion.chain.sampler import sample_chain
    from infusion.models import load_model

    cfg = config.override(tiny_config(method={"name": "walkback", "T": 3, "vw_n1": 1,
                                              "vw_extra": 2}), ["sample.steps=5"])
    ckpt = train(cfg, tmp_path, progress=False, log=lambda s: None)
    model, _ = load_model(ckpt)
    assert model.stats_ready
    out = sample_chain(model, 10, 5, seed=0)
    assert torch.isfinite(out.samples).all()
    assert (tmp_path / "chains.png").exists()
    rev = reversibility(model, n_chains=8, steps=20, burn_in=5, trace=True)
    assert math.isfinite(rev["kl"])
    assert len(rev["running_kl"]) == 20 and rev["running_kl"][-1] == pytest.approx(rev["kl"])


def test_walkback_figures_and_reversibility_come_from_the_shared_paths(tmp_path):
    from infusion import evaluate as ev
    from infusion import train
    from infusion.evaluate.paper_figures import make_figures

    cfg = config.override(tiny_config(method={"name": "walkback", "T": 3, "vw_n1": 1,
                                              "vw_extra": 2}), ["sample.steps=5"])
    train(cfg, tmp_path, progress=False, log=lambda s: None)
    done = make_figures(tmp_path)
    for name in ("likelihood_vs_k", "reversibility"):
        assert done[name] == tmp_path / "figures" / f"{name}.png" and done[name].stat().st_size > 0
    rep = ev.evaluate(tmp_path, "reversibility", tmp_path / "r.json", progress=False,
                      log=lambda s: None).report
    r = rep["metrics"]["reversibility"]
    assert math.isfinite(r["ratio"]) and r["entropy"] != 0
    assert "reversibility" in (tmp_path / "r.md").read_text()
