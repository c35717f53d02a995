"""Network bodies shared by every method: the MLP and conv generator of algorithms.md §2, per-step BN.

A network maps a flat state ``z`` (B, d) and a step index ``t`` (1-based) to the two raw heads
``(a_μ, a_σ)``, each (B, d). All weights are shared across steps except batch norm, which has
its own γ_t, β_t and statistics for every step (paper footnote 5); steps beyond the number of
batch-norm slots reuse the last one (algorithms.md §2: sampling with T' > T reuses step T's).

A class-conditional body (``classes`` > 0, algorithms.md §15) also takes the classes ``y``
(B,) and adds a learned embedding of y to the pre-activation of every hidden layer (per unit,
or per channel of a feature map), before its batch norm; the embeddings start at zero.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import nn

from .errors import InputError


def batch_moments(h: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature batch mean and biased variance of h (B, F) or per channel of (B, F, H, W).

    With ``reduce`` (a differentiable sum over processes, each holding a shard of the batch)
    the moments are those of the whole batch: mean = Σx/N, then var = Σ(x - mean)²/N.
    """
    dims = (0,) + tuple(range(2, h.dim()))
    if reduce is None:
        if h.shape[0] < 2:
            raise InputError("batch statistics need a batch of at least 2 examples")
        return h.mean(dims), h.var(dims, unbiased=False)
    count = reduce(h.new_tensor([float(h.shape[0])]))  # the trainer's batches hold >= 2
    n = count * math.prod(h.shape[2:])  # values per feature: examples × spatial positions
    mean = reduce(h.sum(dims)) / n
    var = reduce((h - mean.view((1, -1) + (1,) * (h.dim() - 2))).square().sum(dims)) / n
    return mean, var


class StepBatchNorm(nn.Module):
    """Per-step batch norm (paper footnote 5; algorithms.md §2, §6).

    Modes:
      * ``self.training`` or ``not self.has_stats``: normalise with the batch's own statistics
        (training, and the paper's validation scoring during training).
      * ``eval()`` with stored statistics: normalise with the per-step averages of algorithms.md §6.
      * while ``collecting``: use batch statistics and add the batch mean and (biased) variance
        of each step to running sums, so :meth:`finish_collect` stores their exact average.
    """

    def __init__(self, features: int, steps: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.steps, self.eps = steps, eps
        self.weight = nn.Parameter(torch.ones(steps, features))
        self.bias = nn.Parameter(torch.zeros(steps, features))
        self.register_buffer("stat_mean", torch.zeros(steps, features))
        self.register_buffer("stat_var", torch.ones(steps, features))
        self.register_buffer("stat_ready", torch.zeros((), dtype=torch.bool))
        self.collecting = False
        self._sum_mean = self._sum_var = self._count = None
        # A differentiable sum across processes (set by distributed.shard_model), so that a
        # batch split over processes is normalised with the whole batch's statistics.
        self.reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def has_stats(self) -> bool:
        return bool(self.stat_ready)

    def slot(self, t: int) -> int:
        """0-based slot of step t (1-based); steps past the last slot reuse it."""
        if t < 1:
            raise InputError(f"step index t={t}: steps are numbered from 1")
        return min(t, self.steps) - 1

    def forward(self, h: torch.Tensor, t: int) -> torch.Tensor:  # h: (B, F) or (B, F, H, W)
        k = self.slot(t)
        x = h.float()  # statistics in fp32, also under bf16 autocast
        if self.training or self.collecting or not self.has_stats:
            mean, var = batch_moments(x, self.reduce)
            if self.collecting:
                self._sum_mean[k] += mean.detach().double()
                self._sum_var[k] += var.detach().double()
                self._count[k] += 1
        else:
            mean, var = self.stat_mean[k], self.stat_var[k]
        view = (1, -1) + (1,) * (h.dim() - 2)  # per feature, or per channel of a feature map
        out = ((x - mean.view(view)) * torch.rsqrt(var.view(view) + self.eps)
               * self.weight[k].view(view) + self.bias[k].view(view))
        return out.to(h.dtype)

    def start_collect(self) -> None:
        shape = self.stat_mean.shape
        dev = self.stat_mean.device
        self._sum_mean = torch.zeros(shape, dtype=torch.float64, device=dev)
        self._sum_var = torch.zeros(shape, dtype=torch.float64, device=dev)
        self._count = torch.zeros(shape[0], dtype=torch.float64, device=dev)
        self.collecting = True

    def finish_collect(self) -> None:
        """Store the exact average over collected batches, per step (algorithms.md §6)."""
        seen = self._count > 0
        if not bool(seen.all()):
            missing = [i + 1 for i in range(self.steps) if not seen[i]]
            raise RuntimeError(f"batch-norm statistics pass saw no batch for steps {missing}")
        self.stat_mean.copy_((self._sum_mean / self._count[:, None]).to(self.stat_mean.dtype))
        self.stat_var.copy_((self._sum_var / self._count[:, None]).to(self.stat_var.dtype))
        self.stat_ready.fill_(True)
        self.collecting = False
        self._sum_mean = self._sum_var = self._count = None


def class_embeddings(classes: int, widths: list[int]) -> nn.ModuleList | None:
    """One embedding table of each hidden width for a class-conditional body (algorithms.md
    §15), initialised at zero; None for an unconditional one."""
    if not classes:
        return None
    tables = nn.ModuleList(nn.Embedding(classes, w) for w in widths)
    for table in tables:
        nn.init.zeros_(table.weight)
    return tables


def check_classes(net: nn.Module, y: torch.Tensor | None, batch: int) -> None:
    """``y`` is given exactly when the body is class-conditional, one class per example."""
    if net.class_embeds is None:
        if y is not None:
            raise InputError("this model is unconditional (model.classes=0): it takes no classes")
    elif y is None:
        raise InputError(f"this model is class-conditional (model.classes="
                         f"{net.class_embeds[0].num_embeddings}): give the class of each example")
    elif y.shape != (batch,):
        raise InputError(f"classes of shape {tuple(y.shape)} for a batch of {batch}: "
                         f"expected ({batch},)")


class MLP(nn.Module):
    """MNIST/TFD operator body, algorithms.md §2: d → h₁ → … → ReLU with per-step BN → two heads of size d."""

    def __init__(self, d: int, hidden: tuple[int, ...], steps: int, batch_norm: bool = True,
                 classes: int = 0) -> None:
        super().__init__()
        self.class_embeds = class_embeddings(classes, list(hidden))
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        width = d
        for h in hidden:
            self.linears.append(nn.Linear(width, h))
            self.norms.append(StepBatchNorm(h, steps) if batch_norm else nn.Identity())
            width = h
        self.head_mu = nn.Linear(width, d)
        self.head_sigma = nn.Linear(width, d)

    def forward(self, z: torch.Tensor, t: int, y: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        check_classes(self, y, z.shape[0])
        h = z
        for i, (linear, norm) in enumerate(zip(self.linears, self.norms)):
            h = linear(h)
            if y is not None:
                h = h + self.class_embeds[i](y)
            h = norm(h, t) if isinstance(norm, StepBatchNorm) else h
            h = torch.relu(h)
        return self.head_mu(h), self.head_sigma(h)


class StepEmbeddingMLP(MLP):
    """The MLP of algorithms.md §2 conditioned on a per-example step index (diffusion, algorithms.md §13).

    Same layers, heads and batch norm as :class:`MLP`; in addition a sinusoidal embedding of
    t (``embed`` features) is mapped by one linear layer per hidden layer and added to that
    layer's pre-activation, so one batch may mix steps. ``t`` is an int or a (B,) tensor.
    """

    def __init__(self, d: int, hidden: tuple[int, ...], steps: int, batch_norm: bool = True,
                 embed: int = 64) -> None:
        super().__init__(d, hidden, steps, batch_norm)
        if embed < 2 or embed % 2:
            raise InputError(f"embed={embed}: expected an even number >= 2")
        self.embed = embed
        self.step_proj = nn.ModuleList(nn.Linear(embed, h) for h in hidden)

    def step_features(self, t: torch.Tensor) -> torch.Tensor:
        """Sinusoidal features (B, embed) of steps t (B,), frequencies 1 … 1/10000."""
        half = self.embed // 2
        freqs = torch.exp(-torch.arange(half, device=t.device) * (9.2103404 / max(half - 1, 1)))
        arg = t.float()[:, None] * freqs[None]
        return torch.cat([torch.sin(arg), torch.cos(arg)], 1)

    def forward(self, z: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        steps = torch.as_tensor(t, device=z.device).reshape(-1).expand(z.shape[0])
        feats = self.step_features(steps)
        h = z
        for linear, proj, norm in zip(self.linears, self.step_proj, self.norms):
            h = linear(h) + proj(feats)
            h = norm(h, 1) if isinstance(norm, StepBatchNorm) else h  # one shared slot
            h = torch.relu(h)
        return self.head_mu(h), self.head_sigma(h)


class ConvGenerator(nn.Module):
    """CIFAR-10 / CelebA operator body, algorithms.md §2 (paper §4; the generator of Salimans et al. 2016).

    The flat state z(t-1) (B, C·H·W) goes through one fully connected layer to a 4×4 map of
    ``hidden[0]`` channels, then transposed convolutions (5×5, stride 2) that double the side
    and step through ``hidden[1:]`` channels, then two transposed-convolution heads with C
    channels for a_μ and a_σ: ``len(hidden)`` doublings in all, so the images are square with
    side 4·2^len(hidden) (CIFAR-10: (512, 256, 128) → 32; CelebA: (512, 256, 128, 64) → 64).
    Per-step batch norm (per unit after the linear layer, per channel after each transposed
    convolution) and ReLU inside, as in the MLP.
    """

    def __init__(self, d: int, hidden: tuple[int, ...], steps: int, batch_norm: bool = True,
                 classes: int = 0) -> None:
        super().__init__()
        side = 4 * 2 ** len(hidden)
        if d % (side * side):
            raise InputError(f"conv net with hidden={tuple(hidden)} makes {side}×{side} images, "
                             f"but the data have d={d} values, not a multiple of {side * side}; "
                             f"use one channel width per doubling of 4×4 up to the image side")
        self.channels, self.side, self.hidden = d // (side * side), side, tuple(hidden)
        self.fc = nn.Linear(d, 16 * hidden[0])
        widths = list(hidden)
        self.deconvs = nn.ModuleList(_deconv(a, b) for a, b in itertools.pairwise(widths))
        norm = (lambda f: StepBatchNorm(f, steps)) if batch_norm else (lambda f: nn.Identity())
        self.norms = nn.ModuleList([norm(16 * hidden[0])] + [norm(w) for w in widths[1:]])
        self.head_mu = _deconv(widths[-1], self.channels)
        self.head_sigma = _deconv(widths[-1], self.channels)
        self.class_embeds = class_embeddings(classes, [16 * hidden[0]] + widths[1:])

    def forward(self, z: torch.Tensor, t: int, y: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        check_classes(self, y, z.shape[0])
        b = z.shape[0]
        h = self.fc(z)  # (B, 16·hidden[0])
        if y is not None:
            h = h + self.class_embeds[0](y)
        h = torch.relu(_norm(self.norms[0], h, t)).view(b, self.hidden[0], 4, 4)
        for i, (deconv, norm) in enumerate(zip(self.deconvs, self.norms[1:]), 1):
            h = deconv(h)  # side doubles
            if y is not None:
                h = h + self.class_embeds[i](y)[:, :, None, None]
            h = torch.relu(_norm(norm, h, t))
        return self.head_mu(h).reshape(b, -1), self.head_sigma(h).reshape(b, -1)


def _deconv(c_in: int, c_out: int) -> nn.ConvTranspose2d:
    """5×5 transposed convolution, stride 2: side s -> 2s (Salimans et al.'s Deconv2DLayer)."""
    return nn.ConvTranspose2d(c_in, c_out, 5, stride=2, padding=2, output_padding=1)


def _norm(norm: nn.Module, h: torch.Tensor, t: int) -> torch.Tensor:
    return norm(h, t) if isinstance(norm, StepBatchNorm) else h


def build_net(kind: str, d: int, hidden: tuple[int, ...], steps: int, batch_norm: bool = True,
              classes: int = 0) -> nn.Module:
    """The network body named by ``model.net``: ``mlp`` (MNIST/TFD) or ``conv`` (CIFAR-10/CelebA),
    class-conditional with ``classes`` > 0."""
    if kind == "mlp":
        return MLP(d, hidden, steps, batch_norm, classes)
    if kind == "conv":
        return ConvGenerator(d, hidden, steps, batch_norm, classes)
    raise InputError(f"unknown network {kind!r}; available: mlp, conv")


def step_norms(module: nn.Module) -> list[StepBatchNorm]:
    """Every per-step batch norm inside ``module``."""
    return [m for m in module.modules() if isinstance(m, StepBatchNorm)]
