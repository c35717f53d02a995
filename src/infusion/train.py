"""The training loop, read top to bottom, and the batch-norm statistics pass (SPEC §4, §6).

``train(cfg, run_dir)`` fits the prior, runs the method's loss with Adam over shuffled,
freshly dequantised minibatches, scores the validation set every epoch (batch statistics, as
the paper does during training), keeps the best epoch, and stops early. At the end it restores
the best weights, stores per-step batch-norm statistics over the whole training set (SPEC §6),
writes the final checkpoint and draws samples, a sample grid, sampling chains and the curve.
A run directory holds ``config.json``, ``metrics.jsonl``, ``checkpoints/`` and the figures.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt_io
from . import datasets, distributed, figures
from .config import Config, from_dict, override, to_dict
from .data import dequantize, load_mnist, toy
from .ema import EMA
from .methods import build_method
from .nets import step_norms
from .operator import ChainModel


class RunError(RuntimeError):
    """A run directory that cannot be used as asked (e.g. exists without --resume)."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Data:
    """Splits as stored (uint8 pixels, or float 2-D points), and the map into model space."""

    train: torch.Tensor
    valid: torch.Tensor
    shape: tuple[int, ...]
    pixels: bool  # uint8 pixels that get dequantised (SPEC §1); else continuous toy points

    def model_space(self, raw: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Flat model-space batch (B, d): dequantised pixels (SPEC §1) or the points as they are."""
        x = dequantize(raw, generator) if self.pixels else raw.float()
        return x.reshape(raw.shape[0], -1)


def load_data(cfg: Config, device: torch.device | str = "cpu") -> Data:
    """Training and validation splits for ``cfg.data``, kept on ``device``."""
    dc = cfg.data
    if dc.name == "mnist":
        train, valid = load_mnist("train").images, load_mnist("valid").images
    elif dc.name in datasets.NAMES:  # natural images, uint8 (N, C, H, W)
        train, valid = (datasets.load_images(dc.name, s, path=dc.path, image_size=dc.image_size)
                        .images for s in ("train", "valid"))
    else:
        train = toy(dc.name, dc.toy_size, dc.seed).images
        valid = toy(dc.name, max(2, dc.toy_size // 5), dc.seed + 1).images
    if dc.n_train:
        train = train[: dc.n_train]
    pixels = train.dtype == np.uint8
    t = torch.from_numpy(np.ascontiguousarray(train)).to(device)
    v = torch.from_numpy(np.ascontiguousarray(valid)).to(device)
    return Data(t, v, tuple(train.shape[1:]), pixels)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None, drop_small: bool = True):
    """Index tensors of minibatches over range(n), shuffled when a generator is given.

    A last batch of fewer than 2 examples is dropped (batch norm needs two).
    """
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for lo in range(0, n, batch_size):
        idx = order[lo: lo + batch_size]
        if len(idx) >= 2 or not drop_small:
            yield idx


@torch.no_grad()
def fit_prior(model: ChainModel, data: Data, cfg: Config) -> None:
    """p(0) moments from one dequantised pass over the training set (SPEC §2)."""
    g = torch.Generator(device=data.train.device).manual_seed(cfg.train.seed + 7)
    model.prior.fit(data.model_space(data.train, g), cfg.model.prior_var_floor)


@torch.no_grad()
def compute_step_statistics(model: ChainModel, method, data: Data, batch_size: int, seed: int = 0,
                            progress: bool = False) -> None:
    """SPEC §6: one pass over the whole training set through the infusion chain (with targets,
    no gradient, batch statistics), storing per step the exact average of batch means/variances."""
    norms = step_norms(model)
    if not norms:
        return
    g = torch.Generator(device=data.train.device).manual_seed(seed)
    for n in norms:
        n.start_collect()
    try:
        idx_iter = batches(len(data.train), batch_size)
        for idx in _progress(idx_iter, progress, "batch-norm statistics (SPEC §6)",
                             total=-(-len(data.train) // batch_size)):
            method.loss(model, data.model_space(data.train[idx], g), g)
    except BaseException:
        for n in norms:
            n.collecting = False
        raise
    for n in norms:
        n.finish_collect()


def ensure_step_statistics(model: ChainModel, cfg: Config, device: torch.device | str,
                           progress: bool = False) -> bool:
    """Run the SPEC §6 pass on the training set if ``model`` lacks per-step statistics (e.g. a
    mid-training checkpoint); returns whether it had to."""
    if getattr(model, "stats_ready", True):
        return False
    compute_step_statistics(model, build_method(cfg.method), load_data(cfg, device),
                            cfg.train.batch_size, cfg.train.seed + 5, progress)
    return True


def load_ready_model(checkpoint: str | Path, device: str = "auto",
                     log: Callable[[str], None] = print) -> tuple[ChainModel, Config]:
    """Checkpoint file or run directory -> (model in eval mode with SPEC §6 statistics, config)."""
    dev = resolve_device(device)
    model, cfg = ckpt_io.load_model(checkpoint, dev)
    if not getattr(model, "stats_ready", True):
        log("checkpoint has no per-step batch-norm statistics; computing them (SPEC §6)")
        ensure_step_statistics(model, cfg, dev)
    return model.eval(), cfg


@torch.no_grad()
def validate(model: ChainModel, method, data: Data, cfg: Config) -> dict[str, float]:
    """Validation loss and stochastic lower bound (SPEC §7, one draw per example) on the first
    ``train.valid_examples`` validation examples, nats per example.

    Batch statistics are used, as the paper does during training (appendix A.1), and the noise
    is the same every epoch so epochs are comparable. With ``train.train_bound_examples`` the
    same bound on the first training examples is added as ``train_bound`` (paper Fig. 3).
    """
    n = min(cfg.train.valid_examples, len(data.valid))
    if n < 2:
        return {}
    jobs = [("valid_loss", method.loss, data.valid, n, 1)]
    if hasattr(method, "log_weight"):  # methods without a likelihood (GSN, SPEC §12) have none
        jobs.append(("valid_bound", method.log_weight, data.valid, n, 1))
    n_train = min(cfg.train.train_bound_examples, len(data.train))
    if n_train >= 2 and hasattr(method, "log_weight"):
        jobs.append(("train_bound", method.log_weight, data.train, n_train, 2))
    out = {}
    for name, fn, split, count_max, seed_offset in jobs:
        g = torch.Generator(device=split.device).manual_seed(cfg.train.seed + seed_offset)
        total, count = 0.0, 0
        for idx in batches(count_max, cfg.train.batch_size):
            total += float(fn(model, data.model_space(split[idx], g), g).sum())
            count += len(idx)
        out[name] = total / count
    return out


@torch.no_grad()
def record_infusion_chains(model: ChainModel, method, data: Data, cfg: Config, epoch: int,
                           run_dir: str | Path) -> Path | None:
    """Paper Fig. 2: infusion chains for fixed validation targets at this point of training.

    Runs the method's infusion chain (SPEC §3) on the first validation batch with batch
    statistics, as in training, and the same noise at every epoch; keeps the first
    ``train.record_chains_n`` rows. Writes ``infusion_chains/epoch-NNNN.npz`` with ``chain``
    (T+1, n, *shape) = z̃(0) … z̃(T-1), μ_T and ``targets`` (n, *shape). None if the method
    has no infusion chain.
    """
    if not hasattr(method, "infusion_chain"):
        return None
    n_batch = min(len(data.valid), cfg.train.batch_size)
    k = min(cfg.train.record_chains_n, n_batch)
    g = torch.Generator(device=data.valid.device).manual_seed(cfg.train.seed + 11)
    was_training = model.training
    model.train()
    try:
        x = data.model_space(data.valid[:n_batch], g)
        states = method.infusion_chain(model, x, g)
    finally:
        model.train(was_training)
    chain = torch.stack([s[:k] for s in states]).float().cpu().numpy()
    arrays = {"chain": chain.reshape(len(states), k, *data.shape),
              "targets": x[:k].float().cpu().numpy().reshape(k, *data.shape),
              "epoch": np.array(epoch)}
    return ckpt_io.save_npz(Path(run_dir) / "infusion_chains" / f"epoch-{epoch:04d}.npz", **arrays)


def train(cfg: Config | None, run_dir: str | Path, *, resume: bool = False, device: str = "auto",
          overrides: Sequence[str] = (), progress: bool = True,
          log: Callable[[str], None] = print) -> Path:
    """Train ``cfg`` into ``run_dir`` and return the final checkpoint's path.

    ``resume`` continues the run from its training state with the config stored there, to which
    ``overrides`` (``section.key=value``) are applied, e.g. ``train.epochs=50`` to train longer.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    ctx, dev = distributed.setup(resolve_device(device))  # one process, or one of torchrun's
    if not ctx.main:  # rank 0 alone logs, shows progress and writes files
        log, progress = (lambda _: None), False
    state = None
    if resume:
        state = ckpt_io.load(training_state_file(run_dir), map_location=dev)
        cfg = override(from_dict(state["config"]), list(overrides))
        log(f"resuming {run_dir} from {state['path']} (epoch {state['epoch']})")
    elif cfg is None:
        raise RunError("train() needs a config unless resuming")
    elif ckpt_dir.exists() and any(ckpt_dir.glob("*.pt")):
        raise RunError(f"run directory {str(run_dir)!r} already holds a run; pass --resume to "
                       "continue it or choose another --run-dir")
    cfg.validate()
    if dev.type == "cpu" and cfg.train.cpu_threads:
        torch.set_num_threads(cfg.train.cpu_threads)  # process-wide, as torch has it
    if ctx.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_io.atomic_write(run_dir / "config.json",
                             lambda tmp: tmp.write_text(json.dumps(to_dict(cfg), indent=2)))

    with distributed.main_first(ctx):  # rank 0 fills the data cache, the others then read it
        data = load_data(cfg, dev)
    method = build_method(cfg.method)
    with torch.random.fork_rng(devices=[]):  # weight init from the run's seed, global RNG untouched
        torch.manual_seed(cfg.train.seed)
        model = method.build_model(data.shape, cfg.model).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    ema = EMA(model, cfg.train.ema) if cfg.train.ema > 0 else None  # weights for sampling
    g = torch.Generator(device=dev).manual_seed(cfg.train.seed)  # chain noise, dequantisation
    shuffle = torch.Generator().manual_seed(cfg.train.seed + 3)  # minibatch order
    epoch, step, best, bad, stopped_early = 0, 0, float("inf"), 0, False
    if state is None:
        fit_prior(model, data, cfg)
    else:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["rng"]["chain"].cpu())
        shuffle.set_state(state["rng"]["shuffle"].cpu())
        epoch, step, best, bad = state["epoch"], state["step"], state["best"], state["bad_epochs"]
        stopped_early = state["stopped_early"]
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
    if cfg.train.compile:
        model.op.net.compile()  # in place: the state dict keeps its names
    net = distributed.shard_model(model, ctx, dev)  # what computes the losses
    autocast = mixed_precision(model, dev, cfg.train.precision)

    tc = cfg.train
    start = time.time()
    metrics = run_dir / "metrics.jsonl"
    if epoch == 0 and 0 in tc.record_chains_at:
        record_infusion_chains(net, method, data, cfg, 0, run_dir)
    while not stopped_early and epoch < tc.epochs:
        model.train()
        t0, seen, loss_sum = time.time(), 0, 0.0
        bar = _bar(progress, -(-len(data.train) // tc.batch_size), f"epoch {epoch + 1}/{tc.epochs}")
        for idx in batches(len(data.train), tc.batch_size, shuffle):
            x = data.model_space(data.train[idx], g)
            with autocast():
                loss = method.loss(net, x, g).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update(model)
            step += 1
            seen += len(idx)
            loss_sum += float(loss.detach()) * len(idx)
            rate = seen * cfg.method.T / max(time.time() - t0, 1e-9)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.1f}", ex_steps_s=f"{rate:,.0f}")
        if bar is not None:
            bar.close()
        epoch += 1
        train_time = time.time() - t0
        t_valid = time.time()
        with ema.applied(model) if ema is not None else contextlib.nullcontext():
            scores = validate(net, method, data, cfg)  # the weights that will be sampled
            if epoch in tc.record_chains_at:
                record_infusion_chains(net, method, data, cfg, epoch, run_dir)
            # lower is better; a method without a bound is early-stopped on its validation loss
            valid = -scores["valid_bound"] if "valid_bound" in scores else scores.get("valid_loss")
            improved = valid is not None and valid < best
            if improved and ctx.main:
                ckpt_io.save(ckpt_dir / "best.pt", {"model": model.state_dict(), "epoch": epoch})
        best, bad = (valid, 0) if improved else (best, bad + 1)
        row = {"epoch": epoch, "step": step, "train_loss": loss_sum / max(seen, 1),
               **scores, "example_steps_per_s": seen * cfg.method.T / train_time,
               "epoch_seconds": train_time, "valid_seconds": time.time() - t_valid}
        if ctx.main:
            with metrics.open("a") as f:
                f.write(json.dumps(row) + "\n")
        shown = ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
        log(f"epoch {epoch}: train_loss {row['train_loss']:.2f}, {shown}, "
            f"{row['example_steps_per_s']:,.0f} example-steps/s")
        stopped_early = tc.patience > 0 and bad >= tc.patience
        out_of_time = tc.max_minutes > 0 and (time.time() - start) / 60 >= tc.max_minutes
        out_of_time = distributed.agree(ctx, out_of_time)  # every process stops together
        finished = stopped_early or epoch >= tc.epochs
        if stopped_early:
            log(f"early stop: no validation improvement for {bad} epochs")
        if out_of_time and not finished:
            log(f"stopping after {tc.max_minutes} minutes (train.max_minutes); --resume continues")
        if ctx.main and (epoch % tc.checkpoint_every == 0 or finished or out_of_time):
            _save_training_state(ckpt_dir, cfg, model, opt, g, shuffle, data.shape, epoch, step,
                                 best, bad, stopped_early, ema)
        if out_of_time:
            break

    final = ckpt_dir / "final.pt"
    if ctx.main:  # rank 0 alone: statistics pass, final checkpoint, figures
        model = net.unshard() if net is not model else model
        final = finalize(run_dir, cfg, model, method, data, progress=progress, log=log, ema=ema)
    distributed.finish(ctx)
    return final


def finalize(run_dir: Path, cfg: Config, model: ChainModel, method, data: Data, *,
             progress: bool = True, log: Callable[[str], None] = print,
             ema: EMA | None = None) -> Path:
    """Best weights (the EMA's when ``train.ema`` > 0), SPEC §6 statistics, ``final.pt``,
    samples and figures. Returns its path."""
    ckpt_dir = run_dir / "checkpoints"
    best_file, epoch = ckpt_dir / "best.pt", None
    if ema is not None:
        ema.copy_to(model)  # best.pt, if any, holds EMA weights too
    if best_file.exists():
        best = ckpt_io.load(best_file, map_location=data.train.device)
        model.load_state_dict(best["model"])
        epoch = best["epoch"]
        log(f"using the best validation epoch ({epoch})")
    compute_step_statistics(model, method, data, cfg.train.batch_size, cfg.train.seed + 5, progress)
    final = ckpt_dir / "final.pt"
    ckpt_io.save(final, {"model": model.state_dict(), "config": to_dict(cfg),
                         "shape": list(data.shape), "epoch": epoch})
    ckpt_io.set_latest(ckpt_dir, final.name)
    write_figures(run_dir, model, cfg, log=log)
    return final


def write_figures(run_dir: Path, model: ChainModel, cfg: Config, log: Callable[[str], None] = print) -> None:
    """Samples (npz), a sample grid, sampling chains and the training curve, into ``run_dir``."""
    from .sample import sample_to_file

    sc = cfg.sample
    steps = sc.steps or cfg.method.T
    out = sample_to_file(model, run_dir / "samples.npz", n=sc.n, steps=steps, seed=sc.seed)
    from .chain import sample_chain

    chains = sample_chain(model, sc.chains, steps, seed=sc.seed, return_trajectory=True)
    figures.save_chain_figure(run_dir / "chains.png", chains.trajectory_means,
                              every=max(1, steps // 10))
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        figures.save_curves(run_dir / "curve.png", metrics)
    log(f"samples: {out}\ngrid: {out.with_suffix('.png')}\nchains: {run_dir / 'chains.png'}\n"
        f"curve: {run_dir / 'curve.png'}")


def _save_training_state(ckpt_dir, cfg, model, opt, g, shuffle, shape, epoch, step, best, bad,
                         stopped_early, ema=None):
    """Write ``epoch-NNNN.pt``, point ``latest`` at it, and remove older epoch files."""
    name = f"epoch-{epoch:04d}.pt"
    extra = {"ema": ema.state_dict()} if ema is not None else {}
    ckpt_io.save(ckpt_dir / name, {**extra,
        "model": model.state_dict(), "optimizer": opt.state_dict(), "config": to_dict(cfg),
        "shape": list(shape), "epoch": epoch, "step": step, "best": best, "bad_epochs": bad,
        "stopped_early": stopped_early, "rng": {"chain": g.get_state(), "shuffle": shuffle.get_state()},
    })
    ckpt_io.set_latest(ckpt_dir, name)  # finalize() points it at final.pt once the run ends
    for old in ckpt_dir.glob("epoch-*.pt"):
        if old.name != name:
            old.unlink()


def training_state_file(run_dir: Path) -> Path:
    """The run's resumable training state (``checkpoints/epoch-NNNN.pt``)."""
    found = sorted((Path(run_dir) / "checkpoints").glob("epoch-*.pt"))
    if not found:
        raise RunError(f"nothing to resume in {str(run_dir)!r}: no checkpoints/epoch-*.pt")
    return found[-1]


def mixed_precision(model: ChainModel, device: torch.device, precision: str) -> Callable:
    """A context factory for the training step: bf16 autocast where ``train.precision`` asks
    for it ("auto": on CUDA only), else nothing. The network's heads are cast back to fp32
    so μ, σ² and the Gaussian log-densities (σ² ≥ 1e-4) are computed in full precision."""
    on = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not on:
        return contextlib.nullcontext
    model.op.net.register_forward_hook(lambda _m, _i, out: tuple(o.float() for o in out))
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _progress(it, progress: bool, desc: str, total: int):
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, leave=False, dynamic_ncols=True)
