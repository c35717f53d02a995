"""A run's saved state and how a run starts or restarts (docs/algorithms.md §4): the
:class:`TrainState` kept in every checkpoint, the run's config (new, or the stored one with
``train.*``/``sample.*`` overrides on resume), and the restore of a checkpoint into the
training objects (version 0.1 checkpoints included).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from .. import models
from ..chain.model import ChainModel
from ..chain.nets import step_norms
from ..config import Config, from_dict, override
from ..io import resolved
from . import rundir
from .ema import EMA
from .rundir import RunError, training_state_file
from .watch import summary_writer, wandb_module

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where a run stands, saved in every checkpoint (the weights and RNGs beside it)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps
    batch: int = 0  # minibatches done in the unfinished epoch (a mid-epoch checkpoint)
    best: float = math.inf  # best validation score (lower is better)
    bad_epochs: int = 0  # epochs since it improved
    stopped_early: bool = False
    seconds: float = 0.0  # wall time of the finished epochs (training + validation)
    loss_sum: float = 0.0  # the unfinished epoch's summed loss, examples and training time
    seen: int = 0
    epoch_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)  # the rows of metrics.jsonl


def diverged_message(run_dir: Path, state: TrainState, what) -> str:
    try:
        last = f"{training_state_file(run_dir)} (the last finite checkpoint)"
    except RunError:
        last = "no checkpoint yet"
    return (f"training diverged at epoch {state.epoch + 1}, step {state.step + 1}: loss {what}. "
            f"Kept: {last}. Lower the learning rate, e.g. --resume --set train.lr=...")


def run_config(cfg: Config | None, saved: dict | None, overrides: Sequence[str], run_dir: Path,
                overwrite: bool, main: bool = True) -> Config:
    """The run's config: new (refusing a used directory unless ``overwrite``), or the stored
    one with ``train.*``/``sample.*`` overrides on resume (anything else is refused)."""
    if saved is not None:
        check_training_state(saved)
        keys = [o.split("=", 1)[0].strip() for o in overrides]
        bad = [k for k in keys if not k.startswith(("train.", "sample."))]
        if bad:
            raise RunError(f"--resume cannot change {bad[0]!r}: a resumed run "
                           "keeps its data, model and method (only train.* and sample.* may "
                           "change); start a new run instead")
        if "train.init_from" in keys:
            raise RunError("--resume cannot change 'train.init_from': a resumed run continues "
                           "from its own checkpoint; warm-start a new run instead")
        cfg = override(from_dict(saved["config"]), list(overrides))
        return models.relocated_data(cfg, run_dir)  # a run directory moved since
    if cfg is None:
        raise RunError("train() needs a config unless resuming")
    cfg = override(cfg, list(overrides)).validate()
    if cfg.train.init_from:  # a bad source is an error before the run directory is claimed
        check_init_from(cfg, run_dir, overwrite)
        source = resolved(cfg.train.init_from, "train.init_from")
        models.load_model(source, "cpu", statistics=False)
        cfg = replace(cfg, train=replace(cfg.train, init_from=str(source)))
    if cfg.train.tensorboard or cfg.train.tracker == "tensorboard":
        summary_writer()  # a missing package is an error before the run directory is claimed
    if cfg.train.tracker == "wandb":
        wandb_module()
    rundir.claim(run_dir, overwrite, main, data=cfg.data.path)
    return cfg


def check_init_from(cfg: Config, run_dir: Path, overwrite: bool) -> None:
    """Refuse ``overwrite`` of the run directory that ``train.init_from`` lies in: the
    overwrite would delete the weights the run is to start from."""
    if not (overwrite and cfg.train.init_from):
        return
    source = resolved(cfg.train.init_from, "train.init_from")
    here = resolved(run_dir, "run_dir")
    if source == here or here in source.parents:
        raise RunError(f"train.init_from={cfg.train.init_from!r} lies in the run directory "
                       f"{str(run_dir)!r}, which --overwrite would delete before it is read; "
                       "export it (infusion export) or copy it elsewhere first, or use another "
                       "--run-dir")


def warm_start(model: ChainModel, source: str) -> None:
    """Start from the weights and buffers (the prior, the per-step batch-norm statistics) of an
    exported model, run directory or checkpoint: ``train.init_from``, fine-tuning with a fresh
    optimiser. The source must be the same method, data shape and network."""
    src, src_cfg = models.load_model(source, "cpu", statistics=False)
    mine, theirs = model.state_dict(), src.state_dict()
    misfit = [k for k in mine.keys() | theirs.keys()
              if k not in mine or k not in theirs or mine[k].shape != theirs[k].shape]
    if type(src) is not type(model) or src.shape != model.shape or misfit:
        raise RunError(f"train.init_from={source!r}: its model ({type(src).__name__}, data shape "
                       f"{tuple(src.shape)}) does not fit this run's ({type(model).__name__}, "
                       f"{tuple(model.shape)})" + (f"; e.g. {min(misfit)!r} differs"
                                                   if misfit else ""))
    model.load_state_dict(theirs)
    logger.info(f"starting from the weights of {source} (train.init_from)")
    eps = {n.eps for n in step_norms(model)}
    if eps and src_cfg.model.bn_eps not in eps:  # the weights fit; the normalisation shifts
        logger.info(f"note: the source was trained with model.bn_eps={src_cfg.model.bn_eps:g}, "
                    f"this run uses {min(eps):g}")


def check_training_state(saved: dict) -> None:
    """Refuse, naming the file, a checkpoint that lacks what a resume needs: the optimiser's
    state, the generators' states and the counters (``state``, or version 0.1's loose ones).
    ``final.pt`` and ``best.pt`` hold weights only."""
    rng = saved.get("rng")
    missing = [k for k in ("optimizer", "rng") if k not in saved]
    if "rng" in saved and not (isinstance(rng, dict) and all(
            isinstance(rng.get(k), torch.Tensor) for k in ("chain", "shuffle"))):
        missing.append("rng.chain and rng.shuffle")
    if not isinstance(saved.get("state", {}), dict) or ("state" not in saved and not {
            "epoch", "step", "best", "bad_epochs", "stopped_early"} <= set(saved)):
        missing.append("state")
    if missing:
        raise RunError(f"{saved['path']!r} is not a training state (no {', '.join(missing)}); "
                       "final.pt and best.pt hold weights only: resume from an epoch-*.pt "
                       "checkpoint, or start again with --overwrite")


def restore(saved: dict, model: ChainModel, opt, ema: EMA | None, g, shuffle, tc, ctx
            ) -> tuple[TrainState, torch.Tensor]:
    """Load a training checkpoint into the objects; returns the state and the shuffle state at
    the start of the unfinished epoch. Checkpoints of version 0.1 (no ``state``) load too."""
    check_training_state(saved)
    try:
        model.load_state_dict(models.migrate_state_dict(saved["model"]))
        opt.load_state_dict(saved["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise RunError(f"{saved['path']!r}: its weights or optimiser state do not fit the model "
                       f"its config describes: {models.one_line(e)}") from None
    for group in opt.param_groups:  # an override of train.lr applies to the optimiser too
        group["lr"] = tc.lr
    if ema is not None and "ema" in saved:
        ema.load_state_dict({**saved["ema"],
                             "shadow": models.migrate_state_dict(saved["ema"]["shadow"])})
    known = {f.name for f in fields(TrainState)}
    if "state" in saved:
        state = TrainState(**{k: v for k, v in saved["state"].items() if k in known})
    else:  # 0.1: loose counters; the rows come from metrics.jsonl up to the saved epoch
        state = TrainState(epoch=saved["epoch"], step=saved["step"], best=saved["best"],
                           bad_epochs=saved["bad_epochs"], stopped_early=saved["stopped_early"])
        state.history = rundir.read_metrics(Path(saved["path"]).parent.parent, state.epoch)
        state.seconds = sum(r.get("epoch_seconds", 0.0) + r.get("valid_seconds", 0.0)
                            for r in state.history)
    last = state.history[-1] if state.history else {}
    if "valid_bound" in last and "valid_bound_population" not in last:
        # a run of version <= 0.2 selected on the minibatch-statistics bound: selection
        # restarts on the population bound (algorithms.md §6); its best.pt stays until beaten
        state.best, state.bad_epochs = math.inf, 0
        logger.info("this run's earlier epochs were validated with minibatch statistics; "
                    "selection and early stopping restart on the population-statistics bound "
                    "(algorithms.md §6)")
    try:
        if ctx.rank == 0:  # other processes' chain noise restarts from their seeds
            g.set_state(saved["rng"]["chain"].cpu())
        shuffle.set_state(saved["rng"]["shuffle"].cpu())
        epoch_rng = saved["rng"].get("epoch_start", saved["rng"]["shuffle"]).cpu()
        torch.Generator().set_state(epoch_rng)  # a valid state, restored after the epoch
    except (RuntimeError, TypeError, AttributeError) as e:
        raise RunError(f"{saved['path']!r}: its generator states are not torch's: {e}") from None
    if state.batch and saved["config"]["train"]["batch_size"] != tc.batch_size:
        raise RunError("--resume from a mid-epoch checkpoint cannot change train.batch_size; "
                       "resume with the old size and change it after the epoch")
    logger.info(f"resuming {saved['path']} (epoch {state.epoch}"
                + (f", batch {state.batch}" if state.batch else "") + ")")
    return state, epoch_rng
