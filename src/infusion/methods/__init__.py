"""Training methods and their registry (docs/algorithms.md §3–5, §11–14, §16).

Adding a method: one file here with a :class:`Method` subclass, one line in :data:`METHODS`,
one settings class in :mod:`infusion.config.method_settings` (``METHOD_SETTINGS``) and a preset.
"""

from __future__ import annotations

import math

import torch

from .. import limits
from ..config import Config, MethodConfig
from ..errors import InputError
from .base import Method
from .diffusion import Diffusion
from .flow import Flow
from .gsn import GSN
from .infusion import Infusion
from .vae import Vae
from .walkback import Walkback

METHODS: dict[str, type[Method]] = {m.name: m for m in (Infusion, Walkback, GSN, Diffusion,
                                                         Flow, Vae)}


def build_method(cfg: MethodConfig) -> Method:
    """The method named by ``method.name``."""
    if cfg.name in METHODS:
        return METHODS[cfg.name](cfg)
    raise InputError(f"unknown method {cfg.name!r}; available: {', '.join(METHODS)}")


def check_model_memory(method: Method, shape: tuple[int, ...], config: Config, copies: int = 1,
                       device=None) -> None:
    """Refuse, before any weight is allocated, the model of ``config`` whose weights and
    buffers, ``copies`` times (training: the weights, their gradients, Adam's two moments, the
    EMA), exceed the free memory of ``device``. The estimate is a quick upper bound on the
    bodies of :mod:`infusion.chain.nets` (the layers, per-step batch norm, class and step
    embeddings), and, where that does not fit, the exact count of a model built on the meta
    device."""
    cfg, t = config.model, config.method.T
    d, w, layers = math.prod(shape), max(cfg.hidden), len(cfg.hidden)
    bound = (3 * d * w + 30 * layers * w * w + (4 * t + cfg.classes) * (d * w + 2 * layers * w)
             + 128 * layers * w + 64 * (d + w + t)) * 4 * copies
    free = limits.free_memory(device)
    if free is None or bound <= free:
        return
    with torch.device("meta"):
        model = method.build_model(shape, cfg)
    size = sum(p.numel() * p.element_size() for p in [*model.parameters(), *model.buffers()])
    classes = f", model.classes={cfg.classes}" if cfg.classes else ""
    held = f", {copies} copies (weights, gradients, optimiser state)" if copies > 1 else ""
    limits.check_memory(size * copies, f"a model with model.hidden={cfg.hidden}{classes}, method.T={t} "
                        f"and states of shape {tuple(shape)}{held}", device)


__all__ = ["GSN", "METHODS", "Diffusion", "Flow", "Infusion", "Method", "Vae", "Walkback",
           "build_method", "check_model_memory"]
