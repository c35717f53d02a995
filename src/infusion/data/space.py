"""Raw data ↔ model space (algorithms.md §1, §8): the only place where pixel scaling lives.

Images are stored as uint8 pixels k in {0..255}; the model sees x = (k + u)/256 with fresh
u ~ U(0, 1) (:func:`dequantize`, :func:`to_model_space`), and the Parzen estimator, the
classifier metrics and the figures see x = k/256 without noise (:func:`to_unit`,
:func:`parzen_space`). Continuous data (the 2-D toys) are used as they are. :func:`from_unit`
maps model space back to pixels.

A user's float data (:mod:`.arrays`) reach model space through an affine map recorded in the
run's config, x = raw·scale + offset (``data.scale``, ``data.offset``): :func:`fit_affine`
chooses it from the training set, :func:`apply_affine` applies it and :func:`invert_affine`
takes model-space outputs back to the data's own scale.
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


# The model's mean is a sigmoid: a user's float data are mapped into [0.05, 0.95], as the toys.
AFFINE_RANGE = (0.05, 0.95)


def fit_affine(train: np.ndarray, per_dimension: bool
               ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The map x = raw·scale + offset that takes the training set's min/max onto [0.05, 0.95]
    (:data:`AFFINE_RANGE`): per dimension (vectors), or one for every value (images, so that
    their pixels keep their relations). A constant dimension is shifted to 0.5, unscaled.

    Min/max rather than quantiles: every training value then lies inside the sigmoid mean's
    reach, with a margin of 0.05 for validation and test values a little beyond the training
    range; a quantile map would put the outliers outside (0, 1), where no mean can follow."""
    lo, hi = AFFINE_RANGE
    flat = np.asarray(train, np.float64).reshape(len(train), -1)
    mn, mx = (flat.min(0), flat.max(0)) if per_dimension else (flat.min(keepdims=True),
                                                               flat.max(keepdims=True))
    with np.errstate(divide="ignore", over="ignore"):
        scale = (hi - lo) / (mx - mn)
    ok = np.isfinite(scale) & (mx > mn)
    scale = np.where(ok, scale, 1.0)
    offset = np.where(ok, lo - mn * scale, 0.5 - mn)
    return tuple(map(float, scale)), tuple(map(float, offset))


def _affine(x, scale, offset, inverse: bool):
    d = int(np.prod(x.shape[1:]))
    if len(scale) not in (1, d) or len(offset) != len(scale):
        raise ValueError(f"an affine map with {len(scale)} scales and {len(offset)} offsets "
                         f"does not fit data of {d} values per example")
    if isinstance(x, torch.Tensor):
        s = torch.tensor(scale, dtype=torch.float64, device=x.device)
        o = torch.tensor(offset, dtype=torch.float64, device=x.device)
        flat = x.reshape(len(x), -1).double()
        out = (flat - o) / s if inverse else flat * s + o
        return out.float().reshape(x.shape)
    s, o = np.asarray(scale, np.float64), np.asarray(offset, np.float64)
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    out = (flat - o) / s if inverse else flat * s + o
    return out.astype(np.float32).reshape(np.shape(x))


def apply_affine(raw, scale: tuple[float, ...], offset: tuple[float, ...]):
    """Raw float data (N, ...) -> model space raw·scale + offset, float32, shape kept; per
    dimension (``len(scale)`` = values per example) or one map for all (length 1); an empty
    map is the identity. Tensors stay tensors, arrays stay arrays."""
    return _float32(raw) if not scale else _affine(raw, scale, offset, inverse=False)


def invert_affine(x, scale: tuple[float, ...], offset: tuple[float, ...]):
    """Model space (N, ...) -> the data's own scale, (x - offset)/scale (inverse of
    :func:`apply_affine`), float32, shape kept; identity for an empty map."""
    return _float32(x) if not scale else _affine(x, scale, offset, inverse=True)


def affine_log_det(scale: tuple[float, ...], d: int) -> float:
    """log |det| of the affine map into model space for d values per example: the nats to add
    to a model-space log-density to express it in the data's own units (0 for no map)."""
    if not scale:
        return 0.0
    logs = np.log(np.abs(np.asarray(scale, np.float64)))
    return float(logs.sum() if len(scale) == d else d * logs[0])


def _float32(x):
    """float32 (no copy if it already is); tensors stay tensors."""
    if isinstance(x, torch.Tensor):
        return x.float()
    return np.asarray(x, np.float32)
