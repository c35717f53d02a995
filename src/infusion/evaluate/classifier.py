"""The project's own classifiers of MNIST-format images (the ``mnist-cnn`` and ``fashion-cnn``
feature extractors of :mod:`infusion.evaluate.metrics`): a small CNN trained deterministically
from a seed on the data set's 50,000 training images and cached under ``<cache>/classifiers/``
with a sha256 record (test accuracy ≥ 99% on MNIST, about 91% on Fashion-MNIST). It is trained
here, not downloaded, because no pretrained classifier of either ships with a package we may
depend on.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._logging import bar_disable
from ..data import cache_dir, load_fashion, load_mnist, to_unit
from ..io import atomic_write, sha256

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierSettings:
    """Everything that determines a trained classifier (it is part of its cache name)."""

    data: str = "mnist"  # the data set it reads: "mnist" or "fashion" (LOADERS)
    channels: tuple[int, int] = (16, 32)
    hidden: int = 128
    epochs: int = 4
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0
    version: int = 1

    def cache_name(self) -> str:
        c1, c2 = self.channels
        return (f"{self.data}-cnn-v{self.version}-c{c1}x{c2}-h{self.hidden}-e{self.epochs}"
                f"-b{self.batch_size}-lr{self.lr:g}-s{self.seed}.pt")


# The data sets a classifier can be trained on: their split loaders and names.
LOADERS = {"mnist": (load_mnist, "MNIST"), "fashion": (load_fashion, "Fashion-MNIST")}


class MnistCNN(nn.Module):
    """Two 5×5 conv + max-pool blocks, a hidden layer (the features), a 10-way head."""

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 128) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.fc = nn.Linear(c2 * 7 * 7, hidden)
        self.head = nn.Linear(hidden, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, 28, 28) -> (N, hidden)
        h = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        h = F.max_pool2d(torch.relu(self.conv2(h)), 2)
        return torch.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(settings: ClassifierSettings = ClassifierSettings(),
                     train: tuple[torch.Tensor, torch.Tensor] | None = None,
                     test: tuple[torch.Tensor, torch.Tensor] | None = None,
                     progress: bool = False) -> tuple[MnistCNN, float]:
    """Train :class:`MnistCNN` deterministically from ``settings.seed``; return it and its test
    accuracy. Data default to the train/test splits of ``settings.data``, images as k/256
    (algorithms.md §1).

    Adam with a linearly decaying learning rate; weight init and minibatch order come from
    explicit generators, and deterministic algorithms are switched on for the duration.
    """
    load, _ = LOADERS[settings.data]
    if train is None:
        s = load("train")
        train = (to_unit(torch.from_numpy(s.images)), torch.from_numpy(s.labels))
    if test is None:
        s = load("test")
        test = (to_unit(torch.from_numpy(s.images)), torch.from_numpy(s.labels))
    x, y = train
    was_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            net = MnistCNN(settings.channels, settings.hidden)
        order_g = torch.Generator().manual_seed(settings.seed + 1)
        opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
        per_epoch = -(-len(x) // settings.batch_size)
        total = settings.epochs * per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / max(total, 1))
        bar = tqdm(total=total, desc=f"training the {LOADERS[settings.data][1]} classifier", leave=False,
                   dynamic_ncols=True, disable=bar_disable(progress))
        net.train()
        for _ in range(settings.epochs):
            order = torch.randperm(len(x), generator=order_g)
            for lo in range(0, len(x), settings.batch_size):
                idx = order[lo: lo + settings.batch_size]
                loss = F.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
        bar.close()
    finally:
        torch.use_deterministic_algorithms(was_det)
    net.eval()
    return net, accuracy(net, *test)


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` that ``net`` classifies as ``y``."""
    net.eval()
    hits = sum(int((net(x[i: i + batch_size]).argmax(1) == y[i: i + batch_size]).sum())
               for i in range(0, len(x), batch_size))
    return hits / max(len(x), 1)


def load_or_train_classifier(settings: ClassifierSettings = ClassifierSettings(), *,
                             cache: str | Path | None = None, progress: bool = False
                             ) -> tuple[MnistCNN, dict]:
    """The cached classifier for ``settings`` (trained and cached on first use, which is
    logged, with a progress bar if ``progress``) and its record.

    The cache file ``<cache>/classifiers/<settings.cache_name()>`` is verified against its
    ``.sha256`` record on every load; a mismatch is an error (delete the file to retrain).
    """
    folder = (Path(cache) if cache is not None else cache_dir()) / "classifiers"
    path = folder / settings.cache_name()
    record = path.with_name(path.name + ".sha256")
    if path.exists():
        if not record.exists() or record.read_text().split()[0] != sha256(path):
            raise RuntimeError(f"classifier cache {path} fails its sha256 check ({record}); "
                               "delete both files to train it again")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        net = MnistCNN(tuple(ckpt["settings"]["channels"]), ckpt["settings"]["hidden"])
        net.load_state_dict(ckpt["model"])
        return net.eval(), {k: v for k, v in ckpt.items() if k != "model"} | {"path": str(path)}
    logger.info(f"training the {LOADERS[settings.data][1]} classifier for the sample-quality "
                f"metrics (once; cached at {path})")
    t0 = time.time()
    net, acc = train_classifier(settings, progress=progress)
    info = {"settings": json.loads(json.dumps(asdict(settings))), "test_accuracy": acc,
            "train_seconds": time.time() - t0, "torch": str(torch.__version__)}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save({"model": net.state_dict(), **info}, tmp))
    atomic_write(record, lambda tmp: tmp.write_text(f"{sha256(path)}  {path.name}\n"))
    logger.info(f"classifier test accuracy {acc:.4f} ({info['train_seconds']:.0f} s)")
    return net, info | {"path": str(path)}

