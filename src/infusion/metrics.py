"""Sample quality without downloads: feature extractors, Fréchet distance, classifier score,
class coverage and the memorisation check (nearest training neighbours, paper Fig. 4).

Feature extractors are plug-ins: anything with ``features(images) -> (N, F)`` and
``logits(images) -> (N, classes)`` (images (N, C, H, W) in [0, 1]) can be registered under a
name with :func:`register_extractor`. Built in:

* ``mnist-cnn`` — a small MNIST CNN the project trains itself, deterministically from a seed,
  cached under ``<cache>/classifiers/`` with a sha256 record (≥ 99% test accuracy);
* ``torchscript`` / ``inception`` — a user-supplied TorchScript feature model (``path=``),
  e.g. an Inception-v3 exported elsewhere with ``torch.jit.script``; its forward returns the
  features, or a tuple ``(features, logits)``. ``inception`` resizes to 299×299 and repeats grey
  images to 3 channels first. Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import cache_dir, load_mnist, to_unit
from .errors import InputError
from .io import atomic_write, sha256


# ----------------------------------------------------------------------------- plug-in protocol
@runtime_checkable
class FeatureExtractor(Protocol):
    """What the sample-quality metrics need from a network (images in [0, 1], (N, C, H, W))."""

    name: str

    def features(self, images: torch.Tensor) -> torch.Tensor: ...  # (N, F)

    def logits(self, images: torch.Tensor) -> torch.Tensor: ...  # (N, classes)


_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str, factory: Callable[..., FeatureExtractor]) -> None:
    """Make ``get_extractor(name, **kwargs)`` call ``factory(**kwargs)``."""
    _REGISTRY[name] = factory


def extractor_names() -> list[str]:
    return sorted(_REGISTRY)


def get_extractor(name: str, **kwargs) -> FeatureExtractor:
    """The feature extractor registered as ``name`` (see the module docstring)."""
    if name not in _REGISTRY:
        raise InputError(f"unknown feature extractor {name!r}; available: {', '.join(extractor_names())}")
    return _REGISTRY[name](**kwargs)


# ----------------------------------------------------------------------------- MNIST classifier
@dataclass(frozen=True)
class ClassifierSettings:
    """Everything that determines the trained MNIST classifier (it is part of its cache name)."""

    channels: tuple[int, int] = (16, 32)
    hidden: int = 128
    epochs: int = 4
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0
    version: int = 1

    def cache_name(self) -> str:
        c1, c2 = self.channels
        return (f"mnist-cnn-v{self.version}-c{c1}x{c2}-h{self.hidden}-e{self.epochs}"
                f"-b{self.batch_size}-lr{self.lr:g}-s{self.seed}.pt")


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
    accuracy. Data default to the MNIST train/test splits, images as k/256 (algorithms.md §1).

    Adam with a linearly decaying learning rate; weight init and minibatch order come from
    explicit generators, and deterministic algorithms are switched on for the duration.
    """
    if train is None:
        s = load_mnist("train")
        train = (to_unit(torch.from_numpy(s.images)), torch.from_numpy(s.labels))
    if test is None:
        s = load_mnist("test")
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
        bar = _tqdm(total, "training the MNIST classifier", progress)
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
                if bar is not None:
                    bar.update(1)
        if bar is not None:
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
                             cache: str | Path | None = None, progress: bool = False,
                             log: Callable[[str], object] = print) -> tuple[MnistCNN, dict]:
    """The cached classifier for ``settings`` (trained and cached on first use) and its record.

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
    log(f"training the MNIST classifier for the sample-quality metrics (once; cached at {path})")
    t0 = time.time()
    net, acc = train_classifier(settings, progress=progress)
    info = {"settings": json.loads(json.dumps(asdict(settings))), "test_accuracy": acc,
            "train_seconds": time.time() - t0, "torch": str(torch.__version__)}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save({"model": net.state_dict(), **info}, tmp))
    atomic_write(record, lambda tmp: tmp.write_text(f"{sha256(path)}  {path.name}\n"))
    log(f"classifier test accuracy {acc:.4f} ({info['train_seconds']:.0f} s)")
    return net, info | {"path": str(path)}


class ModuleExtractor:
    """A feature extractor from a module with ``features(x)`` and a ``head`` (e.g. MnistCNN)."""

    def __init__(self, net: nn.Module, name: str, info: dict | None = None,
                 batch_size: int = 1000) -> None:
        self.net, self.name, self.info, self.batch_size = net.eval(), name, info or {}, batch_size

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return _batched(self.net.features, images, self.batch_size)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return _batched(self.net, images, self.batch_size)


def mnist_cnn(settings: ClassifierSettings = ClassifierSettings(), cache: str | Path | None = None,
              progress: bool = False, log: Callable[[str], object] = print) -> ModuleExtractor:
    """The ``mnist-cnn`` plug-in: the project's own cached MNIST classifier."""
    net, info = load_or_train_classifier(settings, cache=cache, progress=progress, log=log)
    return ModuleExtractor(net, "mnist-cnn", info)


class TorchScriptExtractor:
    """A user-supplied TorchScript feature model: the ``torchscript`` and ``inception``
    plug-ins. (``torch.export`` ``.pt2`` files are refused: they are unpickled.)

    ``forward(images)`` must return features (N, F), or a tuple ``(features, logits)``;
    ``size`` resizes (bilinear) and ``channels`` repeats grey images before the call.
    """

    def __init__(self, path: str | Path | None = None, name: str = "torchscript",
                 size: tuple[int, int] | None = None, channels: int | None = None,
                 batch_size: int = 100) -> None:
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
        self.module = torch.jit.load(str(path), map_location="cpu").eval()
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
        return _batched(lambda x: self._run(x, 0), images, self.batch_size)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return _batched(lambda x: self._run(x, 1), images, self.batch_size)


register_extractor("mnist-cnn", mnist_cnn)
register_extractor("torchscript", TorchScriptExtractor)
register_extractor("inception", lambda path=None, **kw: TorchScriptExtractor(
    path, name="inception", size=(299, 299), channels=3, **kw))


def _batched(fn, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    images = torch.as_tensor(images, dtype=torch.float32)
    return torch.cat([fn(images[i: i + batch_size]) for i in range(0, len(images), batch_size)])


def _tqdm(total: int, desc: str, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------- metrics
def frechet_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F) and (M, F):
    ‖μ_a − μ_b‖² + tr Σ_a + tr Σ_b − 2 tr (Σ_a^½ Σ_b Σ_a^½)^½ (the FID formula).

    The trace of the matrix square root comes from the eigenvalues of the symmetric
    Σ_a^½ Σ_b Σ_a^½, which is stable where ``sqrtm(Σ_a Σ_b)`` is not.
    """
    a, b = (np.asarray(_np(v), np.float64) for v in (a, b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise InputError(f"frechet_distance needs two (N, F) feature sets with N >= 2, got "
                         f"{a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root_a @ cov_b @ root_a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    fd = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt
    return float(max(fd, 0.0))


def classifier_score(logits: torch.Tensor | np.ndarray, splits: int = 10) -> tuple[float, float]:
    """The Inception-score analogue exp E_x KL(p(y|x) ‖ p(y)) over ``splits`` equal parts;
    returns the mean and standard deviation across the parts (Salimans et al. 2016)."""
    logp = torch.log_softmax(torch.as_tensor(_np(logits), dtype=torch.float64), 1)
    if len(logp) < splits:
        raise InputError(f"classifier_score: {len(logp)} samples for {splits} splits")
    scores = []
    for part in torch.tensor_split(logp, splits):
        log_marg = torch.logsumexp(part, 0) - math.log(len(part))  # log p(y)
        kl = (part.exp() * (part - log_marg)).sum(1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


def class_coverage(logits: torch.Tensor | np.ndarray, confidence: float = 0.9) -> dict:
    """Histogram of predicted classes, its entropy (nats; log(classes) = uniform), the number
    of classes predicted at all, and the fraction of samples predicted with p >= ``confidence``."""
    probs = torch.softmax(torch.as_tensor(_np(logits), dtype=torch.float64), 1)
    classes = probs.shape[1]
    counts = torch.bincount(probs.argmax(1), minlength=classes)
    freq = counts.double() / max(len(probs), 1)
    nz = freq[freq > 0]
    return {"histogram": counts.tolist(), "entropy": abs(float((nz * nz.log()).sum())),
            "max_entropy": math.log(classes), "classes_covered": int((counts > 0).sum()),
            "confident_fraction": float((probs.max(1).values >= confidence).double().mean()),
            "confidence": confidence}


@torch.no_grad()
def nearest_neighbours(queries: torch.Tensor, reference: torch.Tensor, chunk: int = 1024,
                       progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance to, and index of, each query's nearest reference row.

    queries (N, d), reference (M, d); computed in (chunk × chunk) blocks as
    ‖q‖² + ‖r‖² − 2 q·r, so memory stays at a few chunk² floats. Returns ((N,), (N,)).
    """
    q = torch.as_tensor(_np(queries), dtype=torch.float32).reshape(len(queries), -1)
    r = torch.as_tensor(_np(reference), dtype=torch.float32).reshape(len(reference), -1)
    if q.shape[1] != r.shape[1]:
        raise InputError(f"nearest_neighbours: queries have {q.shape[1]} dimensions, the "
                         f"reference {r.shape[1]}")
    r_sq = r.square().sum(1)
    best = torch.full((len(q),), math.inf)
    arg = torch.zeros(len(q), dtype=torch.long)
    blocks = [(i, j) for i in range(0, len(q), chunk) for j in range(0, len(r), chunk)]
    bar = _tqdm(len(blocks), "nearest neighbours", progress)
    for i, j in blocks:
        qi, rj = q[i: i + chunk], r[j: j + chunk]
        d2 = qi.square().sum(1, keepdim=True) + r_sq[j: j + chunk] - 2 * qi @ rj.T
        val, idx = d2.min(1)
        better = val < best[i: i + chunk]
        best[i: i + chunk] = torch.where(better, val, best[i: i + chunk])
        arg[i: i + chunk] = torch.where(better, idx + j, arg[i: i + chunk])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return best.clamp_min(0).sqrt(), arg


def memorisation(samples: torch.Tensor, train: torch.Tensor, test: torch.Tensor,
                 out_dir: str | Path | None = None, chunk: int = 1024,
                 progress: bool = False) -> dict:
    """Memorisation check (paper Fig. 4): each sample's nearest training image (L2), compared
    with the test images' distances to the training set.

    All inputs are (N, ...) in model space. Returns distance summaries and the fraction of
    samples closer to the training set than the 1st percentile of test distances; with
    ``out_dir``, writes ``nearest_neighbours.png`` (samples, last column the nearest training
    image of the next-to-last column) and ``distances.png`` (both histograms).
    """
    s_dist, s_idx = nearest_neighbours(samples, train, chunk, progress)
    t_dist, _ = nearest_neighbours(test, train, chunk, progress)
    q01 = float(torch.quantile(t_dist, 0.01))
    out = {"n_samples": len(samples), "n_test": len(test), "n_train": len(train),
           "sample_to_train": _summary(s_dist), "test_to_train": _summary(t_dist),
           "fraction_below_test_1st_percentile": float((s_dist < q01).double().mean()),
           "test_1st_percentile": q01}
    if out_dir is not None and samples.ndim == 4:
        out_dir = Path(out_dir)
        out["figures"] = [str(save_neighbour_figure(out_dir / "nearest_neighbours.png", samples,
                                                    train, s_idx)),
                          str(save_distance_histogram(out_dir / "distances.png", s_dist, t_dist))]
    return out


def _summary(d: torch.Tensor) -> dict:
    d = d.double()
    qs = torch.quantile(d, torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64))
    return {"mean": float(d.mean()), "std": float(d.std()) if len(d) > 1 else 0.0,
            "min": float(d.min()), "q01": float(qs[0]), "median": float(qs[1]),
            "q99": float(qs[2])}


def save_neighbour_figure(path: str | Path, samples: torch.Tensor, train: torch.Tensor,
                          index: torch.Tensor, rows: int = 10, cols: int = 10) -> Path:
    """Paper Fig. 4 layout: ``rows × cols`` samples, then a column with the nearest training
    image of the sample beside it (the next-to-last column)."""
    from .figures import make_grid, save_png

    n = min(len(samples), rows * cols)
    rows = max(1, n // cols) if n >= cols else 1
    cols = min(cols, n)
    tiles = []
    for r in range(rows):
        tiles += [samples[r * cols + c] for c in range(cols)]
        tiles.append(train[index[r * cols + cols - 1]])
    grid = make_grid(torch.stack([torch.as_tensor(t, dtype=torch.float32) for t in tiles]),
                     nrow=cols + 1)
    return save_png(path, grid, scale=2)


def save_distance_histogram(path: str | Path, sample_dist: torch.Tensor,
                            test_dist: torch.Tensor) -> Path:
    """Histograms of sample-to-train and test-to-train nearest-neighbour distances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import _save_fig

    fig, ax = plt.subplots(figsize=(5, 3.5))
    hi = float(max(sample_dist.max(), test_dist.max()))
    bins = np.linspace(0, hi * 1.02 + 1e-9, 50)
    ax.hist(_np(test_dist), bins=bins, alpha=0.6, density=True, label="test → train")
    ax.hist(_np(sample_dist), bins=bins, alpha=0.6, density=True, label="sample → train")
    ax.set(xlabel="L2 distance to the nearest training image", ylabel="density")
    ax.legend()
    fig.tight_layout()
    return _save_fig(fig, path)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def sample_quality(extractor: FeatureExtractor, samples: torch.Tensor, reference: torch.Tensor,
                   metrics: Iterable[str] = ("fid", "score", "coverage"), splits: int = 10) -> dict:
    """Classifier metrics of ``samples`` against ``reference`` images (both (N, C, H, W) in
    [0, 1]): ``fid`` (Fréchet distance on features), ``score`` (classifier score) and
    ``coverage`` (:func:`class_coverage`)."""
    metrics, out = set(metrics), {}
    if "fid" in metrics:
        out["fid"] = {"value": frechet_distance(extractor.features(samples),
                                                extractor.features(reference)),
                      "n_samples": len(samples), "n_reference": len(reference)}
    if {"score", "coverage"} & metrics:
        logits = extractor.logits(samples)
        if "score" in metrics:
            mean, std = classifier_score(logits, min(splits, len(samples)))
            out["score"] = {"value": mean, "std": std, "splits": min(splits, len(samples))}
        if "coverage" in metrics:
            out["coverage"] = class_coverage(logits)
    return out
