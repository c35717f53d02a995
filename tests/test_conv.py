"""Convolutional operators (algorithms.md §2): shapes, per-channel per-step batch norm, and the conv
presets training a few steps on synthetic CIFAR- and CelebA-shaped data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import infusion
from infusion import config, data, train
from infusion.chain.nets import ConvGenerator, StepBatchNorm, UNet, build_net
from infusion.chain.sampler import sample_chain
from infusion.methods import build_method
from infusion.methods.statistics import compute_step_statistics
from infusion.training.fit import UNET_CHANNELS

from .conftest import short_fit


def _deconvs(net: nn.Module) -> list[nn.ConvTranspose2d]:
    return [m for m in net.modules() if isinstance(m, nn.ConvTranspose2d)]


@pytest.mark.parametrize("name, side, n_deconv", [("cifar10", 32, 3), ("celeba", 64, 4)])
def test_preset_networks_follow_the_paper(name, side, n_deconv):
    cfg = config.preset(name)
    d = 3 * side * side
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        net = build_net(cfg.model.net, (3, side, side), cfg.model.hidden, cfg.method.T)
    assert isinstance(net, ConvGenerator) and net.base == (4, 4) and net.channels == 3
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
    with pytest.raises(ValueError, match="multiples of 8, but the data are 28×28"):
        build_net("conv", (1, 28, 28), (8, 4, 2), 3)
    with pytest.raises(ValueError, match=r"needs images .* shape \(784,\): use model.net=mlp"):
        build_net("conv", (784,), (8, 4), 3)
    net = build_net("conv", (1, 28, 28), (8, 4), 3)  # MNIST: 7×7 doubled twice
    assert net.base == (7, 7) and net(torch.rand(2, 784), 1)[0].shape == (2, 784)


def test_unet_takes_any_image_size_with_per_step_batch_norm():
    torch.manual_seed(0)
    net = build_net("unet", (1, 28, 28), (4, 8, 8), 3)
    assert isinstance(net, UNet)
    norms = [n for n in net.modules() if isinstance(n, StepBatchNorm)]
    # inp at 28×28, down to 14 and 7, up to 14 and 28: per-channel, one slot per step
    assert [n.weight.shape for n in norms] == [(3, w) for w in (4, 8, 8, 8, 4)]
    with torch.no_grad():
        for n in norms:
            n.weight.uniform_(0.5, 1.5)
    z = torch.rand(5, 784)
    a_mu, a_sigma = net(z, 1)
    assert a_mu.shape == a_sigma.shape == (5, 784)
    assert not torch.allclose(net(z, 2)[0], a_mu)  # each step its own γ_t
    odd = build_net("unet", (3, 9, 13), (4, 6), 2)  # odd sides: 9×13 → 5×7 → 9×13
    assert odd(torch.rand(4, 3 * 9 * 13), 2)[1].shape == (4, 3 * 9 * 13)
    with pytest.raises(ValueError, match=r"needs images .* shape \(2,\)"):
        build_net("unet", (2,), (4,), 3)


def test_step_embedding_unet_treats_each_example_alone():
    # diffusion and the flow train on batches that mix steps: group norm and the per-example
    # step embedding make each output depend on its own state and step only
    torch.manual_seed(0)
    net = build_net("unet", (1, 9, 11), (4, 8), 1, batch_norm=False, embed=16)
    assert not any(isinstance(n, StepBatchNorm) for n in net.modules())
    z, t = torch.rand(5, 99), torch.tensor([1, 50, 200, 999, 3])
    a_mu, a_sigma = net(z, t)
    for i in range(5):
        one = net(z[i:i + 1], t[i:i + 1])
        torch.testing.assert_close(one[0], a_mu[i:i + 1])
        torch.testing.assert_close(one[1], a_sigma[i:i + 1])
    assert not torch.allclose(net(z, t.flip(0))[0], a_mu)  # the step matters
    with pytest.raises(ValueError, match="model.net=conv .* takes no step embedding"):
        build_net("conv", (1, 8, 8), (4,), 1, embed=16)


def _blobs(n: int, side: int, seed: int = 0) -> np.ndarray:
    """Smooth grey blobs at random places, uint8 (n, 1, side, side)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    cx, cy = rng.uniform(0.3, 0.7, (2, n, 1, 1))
    return (255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05))[:, None].astype(np.uint8)


@pytest.mark.parametrize("preset", ["mnist", "mnist-walkback", "mnist-gsn", "mnist-diffusion",
                                    "mnist-flow"])
def test_every_method_learns_on_the_unet(preset):
    cfg = config.override(config.preset(preset), ["model.net=unet", "model.hidden=6,8",
                                                  "method.T=4", "sample.steps=0"])
    method = build_method(cfg.method)
    model = method.build_model((1, 10, 10), cfg.model)
    assert isinstance(model.net, UNet)
    x = torch.from_numpy(_blobs(64, 10)).float().div(255).reshape(64, -1)
    first, last = short_fit(method, model, x, steps=40, batch=32, lr=1e-2)
    assert last < first
    compute_step_statistics(model, method, data.Data(x, x, (1, 10, 10), pixels=True), 32)
    out = sample_chain(model.eval(), 3, cfg.sample_steps, seed=0).samples
    assert out.shape == (3, 1, 10, 10) and bool(torch.isfinite(out).all())


def test_a_unet_run_saves_and_reloads(tmp_path):
    res = infusion.fit(_blobs(40, 8), run_dir=tmp_path / "run", progress=False,
                       log=lambda _: None,
                       overrides=["model.net=unet", "method.T=2", "train.epochs=1",
                                  "train.batch_size=16"])
    model, cfg = infusion.load_model(res.run_dir)
    assert cfg.model.net == "unet" and isinstance(model.net, UNet)
    assert cfg.model.hidden == UNET_CHANNELS  # not the MLP's 1200 channels
    assert res.sample(3, seed=1).shape == (3, 1, 8, 8)
    torch.testing.assert_close(sample_chain(model, 3, 2, seed=1).samples,
                               sample_chain(res.model, 3, 2, seed=1).samples)


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
    assert rows[-1]["valid_bound_population"] > rows[0]["valid_bound_population"]
    samples = np.load(tmp_path / "run" / "samples.npz")["samples"]
    assert samples.shape == (4, 3, side, side)
    assert final.is_file()
