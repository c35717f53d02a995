"""The training loop, read top to bottom (docs/algorithms.md §4, §6).

``train(cfg, run_dir)`` fits the prior, runs the method's loss with Adam over shuffled, freshly
dequantised minibatches, scores the validation set every epoch (with per-step statistics from a
short statistics pass, §6; the paper's minibatch-statistics bound is logged beside it), keeps
the best epoch and stops early. At the end it restores the best
weights, stores the per-step batch-norm statistics (§6), writes ``final.pt`` and draws samples
and figures. A run directory holds ``config.json``, ``metrics.jsonl``, ``checkpoints/`` and the
figures; it is locked while a run writes it (:mod:`infusion.training.rundir`).

A run is resumable at every checkpoint: after each epoch, every ``train.checkpoint_minutes``
inside an epoch, and on SIGINT/SIGTERM. ``metrics.jsonl`` is written from the rows stored in
the checkpoint, so a resumed run never repeats a row. A non-finite loss or weight stops the run
with :class:`Diverged` and leaves the last finite checkpoint as the resumable state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import models
from .._logging import bar_disable, messages_to, warnings_only
from ..chain.model import ChainModel
from ..config import Config, TrainConfig, to_dict
from ..data import Data, load_data, shape_of
from ..data.batches import batches
from ..device import bf16_is_fast, cpu_threads, mixed_precision, resolve_device
from ..errors import InputError, UserError
from ..io import atomic_write, folder_path
from ..methods import Method, build_method, check_model_memory
from . import distributed, environment, rundir
from .ema import EMA
from .finalize import finalize
from .rundir import RunError, training_state_file
from .state import TrainState, diverged_message, restore, run_config, warm_start
from .validation import record_infusion_chains, validate
from .watch import Callback, EpochEvent, TensorBoard, WandB, sample_preview

logger = logging.getLogger(__name__)

__all__ = ["Diverged", "Interrupted", "RunError", "TrainState", "train", "training_state_file"]


class Diverged(UserError, RuntimeError):
    """Training produced a non-finite loss or weights; the last finite checkpoint is kept."""


class Interrupted(UserError, RuntimeError):
    """SIGINT or SIGTERM stopped the run after saving a resumable checkpoint."""


def train(cfg: Config | None, run_dir: str | Path, *, resume: bool = False,
          overwrite: bool = False, device: str = "auto", overrides: Sequence[str] = (),
          progress: bool = True, log: Callable[[str], object] | None = None,
          callbacks: Sequence[Callback] = ()) -> Path:
    """Train ``cfg`` into ``run_dir`` and return the final checkpoint's path.

    ``resume`` continues the run from its last checkpoint with the config stored there;
    ``overrides`` (``train.*``/``sample.*`` only, e.g. ``train.epochs=50``, ``train.lr=3e-4``)
    are applied, the optimiser's rate included. ``overwrite`` replaces a previous run's files.
    ``callbacks`` are called after every epoch with a :class:`~infusion.training.watch.EpochEvent`
    (main process only), beside the built-in watchers of ``train.sample_every`` and
    ``train.tensorboard``.

    Messages (one line per epoch, the end of the run) go to the ``infusion.training`` loggers
    of :mod:`logging`; ``progress`` shows tqdm bars on a terminal. ``log``, a callable that
    receives the messages instead, is kept for one version: configure :mod:`logging` instead.
    """
    with messages_to(log):
        return _train(cfg, folder_path(run_dir, "run_dir"), resume, overwrite, device,
                      overrides, progress, callbacks)


def _train(cfg: Config | None, run_dir: Path, resume: bool, overwrite: bool, device: str,
           overrides: Sequence[str], progress: bool, callbacks: Sequence[Callback]) -> Path:
    """:func:`train`, its messages already routed."""
    ctx, dev = distributed.setup(resolve_device(device))  # one process, or one of torchrun's
    progress = progress and ctx.main  # rank 0 alone logs, shows progress and writes files
    with warnings_only(not ctx.main), rundir.lock(run_dir, ctx.main), \
            rundir.stop_signals() as stop, contextlib.ExitStack() as cleanup:
        # ---- setup: config, data, model, optimiser, generators; resume, or fit the prior
        run = _Run.start(cfg, run_dir, ctx, dev, resume, overwrite, overrides, progress)
        cleanup.callback(run.close_watchers)  # however the run ends
        tc, state = run.cfg.train, run.state
        while not state.stopped_early and state.epoch < tc.epochs and not budget_spent(tc, state):
            # ---- one epoch of minibatches (checkpoints on time and on a signal inside it)
            done = run.epoch(stop)
            if done is None:  # train.max_minutes ran out inside the epoch: its state is saved
                logger.info(f"stopping after {tc.max_minutes} minutes (train.max_minutes), "
                            f"during epoch {state.epoch + 1}; --resume continues from here")
                break
            train_loss, seconds, seen = done
            # ---- validate, record Fig. 2's chains, keep the best weights (the EMA's, if any)
            scores = run.validate_epoch()
            row = run.add_row(train_loss, seconds, seen, scores)
            shown = "".join(f", {k} {v:.2f}" for k, v in scores.items())
            logger.info(f"epoch {state.epoch}: train_loss {train_loss:.2f}{shown}, "
                        f"{row['example_steps_per_s']:,.0f} example-steps/s")
            if ctx.main:  # ---- watchers: preview grid, TensorBoard, the caller's callbacks
                run.notify(row, callbacks)
            # ---- stop? early stopping, the time limit, a signal; then checkpoint
            state.stopped_early = tc.patience > 0 and state.bad_epochs >= tc.patience
            if state.stopped_early:
                logger.info(f"early stop: no validation improvement for {state.bad_epochs} "
                            "epochs")
            out_of_time = distributed.agree(ctx, run.out_of_time())  # every process together
            finished = state.stopped_early or state.epoch >= tc.epochs or budget_spent(tc, state)
            if out_of_time and not finished:
                logger.info(f"stopping after {tc.max_minutes} minutes (train.max_minutes); "
                            "--resume continues")
            if state.epoch % tc.checkpoint_every == 0 or finished or out_of_time or stop.requested:
                run.save()
            elif ctx.main:
                rundir.write_metrics(run_dir, state.history)
            if distributed.agree(ctx, stop.requested):
                raise Interrupted(f"stopped by {stop.requested or 'a signal'} after epoch "
                                  f"{state.epoch}; --resume continues")
            if out_of_time:
                break
        if distributed.agree(ctx, stop.requested):  # a signal since the last check
            raise Interrupted(f"stopped by {stop.requested or 'a signal'} after epoch "
                              f"{state.epoch}, before the end of the run; --resume finishes it")
        # ---- finish: best weights, §6 statistics, final checkpoint, figures (rank 0)
        final = run_dir / "checkpoints" / "final.pt"
        if ctx.main:
            stop.at_once = True  # a signal now stops at once: the last checkpoint is resumable
            try:
                final = finalize(run_dir, run.cfg, run.model, run.method, run.data,
                                 progress=progress, ema=run.ema)
            except KeyboardInterrupt:
                raise Interrupted(f"stopped by {stop.requested or 'SIGINT'} while finishing the "
                                  f"run after epoch {state.epoch}; --resume finishes it") from None
    distributed.finish(ctx)
    return final


@dataclass
class _Run:
    """One training run's objects: config, data, method, model, optimiser, EMA, generators and
    state, with the epoch, validation and checkpoint steps of :func:`train`."""

    cfg: Config
    run_dir: Path
    ctx: distributed.Context
    data: Data
    method: Method
    model: ChainModel
    opt: torch.optim.Optimizer
    ema: EMA | None
    g: torch.Generator  # chain noise and dequantisation (per process)
    shuffle: torch.Generator  # minibatch order (the same on every process)
    state: TrainState
    epoch_rng: torch.Tensor  # the shuffle generator at the start of the unfinished epoch
    step_loss: distributed.DataParallelLoss
    autocast: Callable
    progress: bool
    last_save: float = field(default_factory=time.time)
    started: float = field(default_factory=time.time)  # this invocation (train.max_minutes)
    watchers: list = field(default_factory=list)  # built-in callbacks (TensorBoard)

    @classmethod
    def start(cls, cfg, run_dir, ctx, dev, resume, overwrite, overrides, progress) -> _Run:
        saved = models.load(training_state_file(run_dir), map_location=dev) if resume else None
        cfg = run_config(cfg, saved, overrides, run_dir, overwrite, ctx.main)
        tc = cfg.train
        if dev.type == "cpu":
            threads, why = cpu_threads(tc.cpu_threads)
            torch.set_num_threads(threads)  # process-wide, as torch has it
            if why:
                logger.info(why)
        # before any data are read: the weights, their gradients, Adam's two moments (and the
        # EMA's copy) and a training step's activations must fit
        check_model_memory(build_method(cfg.method), shape_of(cfg.data), cfg, 4 + (tc.ema > 0),
                           dev, batch=tc.batch_size)
        with distributed.main_first(ctx):  # rank 0 fills the data cache, the others read it
            data = load_data(cfg, dev, progress=progress)
        if len(data.train) < 2:
            raise InputError(f"the training set of data.name={cfg.data.name!r} has "
                             f"{len(data.train)} example(s); per-step batch norm needs >= 2")
        method = build_method(cfg.method)
        with torch.random.fork_rng(devices=[]):  # weight init from the run's seed only
            torch.manual_seed(tc.seed)
            model = method.build_model(data.shape, cfg.model).to(dev)
        if saved is None:
            fit_prior(model, data, cfg)
            if tc.init_from:
                warm_start(model, tc.init_from)
        opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
        ema = EMA(model, tc.ema) if tc.ema > 0 else None  # the weights validated and sampled
        g = torch.Generator(device=dev).manual_seed(tc.seed + 7919 * ctx.rank)
        shuffle = torch.Generator().manual_seed(tc.seed + 3)
        if saved is None:
            state, epoch_rng = TrainState(), shuffle.get_state()
        else:
            state, epoch_rng = restore(saved, model, opt, ema, g, shuffle, tc, ctx)
        if ctx.main:
            atomic_write(run_dir / "config.json",
                         lambda tmp: tmp.write_text(json.dumps(to_dict(cfg), indent=2)))
            environment.record(run_dir, dev)  # version, commit, torch, device, command line
            if saved is not None:  # the checkpoint's rows: a file older than it loses none
                rundir.write_metrics(run_dir, state.history)
        if tc.compile:
            model.net.compile()  # in place: the state dict keeps its names
        if tc.precision == "bf16" and not bf16_is_fast(dev):
            logger.warning("train.precision=bf16 on a CPU without native bf16 (AVX-512 BF16 / "
                           "AMX): bf16 products are emulated and far slower than fp32")
        run = cls(cfg, run_dir, ctx, data, method, model, opt, ema, g, shuffle, state, epoch_rng,
                  distributed.DataParallelLoss(model, method, ctx, dev),
                  mixed_precision(model, dev, tc.precision), progress)
        if state.epoch == 0 and state.batch == 0 and 0 in tc.record_chains_at and ctx.main:
            record_infusion_chains(model, method, data, cfg, 0, run_dir)
        if (tc.tensorboard or tc.tracker == "tensorboard") and ctx.main:
            run.watchers.append(TensorBoard(run_dir / "tensorboard", state.epoch + 1))
        if tc.tracker == "wandb" and ctx.main:
            run.watchers.append(WandB(run_dir, run.cfg, state.epoch + 1))
        return run

    def notify(self, row: dict, callbacks: Sequence[Callback]) -> None:
        """After an epoch: the preview grid every ``train.sample_every`` epochs (from the
        weights that are sampled: the EMA's, if any), then every callback."""
        tc, state, grid = self.cfg.train, self.state, None
        if tc.sample_every and state.epoch % tc.sample_every == 0:
            with self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext():
                grid = sample_preview(self.model, self.method, self.data, self.cfg,
                                      self.run_dir, state.epoch)
        event = EpochEvent(state.epoch, row, self.model, self.cfg, self.run_dir, grid)
        for fn in (*callbacks, *self.watchers):
            fn(event)

    def close_watchers(self) -> None:
        for w in self.watchers:
            w.close()

    def out_of_time(self) -> bool:
        """Whether ``train.max_minutes`` of this invocation have passed."""
        tc = self.cfg.train
        return tc.max_minutes > 0 and time.time() - self.started >= 60 * tc.max_minutes

    def epoch(self, stop: rundir.StopRequest) -> tuple[float, float, int] | None:
        """Adam steps over this epoch's minibatches (a resumed epoch skips those it has done);
        a resumable state every ``train.checkpoint_minutes``, on a signal, and when
        ``train.max_minutes`` runs out (then None: the epoch is unfinished). Returns the
        epoch's mean training loss, its training seconds and the examples it saw (fewer than
        the training set when ``train.max_steps`` ends it)."""
        tc, state, data, g = self.cfg.train, self.state, self.data, self.g
        self.shuffle.set_state(self.epoch_rng)
        order = list(batches(len(data.train), tc.batch_size, self.shuffle))
        self.model.train()
        t0 = time.time()
        bar = tqdm(total=len(order), initial=state.batch, leave=False, dynamic_ncols=True,
                   desc=f"epoch {state.epoch + 1}/{tc.epochs}",
                   disable=bar_disable(self.progress))
        for idx in order[state.batch:]:
            if budget_spent(tc, state):  # train.max_steps ends the epoch here
                break
            mine = self.step_loss.shard(idx)
            x = data.model_space(data.train[mine], g)
            with self.autocast():
                objective, loss = self.step_loss(x, len(idx), g, data.labels("train", mine))
            if not math.isfinite(loss):
                raise Diverged(diverged_message(self.run_dir, state, loss))
            self.opt.zero_grad(set_to_none=True)
            objective.backward()
            for group in self.opt.param_groups:
                group["lr"] = learning_rate(tc, state.step, len(order))
            self.opt.step()
            if self.ema is not None:
                self.ema.update(self.model)
            state.step, state.batch = state.step + 1, state.batch + 1
            state.seen, state.loss_sum = state.seen + len(idx), state.loss_sum + loss * len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.1f}")
            now = time.time()
            timed = tc.checkpoint_minutes > 0 and now - self.last_save >= 60 * tc.checkpoint_minutes
            late = self.out_of_time() and state.batch < len(order)  # the epoch's end checks too
            if distributed.agree(self.ctx, stop.requested or timed or late):
                state.epoch_seconds, t0 = state.epoch_seconds + now - t0, now
                self.save()
                if distributed.agree(self.ctx, stop.requested):
                    raise Interrupted(f"stopped by {stop.requested or 'a signal'} during epoch "
                                      f"{state.epoch + 1}; --resume continues from here")
                if distributed.agree(self.ctx, late):
                    bar.close()
                    return None
        bar.close()
        seconds = state.epoch_seconds + time.time() - t0
        loss, seen = state.loss_sum / max(state.seen, 1), state.seen
        state.epoch, state.batch, state.loss_sum, state.seen = state.epoch + 1, 0, 0.0, 0
        state.seconds, state.epoch_seconds = state.seconds + seconds, 0.0
        self.epoch_rng = self.shuffle.get_state()
        return loss, seconds, seen

    def validate_epoch(self) -> dict[str, float]:
        """Validation scores of the weights that will be sampled; keeps ``best.pt``."""
        state, model, ctx = self.state, self.model, self.ctx
        t0 = time.time()
        with self.ema.applied(model) if self.ema is not None else contextlib.nullcontext():
            scores = validate(model, self.method, self.data, self.cfg)
            if state.epoch in self.cfg.train.record_chains_at and ctx.main:
                record_infusion_chains(model, self.method, self.data, self.cfg, state.epoch,
                                       self.run_dir)
            # lower is better; a method without a bound early-stops on its validation loss
            valid = (-scores["valid_bound_population"] if "valid_bound_population" in scores
                     else scores.get("valid_loss"))
            improved = valid is not None and valid < state.best
            if improved and ctx.main:
                models.save(self.run_dir / "checkpoints" / "best.pt",
                             {"model": model.state_dict(), "epoch": state.epoch})
        state.best, state.bad_epochs = (valid, 0) if improved else (state.best, state.bad_epochs + 1)
        scores["valid_seconds"] = time.time() - t0
        state.seconds += scores["valid_seconds"]
        return scores

    def add_row(self, train_loss: float, seconds: float, seen: int, scores: dict) -> dict:
        """The epoch's row of ``metrics.jsonl`` (kept in the state, written with checkpoints)."""
        valid_seconds = scores.pop("valid_seconds")
        rate = seen * self.cfg.method.T / max(seconds, 1e-9)
        row = {"epoch": self.state.epoch, "step": self.state.step, "train_loss": train_loss,
               **scores, "lr": self.opt.param_groups[0]["lr"], "example_steps_per_s": rate,
               "epoch_seconds": seconds,
               "valid_seconds": valid_seconds, "seconds": self.state.seconds}
        self.state.history.append(row)
        return row

    def save(self) -> None:
        """The resumable checkpoint ``epoch-NNNN.pt`` and ``metrics.jsonl`` beside it."""
        bad = [k for k, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise Diverged(diverged_message(self.run_dir, self.state,
                                             f"non-finite weights in {bad[0]}"))
        self.last_save = time.time()
        if not self.ctx.main:
            return
        ckpt_dir = self.run_dir / "checkpoints"
        name = f"epoch-{self.state.epoch:04d}.pt"
        extra = {"ema": self.ema.state_dict()} if self.ema is not None else {}
        models.save(ckpt_dir / name, {
            **extra, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "config": to_dict(self.cfg), "shape": list(self.data.shape),
            "state": asdict(self.state),
            "rng": {"chain": self.g.get_state(), "shuffle": self.shuffle.get_state(),
                    "epoch_start": self.epoch_rng},
        })
        models.set_latest(ckpt_dir, name)  # finalize() points it at final.pt at the end
        rundir.write_metrics(self.run_dir, self.state.history)
        rundir.remove_stale_checkpoints(ckpt_dir, name)


def budget_spent(tc: TrainConfig, state: TrainState) -> bool:
    """Whether ``train.max_steps`` optimiser steps are done."""
    return tc.max_steps > 0 and state.step >= tc.max_steps


def learning_rate(tc: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The rate of optimiser step ``step`` (from 0): ``train.lr``, or its cosine decay to
    ``train.lr_final`` over ``train.epochs`` epochs (docs/algorithms.md §4)."""
    if tc.lr_schedule == "constant":
        return tc.lr
    progress = min(step / max(tc.epochs * steps_per_epoch, 1), 1.0)
    return tc.lr_final + (tc.lr - tc.lr_final) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def fit_prior(model: ChainModel, data: Data, cfg: Config) -> None:
    """p(0) moments from one dequantised pass over the training set (algorithms.md §2)."""
    g = torch.Generator(device=data.train.device).manual_seed(cfg.train.seed + 7)
    model.prior.fit(data.model_space(data.train, g), cfg.model.prior_var_floor)
