"""Minibatches: index tensors over a split, shuffled by an explicit generator."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def batches(n: int, batch_size: int, generator: torch.Generator | None = None,
            drop_small: bool = True) -> Iterator[torch.Tensor]:
    """Index tensors of minibatches over range(n), shuffled when a generator is given.

    A last batch of fewer than 2 examples is dropped (batch norm needs two).
    """
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for lo in range(0, n, batch_size):
        idx = order[lo: lo + batch_size]
        if len(idx) >= 2 or not drop_small:
            yield idx
