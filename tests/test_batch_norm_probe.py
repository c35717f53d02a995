"""experiments/batch_norm_probe.py: diffusion and the flow as registered variants with batch
norm in the body, on the ladder's config."""

from __future__ import annotations

import pytest
import torch

from infusion import config
from infusion.chain.nets import step_norms
from infusion.methods import build_method, unregister_method

from .conftest import load_experiment

probe = load_experiment("batch_norm_probe")


@pytest.fixture
def variants():
    for cls in probe.VARIANTS.values():
        probe.register_method(cls)
    yield probe.VARIANTS
    for cls in probe.VARIANTS.values():
        unregister_method(cls.name)


@pytest.mark.parametrize("m, preset, key", [("diffusion", "mnist-diffusion", "schedule=cosine"),
                                            ("flow", "mnist-flow", "time_sampling=logit_normal")])
def test_variant_keeps_the_config_and_adds_batch_norm_only(variants, m, preset, key):
    cfg = config.override(config.preset(preset), [f"method.{m}.{key}", "model.hidden=32,32",
                                                  "train.lr=3e-4"])
    var = probe.variant_config(cfg, m)
    name = variants[m].name
    assert var.method.name == name and var.train == cfg.train and var.model == cfg.model
    assert var.method.settings.__dict__ == cfg.method.settings.__dict__  # every setting kept
    plain = build_method(cfg.method).build_model((1, 28, 28), cfg.model)
    bn = build_method(var.method).build_model((1, 28, 28), var.model)
    assert not step_norms(plain) and len(step_norms(bn)) == 2  # one per hidden layer
    # the rest is the same network: same parameter names and shapes besides the norms
    shapes = {k: v.shape for k, v in bn.state_dict().items() if ".norms." not in k}
    assert shapes == {k: v.shape for k, v in plain.state_dict().items()}
    x = torch.rand(16, 784, generator=torch.Generator().manual_seed(0))
    loss = build_method(var.method).loss(bn.train(), x, torch.Generator().manual_seed(1))
    assert loss.shape == (16,) and torch.isfinite(loss).all()
