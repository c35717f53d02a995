"""Data-parallel training on PyTorch's own engine (issue 6): ``torchrun -m infusion train``.

Each process holds the data and draws the same global minibatch, the same dequantisation and
the same chain noise (every generator is seeded identically), so everything outside the
operator network is replicated and exact. The network runs on this process's contiguous
shard of the rows only, inside :class:`~torch.nn.parallel.DistributedDataParallel`; its
outputs are gathered back into the whole batch, and per-step batch norm uses the statistics
of the whole batch (its sums are all-reduced, as ``SyncBatchNorm`` does). A run on N
processes therefore computes the same losses, gradients and weights as one process with the
same global batch, up to the order of floating-point sums. (This is what a
``DistributedSampler`` does with a shared seed, without a data loader: the data live on the
device and every process indexes its shard of each global minibatch.)

Gradients: every process computes the same loss J of the whole batch. The gather's backward
sums, over processes, the gradients each one holds for this shard's outputs (a reduce-scatter,
written as an all-reduce then a slice); that gives each shard W·∂J/∂(its outputs) for W
processes, and DDP's average over processes then yields exactly ∂J/∂θ. The same holds when
gradients flow through the chain's draws (the bound loss of SPEC §5).
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .nets import step_norms


@dataclass(frozen=True)
class Context:
    """This process's place in the job; ``world == 1`` when not distributed."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module started the process group (and ends it)

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join the torchrun job described by the environment (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT), if any: NCCL on CUDA, gloo on the CPU. Returns the context and
    this process's device (``cuda:LOCAL_RANK`` for a CUDA device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=60))
    return Context(rank, world, local, owns), device


@contextlib.contextmanager
def main_first(ctx: Context) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills the data cache), the others after it."""
    if ctx.world > 1 and not ctx.main:
        dist.barrier()
    yield
    if ctx.world > 1 and ctx.main:
        dist.barrier()


def agree(ctx: Context, flag: bool) -> bool:
    """True on every process if it is true on any (e.g. rank 0's wall-clock limit)."""
    if ctx.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def finish(ctx: Context) -> None:
    """Wait for every process, then leave the process group if this module created it."""
    if ctx.world > 1:
        dist.barrier()
        if ctx.owns_group:
            dist.destroy_process_group()


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of a batch of n held by ``rank``: contiguous, sizes differing by <= 1."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the backward sums the gradients over processes too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of x over all processes."""
    return _AllReduceSum.apply(x)


class _GatherRows(torch.autograd.Function):
    """Concatenate every process's rows (shards of sizes from :func:`shard_bounds`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, n: int) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        bounds = [shard_bounds(n, r, world) for r in range(world)]
        rows = max(hi - lo for lo, hi in bounds)
        padded = x.new_zeros((rows, *x.shape[1:]))
        padded[: len(x)] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.lo, ctx.hi = bounds[rank]
        return torch.cat([p[: hi - lo] for p, (lo, hi) in zip(parts, bounds)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # a reduce-scatter: this shard's gradient summed over processes
        return grad[ctx.lo: ctx.hi], None


class ShardedChain(nn.Module):
    """A :class:`~infusion.operator.ChainModel` whose operator runs data-parallel.

    Called like the model, ``forward(z, t)`` with the whole batch z (B, d) on every process;
    returns the whole batch's (μ, σ²). Any other attribute (``prior``, ``T``, ``shape``, …)
    is the wrapped model's. The wrapped model keeps its own parameters and state dict (save
    that one); :meth:`unshard` restores it for single-process use (sampling, figures).
    """

    def __init__(self, model: nn.Module, ctx: Context, device: torch.device) -> None:
        super().__init__()
        self.inner = model
        self.ctx = ctx
        ids = [device.index] if device.type == "cuda" else None
        # Buffers (prior moments, SPEC §6 statistics) are equal on every process by
        # construction, so they are not broadcast at every call.
        ddp = nn.parallel.DistributedDataParallel
        no_sync = ({"forward_sync_buffers": False}  # the newer name (torch >= 2.12)
                   if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
                   else {"broadcast_buffers": False})
        self.ddp = ddp(model.op, device_ids=ids, **no_sync)
        for norm in step_norms(model.op):
            norm.reduce = all_reduce_sum

    def forward(self, z: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        n = z.shape[0]
        lo, hi = shard_bounds(n, self.ctx.rank, self.ctx.world)
        if torch.is_tensor(t) and t.dim() == 1 and len(t) == n:  # per-example steps
            t = t[lo:hi]
        mean, var = self.ddp(z[lo:hi], t)
        both = _GatherRows.apply(torch.cat([mean, var], 1), n)
        return both[:, : mean.shape[1]], both[:, mean.shape[1]:]

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def unshard(self) -> nn.Module:
        """The wrapped model, with per-step batch norm back to this process's own batches."""
        for norm in step_norms(self.inner.op):
            norm.reduce = None
        return self.inner


def shard_model(model: nn.Module, ctx: Context, device: torch.device) -> nn.Module:
    """The model to train with: a :class:`ShardedChain` on several processes, else ``model``."""
    return ShardedChain(model, ctx, device) if ctx.world > 1 else model
