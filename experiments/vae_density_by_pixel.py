"""Where a VAE's likelihood comes from on MNIST: the reconstruction term log p(x | z) of its
decoder at the posterior mean z = E[q(z | x)], summed per image over the background pixels
(raw value 0) and over the ink (algorithms.md §16). A Gaussian decoder's density on
dequantised pixels can be large where a pixel is nearly constant: this splits the nats.

    python experiments/vae_density_by_pixel.py --run RUN_DIR [--examples 1000]
"""

from __future__ import annotations

import argparse

import torch

from infusion import load_model
from infusion.data import load_split, to_model_space
from infusion.methods.vae import VaeModel


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a VAE's run directory or export")
    p.add_argument("--examples", type=int, default=1000, help="first test digits")
    p.add_argument("--seed", type=int, default=0, help="the dequantisation noise's seed")
    a = p.parse_args(argv)
    model, cfg = load_model(a.run, "cpu")
    if not isinstance(model, VaeModel) or cfg.method.settings.decoder != "gaussian":
        raise SystemExit(f"{a.run}: not a VAE with a Gaussian decoder")
    raw = torch.from_numpy(load_split(cfg.data, "test", progress=False).images[: a.examples])
    x = to_model_space(raw, torch.Generator().manual_seed(a.seed))
    background = raw.reshape(len(raw), -1) == 0
    with torch.no_grad():
        mean, _ = model.encode(x)
        p_x = model.decode(mean)
        per_pixel = -0.5 * (torch.log(2 * torch.pi * p_x.var) + (x - p_x.mean) ** 2 / p_x.var)
    n = len(raw)
    print(f"{a.run}: {n:,} test digits ({cfg.data.name}); {background.float().mean():.1%} of "
          "pixels are background (raw 0)")
    print(f"log p(x | z = E[q(z | x)]) per image: {per_pixel.sum(1).mean():.1f} nats = "
          f"{(per_pixel * background).sum(1).mean():.1f} from the background "
          f"+ {(per_pixel * ~background).sum(1).mean():.1f} from the ink")
    print(f"decoder variance, median: background {p_x.var[background].median():.2e}, "
          f"ink {p_x.var[~background].median():.2e}")


if __name__ == "__main__":
    main()
