"""Feature extractors, the networks sample-quality metrics read images with: the protocol a
plug-in satisfies, a module wrapper (the project's MNIST classifier) and user-supplied
TorchScript models. The registry of named extractors is :mod:`infusion.evaluate.metrics`."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..io import path_kind, regular_file, sha256


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the sample-quality metrics need from a network (images in [0, 1], (N, C, H, W))."""

    name: str

    def features(self, images: torch.Tensor) -> torch.Tensor: ...  # (N, F)

    def logits(self, images: torch.Tensor) -> torch.Tensor: ...  # (N, classes)


class ModuleExtractor:
    """A feature extractor from a module with ``features(x)`` and a ``head`` (e.g. MnistCNN)."""

    def __init__(self, net: nn.Module, name: str, info: dict | None = None,
                 batch_size: int = 1000) -> None:
        self.net, self.name, self.info, self.batch_size = net.eval(), name, info or {}, batch_size

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return batched(self.net.features, images, self.batch_size)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return batched(self.net, images, self.batch_size)


class TorchScriptExtractor:
    """A user-supplied TorchScript feature model: the ``torchscript`` and ``inception``
    plug-ins. (``torch.export`` ``.pt2`` files are refused: they are unpickled.)

    ``forward(images)`` must return features (N, F), or a tuple ``(features, logits)``;
    ``size`` resizes (bilinear) and ``channels`` repeats grey images before the call.
    """

    def __init__(self, path: str | Path | None = None, name: str = "torchscript",
                 size: tuple[int, int] | None = None, channels: int | None = None,
                 batch_size: int = 100) -> None:
        if path is not None and path_kind(path) != "nothing":
            regular_file(path, f"feature extractor {name!r}")  # no FIFO or device opened
        if path is None or not Path(path).is_file():
            raise FileNotFoundError(
                f"feature extractor {name!r} needs a TorchScript model file (path=...), got "
                f"{str(path)!r}: export one elsewhere, e.g. Inception-v3 pool features and "
                "logits with torch.jit.script, and pass its path (nothing is downloaded)")
        if str(path).endswith(".pt2"):
            # torch.export.load unpickles with weights_only=False: a crafted file runs code
            raise InputError(f"feature extractor {str(path)!r}: .pt2 (torch.export) programs are "
                             "loaded with pickle, which can run code; save the model with "
                             "torch.jit.save (TorchScript) instead")
        # TorchScript archives hold TorchScript code and tensors, not pickled Python objects
        try:
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as e:  # not a zip, a damaged one, or no TorchScript in it
            reason = str(e).split(". ")[0].splitlines()[0]
            raise InputError(f"feature extractor {str(path)!r} is not a readable TorchScript "
                             f"model file ({reason})") from None
        self.name, self.size, self.channels, self.batch_size = name, size, channels, batch_size
        self.info = {"path": str(path), "sha256": sha256(Path(path))}

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels and x.shape[1] != self.channels:
            x = x.repeat(1, self.channels // x.shape[1], 1, 1)
        if self.size and tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x

    def _run(self, x: torch.Tensor, part: int) -> torch.Tensor:
        out = self.module(self._prepare(x))
        if isinstance(out, (tuple, list)):
            return out[part]
        if part == 1:
            raise InputError(f"the TorchScript model {self.info['path']} returns only features; "
                             "classifier metrics need (features, logits)")
        return out

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return batched(lambda x: self._run(x, 0), images, self.batch_size)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return batched(lambda x: self._run(x, 1), images, self.batch_size)


def batched(fn, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    images = torch.as_tensor(images, dtype=torch.float32)
    return torch.cat([fn(images[i: i + batch_size]) for i in range(0, len(images), batch_size)])
