"""Can the diffusion body learn to denoise at *one* noise level? A probe for
``denoiser_error.py`` (algorithms.md §13).

Trains the MLP body that diffusion and the flow use (:class:`~infusion.chain.nets.StepEmbeddingMLP`,
its step input held fixed) on one signal-to-noise ratio a²/b² alone: y_s = a·y + b·ε with
a² + b² = 1 (diffusion's variance-preserving path), y the training images in [−1, 1], ε fresh
each batch, Adam with a constant rate, the regression target one of diffusion's heads: ``v``
(√ᾱ·ε − √(1−ᾱ)·y), ``x0`` (y) or ``eps`` (ε). Every ``--every`` steps it prints the squared
error of x̂_0 per test image (pixels in [0, 1]) beside the best linear denoiser's (the Wiener
filter of ``denoiser_error.py``). With no step to condition on, a body that cannot match the
linear filter here cannot do it inside a diffusion model either.

    python experiments/denoiser_one_level.py --log10-snr 0 --target v --steps 1500
"""

from __future__ import annotations

import argparse
import time

import torch
from denoiser_error import Wiener, data

from infusion.chain.nets import STEP_EMBED, StepEmbeddingMLP
from infusion.config import DataConfig

TARGETS = ("v", "x0", "eps")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="mnist", help="mnist or fashion")
    p.add_argument("--log10-snr", type=float, default=0.0, help="the one noise level, log10 a²/b²")
    p.add_argument("--target", choices=TARGETS, default="v", help="what the network regresses")
    p.add_argument("--batch-norm", action="store_true", help="batch norm in the body")
    p.add_argument("--hidden", default="1024,1024", help="hidden widths")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--every", type=int, default=500, help="report every this many steps")
    p.add_argument("--examples", type=int, default=2000, help="first test images")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)  # the network's initialisation
    g = torch.Generator().manual_seed(a.seed)
    y_train, y_test, _ = data(DataConfig(name=a.data), a.examples, g, 2.0)
    y_train, y_test = y_train.float(), y_test.float()
    snr = 10.0**a.log10_snr
    alpha, sigma = (snr / (1 + snr)) ** 0.5, (1 / (1 + snr)) ** 0.5
    noise = torch.randn(y_test.shape, generator=torch.Generator().manual_seed(a.seed + 1))
    ys_test = alpha * y_test + sigma * noise
    linear = ((Wiener(y_train.double())(ys_test.double(), alpha, sigma) - y_test) ** 2).sum(1).mean()
    hidden = tuple(int(h) for h in a.hidden.split(","))
    net = StepEmbeddingMLP(y_train.shape[1], hidden, 1, batch_norm=a.batch_norm, embed=STEP_EMBED)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)

    def x0_of(ys: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if a.target == "x0":
            return out
        if a.target == "eps":
            return (ys - sigma * out) / alpha
        return alpha * ys - sigma * out

    print(f"{a.data}, log10 SNR {a.log10_snr:g}, target {a.target}, hidden {hidden}, "
          f"batch norm {a.batch_norm}, Adam {a.lr:g}, batch {a.batch}; squared error of x̂_0 per "
          f"test image (pixels in [0, 1]); the Wiener filter's: {linear / 4:.2f}")
    start = time.time()
    for step in range(a.steps + 1):
        if step % a.every == 0 or step == a.steps:
            net.eval()
            with torch.no_grad():
                err = ((x0_of(ys_test, net(ys_test, 1)[0]) - y_test) ** 2).sum(1).mean()
            print(f"step {step:6d}: {err / 4:8.2f}  ({time.time() - start:.0f} s)", flush=True)
        if step == a.steps:
            break
        net.train()
        y = y_train[torch.randint(0, len(y_train), (a.batch,), generator=g)]
        eps = torch.randn(y.shape, generator=g)
        ys = alpha * y + sigma * eps
        target = {"v": alpha * eps - sigma * y, "x0": y, "eps": eps}[a.target]
        loss = (net(ys, 1)[0] - target).square().sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
