"""The sampler (docs/algorithms.md §2, §9): run a model's chain from its prior for T' steps.

:func:`run_chain` is the algorithm, close to the paper: z(0) ~ p(0), then
z(t) = μ_t + σ_t·ε_t with (μ_t, σ²_t) = model(z(t-1), t) (the model's ``step``, which a model
with another draw overrides, e.g. the VAE's decoder, §16), optionally clamping observed
dimensions after every step (inpainting, §9). It is handed its noise one step at a time and
reports every state through ``callback`` (as k-diffusion's samplers do), so memory is O(B·d)
for any number of steps. :func:`sample_chain` adds batching and per-sample seeds: sample i's
noise comes from its own generator, so it is the same at any batch size.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .._logging import bar_disable
from ..errors import InputError
from ..limits import SAMPLES_MAX, STEPS_MAX, as_tensor, check_memory, check_range, check_tensor
from .model import ChainModel, check_model, given

Noise = Callable[[], torch.Tensor]  # each call: the next (B, d) block of standard normals
Callback = Callable[[dict], None]  # called with {"t", "z", "mean"} after z(0) and every step


class PerSampleNoise:
    """Standard-normal noise for a batch whose row i comes from a generator seeded by
    ``seeds[i]``: every call draws each row's next (d,) block, on the CPU, then moves the
    (B, d) block to ``device``."""

    def __init__(self, seeds: Sequence[int], d: int, device: torch.device | str = "cpu") -> None:
        self.d, self.device = d, device
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self) -> torch.Tensor:
        rows = [torch.randn(self.d, generator=g) for g in self.generators]
        return torch.stack(rows).to(self.device)


@torch.no_grad()
def run_chain(model: ChainModel, noise: Noise, steps: int, *, start: torch.Tensor | None = None,
              clamp: tuple[torch.Tensor, torch.Tensor] | None = None,
              callback: Callback | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampling chain of algorithms.md §2 for one batch; returns (z(T'), μ(T')), each (B, d).

    ``noise()`` gives the next (B, d) standard-normal block: first for z(0) (unless ``start``
    is given), then at each step one for the model's internal draw (if ``model.aux_noise``)
    and one for the step; each step is the model's :meth:`~infusion.chain.model.ChainModel.step`
    (a model may take other blocks, e.g. the VAE's latent, algorithms.md §16).
    ``clamp = (mask, values)`` (B, d) sets the masked dimensions to ``values`` at z(0) and
    after every step.
    """
    if start is None:
        z = model.prior.sample(noise())
        mean = model.prior.mean.expand_as(z)
    else:
        z = mean = start
    if clamp is not None:
        z, mean = torch.where(clamp[0], clamp[1], z), torch.where(clamp[0], clamp[1], mean)
    if callback is not None:
        callback({"t": 0, "z": z, "mean": mean})
    for t in range(1, steps + 1):
        z, mean = model.step(z, t, noise)
        if clamp is not None:
            z, mean = torch.where(clamp[0], clamp[1], z), torch.where(clamp[0], clamp[1], mean)
        if callback is not None:
            callback({"t": t, "z": z, "mean": mean})
    return z, mean


def check_clampable(model: ChainModel) -> None:
    """Clamping (``clamp=``, inpainting) is refused for a model whose steps do not read their
    input state (``model.clampable`` false: the VAE draws every sample afresh from its latent),
    since its "completions" would ignore the clamped values."""
    if not getattr(model, "clampable", True):
        raise InputError(f"{type(model).__name__}: this model cannot be clamped (inpainting, "
                         "clamp=): its steps do not read their input state (a VAE draws each "
                         "sample afresh from its latent), so the observed values would not "
                         "condition the rest; use a chain method (infusion, walkback, gsn, "
                         "diffusion, flow)")


@dataclass
class Samples:
    """Output of :func:`sample_chain`. ``samples``/``means``: (N, *shape) after the last step.

    With ``return_trajectory``: ``states`` (steps+1, N, *shape) = z(0) … z(T'), and
    ``trajectory_means`` (steps+1, N, *shape) = prior mean, μ(1) … μ(T'). ``labels`` (N,):
    the classes a class-conditional model was given (else None).
    """

    samples: torch.Tensor
    means: torch.Tensor
    states: torch.Tensor | None = None
    trajectory_means: torch.Tensor | None = None
    labels: torch.Tensor | None = None


@torch.no_grad()
def sample_chain(
    model: ChainModel,
    n: int,
    steps: int | None = None,
    seed: int = 0,
    *,
    seeds: Sequence[int] | None = None,
    batch_size: int = 500,
    clamp: tuple[torch.Tensor, torch.Tensor] | None = None,
    return_trajectory: bool = False,
    start: torch.Tensor | None = None,
    callback: Callback | None = None,
    sampler: str | None = None,
    eta: float | None = None,
    labels: Sequence[int] | torch.Tensor | None = None,
    progress: bool = False,
) -> Samples:
    """Draw ``n`` samples with :func:`run_chain`, in batches; results on the CPU, float32.

    Sample i uses the seed ``seed + i`` (or ``seeds[i]``), so it does not depend on the batch.
    ``steps`` = T' defaults to the model's ``sample_steps`` (the run's ``sample.steps``, set
    when a model is loaded) or else its training T; T' > T reuses step T's batch norm; T' < T
    runs ``model.respaced(T')`` (diffusion). ``clamp = (mask, values)``, each (N, d) or (d,).
    ``start`` (N, d) or (N, *shape): z(0) = start instead of a prior draw (chains from data).
    ``callback`` receives each batch's states (``"batch"``: its first sample's index).
    ``sampler`` (default the model's ``sampler``, the run's ``sample.sampler``): "ancestral",
    the model's own chain; for diffusion "ddim" (stochasticity ``eta``) and "dpm++2m", for
    the flow "euler" and "heun" (:meth:`ChainModel.solver`). ``labels`` (n classes): what a
    class-conditional model draws (algorithms.md §15); by default sample i's class is its
    seed modulo ``model.classes``. Uses the stored per-step batch-norm statistics
    (algorithms.md §6); raises if missing. ``progress``: a tqdm bar of the steps of all
    batches, shown on a terminal. A bad argument is an :class:`InputError` naming it:
    ``model`` not a ChainModel, ``n`` not a whole number from 1 to ``SAMPLES_MAX``, a
    ``start``, ``clamp`` or ``labels`` of another shape, or tensors without readable values
    (meta-device or sparse).
    """
    check_model(model)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise InputError(f"n={n!r}: expected a whole number of samples")
    check_range("n", int(n), 1, SAMPLES_MAX)
    n = int(n)
    steps = int(steps if steps is not None else model.sample_steps or model.T)
    check_range("steps", steps, 1, STEPS_MAX)
    if clamp is not None:
        check_clampable(model)
    chain = model.solver(sampler or model.sampler, steps, model.eta if eta is None else eta)
    if not chain.stats_ready:
        raise RuntimeError(
            "the model has no stored per-step batch-norm statistics; run the statistics pass of "
            "algorithms.md §6 (infusion.compute_step_statistics) before sampling")
    # the samples and means (and the trajectories), float32, gathered and then joined, and the
    # seeds; and each row of a batch: its generator's state (4 KiB at most) and its states
    kept = 2 + (2 * (steps + 1) if return_trajectory else 0)
    check_memory(n * (2 * kept * 4 * chain.d + 64) + min(n, batch_size) * (4096 + 64 * chain.d),
                 f"{n:,} samples of {chain.d:,} values in batches of {min(n, batch_size):,}"
                 + (f" with their {steps + 1} states" if return_trajectory else ""))
    seeds = list(range(seed, seed + n)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != n:
        raise InputError(f"got {len(seeds)} seeds for n={n} samples")
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size}: expected >= 1")
    device = chain.prior.mean.device
    labels = sample_labels(chain, labels, seeds)
    if start is not None:
        start = as_tensor(start, "start")
        if tuple(start.shape) not in ((n, chain.d), (n, *chain.shape)):
            raise InputError(f"start: shape {tuple(start.shape)}; expected one state per sample, "
                             f"({n}, {chain.d}) or {(n, *chain.shape)}")
        start = start.reshape(n, chain.d)
    clamp = None if clamp is None else _checked_clamp(clamp, n, chain.d)
    outs, states, means = [], [], []
    was_training = chain.training
    chain.eval()
    bar = tqdm(total=n * steps, desc=f"sampling ({steps} steps)", unit="step", unit_scale=True,
               leave=False, dynamic_ncols=True, disable=bar_disable(progress))
    try:
        for lo in range(0, n, batch_size):
            idx = slice(lo, min(n, lo + batch_size))
            keep: list[tuple[torch.Tensor, torch.Tensor]] = []

            def report(info: dict, lo: int = lo, keep: list = keep) -> None:
                if info["t"] > 0:
                    bar.update(len(info["z"]))
                if return_trajectory:
                    keep.append((info["z"].float().cpu(), info["mean"].float().cpu()))
                if callback is not None:
                    callback({**info, "batch": lo})

            z0 = None if start is None else start[idx].to(device=device, dtype=torch.float32)
            conditioned = given(chain, None if labels is None else labels[idx].to(device))
            out = run_chain(conditioned, PerSampleNoise(seeds[idx], chain.d, device), steps, start=z0,
                            clamp=_clamp_rows(clamp, idx, chain.d, device), callback=report)
            outs.append(tuple(o.float().cpu() for o in out))
            if return_trajectory:
                states.append(torch.stack([k[0] for k in keep]))
                means.append(torch.stack([k[1] for k in keep]))
    finally:
        bar.close()
        chain.train(was_training)
    shape = chain.shape
    result = Samples(torch.cat([o[0] for o in outs]).reshape(n, *shape),
                     torch.cat([o[1] for o in outs]).reshape(n, *shape), labels=labels)
    if return_trajectory:
        result.states = torch.cat(states, 1).reshape(steps + 1, n, *shape)
        result.trajectory_means = torch.cat(means, 1).reshape(steps + 1, n, *shape)
    return result


def sample_labels(model: ChainModel, labels, seeds: list[int]) -> torch.Tensor | None:
    """The classes of a class-conditional model's samples (algorithms.md §15), (n,) int64 on
    the CPU: ``labels`` checked, or each seed modulo ``model.classes``; None for an
    unconditional model (which refuses labels)."""
    k = model.classes
    if not k:
        if labels is not None:
            raise InputError("labels: this model is unconditional (model.classes=0)")
        return None
    if labels is None:  # in Python: seeds may pass int64's range
        return torch.tensor([s % k for s in seeds], dtype=torch.int64)
    check_tensor(labels, "labels")
    try:
        y = torch.as_tensor(labels)
    except (ValueError, TypeError, OverflowError, RuntimeError):
        raise InputError(f"labels: expected {len(seeds)} integer classes 0..{k - 1}") from None
    if y.ndim > 1:
        raise InputError(f"labels: shape {tuple(y.shape)}; expected one class per sample, "
                         f"({len(seeds)},)")
    y = y.reshape(-1)
    if y.is_floating_point() or len(y) != len(seeds):
        raise InputError(f"labels: expected {len(seeds)} integer classes, got "
                         f"{len(y)} of dtype {y.dtype}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
        raise InputError(f"labels span {int(y.min())}..{int(y.max())}: this model has classes "
                         f"0..{k - 1}")
    return y.long()


def _checked_clamp(clamp, n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``clamp = (mask, values)`` checked: a pair of tensors or arrays of numbers, each
    either one row of the model's ``d`` values (for every sample) or one row per sample
    ((n, d) or (n, *shape)); else an :class:`InputError` naming it."""
    if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
        raise InputError(f"clamp: expected a pair (mask, values), got {type(clamp).__name__}"
                         + (f" of {len(clamp)}" if isinstance(clamp, (tuple, list)) else ""))
    out = []
    for part, x in zip(("mask", "values"), clamp):
        t = as_tensor(x, f"clamp {part}")
        if not (t.numel() == d or (t.ndim >= 2 and t.shape[0] == n and t.numel() == n * d)):
            raise InputError(f"clamp {part}: shape {tuple(t.shape)}; expected the model's "
                             f"{d} values once, ({d},), or once per sample, ({n}, {d})")
        out.append(t)
    return out[0], out[1]


def _clamp_rows(clamp, idx: slice, d: int, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """This batch's rows of ``clamp = (mask, values)`` (rows or one row for all), on ``device``."""
    if clamp is None:
        return None
    mask, values = (torch.as_tensor(c) for c in clamp)
    mask = mask.reshape(-1, d).bool()
    values = values.reshape(-1, d).float()
    mask = mask if mask.shape[0] == 1 else mask[idx]
    values = values if values.shape[0] == 1 else values[idx]
    return mask.to(device), values.to(device)
