"""2-D toy data sets (algorithms.md §1, Variational Walkback's toys): spiral, circle, eight Gaussians.

Points lie in [0.05, 0.95]^2 (the model's mean is a sigmoid). A configuration's three splits
are drawn from seeds ``seed`` (train, ``toy_size`` points), ``seed + 1`` (valid) and
``seed + 2`` (test), the latter two with ``max(2, toy_size // 5)`` points.
"""

from __future__ import annotations

import numpy as np

from .cache import SPLITS, DataError, Split

TOYS = ("spiral", "circle", "gaussians")


def toy(name: str, n: int, seed: int) -> Split:
    """2-D toy data (algorithms.md §1, Variational Walkback's toys): n float32 points in
    [0.05, 0.95]^2 (the model's mean is a sigmoid), drawn from np.random.default_rng(seed)."""
    if name not in TOYS:
        raise DataError(f"unknown toy data set {name!r}: expected one of {', '.join(TOYS)}")
    if int(n) != n or n < 1:
        raise DataError(f"toy data set size must be a positive integer, got {n!r}")
    rng = np.random.default_rng(seed)
    if name == "spiral":  # two turns, uniform along the arc length, radius up to 0.9
        t = np.sqrt(rng.uniform(size=n)) * 4 * np.pi
        p = 0.9 * t[:, None] / (4 * np.pi) * np.stack([np.cos(t), np.sin(t)], 1)
        p += 0.02 * rng.standard_normal((n, 2))
    elif name == "circle":
        t = rng.uniform(0, 2 * np.pi, n)
        p = 0.8 * np.stack([np.cos(t), np.sin(t)], 1) + 0.02 * rng.standard_normal((n, 2))
    else:  # 8 Gaussians of std 0.05 on a ring of radius 0.7
        t = rng.integers(0, 8, n) * (np.pi / 4)
        p = 0.7 * np.stack([np.cos(t), np.sin(t)], 1) + 0.05 * rng.standard_normal((n, 2))
    # A fixed map of the box [-1, 1]^2 onto [0.05, 0.95]^2; clipping only touches rare tails.
    return Split(np.clip(0.5 + 0.45 * p, 0.05, 0.95).astype(np.float32), None)


def toy_split(name: str, split: str, size: int, seed: int) -> Split:
    """Split ``split`` of a toy configuration: train ``toy(name, size, seed)``; valid and test
    ``max(2, size // 5)`` points from seeds ``seed + 1`` and ``seed + 2``."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if split == "train":
        return toy(name, size, seed)
    return toy(name, max(2, size // 5), seed + SPLITS.index(split))
