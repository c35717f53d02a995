"""The Inception-v3 of the FID / KID / Inception-score literature for the ``inception`` feature
extractor of :mod:`infusion.evaluate.metrics`.

Two sources, chosen by what ``path`` holds:

* no path, or a weights file (``weights-inception-2015-12-05-6726825d.pth``): the network of
  `torch-fidelity <https://github.com/toshas/torch-fidelity>`_, the TensorFlow 2015-12-05 graph
  that FID was defined on, ported to PyTorch and checked there bit for bit against TensorFlow;
  ``pip install 'infusion-training[inception]'``. Without a path torch-fidelity downloads its
  weights once (its own cache); with one nothing is downloaded. torch-fidelity unpickles that
  file, so it is checked first against the weights' published sha256 prefix (``6726825d``).
  We do not reimplement the network: torch-fidelity is maintained and verified, and a port of
  our own could only be checked against it.
* a TorchScript archive (e.g. exported with ``torch.jit.script``): run as it is by
  :class:`infusion.evaluate.metrics.TorchScriptExtractor`, resized to 299×299 and grey repeated to RGB.

Features are the 2048-d pool features (FID, KID, precision / recall); logits are the 1008
"unbiased" logits the Inception score uses.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from ..data.space import from_unit
from ..errors import InputError
from ..io import path_kind, regular_file, sha256
from .features import TorchScriptExtractor, batched

WEIGHTS_SHA256_PREFIX = "6726825d"  # weights-inception-2015-12-05-6726825d.pth (torch hub name)
_MISSING = ("the inception feature extractor needs torch-fidelity (pip install "
            "'infusion-training[inception]'; it needs torchvision), or pass a TorchScript "
            "Inception file as --extractor-path / path=")


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with a ``code/`` folder), not a state
    dict saved by ``torch.save`` (a zip without one, or a legacy pickle)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.split("/")[1:2] == ["code"] for name in z.namelist())


class FidelityInception:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` as a feature extractor: images (N, C,
    H, W) in [0, 1] become the uint8 pixels it takes (floor(x·256), algorithms.md §1), grey
    images are repeated to RGB, and it resizes to 299×299 itself, as TensorFlow did."""

    def __init__(self, path: str | Path | None = None, batch_size: int = 100) -> None:
        self.info: dict = {"source": "torch-fidelity FeatureExtractorInceptionV3"}
        if path is not None:  # checked before torch-fidelity unpickles it
            digest = sha256(path)
            if not digest.startswith(WEIGHTS_SHA256_PREFIX):
                raise InputError(
                    f"{str(path)!r} (sha256 {digest[:16]}…) is not torch-fidelity's Inception "
                    f"weights file (sha256 {WEIGHTS_SHA256_PREFIX}…); pass that file, or a "
                    "TorchScript Inception")
            self.info.update(path=str(path), sha256=digest)
        try:
            # here: torch-fidelity is the optional extra [inception]
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as e:
            raise InputError(f"{_MISSING} ({e})") from None
        self.module = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"],
            feature_extractor_weights_path=None if path is None else str(path))
        self.name, self.batch_size = "inception", batch_size

    def _run(self, images: torch.Tensor, part: int) -> torch.Tensor:
        def one(x: torch.Tensor) -> torch.Tensor:
            pixels = from_unit(x)
            if pixels.shape[1] == 1:
                pixels = pixels.repeat(1, 3, 1, 1)
            return self.module(pixels)[part].float()

        return batched(one, images, self.batch_size)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(images, 0)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(images, 1)


def inception(path: str | Path | None = None, **kwargs):
    """The ``inception`` plug-in: torch-fidelity's network (no path, or its weights file) or a
    TorchScript Inception (``path`` to an archive)."""
    if path is not None and path_kind(path) != "nothing":
        regular_file(path, "inception weights")  # a FIFO or a device is never opened
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"inception weights {str(path)!r}: no such file")
    if path is not None and is_torchscript(path):
        return TorchScriptExtractor(path, name="inception", size=(299, 299), channels=3, **kwargs)
    return FidelityInception(path, **kwargs)
