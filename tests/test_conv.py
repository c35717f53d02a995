"""Convolutional operators (algorithms.md §2): shapes, per-channel per-step batch norm, and the conv
presets training a few steps on synthetic CIFAR- and CelebA-shaped data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from infusion import config, data, train
from infusion.nets import ConvGenerator, StepBatchNorm, build_net


def _deconvs(net: nn.Module) -> list[nn.ConvTranspose2d]:
    return [m for m in net.modules() if isinstance(m, nn.ConvTranspose2d)]


@pytest.mark.parametrize("name, side, n_deconv", [("cifar10", 32, 3), ("celeba", 64, 4)])
def test_preset_networks_follow_the_paper(name, side, n_deconv):
    cfg = config.preset(name)
    d = 3 * side * side
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        net = build_net(cfg.model.net, d, cfg.model.hidden, cfg.method.T)
    assert isinstance(net, ConvGenerator) and net.side == side and net.channels == 3
    assert net.fc.in_features == d and net.fc.out_features == 4 * 4 * 512  # one fc layer
    # the transposed convolutions in depth: the body's plus one level of two heads
    assert len(net.deconvs) + 1 == n_deconv
    assert net.head_mu.out_channels == net.head_sigma.out_channels == 3
    assert all(c.kernel_size == (5, 5) and c.stride == (2, 2) for c in _deconvs(net))
    assert all(n.steps == cfg.method.T for n in net.norms)
    a_mu, a_sigma = net(torch.empty(2, d, device="meta"), 1)
    assert a_mu.shape == a_sigma.shape == (2, d)
    assert (cfg.method.T, cfg.method.infusion.omega, cfg.method.infusion.alpha0) == (
        (20, 0.02, 0.0) if name == "cifar10" else (15, 0.01, 0.0))


def test_conv_net_rejects_a_mismatched_image_size():
    with pytest.raises(ValueError, match="32×32"):
        build_net("conv", 784, (8, 4, 2), 3)


def test_step_batch_norm_is_per_channel_and_per_step():
    torch.manual_seed(0)
    bn = StepBatchNorm(5, steps=3)
    with torch.no_grad():
        bn.weight[1] = torch.arange(1.0, 6.0)
        bn.bias[1] = -1.0
    h = torch.randn(6, 5, 4, 4) * 3 + 2
    ref = nn.functional.batch_norm(h, None, None, training=True, eps=bn.eps)
    torch.testing.assert_close(bn(h, 1), ref, atol=1e-5, rtol=1e-5)  # γ=1, β=0 at step 1
    expected = ref * torch.arange(1.0, 6.0).view(1, 5, 1, 1) - 1.0
    torch.testing.assert_close(bn(h, 2), expected, atol=1e-5, rtol=1e-5)
    # the algorithms.md §6 statistics pass stores per-channel averages over batches
    bn.start_collect()
    bn(h[:3], 3)
    bn(h[3:], 3)
    bn(h, 1)
    bn(h, 2)
    bn.finish_collect()
    half = [h[:3], h[3:]]
    mean = sum(x.mean((0, 2, 3)) for x in half) / 2
    var = sum(x.var((0, 2, 3), unbiased=False) for x in half) / 2
    torch.testing.assert_close(bn.stat_mean[2], mean)
    torch.testing.assert_close(bn.stat_var[2], var)


@pytest.fixture
def synthetic_images(tmp_path, monkeypatch):
    """Fake verified caches of CIFAR-10 (32×32) and CelebA (64×64): smooth random colour
    blobs, so there is something to learn."""
    monkeypatch.setenv("INFUSION_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)

    def images(n, side):
        yy, xx = np.mgrid[0:side, 0:side] / side
        cx, cy = rng.uniform(0.3, 0.7, (2, n, 1, 1))
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05)  # (n, side, side)
        colour = rng.uniform(0.2, 1.0, (n, 3, 1, 1))
        return (255 * blob[:, None] * colour).astype(np.uint8)

    for name, side in (("cifar10", 32), ("celeba", 64)):
        arrays = {f"{s}_x": images(n, side) for s, n in (("train", 48), ("valid", 16), ("test", 8))}
        path = data.cache_dir() / name / f"{name}-uint8.npz"
        path.parent.mkdir(parents=True)
        data.write_cache(path, arrays)


@pytest.mark.parametrize("name, hidden, side", [("cifar10", "32,16,8", 32),
                                                ("celeba", "8,8,4,4", 64)])
def test_conv_presets_train_on_synthetic_images(synthetic_images, tmp_path, name, hidden, side):
    # the preset's architecture, schedule and data path, with narrow layers and few steps
    cfg = config.override(config.preset(name), [
        f"model.hidden={hidden}", "method.T=2", "train.epochs=2", "train.batch_size=16",
        "train.lr=3e-3", "train.valid_examples=16", "sample.n=4", "sample.chains=2"])
    final = train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    losses = [r["train_loss"] for r in rows]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert rows[-1]["valid_bound"] > rows[0]["valid_bound"]
    samples = np.load(tmp_path / "run" / "samples.npz")["samples"]
    assert samples.shape == (4, 3, side, side)
    assert final.is_file()
