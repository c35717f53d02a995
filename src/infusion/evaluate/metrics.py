"""Sample quality: feature extractors, Fréchet distance, KID, precision / recall, classifier
score, class coverage and the memorisation check (nearest training neighbours, paper Fig. 4;
its figures are drawn by :mod:`infusion.figures`). Nothing is downloaded, except the Inception
weights torch-fidelity fetches when ``inception`` is given no weights file.

Feature extractors are plug-ins: anything with ``features(images) -> (N, F)`` and
``logits(images) -> (N, classes)`` (images (N, C, H, W) in [0, 1]) can be registered under a
name with :func:`register_extractor`. Built in:

* ``mnist-cnn`` — a small MNIST CNN the project trains itself (:mod:`infusion.evaluate.classifier`),
  deterministically from a seed, cached with a sha256 record (≥ 99% test accuracy);
* ``fashion-cnn`` — the same CNN trained on Fashion-MNIST (about 91% test accuracy);
* ``torchscript`` — a user-supplied TorchScript feature model (``path=``); its forward returns
  the features, or a tuple ``(features, logits)``;
* ``inception`` — the Inception-v3 of FID and the Inception score (:mod:`infusion.evaluate.inception`):
  torch-fidelity's network (an optional extra; ``path=`` its weights file, else it downloads
  them once), or a TorchScript Inception (``path=`` an archive), resized to 299×299 with grey
  images repeated to 3 channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .._logging import bar_disable
from ..errors import InputError
from ..figures import save_distance_histogram, save_neighbour_figure
from .classifier import ClassifierSettings, load_or_train_classifier
from .features import (  # noqa: F401  (re-exported: the plug-in API)
    FeatureExtractor,
    ModuleExtractor,
    TorchScriptExtractor,
    batched,
)
from .inception import inception

# ----------------------------------------------------------------------------- plug-in registry
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


def mnist_cnn(settings: ClassifierSettings | None = None, cache: str | Path | None = None,
              progress: bool = False) -> ModuleExtractor:
    """The ``mnist-cnn`` plug-in: the project's own cached MNIST classifier (``fashion-cnn``
    with ``settings.data = "fashion"``)."""
    settings = settings or ClassifierSettings()
    net, info = load_or_train_classifier(settings, cache=cache, progress=progress)
    return ModuleExtractor(net, f"{settings.data}-cnn", info)


def fashion_cnn(settings: ClassifierSettings | None = None, **kwargs) -> ModuleExtractor:
    """The ``fashion-cnn`` plug-in: the same CNN, trained on Fashion-MNIST."""
    return mnist_cnn(settings or ClassifierSettings(data="fashion"), **kwargs)


# The project's own classifier of each data set it has one for; the default extractor of an
# evaluation (``mnist-cnn`` for any other data set: its metrics are skipped for other shapes).
OWN_EXTRACTORS = {"mnist": "mnist-cnn", "fashion": "fashion-cnn"}


def default_extractor(data_name: str) -> str:
    """The feature extractor an evaluation of ``data.name`` uses unless told otherwise."""
    return OWN_EXTRACTORS.get(data_name, "mnist-cnn")


register_extractor("mnist-cnn", mnist_cnn)
register_extractor("fashion-cnn", fashion_cnn)
register_extractor("torchscript", TorchScriptExtractor)


register_extractor("inception", inception)


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


def kernel_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray,
                    subsets: int = 100, subset_size: int = 1000, seed: int = 0
                    ) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): the unbiased MMD² between feature sets (N, F) and (M, F)
    under the kernel k(x, y) = (xᵀy/F + 1)³, averaged over ``subsets`` random subsets of
    min(``subset_size``, N, M) rows of each (drawn from ``seed``); returns the mean and the
    standard deviation over subsets. Checked against torchmetrics' KernelInceptionDistance."""
    a, b = (torch.as_tensor(_np(v), dtype=torch.float64) for v in (a, b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise InputError(f"kernel_distance needs two (N, F) feature sets with N >= 2, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    m, f = min(subset_size, len(a), len(b)), a.shape[1]
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=g)[:m]]
        y = b[torch.randperm(len(b), generator=g)[:m]]
        kxx, kyy, kxy = ((p @ q.T / f + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        off = m * (m - 1)
        values.append(float((kxx.sum() - kxx.diagonal().sum()) / off
                            + (kyy.sum() - kyy.diagonal().sum()) / off - 2 * kxy.mean()))
    return float(np.mean(values)), float(np.std(values))


def precision_recall(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray,
                     k: int = 3, chunk: int = 1000) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the
    union of balls around its points reaching their k-th nearest neighbour in the same set;
    precision is the fraction of ``fake`` inside the real manifold, recall the fraction of
    ``real`` inside the fake one."""
    real, fake = (torch.as_tensor(_np(v), dtype=torch.float64) for v in (real, fake))
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1] or min(
            len(real), len(fake)) <= k:
        raise InputError(f"precision_recall needs two (N, F) feature sets with N > k={k}, got "
                         f"{tuple(real.shape)} and {tuple(fake.shape)}")

    def blocks(x):  # rows in blocks, so that memory stays at chunk × N distances
        return (x[i: i + chunk] for i in range(0, len(x), chunk))

    def radii(x):  # distance to the k-th neighbour, the point itself excluded
        return torch.cat([torch.cdist(q, x).kthvalue(k + 1, dim=1).values for q in blocks(x)])

    def inside(points, centres, r):
        hits = torch.cat([(torch.cdist(q, centres) <= r[None]).any(1) for q in blocks(points)])
        return float(hits.double().mean())

    return {"precision": inside(fake, real, radii(real)),
            "recall": inside(real, fake, radii(fake)), "k": k}


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
    bar = tqdm(total=len(blocks), desc="nearest neighbours", leave=False, dynamic_ncols=True,
               disable=bar_disable(progress))
    for i, j in blocks:
        qi, rj = q[i: i + chunk], r[j: j + chunk]
        d2 = qi.square().sum(1, keepdim=True) + r_sq[j: j + chunk] - 2 * qi @ rj.T
        val, idx = d2.min(1)
        better = val < best[i: i + chunk]
        best[i: i + chunk] = torch.where(better, val, best[i: i + chunk])
        arg[i: i + chunk] = torch.where(better, idx + j, arg[i: i + chunk])
        bar.update(1)
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


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def sample_quality(extractor: FeatureExtractor, samples: torch.Tensor, reference: torch.Tensor,
                   metrics: Iterable[str] = ("fid", "score", "coverage"), splits: int = 10) -> dict:
    """Classifier metrics of ``samples`` against ``reference`` images (both (N, C, H, W) in
    [0, 1]): ``fid`` (Fréchet distance on features), ``kid`` (:func:`kernel_distance`),
    ``precision`` (precision and recall, :func:`precision_recall`), ``score`` (classifier
    score) and ``coverage`` (:func:`class_coverage`)."""
    metrics, out = set(metrics), {}
    if {"fid", "kid", "precision"} & metrics:
        fs, fr = extractor.features(samples), extractor.features(reference)
        counts = {"n_samples": len(samples), "n_reference": len(reference)}
        if "fid" in metrics:
            out["fid"] = {"value": frechet_distance(fs, fr), **counts}
        if "kid" in metrics:
            mean, std = kernel_distance(fs, fr)
            out["kid"] = {"value": mean, "std": std, "subsets": 100, **counts}
        if "precision" in metrics:
            out["precision"] = {**precision_recall(fr, fs), **counts}
    if {"score", "coverage"} & metrics:
        logits = extractor.logits(samples)
        if "score" in metrics:
            mean, std = classifier_score(logits, min(splits, len(samples)))
            out["score"] = {"value": mean, "std": std, "splits": min(splits, len(samples))}
        if "coverage" in metrics:
            out["coverage"] = class_coverage(logits)
    return out
