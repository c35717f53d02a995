"""GSN / DAE walkback (algorithms.md §12): corruptions, walkback loss against the clean target, chains
from noise and from data, clamped sampling, per-sample seeds, no likelihood."""

from __future__ import annotations

import pytest
import torch

from infusion.chain.distributions import normal_log_prob
from infusion.chain.sampler import sample_chain
from infusion.config import ModelConfig
from infusion.methods import build_method
from infusion.methods.gsn import GSN, corrupt

from .conftest import short_fit, tiny_config


def _setup(**kw):
    cfg = tiny_config(method={"name": "gsn", "T": 3, **kw})
    method = build_method(cfg.method)
    torch.manual_seed(0)
    model = method.build_model((2,), ModelConfig(hidden=(16,)))
    return method, model


def test_corruptions():
    x = torch.full((20000, 1), 0.3)
    xi = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
    g = corrupt(x, xi, "gaussian", 0.2)
    assert float(g.mean()) == pytest.approx(0.3, abs=0.01)
    assert float(g.std()) == pytest.approx(0.2, abs=0.01)
    sp = corrupt(x, xi, "salt_pepper", 0.4)
    assert float((sp == 0).float().mean()) == pytest.approx(0.2, abs=0.01)
    assert float((sp == 1).float().mean()) == pytest.approx(0.2, abs=0.01)
    assert float((sp == 0.3).float().mean()) == pytest.approx(0.6, abs=0.01)
    with pytest.raises(ValueError, match="corruption"):
        corrupt(x, xi, "dropout", 0.1)


def test_loss_is_walkback_against_clean_target():
    method, model = _setup()
    assert isinstance(method, GSN) and not method.has_likelihood
    x = torch.rand(16, 2)
    loss = method.loss(model, x, torch.Generator().manual_seed(0))
    assert loss.shape == (16,) and torch.isfinite(loss).all()
    # rebuild: k steps, each reconstruction scored against x, the walk detached
    g = torch.Generator().manual_seed(0)
    z, ref = x, torch.zeros(16)
    for j in range(1, 4):
        xi = torch.randn(x.shape, generator=g)
        mean, var = model(z, j, xi)
        ref = ref - normal_log_prob(x, mean, var)
        if j < 3:
            z = (mean + var.sqrt() * torch.randn(x.shape, generator=g)).detach()
    assert torch.allclose(ref, loss, atol=1e-5)
    loss.mean().backward()
    assert all(p.grad is not None for p in model.net.parameters())


def test_transition_needs_corruption_noise():
    _, model = _setup()
    with pytest.raises(ValueError, match="corruption noise"):
        model(torch.rand(4, 2), 1)


def test_short_run_lowers_loss_and_samples():
    method, model = _setup(gsn_noise_level=0.1)
    # a tight cluster at (0.3, 0.7), std 0.03: a chain from the broad prior must find it
    x = torch.tensor([0.3, 0.7]) + 0.03 * torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    model.prior.fit(x)
    first, last = short_fit(method, model, x, steps=150, batch=128)
    assert last < first - 1.0
    from infusion.data import Data
    from infusion.methods.statistics import compute_step_statistics

    data = Data(x, x, (2,), pixels=False)
    compute_step_statistics(model, method, data, 128)
    model.prior.var.fill_(0.1)  # start the chains far wider than the data
    s = sample_chain(model, 200, 60, seed=0)
    assert torch.allclose(s.samples.mean(0), torch.tensor([0.3, 0.7]), atol=0.03)
    assert (s.samples.std(0) < 0.08).all()
    # per-sample seeds: sample i does not depend on the batch it was drawn in
    a = sample_chain(model, 6, 5, seed=3, batch_size=6).samples
    b = sample_chain(model, 6, 5, seed=3, batch_size=4).samples
    assert torch.allclose(a, b)
    # from data, with the first coordinate clamped: it never moves
    start = x[:20]
    c = sample_chain(model, 20, 10, seed=0, start=start,
                     clamp=(torch.tensor([True, False]), start), return_trajectory=True)
    assert torch.equal(c.states[:, :, 0], start[:, 0].expand(11, 20))
    assert torch.equal(c.states[0], start)
