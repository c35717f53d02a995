"""Network bodies shared by every method: the MLP of SPEC §2 and per-step batch norm.

A network maps a flat state ``z`` (B, d) and a step index ``t`` (1-based) to the two raw heads
``(a_μ, a_σ)``, each (B, d). All weights are shared across steps except batch norm, which has
its own γ_t, β_t and statistics for every step (paper footnote 5); steps beyond the number of
batch-norm slots reuse the last one (SPEC §2: sampling with T' > T reuses step T's).
"""

from __future__ import annotations

import torch
from torch import nn


class StepBatchNorm(nn.Module):
    """Per-step batch norm (paper footnote 5; SPEC §2, §6).

    Modes:
      * ``self.training`` or ``not self.has_stats``: normalise with the batch's own statistics
        (training, and the paper's validation scoring during training).
      * ``eval()`` with stored statistics: normalise with the per-step averages of SPEC §6.
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

    @property
    def has_stats(self) -> bool:
        return bool(self.stat_ready)

    def slot(self, t: int) -> int:
        """0-based slot of step t (1-based); steps past the last slot reuse it."""
        if t < 1:
            raise ValueError(f"step index t={t}: steps are numbered from 1")
        return min(t, self.steps) - 1

    def forward(self, h: torch.Tensor, t: int) -> torch.Tensor:  # h: (B, F)
        k = self.slot(t)
        if self.training or self.collecting or not self.has_stats:
            if h.shape[0] < 2:
                raise ValueError("batch statistics need a batch of at least 2 examples")
            mean = h.mean(0)
            var = h.var(0, unbiased=False)
            if self.collecting:
                self._sum_mean[k] += mean.detach().double()
                self._sum_var[k] += var.detach().double()
                self._count[k] += 1
        else:
            mean, var = self.stat_mean[k], self.stat_var[k]
        return (h - mean) * torch.rsqrt(var + self.eps) * self.weight[k] + self.bias[k]

    def start_collect(self) -> None:
        shape = self.stat_mean.shape
        dev = self.stat_mean.device
        self._sum_mean = torch.zeros(shape, dtype=torch.float64, device=dev)
        self._sum_var = torch.zeros(shape, dtype=torch.float64, device=dev)
        self._count = torch.zeros(shape[0], dtype=torch.float64, device=dev)
        self.collecting = True

    def finish_collect(self) -> None:
        """Store the exact average over collected batches, per step (SPEC §6)."""
        seen = self._count > 0
        if not bool(seen.all()):
            missing = [i + 1 for i in range(self.steps) if not seen[i]]
            raise RuntimeError(f"batch-norm statistics pass saw no batch for steps {missing}")
        self.stat_mean.copy_((self._sum_mean / self._count[:, None]).to(self.stat_mean.dtype))
        self.stat_var.copy_((self._sum_var / self._count[:, None]).to(self.stat_var.dtype))
        self.stat_ready.fill_(True)
        self.collecting = False
        self._sum_mean = self._sum_var = self._count = None


class MLP(nn.Module):
    """MNIST/TFD operator body, SPEC §2: d → h₁ → … → ReLU with per-step BN → two heads of size d."""

    def __init__(self, d: int, hidden: tuple[int, ...], steps: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        width = d
        for h in hidden:
            self.linears.append(nn.Linear(width, h))
            self.norms.append(StepBatchNorm(h, steps) if batch_norm else nn.Identity())
            width = h
        self.head_mu = nn.Linear(width, d)
        self.head_sigma = nn.Linear(width, d)

    def forward(self, z: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        h = z
        for linear, norm in zip(self.linears, self.norms):
            h = linear(h)
            h = norm(h, t) if isinstance(norm, StepBatchNorm) else h
            h = torch.relu(h)
        return self.head_mu(h), self.head_sigma(h)


def build_net(kind: str, d: int, hidden: tuple[int, ...], steps: int, batch_norm: bool = True) -> nn.Module:
    """The network body named by ``model.net``."""
    if kind == "mlp":
        return MLP(d, hidden, steps, batch_norm)
    raise ValueError(f"unknown network {kind!r}; available: mlp")


def step_norms(module: nn.Module) -> list[StepBatchNorm]:
    """Every per-step batch norm inside ``module``."""
    return [m for m in module.modules() if isinstance(m, StepBatchNorm)]
