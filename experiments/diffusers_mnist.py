"""A reference point that no one here wrote: diffusers' own ``UNet2DModel`` trained on MNIST with
its ``DDPMScheduler`` (T = 1000 linear betas, ε-prediction, the simple loss) and sampled with its
``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M). ``experiments/compare_mnist.py --reference``
trains it under the same budget as the project's methods and scores it with the same metrics.

Everything here is diffusers' code; this file only feeds it MNIST (dequantised as
docs/algorithms.md §1 does, scaled to [-1, 1]) and counts its training FLOPs. Needs
``pip install diffusers`` (a test dependency of the project).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def build_unet(seed: int = 0):
    """A small UNet2DModel for 28×28 digits: three levels of 32 / 64 / 64 channels, one ResNet
    block per level, no attention (28 → 14 → 7)."""
    from diffusers import UNet2DModel

    with torch.random.fork_rng(devices=[]):  # weights from the seed only
        torch.manual_seed(seed)
        return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
                           block_out_channels=(32, 64, 64), norm_num_groups=8,
                           down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3)


def _batch(train: torch.Tensor, batch: int, g: torch.Generator) -> torch.Tensor:
    """A dequantised minibatch of uint8 digits (N, 1, 28, 28) in diffusers' [-1, 1]."""
    idx = torch.randint(0, len(train), (batch,), generator=g)
    x = (train[idx].float() + torch.rand(batch, *train.shape[1:], generator=g)) / 256
    return 2 * x - 1


def _loss(unet, scheduler, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=g)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x),), generator=g)
    return torch.nn.functional.mse_loss(unet(scheduler.add_noise(x, noise, t), t).sample, noise)


def flops_per_step(train: torch.Tensor, batch: int) -> int:
    """FLOPs of one training step (forward + backward, matmuls and convolutions), counted by
    :class:`torch.utils.flop_counter.FlopCounterMode` as ``infusion bench`` counts ours."""
    from diffusers import DDPMScheduler
    from torch.utils.flop_counter import FlopCounterMode

    unet, g = build_unet(), torch.Generator().manual_seed(0)
    counter = FlopCounterMode(display=False)
    with counter:
        _loss(unet, DDPMScheduler(beta_schedule="linear"), _batch(train, batch, g), g).backward()
    return counter.get_total_flops()


def train_unet(train: torch.Tensor, steps: int, batch: int = 128, lr: float = 5e-4, seed: int = 0,
               log: Callable[[str], None] = print):
    """``steps`` Adam steps of the simple loss on uint8 digits ``train`` (N, 1, 28, 28)."""
    from diffusers import DDPMScheduler

    unet, scheduler = build_unet(seed), DDPMScheduler(beta_schedule="linear")
    opt = torch.optim.Adam(unet.parameters(), lr=lr)
    g, t0 = torch.Generator().manual_seed(seed + 1), time.time()
    unet.train()
    for step in range(1, steps + 1):
        loss = _loss(unet, scheduler, _batch(train, batch, g), g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps:
            log(f"diffusers UNet step {step}/{steps}: loss {loss.item():.4f} "
                f"({time.time() - t0:.0f} s)")
    return unet.eval()


@torch.no_grad()
def sample_unet(unet, n: int, steps: int, seed: int = 0, batch: int = 250) -> torch.Tensor:
    """``n`` digits (n, 1, 28, 28) in [0, 1] from ``steps`` DPM-Solver++ (2M) steps of diffusers'
    scheduler, its default settings for this schedule."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(beta_schedule="linear", algorithm_type="dpmsolver++",
                                            solver_order=2)
    out = []
    for lo in range(0, n, batch):
        g = torch.Generator().manual_seed(seed + lo)
        x = torch.randn(min(batch, n - lo), 1, 28, 28, generator=g)
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
        out.append(((x + 1) / 2).clamp(0, 1))
    return torch.cat(out)
