"""Named presets: plain data naming only what differs from the config's defaults, each with a
one-line description (``infusion presets``). :func:`preset` builds one as a validated config.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .schema import Config, from_dict  # the presets are plain data; the schema builds them

PRESETS: dict[str, dict[str, Any]] = {
    # The paper (algorithms.md §2–4, §10): 2×1200 MLP, T = 15, α(0) = 0, ω = 0.01, Adam 1e-3,
    # batch 512, early stopping on the validation bound. Records what Figs. 2 and 3 draw.
    # Samples are drawn with 30 steps, as the paper does for its MNIST figures (§4.2).
    "mnist": {
        "about": "the paper's MNIST model: 2x1200 MLP, T=15, trained until the validation bound "
                 "stops improving (20 epochs' patience, 1,500-epoch cap as the authors' code)",
        "train": {"epochs": 1500, "patience": 20,
                  "record_chains_at": (0, 1, 2, 3, 4, 5, 10, 20, 50, 100, 200, 500),
                  "train_bound_examples": 10000},
        "sample": {"steps": 30}},
    "mnist-demo": {
        "about": "recognisable MNIST digits in minutes on a CPU: 2x1024, T=5, 8 epochs",
        "model": {"hidden": (1024, 1024)},
        # T = 5, ω = 0.1 (the rate sweep's best chain per epoch) against T = 10, ω = 0.02, two
        # seeds each: closer to the test digits (classifier FD 71 against 150, recall 0.27
        # against 0.09), a higher bound, as confident, in half the time; less Parzen and IS
        # (docs/results.md, "T = 5 against T = 10 at 8 epochs, two seeds")
        "method": {"T": 5, "infusion": {"alpha0": 0.0, "omega": 0.1}},
        # a constant rate (the authors'; a cosine decay stops learning too early in 8 epochs:
        # bound +28 to +35 nats, FD 50-52 against 71-72, every digit 7-13% against 16% ones,
        # two seeds; docs/results.md, "Which levers raise the bound at the demo's scale?") and
        # an EMA of the weights, validated, sampled and exported; a fixed amount of work (no
        # time cap), so every machine trains the same model
        "train": {"epochs": 8, "batch_size": 256, "patience": 0,
                  "lr_schedule": "constant", "ema": 0.999,
                  "valid_examples": 2000, "record_chains_at": (0, 1, 2, 4, 8),
                  # each epoch logs the validation bound on population statistics alone: the
                  # train-set and batch-statistics bounds would add about half its time
                  "train_bound_examples": 0, "valid_batch_stats": False},
        # T' = 5T: more steps sharpen digits but drift towards the common classes
        # (docs/results.md)
        "sample": {"steps": 25},
    },
    "mnist-cond": {
        "about": "class-conditional MNIST (algorithms.md §15): the mnist-demo network with a "
                 "class embedding, minutes of training on a CPU; infusion sample --classes 0-9",
        "model": {"hidden": (1024, 1024), "classes": 10},
        "method": {"T": 10, "infusion": {"alpha0": 0.02, "omega": 0.02}},
        # 3 epochs at a constant rate: fixed work, the same model on any machine
        "train": {"epochs": 3, "batch_size": 256, "patience": 0, "valid_examples": 2000},
        # T' = T: longer chains drift away from the asked class (docs/results.md)
        "sample": {"steps": 10},
    },
    # Fashion-MNIST (Xiao et al. 2017): MNIST's format, split and dequantisation, garments
    # instead of digits. The paper's MNIST network and schedule; the demo's recipe.
    "fashion": {
        "about": "Fashion-MNIST with the paper's MNIST model: 2x1200 MLP, T=15, trained until "
                 "the validation bound stops improving (20 epochs' patience)",
        "data": {"name": "fashion"},
        "train": {"epochs": 1500, "patience": 20, "train_bound_examples": 10000},
        "sample": {"steps": 30}},
    "fashion-demo": {
        "about": "recognisable Fashion-MNIST garments in minutes on a CPU: the mnist-demo "
                 "network and chain (2x1024, T=5, 8 epochs), cosine rate + EMA",
        "data": {"name": "fashion"},
        "model": {"hidden": (1024, 1024)},
        "method": {"T": 5, "infusion": {"alpha0": 0.0, "omega": 0.1}},
        "train": {"epochs": 8, "batch_size": 256, "patience": 0,
                  "lr_schedule": "cosine", "ema": 0.999,
                  "valid_examples": 2000, "record_chains_at": (0, 1, 2, 4, 8),
                  "train_bound_examples": 2000},
        "sample": {"steps": 25},
    },
    "cifar10": {
        "about": "CIFAR-10 (paper §4): Salimans et al.'s generator (fc, 3 transposed convs), "
                 "T=20, omega=0.02",
        "data": {"name": "cifar10"},
        "model": {"net": "conv", "hidden": (512, 256, 128)},
        "method": {"T": 20, "infusion": {"omega": 0.02}},
        "train": {"valid_examples": 5000},
    },
    "celeba": {
        "about": "CelebA 64x64 (paper §4): one more transposed convolution, T=15, omega=0.01",
        "data": {"name": "celeba"},
        "model": {"net": "conv", "hidden": (512, 256, 128, 64)},
        "train": {"valid_examples": 5000},
    },
    "svhn": {
        "about": "SVHN (used by Variational Walkback): the CIFAR-10 network and schedule",
        "data": {"name": "svhn"},
        "model": {"net": "conv", "hidden": (512, 256, 128)},
        "method": {"T": 20, "infusion": {"omega": 0.02}},
        "train": {"valid_examples": 5000},
    },
    # Any folder of images (--data DIR, or --set data.path=DIR): 32×32 centre crops and the
    # CIFAR-10 network and schedule.
    "folder": {
        "about": "your folder of images (--data DIR or --set data.path=DIR): 32x32 centre crops, "
                 "the CIFAR-10 conv network, T=20, omega=0.02",
        "data": {"name": "folder", "image_size": 32},
        "model": {"net": "conv", "hidden": (512, 256, 128)},
        "method": {"T": 20, "infusion": {"omega": 0.02}},
        "train": {"valid_examples": 5000},
    },
    "spiral": {
        "about": "2-D spiral, infusion: trains in under a minute on one CPU core",
        "data": {"name": "spiral", "toy_size": 8000},
        "model": {"hidden": (128, 128)},
        "method": {"T": 20, "infusion": {"omega": 0.05}},
        "train": {"epochs": 40, "batch_size": 256, "lr": 3e-3, "patience": 0,
                  "valid_examples": 2000, "cpu_threads": 1},
        "sample": {"n": 2000},
    },
    # Baselines on the same network, data and trainer (algorithms.md §11–13). MNIST: the
    # paper's 2×1200 MLP and Adam 1e-3, batch 512.
    "mnist-walkback": {
        "about": "Variational Walkback on MNIST: 8 doubling temperatures, n ~ U{0..5}, "
                 "5 extra temperature-1 sampling steps",
        "method": {"name": "walkback", "T": 8, "walkback": {"n1": 5, "extra": 5}},
        "sample": {"steps": 13},
    },
    "mnist-gsn": {
        "about": "GSN walkback on MNIST: k=4, salt-and-pepper corruption 0.4, 100-step chain",
        "method": {"name": "gsn", "T": 4,
                   "gsn": {"noise": "salt_pepper", "noise_level": 0.4}},
        "sample": {"steps": 100},
    },
    # T = 1000 linear betas, the simple loss on the v head (an MLP narrower than 784 cannot
    # carry ε at high noise or x_0 at low noise: methods/diffusion.py); the bound walks 1000
    # steps, so fewer validation examples
    "mnist-diffusion": {
        "about": "Gaussian diffusion on MNIST: T=1000 linear betas, v-prediction, simple loss",
        "method": {"name": "diffusion", "T": 1000, "diffusion": {"predict": "v"}},
        "train": {"valid_examples": 500},
    },
    "mnist-flow": {
        "about": "flow matching (rectified flow) on MNIST: 20 Heun steps, exact likelihood "
                 "through the ODE",
        "method": {"name": "flow", "T": 20},
        "train": {"valid_examples": 2000},
        "sample": {"sampler": "heun"},
    },
    # The VAEs of Table 2's AIS comparison (Wu et al. 2016: VAE-50 991.4, VAE-10 705.4 nats):
    # Wu et al.'s 2×500 bodies (the decoder the encoder reversed), no batch norm, Adam 1e-3,
    # batch 256, a fixed 50 epochs; the Gaussian decoder of infusion's last step
    # (method.vae.decoder=bernoulli: the continuous Bernoulli, algorithms.md §16)
    "mnist-vae50": {
        "about": "VAE on MNIST (Table 2's VAE-50 baseline): 50 latent dimensions, 2x500 MLP "
                 "encoder and decoder, Gaussian decoder, 50 epochs",
        "model": {"hidden": (500, 500)},
        "method": {"name": "vae", "T": 1, "vae": {"latent": 50}},
        "train": {"epochs": 50, "batch_size": 256, "patience": 0, "valid_examples": 2000},
    },
    "mnist-vae10": {
        "about": "VAE on MNIST (Table 2's VAE-10 baseline): 10 latent dimensions, 2x500 MLP "
                 "encoder and decoder, Gaussian decoder, 50 epochs",
        "model": {"hidden": (500, 500)},
        "method": {"name": "vae", "T": 1, "vae": {"latent": 10}},
        "train": {"epochs": 50, "batch_size": 256, "patience": 0, "valid_examples": 2000},
    },
    # 10 heated levels: the variance doubles per level, so the hottest is 2^9 = 512 times the
    # temperature-1 variance (Algorithm 1's K = log2 T_max); 10 levels did best on the toys
    # against 6 and 14 (experiments/toy_suite.py, docs/results.md)
    "spiral-walkback": {
        "about": "2-D spiral, Variational Walkback: 10 temperature levels, about a minute on "
                 "one CPU core",
        "data": {"name": "spiral", "toy_size": 8000},
        "model": {"hidden": (128, 128)},
        "method": {"name": "walkback", "T": 10, "walkback": {"n1": 5, "extra": 5}},
        "train": {"epochs": 20, "batch_size": 256, "lr": 3e-3, "patience": 0,
                  "valid_examples": 2000, "cpu_threads": 1},
        "sample": {"n": 2000, "steps": 15},
    },
    "spiral-gsn": {
        "about": "2-D spiral, GSN walkback with Gaussian corruption 0.03",
        "data": {"name": "spiral", "toy_size": 8000},
        "model": {"hidden": (128, 128)},
        # corruption std 0.03 (0.1: samples too diffuse, 0.01: the chain no longer mixes)
        "method": {"name": "gsn", "T": 4, "gsn": {"noise_level": 0.03}},
        "train": {"epochs": 100, "batch_size": 256, "lr": 3e-3, "patience": 0,
                  "valid_examples": 2000, "cpu_threads": 1},
        "sample": {"n": 2000, "steps": 50},
    },
    "spiral-diffusion": {
        "about": "2-D spiral, diffusion: T=100 cosine betas, data scale 4",
        "data": {"name": "spiral", "toy_size": 8000},
        "model": {"hidden": (128, 128)},
        # The toys' spread in [0.05, 0.95] is ~0.2: scale 4 makes it ~0.8 against the unit
        # noise; the cosine betas keep more of the T = 100 steps at low noise.
        "method": {"name": "diffusion", "T": 100,
                   "diffusion": {"schedule": "cosine", "data_scale": 4.0}},
        # one step per example: more epochs; the bound walks all 100 steps, so fewer
        # validation examples
        "train": {"epochs": 300, "batch_size": 256, "lr": 3e-3, "patience": 0,
                  "valid_examples": 500, "cpu_threads": 1},
        "sample": {"n": 2000},
    },
    "spiral-vae": {
        "about": "2-D spiral, VAE: 2 latent dimensions, Gaussian decoder",
        "data": {"name": "spiral", "toy_size": 8000},
        "model": {"hidden": (128, 128)},
        "method": {"name": "vae", "T": 1, "vae": {"latent": 2}},
        "train": {"epochs": 100, "batch_size": 256, "lr": 3e-3, "patience": 0,
                  "valid_examples": 2000, "cpu_threads": 1},
        "sample": {"n": 2000},
    },
    "spiral-flow": {
        "about": "2-D spiral, flow matching (rectified flow): 20 Heun steps, data scale 4",
        "data": {"name": "spiral", "toy_size": 8000},
        "model": {"hidden": (128, 128)},
        # one τ per example, as diffusion: more epochs; scale 4 as spiral-diffusion
        "method": {"name": "flow", "T": 20, "flow": {"data_scale": 4.0}},
        "train": {"epochs": 300, "batch_size": 256, "lr": 3e-3, "patience": 0,
                  "valid_examples": 2000, "cpu_threads": 1},
        "sample": {"n": 2000, "sampler": "heun"},
    },
}


def register_preset(name: str, about: str, sections: dict[str, Any],
                    replace: bool = False) -> Config:
    """Add the preset ``name`` (a method's presets, or a user's): ``sections`` names only what
    differs from the defaults, as the presets above; ``about`` is its one-line description.
    It is built and validated now (its method must be registered) and returned; a name already
    taken is refused unless ``replace``."""
    if not (isinstance(name, str) and name and name.strip() == name):
        raise ConfigError(f"preset name {name!r}: expected a non-empty name")
    if name in PRESETS and not replace:
        raise ConfigError(f"preset {name!r} exists; pass replace=True to replace it")
    if not isinstance(sections, dict) or "about" in sections:
        raise ConfigError(f"preset {name!r}: expected a mapping of config sections")
    cfg = from_dict({**sections, "preset": name}).validate()
    PRESETS[name] = {"about": str(about), **sections}
    return cfg


def preset(name: str) -> Config:
    """The named preset as a validated :class:`~infusion.config.Config`."""

    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    sections = {k: v for k, v in PRESETS[name].items() if k != "about"}
    return from_dict({**sections, "preset": name}).validate()


def describe(name: str) -> str:
    """The preset's one-line description."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]["about"]
