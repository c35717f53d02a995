"""Exponential moving average of the operator's weights, used for sampling.

θ_ema ← d·θ_ema + (1 − d)·θ after every optimiser step, with the usual warm-up
d = min(decay, (1 + n)/(10 + n)) after n updates, so a short run is not dominated by the
initial weights. Only parameters are averaged; buffers (the prior's moments, the algorithms.md §6
batch-norm statistics) belong to whichever weights are in the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import InputError


class EMA:
    """The averaged copy of ``module``'s parameters; ``decay`` in (0, 1)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise InputError(f"EMA decay={decay}: expected in (0, 1)")
        self.decay, self.updates = decay, 0
        self.shadow = {k: p.detach().clone() for k, p in module.named_parameters()}

    def rate(self) -> float:
        """The decay used by the next update (with warm-up)."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = self.rate()
        for k, p in module.named_parameters():
            self.shadow[k].lerp_(p.detach(), 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Put the averaged weights into ``module`` (its own weights are lost)."""
        for k, p in module.named_parameters():
            p.copy_(self.shadow[k])

    @contextlib.contextmanager
    def applied(self, module: nn.Module) -> Iterator[nn.Module]:
        """Within the block ``module`` holds the averaged weights; its own come back after."""
        saved = {k: p.detach().clone() for k, p in module.named_parameters()}
        self.copy_to(module)
        try:
            yield module
        finally:
            with torch.no_grad():
                for k, p in module.named_parameters():
                    p.copy_(saved[k])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise InputError(f"EMA state does not match the model (differs in {sorted(missing)})")
        self.updates = int(state["updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
