"""Training methods and their registry (docs/algorithms.md §3–5, §11–14).

Adding a method: one file here with a :class:`Method` subclass, one line in :data:`METHODS`,
one settings class in :mod:`infusion.config.method_settings` (``METHOD_SETTINGS``) and a preset.
"""

from __future__ import annotations

from ..config import MethodConfig
from ..errors import InputError
from .base import Method
from .diffusion import Diffusion
from .flow import Flow
from .gsn import GSN
from .infusion import Infusion
from .walkback import Walkback

METHODS: dict[str, type[Method]] = {m.name: m for m in (Infusion, Walkback, GSN, Diffusion,
                                                         Flow)}


def build_method(cfg: MethodConfig) -> Method:
    """The method named by ``method.name``."""
    if cfg.name in METHODS:
        return METHODS[cfg.name](cfg)
    raise InputError(f"unknown method {cfg.name!r}; available: {', '.join(METHODS)}")


__all__ = ["GSN", "METHODS", "Diffusion", "Flow", "Infusion", "Method", "Walkback",
           "build_method"]
