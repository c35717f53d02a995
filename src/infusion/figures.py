"""Figures: image grids and PNGs (Pillow), sampling chains (paper Fig. 1), training curves.

Images come in model space, (N, C, H, W) floats in [0, 1]; 2-D toy data, (N, 2), is drawn
as a scatter plot instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .io import atomic_write


def to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def make_grid(images, nrow: int | None = None, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile (N, C, H, W) images in [0, 1] into one uint8 (H', W', C) array, ``nrow`` per row."""
    x = to_numpy(images).astype(np.float32)
    if x.ndim != 4:
        raise InputError(f"make_grid expects (N, C, H, W) images, got shape {x.shape}")
    n, c, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value, np.float32)
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        grid[:, top:top + h, left:left + w] = x[i]
    return (np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def save_png(path: str | Path, array: np.ndarray, scale: int = 1) -> Path:
    """Write a uint8 (H, W, C) or (H, W) array as PNG, optionally enlarged ``scale`` times."""
    from PIL import Image

    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    img = Image.fromarray(a)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
    return path


def save_grid(path: str | Path, images, nrow: int | None = None, scale: int = 2,
              reference=None) -> Path:
    """A sample grid as PNG; 2-D points are drawn as a scatter plot instead (over the
    ``reference`` points in grey, if given)."""
    x = to_numpy(images)
    if x.ndim == 2 or (x.ndim == 4 and x.shape[2:] == (1, 1)):
        return save_scatter(path, x.reshape(len(x), -1), reference=reference)
    return save_png(path, make_grid(x, nrow), scale)


def save_chain_figure(path: str | Path, trajectory, every: int = 1, scale: int = 2) -> Path:
    """Sampling chains (paper Fig. 1): one row per chain, one column per step, each column
    labelled with its step t.

    ``trajectory``: (steps+1, N, C, H, W); columns are steps 0, every, 2·every, …, last.
    For 2-D data, one scatter panel per shown step.
    """
    tr = to_numpy(trajectory)
    cols = sorted(set(range(0, tr.shape[0], every)) | {tr.shape[0] - 1})
    if tr.ndim == 3 or (tr.ndim == 5 and tr.shape[3:] == (1, 1)):
        pts = tr.reshape(tr.shape[0], tr.shape[1], -1)
        return _scatter_panels(path, [pts[c] for c in cols], [f"t={c}" for c in cols])
    n = tr.shape[1]
    tiles = np.stack([tr[c, i] for i in range(n) for c in cols])  # row-major: chain i, step c
    return save_labelled_grid(path, tiles, len(cols), [str(c) for c in cols], "step t", scale)


def save_labelled_grid(path: str | Path, tiles, ncol: int, labels: Sequence[str],
                       title: str = "", scale: float = 2.0) -> Path:
    """Tiles (N, C, H, W) in [0, 1], ``ncol`` a row, with a label above each column and a
    title; about ``scale`` screen pixels per image pixel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pad = 2
    grid = make_grid(tiles, nrow=ncol, pad=pad)
    h, w = grid.shape[:2]
    tile = to_numpy(tiles).shape[-1]
    lines = max(str(label).count("\n") + 1 for label in labels)  # room for labels and title
    top = 0.14 * lines + (0.22 if title else 0.05)  # inches above the grid
    height = h * scale / 110 + top + 0.05
    fig, ax = plt.subplots(figsize=(w * scale / 110, height))
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.05 / height, top=1 - top / height)
    ax.imshow(grid[..., 0] if grid.shape[2] == 1 else grid, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_xticks([pad + k * (tile + pad) + tile / 2 - 0.5 for k in range(len(labels))],
                  labels, fontsize=7)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=8)
    return _save_fig(fig, path)


def save_scatter(path: str | Path, points, title: str = "", reference=None) -> Path:
    """A 2-D scatter plot of (N, 2) points in [0, 1]², optionally over ``reference`` points."""
    return _scatter_panels(path, [to_numpy(points)], [title], reference)


def _scatter_panels(path, panels: Sequence[np.ndarray], titles: Sequence[str], reference=None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8), squeeze=False)
    for ax, pts, title in zip(axes[0], panels, titles):
        if reference is not None:
            ref = to_numpy(reference)
            ax.scatter(ref[:, 0], ref[:, 1], s=1, c="0.8")
        ax.scatter(pts[:, 0], pts[:, 1], s=1, c="tab:blue")
        ax.set(xlim=(0, 1), ylim=(0, 1), xticks=[], yticks=[], title=title)
        ax.set_aspect("equal")
    fig.tight_layout()
    return _save_fig(fig, path)


# The bound panel of the training curves: population statistics (what selection uses), then
# minibatch statistics (the paper's appendix A.1 mode; the only one of runs before 0.3).
BOUND_KEYS = ("valid_bound_population", "train_bound_population", "valid_bound_batch",
              "train_bound_batch")
# metrics.jsonl keys of versions before 0.3, whose bounds used minibatch statistics
LEGACY_METRIC_KEYS = {"valid_bound": "valid_bound_batch", "train_bound": "train_bound_batch"}


def read_metric_rows(metrics_file: str | Path) -> list[dict]:
    """The epoch rows of ``metrics.jsonl``, old runs' bound keys renamed to say their mode."""
    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    return [{LEGACY_METRIC_KEYS.get(k, k): v for k, v in r.items()} for r in rows if "epoch" in r]


def save_curves(path: str | Path, metrics_file: str | Path,
                panels: Sequence[Sequence[str]] = (("train_loss", "valid_loss"), BOUND_KEYS)
                ) -> Path:
    """Training curves from ``metrics.jsonl``: one panel per group of keys, against the epoch
    (minibatch-statistics bounds dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metric_rows(metrics_file)
    panels = [keys for keys in panels if any(r.get(k) is not None for r in rows for k in keys)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5 * max(1, len(panels)), 3.5),
                             squeeze=False)
    for ax, keys in zip(axes[0], panels):
        for key in keys:
            pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=key,
                        ls="--" if key.endswith("_batch") else "-")
        ax.set(xlabel="epoch", ylabel="nats / example")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_fig(fig, path)


def save_line_plot(path: str | Path, x: Sequence[float], lines: dict[str, Sequence[float]],
                   xlabel: str, ylabel: str, title: str = "", logx: bool = False) -> Path:
    """One panel of labelled lines against ``x``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, ys in lines.items():
        ax.plot(list(x), list(ys), marker="o" if len(x) <= 30 else None, ms=3, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logx:
        ax.set_xscale("log", base=2)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_fig(fig, path)


def _save_fig(fig, path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
    return path


def save_neighbour_figure(path: str | Path, samples: torch.Tensor, train: torch.Tensor,
                          index: torch.Tensor, rows: int = 10, cols: int = 10) -> Path:
    """Paper Fig. 4 layout: ``rows × cols`` samples, then a column with the nearest training
    image of the sample beside it (the next-to-last column)."""
    n = min(len(samples), rows * cols)
    rows = max(1, n // cols) if n >= cols else 1
    cols = min(cols, n)
    tiles = []
    for r in range(rows):
        tiles += [samples[r * cols + c] for c in range(cols)]
        tiles.append(train[index[r * cols + cols - 1]])
    labels = [""] * cols + ["nearest\ntrain"]
    return save_labelled_grid(path, torch.stack([torch.as_tensor(t, dtype=torch.float32)
                                                 for t in tiles]), cols + 1, labels,
                              "samples; last column: the training image nearest the one before it")


def save_distance_histogram(path: str | Path, sample_dist: torch.Tensor,
                            test_dist: torch.Tensor) -> Path:
    """Histograms of sample-to-train and test-to-train nearest-neighbour distances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    hi = float(max(sample_dist.max(), test_dist.max()))
    bins = np.linspace(0, hi * 1.02 + 1e-9, 50)
    ax.hist(np.asarray(test_dist), bins=bins, alpha=0.6, density=True, label="test → train")
    ax.hist(np.asarray(sample_dist), bins=bins, alpha=0.6, density=True, label="sample → train")
    ax.set(xlabel="L2 distance to the nearest training image", ylabel="density")
    ax.legend()
    fig.tight_layout()
    return _save_fig(fig, path)
