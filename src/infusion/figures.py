"""Figures: image grids and PNGs (Pillow), sampling chains (paper Fig. 1), training curves and
the other plots of training, evaluation and the experiments.

Images come in model space, (N, C, H, W) floats in [0, 1]; 2-D toy data, (N, 2), is drawn
as a scatter plot instead. Each plot is built by a ``*_figure`` function as a
:class:`matplotlib.figure.Figure` and returned — pyplot's figure list and the user's
matplotlib backend are left alone, so a notebook shows the figure as it would any other —
and :func:`save_figure` writes one as PNG; each ``save_*`` function builds and saves in one
call and returns the path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .errors import InputError
from .io import atomic_write, read_jsonl

DPI = 110  # dots per inch of the saved PNGs


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


# ----------------------------------------------------------------------------- plots


def new_figure(**kwargs) -> Figure:
    """A :class:`~matplotlib.figure.Figure` (``kwargs`` as its constructor's: ``figsize``,
    ``layout`` …) drawn by the Agg canvas: no pyplot state, no change of backend."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: float = DPI) -> Path:
    """Write ``fig`` to ``path`` as PNG (atomically: the file appears whole or not at all)."""
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    return path


def labelled_grid_figure(tiles, ncol: int, labels: Sequence[str], title: str = "",
                         scale: float = 2.0) -> Figure:
    """Tiles (N, C, H, W) in [0, 1], ``ncol`` a row, with a label above each column and a
    title; about ``scale`` screen pixels per image pixel."""
    pad = 2
    grid = make_grid(tiles, nrow=ncol, pad=pad)
    h, w = grid.shape[:2]
    tile = to_numpy(tiles).shape[-1]
    lines = max(str(label).count("\n") + 1 for label in labels)  # room for labels and title
    top = 0.14 * lines + (0.22 if title else 0.05)  # inches above the grid
    height = h * scale / DPI + top + 0.05
    fig = new_figure(figsize=(w * scale / DPI, height))
    ax = fig.subplots()
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
    return fig


def save_labelled_grid(path: str | Path, tiles, ncol: int, labels: Sequence[str],
                       title: str = "", scale: float = 2.0) -> Path:
    """:func:`labelled_grid_figure`, saved to ``path``."""
    return save_figure(labelled_grid_figure(tiles, ncol, labels, title, scale), path)


def scatter_figure(panels: Sequence, titles: Sequence[str], reference=None) -> Figure:
    """One 2-D scatter panel per (N, 2) array of points in [0, 1]², each over the
    ``reference`` points (grey), if given."""
    fig = new_figure(figsize=(2.6 * len(panels), 2.8))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, pts, title in zip(axes[0], panels, titles):
        pts = to_numpy(pts)
        if reference is not None:
            ref = to_numpy(reference)
            ax.scatter(ref[:, 0], ref[:, 1], s=1, c="0.8")
        ax.scatter(pts[:, 0], pts[:, 1], s=1, c="tab:blue")
        ax.set(xlim=(0, 1), ylim=(0, 1), xticks=[], yticks=[], title=title)
        ax.set_aspect("equal")
    fig.tight_layout()
    return fig


def save_scatter(path: str | Path, points, title: str = "", reference=None) -> Path:
    """A 2-D scatter plot of (N, 2) points in [0, 1]², optionally over ``reference`` points."""
    return save_figure(scatter_figure([points], [title], reference), path)


def chain_figure(trajectory, every: int = 1, scale: float = 2.0) -> Figure:
    """Sampling chains (paper Fig. 1): one row per chain, one column per step, each column
    labelled with its step t.

    ``trajectory``: (steps+1, N, C, H, W); columns are steps 0, every, 2·every, …, last.
    For 2-D data, one scatter panel per shown step.
    """
    tr = to_numpy(trajectory)
    cols = sorted(set(range(0, tr.shape[0], every)) | {tr.shape[0] - 1})
    if tr.ndim == 3 or (tr.ndim == 5 and tr.shape[3:] == (1, 1)):
        pts = tr.reshape(tr.shape[0], tr.shape[1], -1)
        return scatter_figure([pts[c] for c in cols], [f"t={c}" for c in cols])
    n = tr.shape[1]
    tiles = np.stack([tr[c, i] for i in range(n) for c in cols])  # row-major: chain i, step c
    return labelled_grid_figure(tiles, len(cols), [str(c) for c in cols], "step t", scale)


def save_chain_figure(path: str | Path, trajectory, every: int = 1, scale: int = 2) -> Path:
    """:func:`chain_figure`, saved to ``path``."""
    return save_figure(chain_figure(trajectory, every, scale), path)


def chain_panels_figure(panels: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> Figure:
    """Titled panels of infusion chains (paper Figs. 2 and 7), each ``(title, chain (S, n,
    *shape), targets (n, *shape))``. Images: rows = targets, columns = the chain's states then
    the target. 2-D points: each chain's path, its end marked, the target as a cross."""
    first = np.asarray(panels[0][1])
    if not (first.ndim == 5 and first.shape[3:] != (1, 1)):
        fig = new_figure(figsize=(3 * len(panels), 3.2))
        for ax, (title, chain, targets) in zip(fig.subplots(1, len(panels), squeeze=False)[0],
                                               panels):
            pts = np.asarray(chain).reshape(chain.shape[0], chain.shape[1], -1)
            tg = np.asarray(targets).reshape(len(targets), -1)
            for i in range(pts.shape[1]):
                line, = ax.plot(pts[:, i, 0], pts[:, i, 1], lw=0.8, marker=".", ms=2)
                ax.plot(*tg[i, :2], marker="x", color=line.get_color(), ms=7)
                ax.plot(*pts[-1, i, :2], marker="o", color=line.get_color(), ms=4)
            ax.set(xlim=(0, 1), ylim=(0, 1), xticks=[], yticks=[], title=title)
            ax.set_aspect("equal")
        fig.tight_layout()
        return fig
    grids = []
    for _, chain, targets in panels:
        tiles = np.concatenate([chain, targets[None]], 0)  # (S+1, n, C, H, W)
        s, n = tiles.shape[:2]
        grids.append(make_grid(tiles.transpose(1, 0, 2, 3, 4).reshape(s * n, *tiles.shape[2:]),
                               nrow=s))
    h, w = grids[0].shape[:2]
    steps, side = first.shape[0], first.shape[-1]  # states z̃(0) … z̃(T-1), μ_T
    labels = [str(t) for t in range(steps - 1)] + ["μ_T", "target"]
    centres = [2 + k * (side + 2) + side / 2 - 0.5 for k in range(len(labels))]
    # about 1.8 screen pixels per image pixel: readable, and a few hundred kB for 12 epochs
    fig = new_figure(figsize=(w / 60, len(panels) * (h / 60 + 0.4)))
    for ax, grid, (title, _, _) in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0], grids,
                                       panels):
        ax.imshow(grid[..., 0] if grid.shape[2] == 1 else grid, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(f"{title} (columns: z̃(t), then μ_T and the target)", fontsize=8)
        ax.set_xticks(centres, labels, fontsize=6)
        ax.tick_params(length=0)
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.tight_layout()
    return fig


def save_chain_panels(path: str | Path, panels: Sequence[tuple[str, np.ndarray, np.ndarray]]
                      ) -> Path:
    """:func:`chain_panels_figure`, saved to ``path``."""
    return save_figure(chain_panels_figure(panels), path)


# The bound panel of the training curves: population statistics (what selection uses), then
# minibatch statistics (the paper's appendix A.1 mode; the only one of runs before 0.3).
BOUND_KEYS = ("valid_bound_population", "train_bound_population", "valid_bound_batch",
              "train_bound_batch")
# metrics.jsonl keys of versions before 0.3, whose bounds used minibatch statistics
LEGACY_METRIC_KEYS = {"valid_bound": "valid_bound_batch", "train_bound": "train_bound_batch"}


def read_metric_rows(metrics_file: str | Path) -> list[dict]:
    """The epoch rows of ``metrics.jsonl``, old runs' bound keys renamed to say their mode.
    Every row kept has a whole-number ``epoch`` and holds numbers and nulls (None) only: a
    line that is not a JSON object, a row whose epoch is not a whole number and a value that
    is not a number are left out, and a warning says so (the file itself must be a regular
    file, :func:`infusion.io.read_jsonl`)."""
    rows, dropped = [], []
    for r in read_jsonl(metrics_file, "metrics file"):
        if "epoch" not in r:
            continue
        if not (isinstance(r["epoch"], int) and not isinstance(r["epoch"], bool)):
            dropped.append(f"the row of epoch {str(r['epoch'])[:20]!r}")
            continue
        bad = [k for k, v in r.items() if v is not None and not _real(v)]
        dropped += [f"{k!r} of epoch {r['epoch']}" for k in bad]
        rows.append({LEGACY_METRIC_KEYS.get(k, k): v for k, v in r.items() if k not in bad})
    if dropped:
        logging.getLogger(__name__).warning(
            f"metrics file {str(metrics_file)!r}: left out {', '.join(dropped[:5])}"
            + (f" and {len(dropped) - 5} more" if len(dropped) > 5 else "")
            + ": not a number")
    return rows


def _real(v) -> bool:
    """Whether ``v`` is a real number (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def curves_figure(metrics_file: str | Path,
                  panels: Sequence[Sequence[str]] = (("train_loss", "valid_loss"), BOUND_KEYS)
                  ) -> Figure:
    """Training curves from ``metrics.jsonl``: one panel per group of keys, against the epoch
    (minibatch-statistics bounds dashed)."""
    rows = read_metric_rows(metrics_file)
    panels = [keys for keys in panels if any(r.get(k) is not None for r in rows for k in keys)]
    fig = new_figure(figsize=(5 * max(1, len(panels)), 3.5))
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)
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
    return fig


def save_curves(path: str | Path, metrics_file: str | Path,
                panels: Sequence[Sequence[str]] = (("train_loss", "valid_loss"), BOUND_KEYS)
                ) -> Path:
    """:func:`curves_figure`, saved to ``path``."""
    return save_figure(curves_figure(metrics_file, panels), path)


def line_plot_figure(x: Sequence[float], lines: dict[str, Sequence[float]], xlabel: str,
                     ylabel: str, title: str = "", logx: bool = False) -> Figure:
    """One panel of labelled lines against ``x``."""
    fig = new_figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for label, ys in lines.items():
        ax.plot(list(x), list(ys), marker="o" if len(x) <= 30 else None, ms=3, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logx:
        ax.set_xscale("log", base=2)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save_line_plot(path: str | Path, x: Sequence[float], lines: dict[str, Sequence[float]],
                   xlabel: str, ylabel: str, title: str = "", logx: bool = False) -> Path:
    """:func:`line_plot_figure`, saved to ``path``."""
    return save_figure(line_plot_figure(x, lines, xlabel, ylabel, title, logx), path)


def neighbour_figure(samples: torch.Tensor, train: torch.Tensor, index: torch.Tensor,
                     rows: int = 10, cols: int = 10) -> Figure:
    """Paper Fig. 4 layout: ``rows × cols`` samples, then a column with the nearest training
    image (``train[index[i]]``) of the sample beside it (the next-to-last column)."""
    n = min(len(samples), rows * cols)
    rows = max(1, n // cols) if n >= cols else 1
    cols = min(cols, n)
    tiles = []
    for r in range(rows):
        tiles += [samples[r * cols + c] for c in range(cols)]
        tiles.append(train[index[r * cols + cols - 1]])
    labels = [""] * cols + ["nearest\ntrain"]
    return labelled_grid_figure(torch.stack([torch.as_tensor(t, dtype=torch.float32)
                                             for t in tiles]), cols + 1, labels,
                                "samples; last column: the training image nearest the one "
                                "before it")


def save_neighbour_figure(path: str | Path, samples: torch.Tensor, train: torch.Tensor,
                          index: torch.Tensor, rows: int = 10, cols: int = 10) -> Path:
    """:func:`neighbour_figure`, saved to ``path``."""
    return save_figure(neighbour_figure(samples, train, index, rows, cols), path)


def distance_histogram_figure(sample_dist: torch.Tensor, test_dist: torch.Tensor) -> Figure:
    """Histograms of sample-to-train and test-to-train nearest-neighbour distances."""
    fig = new_figure(figsize=(5, 3.5))
    ax = fig.subplots()
    hi = float(max(sample_dist.max(), test_dist.max()))
    bins = np.linspace(0, hi * 1.02 + 1e-9, 50)
    ax.hist(np.asarray(test_dist), bins=bins, alpha=0.6, density=True, label="test → train")
    ax.hist(np.asarray(sample_dist), bins=bins, alpha=0.6, density=True, label="sample → train")
    ax.set(xlabel="L2 distance to the nearest training image", ylabel="density")
    ax.legend()
    fig.tight_layout()
    return fig


def save_distance_histogram(path: str | Path, sample_dist: torch.Tensor,
                            test_dist: torch.Tensor) -> Path:
    """:func:`distance_histogram_figure`, saved to ``path``."""
    return save_figure(distance_histogram_figure(sample_dist, test_dist), path)
