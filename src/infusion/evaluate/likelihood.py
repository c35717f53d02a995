"""Likelihood estimates: log-weights ℓ, the stochastic lower bound and importance sampling
(algorithms.md §7, paper eqs. 2–3); the Parzen-window estimator (§8) is in :mod:`infusion.evaluate.parzen`.

One code path serves every method: the draws only call the method's hook
``method.log_weight(model, x, generator, final_var=...)``, which returns one draw of ℓ per
example, (B,). The k draws of many examples are laid out along the batch axis in chunks of at
most ``batch_size`` rows, and :class:`StreamingEstimate` folds each chunk into per-example
running sums and log-sum-exps, so memory is O(batch_size + N) whatever k is (the paper's
k = 20,000 on 1,000 examples would be 160 MB of float64 ℓ per repeat if kept).
:func:`log_weights` still returns the whole (N, k) array for small k and for tests. Evaluation
uses the stored per-step batch-norm statistics (algorithms.md §6): the model is put in eval
mode, so examples never influence each other. ``bn_stats="batch"`` instead normalises each
example with the statistics of its evaluation batch (distinct examples, one draw each per
pass): transductive, not the density of a fixed model — the paper's appendix A.1 mode for its
train row, offered to reproduce it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import torch
from tqdm.auto import tqdm

from .._logging import bar_disable
from ..chain.model import check_model, given
from ..data import to_model_space
from ..errors import InputError

# The isotropic final variance s² (algorithms.md §7, Table 2 "+ isotropic"): logspace(-4, 0, 33),
# eight values a decade from the operator's variance floor ε = 1e-4 to 1 (the whole pixel range
# [0, 1] as one standard deviation). One grid step changes log s² by 0.29, which costs at most
# (d/2)·0.144²/2 ≈ 4 nats on MNIST (d = 784) against the best s² in between.
ISO_VAR_GRID: tuple[float, ...] = tuple(float(v) for v in np.logspace(-4, 0, 33))
# How a likelihood evaluation normalises per-step batch norm (algorithms.md §6): the stored
# per-step statistics, or each evaluation batch's own ("batch", transductive).
BN_MODES = ("stored", "batch")


def _check_ready(model) -> None:
    if not model.stats_ready:
        raise RuntimeError(
            "the model has no stored per-step batch-norm statistics; run the statistics pass of "
            "algorithms.md §6 (infusion.compute_step_statistics) before evaluating likelihoods")


@torch.no_grad()
def log_weight_chunks(model, method, x: torch.Tensor, k: int, generator: torch.Generator | None,
                      batch_size: int = 1000, final_var: float | None = None,
                      on_rows: Callable[[int], object] | None = None,
                      labels: torch.Tensor | None = None, bn_stats: str = "stored",
                      ) -> Iterator[tuple[int, torch.Tensor]]:
    """ℓ of algorithms.md §7 for ``k`` proposal draws of every example, chunk by chunk.

    Yields ``(lo, block)``: ``block`` (b, kk), float64 on the CPU, holds the next kk draws of
    examples ``lo … lo+b-1``; every example's draws come in order, so the first k' draws of an
    example are the first k' columns it has received. Each forward pass holds at most
    ``batch_size`` rows: a chunk of examples, each repeated along the batch axis for a chunk of
    its draws (with k >= batch_size, one example at a time in chunks of ``batch_size`` draws).
    ``x`` is in model space (already dequantised); ``final_var``: the final transition's
    variance replaced by this constant (the isotropic variant). Runs in eval mode (stored
    per-step statistics) and restores the model's mode. ``on_rows(n)`` is called after each
    forward pass with its number of rows (progress). ``labels`` (N,): the classes of a
    class-conditional model's examples, so that ℓ bounds log p(x | y) (algorithms.md §15).

    ``bn_stats="batch"`` (transductive): runs in train mode, each forward pass one draw of
    every example of a chunk of up to ``batch_size`` distinct examples (chunks of even sizes),
    so each example is normalised with its chunk's statistics; blocks are (b, 1).
    """
    if bn_stats not in BN_MODES:
        raise InputError(f"bn_stats={bn_stats!r}: expected one of {', '.join(BN_MODES)}")
    if not method.has_likelihood:
        raise InputError(f"method {method.name!r} has no likelihood estimate")
    if k < 1 or batch_size < 1:
        raise InputError(f"log_weights: k={k} and batch_size={batch_size} must be >= 1")
    if final_var is not None and not final_var > 0:
        raise InputError(f"final_var={final_var}: the isotropic final variance must be > 0")
    if bn_stats == "stored":
        _check_ready(model)
    device = model_device(model)
    x = x.reshape(len(x), -1)
    if bn_stats == "batch":
        yield from _transductive_chunks(model, method, x, k, generator, batch_size, final_var,
                                        on_rows, labels, device)
        return
    draws = min(k, batch_size)  # draws per chunk
    per = max(1, batch_size // draws)  # examples per chunk
    kw = {} if final_var is None else {"final_var": float(final_var)}
    was_training = model.training
    model.eval()
    try:
        for lo in range(0, len(x), per):
            xs = x[lo: lo + per].to(device)
            ys = None if labels is None else labels[lo: lo + per].to(device)
            for j in range(0, k, draws):
                kk = min(draws, k - j)
                rows = xs.repeat_interleave(kk, 0)  # (b·kk, d): example i's draws are adjacent
                conditioned = given(model, None if ys is None else ys.repeat_interleave(kk, 0))
                lw = method.log_weight(conditioned, rows, generator, **kw)
                if on_rows is not None:
                    on_rows(len(rows))
                yield lo, lw.reshape(len(xs), kk).double().cpu()
    finally:
        model.train(was_training)


def _transductive_chunks(model, method, x, k, generator, batch_size, final_var, on_rows, labels,
                         device) -> Iterator[tuple[int, torch.Tensor]]:
    """:func:`log_weight_chunks` with ``bn_stats="batch"``: one draw of every example of an
    evaluation batch per pass, batch norm with that batch's statistics (train mode)."""
    n_chunks = -(-len(x) // batch_size)
    bounds = [len(x) * i // n_chunks for i in range(n_chunks + 1)]  # even chunk sizes
    if min(b - a for a, b in pairwise(bounds)) < 2:
        raise InputError(f"bn_stats='batch' normalises each example with its evaluation batch: "
                         f"{len(x)} example(s) in batches of {batch_size} leave a batch of "
                         "fewer than 2; score at least 2 examples")
    kw = {} if final_var is None else {"final_var": float(final_var)}
    was_training = model.training
    model.train()
    try:
        for lo, hi in pairwise(bounds):
            xs = x[lo:hi].to(device)
            conditioned = given(model, None if labels is None else labels[lo:hi].to(device))
            for _ in range(k):
                lw = method.log_weight(conditioned, xs, generator, **kw)
                if on_rows is not None:
                    on_rows(len(xs))
                yield lo, lw.reshape(len(xs), 1).double().cpu()
    finally:
        model.train(was_training)


def log_weights(model, method, x: torch.Tensor, k: int, generator: torch.Generator | None,
                batch_size: int = 1000, final_var: float | None = None,
                progress: bool = False, labels: torch.Tensor | None = None,
                bn_stats: str = "stored") -> torch.Tensor:
    """ℓ for ``k`` independent proposal draws of every example, algorithms.md §7: (N, d) -> (N, k).

    The whole array, float64 on the CPU, from :func:`log_weight_chunks` (same draws, same
    layout): for tests and small k. Evaluation streams instead (:func:`stream_estimate`).
    """
    out = torch.empty(len(x), k, dtype=torch.float64)
    filled = np.zeros(len(x), np.int64)
    with progress_bar(len(x) * k, f"log-weights (k={k})", progress) as bar:
        for lo, block in log_weight_chunks(model, method, x, k, generator, batch_size, final_var,
                                           bar.update, labels, bn_stats):
            j = int(filled[lo])
            out[lo: lo + len(block), j: j + block.shape[1]] = block
            filled[lo: lo + len(block)] += block.shape[1]
    return out


def lower_bound(lw: torch.Tensor) -> torch.Tensor:
    """Stochastic lower bound per example: the mean of ℓ over its k draws, (N, k) -> (N,)."""
    return lw.mean(-1)


def importance_sampling(lw: torch.Tensor) -> torch.Tensor:
    """Importance-sampling estimate per example: logsumexp(ℓ_1..ℓ_k) − log k, (N, k) -> (N,)."""
    return torch.logsumexp(lw, -1) - math.log(lw.shape[-1])


class StreamingEstimate:
    """The lower bound and IS estimate of algorithms.md §7 accumulated over chunks of draws.

    Per example it keeps the running sum of ℓ (the bound is sum / k), the running
    logsumexp of ℓ (IS = logsumexp − log k) and, for every k' in ``ks``, the logsumexp of the
    first k' draws (the nested IS@k', from the same stream): (3 + len(ks))·N numbers, whatever
    k is. :meth:`update` takes the next draws of a block of examples, (b, kk).
    """

    def __init__(self, n: int, ks: Sequence[int] = ()) -> None:
        self.ks = sorted({int(c) for c in ks if int(c) >= 1})
        self.total = torch.zeros(n, dtype=torch.float64)  # Σ_j ℓ_j
        self.lse = torch.full((n,), -math.inf, dtype=torch.float64)  # logsumexp_j ℓ_j
        self.count = torch.zeros(n, dtype=torch.int64)  # draws seen
        self.nested = {c: torch.full((n,), math.nan, dtype=torch.float64) for c in self.ks}

    def update(self, lo: int, block: torch.Tensor) -> None:
        """Fold in the next ``kk`` draws of examples ``lo … lo+b-1``: ``block`` (b, kk)."""
        block = torch.as_tensor(block, dtype=torch.float64)
        rows = slice(lo, lo + len(block))
        seen = self.count[rows]
        j, kk = int(seen[0]), block.shape[1]
        if bool((seen != j).any()):
            raise ValueError("StreamingEstimate.update: a block's examples must have seen the "
                             "same number of draws")
        for c in self.ks:  # IS@c: the first c draws; c falls inside this block
            if j < c <= j + kk:
                part = torch.logsumexp(block[:, : c - j], -1)
                self.nested[c][rows] = torch.logaddexp(self.lse[rows], part)
        self.total[rows] += block.sum(-1)
        self.lse[rows] = torch.logaddexp(self.lse[rows], torch.logsumexp(block, -1))
        self.count[rows] += kk

    @property
    def numel(self) -> int:
        """Numbers kept (the memory of the estimator): (3 + len(ks))·N, independent of k."""
        return sum(t.numel() for t in (self.total, self.lse, self.count, *self.nested.values()))

    def _k(self) -> int:
        k = int(self.count[0]) if len(self.count) else 0
        if k < 1 or bool((self.count != k).any()):
            raise ValueError("StreamingEstimate: every example needs the same number (>= 1) of draws")
        return k

    def lower_bound(self) -> torch.Tensor:
        """Per-example mean of ℓ, (N,): :func:`lower_bound` of the whole array."""
        return self.total / self._k()

    def importance_sampling(self, k: int | None = None) -> torch.Tensor:
        """Per-example IS estimate from all draws, or from the first ``k`` (one of ``ks``), (N,)."""
        if k is None or k == self._k():
            return self.lse - math.log(self._k())
        if k not in self.nested or k > self._k():
            raise KeyError(f"IS@{k} was not accumulated (ks={self.ks}, {self._k()} draws)")
        return self.nested[k] - math.log(k)


def stream_estimate(model, method, x: torch.Tensor, k: int, generator: torch.Generator | None,
                    batch_size: int = 1000, final_var: float | None = None,
                    ks: Sequence[int] = (), on_rows: Callable[[int], object] | None = None,
                    labels: torch.Tensor | None = None, bn_stats: str = "stored"
                    ) -> StreamingEstimate:
    """The bound and IS estimate of every example of ``x`` (model space) with ``k`` draws,
    algorithms.md §7, without ever holding (N, k): :func:`log_weight_chunks` folded into a
    :class:`StreamingEstimate` (with IS@k' for k' in ``ks``, k' < k). Same draws as
    :func:`log_weights` with the same generator and ``batch_size``."""
    acc = StreamingEstimate(len(x), [c for c in ks if c < k])
    for lo, block in log_weight_chunks(model, method, x, k, generator, batch_size, final_var,
                                       on_rows, labels, bn_stats):
        acc.update(lo, block)
    return acc


@dataclass
class Estimate:
    """A per-example estimate over ``repeats`` evaluations (nats per example).

    ``per_example`` (repeats, N); ``mean`` over everything; ``stderr`` the standard error over
    examples (of the per-example averages across repeats); ``spread`` the standard deviation of
    the repeat means (Table 2's ±; None with one repeat).
    """

    per_example: np.ndarray
    mean: float
    stderr: float
    spread: float | None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_array(cls, values: np.ndarray, **extra) -> Estimate:
        v = np.atleast_2d(np.asarray(values, np.float64))
        per = v.mean(0)
        stderr = float(per.std(ddof=1) / math.sqrt(len(per))) if len(per) > 1 else 0.0
        spread = float(v.mean(1).std(ddof=1)) if len(v) > 1 else None
        return cls(v, float(v.mean()), stderr, spread, dict(extra))

    def summary(self) -> dict:
        """JSON-able numbers (without the per-example array)."""
        return {"mean": self.mean, "stderr": self.stderr, "spread": self.spread,
                "n": int(self.per_example.shape[1]), "repeats": int(self.per_example.shape[0]),
                **self.extra}


def estimate_likelihood(model, method, data: torch.Tensor, k: int, *, seed: int = 0,
                        repeats: int = 1, batch_size: int = 1000, final_var: float | None = None,
                        ks: Sequence[int] | None = None, progress: bool = False,
                        on_repeat: Callable[[int, dict[str, Estimate]], object] | None = None,
                        desc: str = "", labels=None, bn_stats: str = "stored"
                        ) -> dict[str, Estimate]:
    """Lower bound and IS estimate of log p(x) for every example of ``data``, algorithms.md §7.

    ``data``: uint8 pixels (N, ...) — dequantised afresh in every repeat, once per example,
    all k draws scoring the same point — or continuous points used as they are. Each repeat
    uses its own generator (seed + repeat), on the model's device, and streams its draws
    (:func:`stream_estimate`: memory O(batch_size + N) at any k). The bound and IS come from
    the same draws. Returns ``{"lb": Estimate, "is": Estimate}`` with k draws, plus ``"is@k'"``
    for each k' in ``ks`` (IS from the first k' of the same draws, so nested in k).
    ``final_var``: the isotropic variant's fixed final variance. ``on_repeat(r, partial)``
    is called after repeat r (1-based) with the estimates over the r repeats done so far.
    ``progress``: one bar over all repeats' draws, with the remaining time. ``labels`` (N,):
    the examples' classes for a class-conditional model: the estimates are of log p(x | y).
    ``bn_stats``: "stored" (a fixed model) or "batch" (transductive; see the module docstring).
    """
    check_model(model, stand_ins=True)
    if repeats < 1:
        raise InputError(f"repeats={repeats}: expected >= 1")
    ks = sorted({int(c) for c in (ks or ()) if 1 <= int(c) < k})
    device = model_device(model)
    data = torch.as_tensor(data)
    labels = None if labels is None else torch.as_tensor(labels, dtype=torch.int64)
    lbs, iss, sub = [], [], {c: [] for c in ks}
    common = {"k": k, "final_var": final_var, "seed": seed, "bn_stats": bn_stats}

    def results() -> dict[str, Estimate]:
        out = {"lb": Estimate.from_array(np.stack(lbs), **common),
               "is": Estimate.from_array(np.stack(iss), **common)}
        for c in ks:
            out[f"is@{c}"] = Estimate.from_array(np.stack(sub[c]), **{**common, "k": c})
        return out

    with progress_bar(repeats * len(data) * k, desc or f"likelihood (k={k})", progress) as bar:
        for r in range(repeats):
            if repeats > 1:
                bar.set_postfix_str(f"repeat {r + 1}/{repeats}")
            g = torch.Generator(device=device).manual_seed(seed + r)
            x = to_model_space(data.to(device), g)
            acc = stream_estimate(model, method, x, k, g, batch_size, final_var, ks, bar.update,
                                  labels, bn_stats)
            lbs.append(acc.lower_bound().numpy())
            iss.append(acc.importance_sampling().numpy())
            for c in ks:
                sub[c].append(acc.importance_sampling(c).numpy())
            if on_repeat is not None:
                on_repeat(r + 1, results())
    return results()


def select_final_var(model, method, data: torch.Tensor, grid: Sequence[float] = ISO_VAR_GRID,
                     k: int = 10, *, seed: int = 0, batch_size: int = 1000,
                     progress: bool = False, labels=None) -> tuple[float, dict[float, float]]:
    """The isotropic variant's one final variance s², algorithms.md §7 (Table 2 "+ isotropic",
    as Wu et al. 2016): the value of ``grid`` with the highest mean IS estimate (``k`` draws)
    on ``data`` (validation examples, dequantised once). Every s² scores the same draws
    (one generator seed; s² changes no draw, only the last term), so the comparison carries
    no draw-to-draw noise. Returns s² and the mean IS for every value of the grid."""
    if len(grid) == 0 or any(not v > 0 for v in grid):
        raise InputError(f"isotropic variance grid {list(grid)}: expected values > 0")
    device = model_device(model)
    x = to_model_space(torch.as_tensor(data).to(device),
                       torch.Generator(device=device).manual_seed(seed))
    table = {}
    with progress_bar(len(grid) * len(x) * k, "isotropic variance (validation)", progress) as bar:
        for v in grid:
            g = torch.Generator(device=device).manual_seed(seed + 1)
            acc = stream_estimate(model, method, x, k, g, batch_size, float(v), (), bar.update,
                                  None if labels is None else torch.as_tensor(labels))
            table[float(v)] = float(acc.importance_sampling().mean())
    return max(table, key=table.get), table


def model_device(model) -> torch.device:
    """The device of the model's first parameter or buffer (CPU if it has none)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def progress_bar(total: int, desc: str, progress: bool, unit: str = "draw"):
    """A tqdm bar showing the estimated remaining time (a context manager; shown on a terminal
    when ``progress``, else silent)."""
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False,
                dynamic_ncols=True, smoothing=0.05, disable=bar_disable(progress))
