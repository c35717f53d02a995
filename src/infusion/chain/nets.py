"""Network bodies shared by every method: the MLP and conv generator of algorithms.md §2, a small
U-Net (algorithms.md §14), per-step BN.

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

from ..errors import InputError


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


# How a statistics pass averages the batch statistics (algorithms.md §6).
BN_AVERAGES = ("exact", "moving")


class StepBatchNorm(nn.Module):
    """Per-step batch norm (paper footnote 5; algorithms.md §2, §6).

    Modes:
      * ``self.training`` or ``not self.has_stats``: normalise with the batch's own statistics
        (training, and the paper's validation scoring during training).
      * ``eval()`` with stored statistics: normalise with the per-step averages of algorithms.md §6.
      * while ``collecting``: use batch statistics and add the batch mean and (biased) variance
        of each step to running sums, so :meth:`finish_collect` stores their exact average
        (or, with ``average="moving"``, keep the authors' moving average, rate 0.1, of the
        batch mean and inverse standard deviation, starting from 0 and 1).
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
        self._sum_mean = self._sum_var = self._count = self._moving = None
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
            if self.collecting and self._moving is not None:  # the authors' running averages
                r = self._moving
                self._sum_mean[k] = (1 - r) * self._sum_mean[k] + r * mean.detach().double()
                inv_std = torch.rsqrt(var.detach().double() + self.eps)
                self._sum_var[k] = (1 - r) * self._sum_var[k] + r * inv_std
                self._count[k] += 1
            elif self.collecting:
                self._sum_mean[k] += mean.detach().double()
                self._sum_var[k] += var.detach().double()
                self._count[k] += 1
        else:
            mean, var = self.stat_mean[k], self.stat_var[k]
        view = (1, -1) + (1,) * (h.dim() - 2)  # per feature, or per channel of a feature map
        out = ((x - mean.view(view)) * torch.rsqrt(var.view(view) + self.eps)
               * self.weight[k].view(view) + self.bias[k].view(view))
        return out.to(h.dtype)

    def start_collect(self, average: str = "exact", rate: float = 0.1) -> None:
        """Begin a statistics pass: ``average="exact"`` (algorithms.md §6) or ``"moving"``
        (the authors' code: m ← (1-r)·m + r·mean, s ← (1-r)·s + r/√(var+ε) from m = 0, s = 1)."""
        if average not in BN_AVERAGES:
            raise InputError(f"batch-norm statistics average {average!r}: expected one of "
                             f"{', '.join(BN_AVERAGES)}")
        shape = self.stat_mean.shape
        dev = self.stat_mean.device
        self._moving = rate if average == "moving" else None
        self._sum_mean = torch.zeros(shape, dtype=torch.float64, device=dev)
        self._sum_var = (torch.ones if self._moving else torch.zeros)(
            shape, dtype=torch.float64, device=dev)
        self._count = torch.zeros(shape[0], dtype=torch.float64, device=dev)
        self.collecting = True

    def finish_collect(self) -> None:
        """Store the exact average over collected batches, per step (algorithms.md §6), or the
        moving averages, the inverse std s stored as the variance 1/s² − ε it stands for."""
        seen = self._count > 0
        if not bool(seen.all()):
            missing = [i + 1 for i in range(self.steps) if not seen[i]]
            raise RuntimeError(f"batch-norm statistics pass saw no batch for steps {missing}")
        if self._moving is not None:
            mean, var = self._sum_mean, (self._sum_var.pow(-2) - self.eps).clamp_min(0.0)
        else:
            mean = self._sum_mean / self._count[:, None]
            var = self._sum_var / self._count[:, None]
        self.stat_mean.copy_(mean.to(self.stat_mean.dtype))
        self.stat_var.copy_(var.to(self.stat_var.dtype))
        self.stat_ready.fill_(True)
        self.collecting = False
        self._sum_mean = self._sum_var = self._count = self._moving = None

    def stats_snapshot(self) -> tuple[torch.Tensor, ...]:
        """Copies of the stored statistics (see :meth:`stats_restore`)."""
        return self.stat_mean.clone(), self.stat_var.clone(), self.stat_ready.clone()

    def stats_restore(self, snap: tuple[torch.Tensor, ...]) -> None:
        for buf, value in zip((self.stat_mean, self.stat_var, self.stat_ready), snap):
            buf.copy_(value)


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


STEP_EMBED = 64  # sinusoidal step features of the diffusion and flow bodies


def check_embed(embed: int) -> int:
    if embed < 2 or embed % 2:
        raise InputError(f"embed={embed}: expected an even number >= 2")
    return embed


def step_features(t, embed: int, z: torch.Tensor) -> torch.Tensor:
    """Sinusoidal features (B, embed) of the steps t (an int or (B,)) of a batch z (B, …),
    frequencies 1 … 1/10000 (the transformer's, as DDPM embeds its step)."""
    t = torch.as_tensor(t, device=z.device).reshape(-1).expand(z.shape[0])
    half = embed // 2
    freqs = torch.exp(-torch.arange(half, device=z.device) * (9.2103404 / max(half - 1, 1)))
    arg = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], 1)


class MLP(nn.Module):
    """MNIST/TFD operator body, algorithms.md §2: d → h₁ → … → ReLU with per-step BN → two heads of size d.

    ``out`` > 0 gives heads of that size instead of d, and ``sigma_head=False`` only the first
    head (its second output is then None): the VAE's encoder and decoder (algorithms.md §16).
    """

    def __init__(self, d: int, hidden: tuple[int, ...], steps: int, batch_norm: bool = True,
                 classes: int = 0, out: int = 0, sigma_head: bool = True) -> None:
        super().__init__()
        self.class_embeds = class_embeddings(classes, list(hidden))
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        width = d
        for h in hidden:
            self.linears.append(nn.Linear(width, h))
            self.norms.append(StepBatchNorm(h, steps) if batch_norm else nn.Identity())
            width = h
        self.head_mu = nn.Linear(width, out or d)
        self.head_sigma = nn.Linear(width, out or d) if sigma_head else None

    def forward(self, z: torch.Tensor, t: int, y: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_classes(self, y, z.shape[0])
        h = z
        for i, (linear, norm) in enumerate(zip(self.linears, self.norms)):
            h = linear(h)
            if y is not None:
                h = h + self.class_embeds[i](y)
            h = norm(h, t) if isinstance(norm, StepBatchNorm) else h
            h = torch.relu(h)
        return self.head_mu(h), None if self.head_sigma is None else self.head_sigma(h)


class StepEmbeddingMLP(MLP):
    """The MLP of algorithms.md §2 conditioned on a per-example step index (diffusion, algorithms.md §13).

    Same layers, heads and batch norm as :class:`MLP`; in addition a sinusoidal embedding of
    t (``embed`` features) is mapped by one linear layer per hidden layer and added to that
    layer's pre-activation, so one batch may mix steps. ``t`` is an int or a (B,) tensor.
    """

    def __init__(self, d: int, hidden: tuple[int, ...], steps: int, batch_norm: bool = True,
                 embed: int = 64) -> None:
        super().__init__(d, hidden, steps, batch_norm)
        self.embed = check_embed(embed)
        self.step_proj = nn.ModuleList(nn.Linear(embed, h) for h in hidden)

    def forward(self, z: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        feats = step_features(t, self.embed, z)
        h = z
        for linear, proj, norm in zip(self.linears, self.step_proj, self.norms):
            h = linear(h) + proj(feats)
            h = norm(h, 1) if isinstance(norm, StepBatchNorm) else h  # one shared slot
            h = torch.relu(h)
        return self.head_mu(h), self.head_sigma(h)


class ConvGenerator(nn.Module):
    """CIFAR-10 / CelebA operator body, algorithms.md §2 (paper §4; the generator of Salimans et al. 2016).

    The flat state z(t-1) (B, C·H·W) goes through one fully connected layer to a map of
    ``hidden[0]`` channels at the image's size divided by 2^len(hidden), then transposed
    convolutions (5×5, stride 2) that double the side and step through ``hidden[1:]`` channels,
    then two transposed-convolution heads with C channels for a_μ and a_σ: ``len(hidden)``
    doublings in all (CIFAR-10: (512, 256, 128), 4×4 → 32×32; CelebA: (512, 256, 128, 64),
    4×4 → 64×64; MNIST with two widths: 7×7 → 28×28). Per-step batch norm (per unit after the
    linear layer, per channel after each transposed convolution) and ReLU inside, as in the MLP.
    """

    def __init__(self, shape: tuple[int, ...], hidden: tuple[int, ...], steps: int,
                 batch_norm: bool = True, classes: int = 0) -> None:
        super().__init__()
        self.channels, height, width = image_shape(shape, "conv")
        scale = 2 ** len(hidden)
        if height % scale or width % scale:
            raise InputError(f"conv net with hidden={tuple(hidden)} doubles the side "
                             f"{len(hidden)} times, so it makes images whose sides are multiples "
                             f"of {scale}, but the data are {height}×{width}; use one channel "
                             "width per doubling up to the image's side (or model.net=unet)")
        self.base, self.hidden = (height // scale, width // scale), tuple(hidden)
        first = self.base[0] * self.base[1] * hidden[0]
        self.fc = nn.Linear(self.channels * height * width, first)
        widths = list(hidden)
        self.deconvs = nn.ModuleList(_deconv(a, b) for a, b in itertools.pairwise(widths))
        norm = (lambda f: StepBatchNorm(f, steps)) if batch_norm else (lambda f: nn.Identity())
        self.norms = nn.ModuleList([norm(first)] + [norm(w) for w in widths[1:]])
        self.head_mu = _deconv(widths[-1], self.channels)
        self.head_sigma = _deconv(widths[-1], self.channels)
        self.class_embeds = class_embeddings(classes, [first] + widths[1:])

    def forward(self, z: torch.Tensor, t: int, y: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        check_classes(self, y, z.shape[0])
        b = z.shape[0]
        h = self.fc(z)  # (B, base_h·base_w·hidden[0])
        if y is not None:
            h = h + self.class_embeds[0](y)
        h = torch.relu(_norm(self.norms[0], h, t)).view(b, self.hidden[0], *self.base)
        for i, (deconv, norm) in enumerate(zip(self.deconvs, self.norms[1:]), 1):
            h = deconv(h)  # side doubles
            if y is not None:
                h = h + self.class_embeds[i](y)[:, :, None, None]
            h = torch.relu(_norm(norm, h, t))
        return self.head_mu(h).reshape(b, -1), self.head_sigma(h).reshape(b, -1)


class UNet(nn.Module):
    """A small convolutional U-Net body for images of any size, for every method (algorithms.md §14).

    ``hidden`` gives the channels of each resolution: a 3×3 convolution to ``hidden[0]``
    channels at the image's size, one stride-2 3×3 convolution per further width (the side
    halves, rounded up: 28 → 14 → 7), then back up: nearest-neighbour upsampling to the size
    of the matching encoder map, concatenation with it and a 3×3 convolution to its width; two
    3×3 heads with C channels for a_μ and a_σ. After every convolution but the heads: the
    class embedding (``classes`` > 0, algorithms.md §15) and a projection of the sinusoidal
    step embedding (``embed`` > 0: diffusion and the flow) are added per channel, then a
    normalisation, then ReLU. The normalisation is per-step batch norm when ``batch_norm`` (the
    chains indexed by their step, as in the MLP), else group norm, which is per example, so
    that one training batch may mix steps.
    """

    def __init__(self, shape: tuple[int, ...], hidden: tuple[int, ...], steps: int,
                 batch_norm: bool = True, classes: int = 0, embed: int = 0) -> None:
        super().__init__()
        self.shape = image_shape(shape, "unet")
        widths = list(hidden)
        pairs = list(itertools.pairwise(widths))
        self.inp = nn.Conv2d(self.shape[0], widths[0], 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in pairs)
        self.up = nn.ModuleList(nn.Conv2d(b + a, a, 3, padding=1) for a, b in reversed(pairs))
        layers = widths + widths[-2::-1]  # the widths of inp, the downs, the ups
        self.norms = nn.ModuleList(StepBatchNorm(w, steps) if batch_norm
                                   else nn.GroupNorm(math.gcd(w, 8), w) for w in layers)
        self.head_mu = nn.Conv2d(widths[0], self.shape[0], 3, padding=1)
        self.head_sigma = nn.Conv2d(widths[0], self.shape[0], 3, padding=1)
        self.class_embeds = class_embeddings(classes, layers)
        self.embed = check_embed(embed) if embed else 0
        self.step_proj = nn.ModuleList(nn.Linear(embed, w) for w in layers) if embed else None

    def forward(self, z: torch.Tensor, t, y: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        check_classes(self, y, z.shape[0])
        b = z.shape[0]
        feats = step_features(t, self.embed, z) if self.embed else None

        def layer(i: int, h: torch.Tensor) -> torch.Tensor:
            if y is not None:
                h = h + self.class_embeds[i](y)[:, :, None, None]
            if feats is not None:
                h = h + self.step_proj[i](feats)[:, :, None, None]
            norm = self.norms[i]  # a step-embedding body shares one batch-norm slot
            h = norm(h, 1 if self.embed else t) if isinstance(norm, StepBatchNorm) else norm(h)
            return torch.relu(h)

        h = layer(0, self.inp(z.view(b, *self.shape)))
        skips = [h]
        for i, conv in enumerate(self.down, 1):
            h = layer(i, conv(h))
            skips.append(h)
        skips.pop()  # the deepest map is h itself
        for i, conv in enumerate(self.up, 1 + len(self.down)):
            skip = skips.pop()
            h = nn.functional.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = layer(i, conv(torch.cat([h, skip], 1)))
        return self.head_mu(h).reshape(b, -1), self.head_sigma(h).reshape(b, -1)


def image_shape(shape: tuple[int, ...], kind: str) -> tuple[int, int, int]:
    """(C, H, W) of image states, or a clear error for flat ones."""
    if len(shape) != 3:
        raise InputError(f"model.net={kind} needs images (channels, height, width), but the "
                         f"states have shape {tuple(shape)}: use model.net=mlp")
    return tuple(int(s) for s in shape)


def _deconv(c_in: int, c_out: int) -> nn.ConvTranspose2d:
    """5×5 transposed convolution, stride 2: side s -> 2s (Salimans et al.'s Deconv2DLayer)."""
    return nn.ConvTranspose2d(c_in, c_out, 5, stride=2, padding=2, output_padding=1)


def _norm(norm: nn.Module, h: torch.Tensor, t: int) -> torch.Tensor:
    return norm(h, t) if isinstance(norm, StepBatchNorm) else h


def build_net(kind: str, shape: tuple[int, ...], hidden: tuple[int, ...], steps: int,
              batch_norm: bool = True, classes: int = 0, embed: int = 0) -> nn.Module:
    """The network body named by ``model.net`` for states of ``shape``: ``mlp`` (MNIST/TFD),
    ``conv`` (the paper's CIFAR-10/CelebA generator) or ``unet`` (images of any size);
    class-conditional with ``classes`` > 0; with a step embedding of ``embed`` features
    (diffusion and the flow) for ``mlp`` and ``unet``."""
    d = math.prod(shape)
    if kind == "mlp":
        if embed and classes:
            raise InputError("the step-embedding MLP is unconditional (model.classes=0)")
        return StepEmbeddingMLP(d, hidden, steps, batch_norm, embed) if embed else MLP(
            d, hidden, steps, batch_norm, classes)
    if kind == "conv":
        if embed:
            raise InputError("model.net=conv (the paper's generator) takes no step embedding: "
                             "use model.net=unet or mlp")
        return ConvGenerator(shape, hidden, steps, batch_norm, classes)
    if kind == "unet":
        return UNet(shape, hidden, steps, batch_norm, classes, embed)
    raise InputError(f"unknown network {kind!r}; available: mlp, conv, unet")


def step_norms(module: nn.Module) -> list[StepBatchNorm]:
    """Every per-step batch norm inside ``module``."""
    return [m for m in module.modules() if isinstance(m, StepBatchNorm)]


def with_bn_eps(net: nn.Module, eps: float) -> nn.Module:
    """``net`` with ``eps`` added to the variance in each of its per-step batch norms
    (``model.bn_eps``; the authors' code uses 1e-4, the library 1e-5; algorithms.md §6)."""
    for norm in step_norms(net):
        norm.eps = eps
    return net
