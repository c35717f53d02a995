"""experiments/sampling_temperature.py: its cooled noise on a trained model's chain."""

from __future__ import annotations

import torch

from infusion.chain.sampler import PerSampleNoise, run_chain, sample_chain
from infusion.models import load_model

from .conftest import load_experiment

CooledNoise = load_experiment("sampling_temperature").CooledNoise


def test_cooled_noise_scales_only_the_blocks_after_the_hot_steps():
    plain, cooled = PerSampleNoise([3, 4], 5), CooledNoise(PerSampleNoise([3, 4], 5), 2, 0.5)
    blocks = [(plain(), cooled()) for _ in range(5)]  # z(0), two hot steps, two cooled
    for i, (x, y) in enumerate(blocks):
        torch.testing.assert_close(y, x if i < 3 else 0.5 * x, rtol=0, atol=0)


def test_temperature_one_is_the_sampler_and_zero_the_chain_of_means(spiral_run):
    model, _ = load_model(spiral_run)
    model.eval()
    want = sample_chain(model, 6, 24, seed=0).means.reshape(6, -1)
    z, mean = run_chain(model, CooledNoise(PerSampleNoise(range(6), model.d), 4, 1.0), 24)
    torch.testing.assert_close(mean, want)
    z, mean = run_chain(model, CooledNoise(PerSampleNoise(range(6), model.d), 0, 0.0), 24)
    torch.testing.assert_close(z, mean, rtol=0, atol=0)  # no noise after z(0)
    assert not torch.allclose(mean, want, atol=1e-3)  # and another chain than the sampler's
