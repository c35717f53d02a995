"""Training methods: how a training chain is built from a data point and which loss each step gets.

Each method is a small object with ``loss(model, x, generator) -> (B,)`` per-example losses.
"""

from __future__ import annotations

from ..config import MethodConfig
from .diffusion import Diffusion
from .gsn import GSN
from .infusion import Infusion
from .walkback import Walkback

METHODS = {"infusion": Infusion, "walkback": Walkback, "gsn": GSN, "diffusion": Diffusion}


def build_method(cfg: MethodConfig) -> Infusion | Walkback | GSN | Diffusion:
    """The method named by ``method.name`` (SPEC §4 infusion, §11 walkback, §12 GSN, §13 diffusion)."""
    if cfg.name in METHODS:
        return METHODS[cfg.name](cfg)
    raise ValueError(f"unknown method {cfg.name!r}; available: {', '.join(METHODS)}")


__all__ = ["GSN", "METHODS", "Diffusion", "Infusion", "Walkback", "build_method"]
