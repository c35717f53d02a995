"""What training, evaluation, sampling and benchmarks share at run time: the device, the
precision, minibatches, the per-step batch-norm statistics pass (docs/algorithms.md §6) and
loading a ready-to-use model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import Config
from .errors import InputError
from .methods import Method, build_method
from .nets import step_norms
from .operator import ChainModel, given


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if present, else CPU. An unknown name or a missing CUDA is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name!r}: this machine has no CUDA device (torch "
                         f"{torch.__version__}); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    return device


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 matrix products are native here: CUDA, or a CPU with AVX-512 BF16 / AMX.
    (A CPU without them emulates bf16: measured 380× slower than fp32 on an AVX2 EPYC.)"""
    if device.type == "cuda":
        return True
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def mixed_precision(model: ChainModel, device: torch.device, precision: str) -> Callable:
    """A context factory for the training step: bf16 autocast where ``train.precision`` is
    "bf16", else nothing ("auto" is fp32 everywhere, set from measurements: on an H100 the
    mnist preset trains at the same speed in both (154.7k vs 154.6k example-steps/s, the step
    is bound by kernel launches, not arithmetic), and a CPU without native bf16 emulates it;
    the paper trained in fp32).

    The network body's outputs are cast back to fp32, so μ, σ², the log-densities (σ² ≥ 1e-4)
    and the loss are computed in full precision; the weights stay fp32 (Adam's master copy).
    """
    if precision != "bf16":
        return contextlib.nullcontext
    model.net.register_forward_hook(lambda _m, _i, out: tuple(o.float() for o in out))
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None,
            drop_small: bool = True) -> Iterator[torch.Tensor]:
    """Index tensors of minibatches over range(n), shuffled when a generator is given.

    A last batch of fewer than 2 examples is dropped (batch norm needs two).
    """
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for lo in range(0, n, batch_size):
        idx = order[lo: lo + batch_size]
        if len(idx) >= 2 or not drop_small:
            yield idx


@torch.no_grad()
def compute_step_statistics(model: ChainModel, method: Method, data, batch_size: int,
                            seed: int = 0, progress: bool = False, max_batches: int = 0,
                            average: str = "exact") -> None:
    """algorithms.md §6: one pass over the whole training set through the method's training
    chain (with targets, no gradient, batch statistics), storing per step the exact average of
    the batch means and variances. ``data``: a :class:`~infusion.data.Data`.

    ``max_batches`` > 0: a short pass over that many batches drawn at random (by ``seed``)
    from the training set, as validation during training uses. ``average="moving"``: the
    authors' moving average (rate 0.1) of the batch mean and inverse std instead of the
    exact average (:class:`~infusion.nets.StepBatchNorm`)."""
    norms = step_norms(model)
    if not norms:
        return
    g = torch.Generator(device=data.train.device).manual_seed(seed)
    order = None
    if max_batches > 0:  # a random subset: a user's file may be sorted by class
        order = torch.Generator().manual_seed(seed)
    for n in norms:
        n.start_collect(average)
    try:
        total = -(-len(data.train) // batch_size)
        if max_batches > 0:
            total = min(total, max_batches)
        chosen = batches(len(data.train), batch_size, order)
        for _, idx in tqdm(zip(range(total), chosen), total=total, leave=False,
                           desc="batch-norm statistics (algorithms.md §6)", disable=not progress):
            y = data.labels("train", idx)  # a class-conditional model's classes (§15)
            method.loss(given(model, y), data.model_space(data.train[idx], g), g)
    except BaseException:
        for n in norms:
            n.collecting = False
        raise
    for n in norms:
        n.finish_collect()


def ensure_step_statistics(model: ChainModel, cfg: Config, device: torch.device | str,
                           progress: bool = False) -> bool:
    """Run the §6 pass on the run's training set if ``model`` lacks per-step statistics (e.g.
    a mid-training checkpoint); returns whether it had to."""
    if model.stats_ready:
        return False
    from .data import load_data

    compute_step_statistics(model, build_method(cfg.method), load_data(cfg, device),
                            cfg.train.batch_size, cfg.train.seed + 5, progress)
    return True


def load_ready_model(checkpoint: str | Path, device: str = "auto",
                     log: Callable[[str], None] = print, progress: bool = False
                     ) -> tuple[ChainModel, Config]:
    """A checkpoint file, run directory or exported model folder -> (model in eval mode with
    the §6 statistics, config). A checkpoint without statistics (mid-training) gets them from
    one pass over its training set."""
    from .checkpoint import load_model

    dev = resolve_device(device)
    model, cfg = load_model(checkpoint, dev)
    if not model.stats_ready:
        log("checkpoint has no per-step batch-norm statistics; computing them (algorithms.md §6)")
        ensure_step_statistics(model, cfg, dev, progress)
    return model.eval(), cfg


# ``infusion.load_model``: any checkpoint, run directory (mid-training included) or export,
# ready to sample and evaluate.
load_model = load_ready_model
