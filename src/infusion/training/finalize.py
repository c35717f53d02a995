"""The end of a training run (docs/algorithms.md §6): the best weights, the per-step batch-norm
statistics, ``final.pt``, samples and figures."""

from __future__ import annotations

import logging
from pathlib import Path

from .. import figures, models
from ..chain.model import ChainModel
from ..chain.sampler import sample_chain
from ..config import Config, to_dict
from ..data import Data
from ..generate.files import sample_to_file
from ..methods import Method
from ..methods.statistics import compute_step_statistics
from .ema import EMA

TOY_CHAINS = 500  # chains in a 2-D run's chains.png (a cloud per panel)
logger = logging.getLogger(__name__)


def finalize(run_dir: Path, cfg: Config, model: ChainModel, method: Method, data: Data, *,
             progress: bool = True, ema: EMA | None = None) -> Path:
    """Best weights (the EMA's when ``train.ema`` > 0), §6 statistics, ``final.pt``, samples
    and figures. Returns its path."""
    ckpt_dir = run_dir / "checkpoints"
    best_file, epoch = ckpt_dir / "best.pt", None
    if ema is not None:
        ema.copy_to(model)  # best.pt, if any, holds EMA weights too
    if best_file.exists():
        best = models.load(best_file, map_location=data.train.device, weights_only=True)
        model.load_state_dict(models.migrate_state_dict(best["model"]))  # 0.1 names too
        epoch = best["epoch"]
        logger.info(f"using the best validation epoch ({epoch})")
    compute_step_statistics(model, method, data, cfg.train.batch_size, cfg.train.seed + 5, progress)
    final = ckpt_dir / "final.pt"
    models.save(final, {"model": model.state_dict(), "config": to_dict(cfg),
                         "shape": list(data.shape), "epoch": epoch})
    models.set_latest(ckpt_dir, final.name)
    models.set_sampling_defaults(model, cfg)
    write_figures(run_dir, model, cfg,
                  reference=None if data.pixels else data.train[:TOY_CHAINS * 4].cpu())
    return final


def write_figures(run_dir: Path, model: ChainModel, cfg: Config, reference=None) -> None:
    """Samples (npz), a sample grid, sampling chains and the training curve, into ``run_dir``.

    For 2-D points, ``reference`` (training points) is drawn under the samples, and the chains
    are a few panels of the states of ``TOY_CHAINS`` chains instead of a row per chain."""
    sc, steps = cfg.sample, cfg.sample_steps
    points = model.d <= 2
    out = sample_to_file(model, run_dir / "samples.npz", n=sc.n, steps=steps, seed=sc.seed,
                         reference=reference if points else None)
    chains = sample_chain(model, max(sc.chains, TOY_CHAINS) if points else sc.chains, steps,
                          seed=sc.seed, return_trajectory=True)
    figures.save_chain_figure(run_dir / "chains.png",  # points: the states, z(0) included
                              chains.states if points else chains.trajectory_means,
                              every=max(1, steps // (5 if points else 10)))
    if model.classes:
        class_grid(run_dir / "samples_by_class.png", model, steps, sc.seed)
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        figures.save_curves(run_dir / "curve.png", metrics)
    logger.info(f"samples: {out}\ngrid: {out.with_suffix('.png')}\nchains: "
                f"{run_dir / 'chains.png'}\ncurve: {run_dir / 'curve.png'}"
                + (f"\nby class: {run_dir / 'samples_by_class.png'}" if model.classes else ""))


def class_grid(path: Path, model: ChainModel, steps: int, seed: int = 0, per_class: int = 10,
               max_classes: int = 20) -> Path:
    """A class-conditional model's samples (algorithms.md §15), one row per class (the first
    ``max_classes``), the same seeds ``seed`` … in every row: the means after ``steps``."""
    classes = range(min(model.classes, max_classes))
    res = sample_chain(model, per_class * len(classes), steps,
                       seeds=[seed + i for _ in classes for i in range(per_class)],
                       labels=[c for c in classes for _ in range(per_class)])
    return figures.save_grid(path, res.means, per_class)
