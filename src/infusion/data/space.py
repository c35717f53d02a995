"""Raw data ↔ model space (algorithms.md §1, §8): the only place where pixel scaling lives.

Images are stored as uint8 pixels k in {0..255}; the model sees x = (k + u)/256 with fresh
u ~ U(0, 1) (:func:`dequantize`, :func:`to_model_space`), and the Parzen estimator, the
classifier metrics and the figures see x = k/256 without noise (:func:`to_unit`,
:func:`parzen_space`). Continuous data (the 2-D toys) are used as they are. :func:`from_unit`
maps model space back to pixels.
"""

from __future__ import annotations

import numpy as np
import torch


def dequantize(k: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """algorithms.md §1 dequantisation: pixels k -> (k + u)/256, u ~ U(0,1) from generator, float32 on
    k's device; x lies in [k/256, (k+1)/256)."""
    if k.is_floating_point() or k.is_complex():
        raise TypeError(f"dequantize expects integer pixels (uint8), got {k.dtype}")
    u = torch.rand(k.shape, generator=generator, device=k.device, dtype=torch.float32)
    # u < 1, but 255 + u can round up to 256 in float32 (its spacing there is 2^-16); with u
    # scaled by 1 - 2^-16, k + u <= k + 1 - 2^-16 stays below k + 1. Dividing by 256 is exact.
    return (k.to(torch.float32) + u * (1 - 2**-16)) / 256


def to_unit(k: torch.Tensor) -> torch.Tensor:
    """Pixels k -> k/256 as float32, no noise (Parzen evaluation, algorithms.md §8)."""
    return k.to(torch.float32) / 256


def from_unit(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Model space -> uint8 pixels floor(x*256) clipped to 0..255 (inverse of algorithms.md §1's map);
    NaN maps to 0. Tensors stay tensors (same device), arrays stay arrays."""
    if isinstance(x, torch.Tensor):
        x = x if x.is_floating_point() else x.float()
        return torch.nan_to_num(x * 256, nan=0.0).floor().clamp(0, 255).to(torch.uint8)
    x = np.nan_to_num(np.asarray(x, np.float64) * 256, nan=0.0)
    return np.clip(np.floor(x), 0, 255).astype(np.uint8)


def to_model_space(raw: torch.Tensor | np.ndarray,
                   generator: torch.Generator | None) -> torch.Tensor:
    """Flat model-space batch (B, d) for training and likelihoods (algorithms.md §1): uint8 pixels
    dequantised afresh with ``generator``, continuous (toy) points as they are."""
    raw = torch.as_tensor(raw)
    x = raw.float() if raw.is_floating_point() else dequantize(raw, generator)
    return x.reshape(len(raw), -1)


def parzen_space(raw: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Data as the Parzen estimator sees it (algorithms.md §8), flat (N, d): pixels k -> k/256 without
    noise, continuous points as they are."""
    raw = torch.as_tensor(raw)
    x = raw.float() if raw.is_floating_point() else to_unit(raw)
    return x.reshape(len(raw), -1)
