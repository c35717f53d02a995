"""Training methods: how a training chain is built from a data point and which loss each step gets.

Each method is a small object with ``loss(model, x, generator) -> (B,)`` per-example losses.
"""

from __future__ import annotations

from ..config import MethodConfig
from .infusion import Infusion


def build_method(cfg: MethodConfig) -> Infusion:
    """The method named by ``method.name``."""
    if cfg.name == "infusion":
        return Infusion(cfg)
    raise ValueError(f"unknown method {cfg.name!r}; available: infusion")


__all__ = ["Infusion", "build_method"]
