"""Training methods and their registry (docs/algorithms.md §3–5, §11–14, §16).

Adding a method: one module with its :class:`Method` subclass and, as its ``Settings``, the
frozen dataclass of its ``method.<name>.*`` settings and capabilities; one call of
:func:`register_method` (the built-in methods' are below); and its presets
(:func:`infusion.config.register_preset`). The method may live in the user's own module.
"""

from __future__ import annotations

import math

import torch

from .. import limits
from ..config import Config, MethodConfig, registry
from ..errors import ConfigError, InputError
from .base import Method
from .diffusion import Diffusion
from .flow import Flow
from .gsn import GSN
from .infusion import Infusion
from .vae import Vae
from .walkback import Walkback

METHODS: dict[str, type[Method]] = {}  # name -> method class, filled by register_method


def register_method(cls: type[Method], replace: bool = False) -> type[Method]:
    """Make ``cls`` a method of the library: ``method.name=<cls.name>`` trains it, its
    ``Settings`` become ``method.<cls.name>.*`` of the config (typed ``--set``, saved in every
    run and export, validated), and runs of it load back. A name already taken by another
    class is refused unless ``replace``. Returns ``cls`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register_method({cls!r}): expected a subclass of infusion.Method")
    name = getattr(cls, "name", None)
    held = METHODS.get(name)
    if held is not None and held is not cls and not replace:
        raise ConfigError(f"method {name!r} is already registered ({held.__module__}."
                          f"{held.__qualname__}); pass replace=True to replace it")
    registry.register_settings(name, getattr(cls, "Settings", None), replace=replace)
    METHODS[name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove the method ``name`` (one a test or a notebook registered)."""
    METHODS.pop(name, None)
    registry.unregister(name)


for _builtin in (Infusion, Walkback, GSN, Diffusion, Flow, Vae):
    register_method(_builtin)


def build_method(cfg: MethodConfig) -> Method:
    """The method named by ``method.name``."""
    if cfg.name in METHODS:
        return METHODS[cfg.name](cfg)
    raise InputError(f"unknown method {cfg.name!r}; available: {', '.join(METHODS)}")


def activation_bytes(method: Method, shape: tuple[int, ...], config: Config, batch: int) -> int:
    """An upper estimate of the activations one training step of ``batch`` examples keeps for
    its backward pass: per example and per step of the loss (T for the chains, 1 for diffusion
    and the flow, which draw one time per example), ten values per data value (inputs, targets,
    the heads and their densities) and eight per hidden value (pre-activation, normalised,
    activation and what batch norm and the nonlinearity save), over every pixel of each map for
    the image bodies. Weights are not included (:func:`check_model_memory` counts them)."""
    per_step = 10 * math.prod(shape) + 8 * _hidden_values(config.model, shape)
    return 4 * batch * method.loss_steps() * per_step


def _hidden_values(cfg, shape: tuple[int, ...]) -> int:
    """Hidden values of one forward pass of the body (:mod:`infusion.chain.nets`): the MLP's
    units; the conv generator's maps, whose side doubles from 1/2^L of the image's at
    ``hidden[0]`` channels; the U-Net's maps, the side halving at each width, down and up."""
    if cfg.net == "mlp" or len(shape) != 3:
        return sum(cfg.hidden)
    pixels, n = shape[1] * shape[2], len(cfg.hidden)
    if cfg.net == "conv":
        return sum(h * pixels // 4 ** (n - i) for i, h in enumerate(cfg.hidden))
    return 3 * sum(h * -(-pixels // 4 ** i) for i, h in enumerate(cfg.hidden))


def check_model_memory(method: Method, shape: tuple[int, ...], config: Config, copies: int = 1,
                       device=None, batch: int = 0) -> None:
    """Refuse, before any weight is allocated, the model of ``config`` whose weights and
    buffers, ``copies`` times (training: the weights, their gradients, Adam's two moments, the
    EMA), plus the activations of a training step of ``batch`` examples
    (:func:`activation_bytes`; 0: none), exceed the free memory of ``device``. The weights'
    estimate is a quick upper bound on the bodies of :mod:`infusion.chain.nets` (the layers,
    per-step batch norm, class and step embeddings), and, where that does not fit, the exact
    count of a model built on the meta device."""
    cfg, t = config.model, config.method.T
    d, w, layers = math.prod(shape), max(cfg.hidden), len(cfg.hidden)
    acts = activation_bytes(method, shape, config, batch) if batch else 0
    bound = (3 * d * w + 30 * layers * w * w + (4 * t + cfg.classes) * (d * w + 2 * layers * w)
             + 128 * layers * w + 64 * (d + w + t)) * 4 * copies + acts
    free = limits.free_memory(device)
    if free is None or bound <= free:
        return
    with torch.device("meta"):
        model = method.build_model(shape, cfg)
    size = sum(p.numel() * p.element_size() for p in [*model.parameters(), *model.buffers()])
    classes = f", model.classes={cfg.classes}" if cfg.classes else ""
    held = f", {copies} copies (weights, gradients, optimiser state)" if copies > 1 else ""
    step = (f", and the activations of a training step of train.batch_size={batch} "
            f"({limits.format_bytes(acts)})") if batch else ""
    limits.check_memory(size * copies + acts, f"a model with model.hidden={cfg.hidden}{classes}, "
                        f"method.T={t} and states of shape {tuple(shape)}{held}{step}", device)


__all__ = ["GSN", "METHODS", "Diffusion", "Flow", "Infusion", "Method", "Vae", "Walkback",
           "activation_bytes", "build_method", "check_model_memory", "register_method",
           "unregister_method"]
