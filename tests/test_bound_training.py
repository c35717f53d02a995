"""Lower-bound-based infusion training, algorithms.md §5: the loss is −ℓ of algorithms.md §7, gradients flow
through the chain's Gaussian draws."""

from __future__ import annotations

import json

import pytest
import torch

from infusion.chain.nets import step_norms
from infusion.config import ConfigError, MethodConfig, ModelConfig, override
from infusion.methods import build_method
from infusion.methods.infusion import InfusionSettings

from .conftest import tiny_config


def _model_and_method(**method):
    settings = InfusionSettings(**{"alpha0": 0.1, "omega": 0.2, "loss": "bound", **method})
    cfg = MethodConfig(T=4, settings=settings)
    m = build_method(cfg)
    torch.manual_seed(0)
    model = m.build_model((6,), ModelConfig(hidden=(16,)))
    x = torch.rand(12, 6, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    return m, model, x


def test_bound_loss_is_minus_log_weight_for_the_same_draws():
    m, model, x = _model_and_method()
    loss = m.loss(model, x, torch.Generator().manual_seed(5))
    ell = m.log_weight(model, x, torch.Generator().manual_seed(5))
    assert loss.shape == (12,)
    assert torch.equal(loss, -ell)
    # A different draw gives a different value, so the equality above is not vacuous.
    assert not torch.allclose(loss, m.loss(model, x, torch.Generator().manual_seed(6)))
    # And it is not the denoising loss.
    den = build_method(MethodConfig(T=4, settings=InfusionSettings(alpha0=0.1, omega=0.2))).loss(
        model, x, torch.Generator().manual_seed(5))
    assert not torch.allclose(loss, den)


def test_gradients_reach_the_first_step_through_the_draws():
    # With infusion rate 0 everywhere, log q(t) = log p(t) for t < T, so ℓ = log p(T)(x | z̃(T-1)):
    # the first step's batch-norm slot only acts through the reparametrised draws z̃(1) … z̃(T-1).
    m, model, x = _model_and_method(alpha0=0.0, omega=0.0)
    model.train()
    m.loss(model, x, torch.Generator().manual_seed(3)).mean().backward()
    for norm in step_norms(model):
        assert norm.weight.grad[0].abs().sum() > 0  # slot of step 1
        assert norm.bias.grad[0].abs().sum() > 0
    # If the draws were detached (the denoising chain), the final term alone would give step 1
    # no gradient at all: check that on the same model.
    model.zero_grad()
    z = m.start(model, x, torch.Generator().manual_seed(3))
    for t in range(1, m.T):
        mean, var = model(z, t)
        z = (mean + var.sqrt() * torch.randn(x.shape)).detach()
    mean, var = model(z, m.T)
    from infusion.chain.distributions import normal_log_prob

    (-normal_log_prob(x, mean, var)).mean().backward()
    assert all(float(n.weight.grad[0].abs().sum()) == 0 for n in step_norms(model))


def test_config_accepts_bound_and_rejects_others():
    cfg = override(tiny_config(), ["method.loss=bound"])
    assert cfg.method.infusion.loss == "bound"
    with pytest.raises(ConfigError, match=r"method\.infusion\.loss"):
        override(tiny_config(), ["method.loss=elbo"])


def test_bound_training_raises_the_validation_bound_and_records_figures(tmp_path):
    from infusion import train

    cfg = tiny_config(method={"loss": "bound"},
                      train={"epochs": 3, "record_chains_at": (0, 2), "record_chains_n": 5,
                             "train_bound_examples": 128})
    train(cfg, tmp_path, progress=False, log=lambda s: None)
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    keys = ("train_bound_population", "valid_bound_population", "train_bound_batch",
            "valid_bound_batch")
    assert all(k in r for r in rows for k in keys)
    assert rows[-1]["valid_bound_population"] > rows[0]["valid_bound_population"]
    import numpy as np

    recorded = sorted(p.name for p in (tmp_path / "infusion_chains").glob("*.npz"))
    assert recorded == ["epoch-0000.npz", "epoch-0002.npz"]
    with np.load(tmp_path / "infusion_chains" / "epoch-0002.npz") as f:
        assert f["chain"].shape == (cfg.method.T + 1, 5, 2)
        assert f["targets"].shape == (5, 2)


@pytest.mark.parametrize("w", [0.0, 0.3, 1.0])
def test_the_mixed_loss_weighs_the_two_losses_on_their_own_draws(w):
    m, model, x = _model_and_method(loss="mixed", bound_weight=w)
    den, bound = (_model_and_method(loss=kind)[0] for kind in ("denoising", "bound"))
    g = torch.Generator().manual_seed(7)
    mixed = m.loss(model, x, g)
    g = torch.Generator().manual_seed(7)  # the same stream: the denoising draw, then the bound's
    expected = (1 - w) * den.loss(model, x, g) + w * bound.loss(model, x, g)
    assert torch.allclose(mixed, expected, rtol=1e-6, atol=1e-4)


def test_a_bound_weight_outside_zero_one_is_refused():
    with pytest.raises(ConfigError, match="bound_weight=1.5"):
        override(tiny_config(), ["method.loss=mixed", "method.bound_weight=1.5"])
