"""Data-parallel training with PyTorch's own DistributedDataParallel: ``torchrun -m infusion
train`` (one process per GPU, or gloo processes on CPUs).

As in nanoGPT, DDP wraps a module whose forward returns the loss: :class:`LossModule` runs the
method's whole training chain (``method.loss``) on this process's contiguous shard of every
global minibatch, and DDP averages the gradients. Every method trains this way, whatever its
model calls inside the chain. Each process draws its own chain noise (seed + rank).

One thing plain DDP does not give: the per-step batch norm (algorithms.md §2, §6) must
normalise with the statistics of the whole global batch, as one process would; each process
only sees its shard. During the training step every :class:`~infusion.chain.nets.StepBatchNorm`
therefore sums its batch moments over the processes (a differentiable all-reduce, as
``SyncBatchNorm`` does), which is also why ``nn.SyncBatchNorm`` itself does not fit: its
statistics are not per step.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import importlib
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..chain.model import given
from ..chain.nets import step_norms


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
        # DDP imports torch._dynamo when it is built. Imported after the process group
        # exists, torch._dynamo keeps a hidden reference to it, so the group outlives
        # destroy_process_group and its gloo threads still run as Python exits (see
        # finish). Imported first, it takes none. Imported here, not at the top: about 4 s
        # that one-process runs never need.
        importlib.import_module("torch._dynamo")
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
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def finish(ctx: Context) -> None:
    """Wait for every process, release every DDP wrapper, then leave the process group if
    this module created it.

    The wrappers go first: a DDP reducer holds the gloo process group and its finished work,
    tensors with Python references among it. Left to the interpreter's exit, the group
    outlives ``destroy_process_group`` and its worker threads free those tensors while Python
    shuts down, which aborts the process (SIGABRT) after its results are written: a finished
    torchrun job would then return non-zero at random. Released here, the group and its
    threads end while Python is still whole."""
    if ctx.world > 1:
        dist.barrier()
        for loss in list(_WRAPPED):
            loss.release()
        gc.collect()  # reference cycles through the wrappers, now rather than at exit
        if ctx.owns_group:
            dist.destroy_process_group()


def same_on_all_ranks(value: int) -> int:
    """Rank 0's ``value`` on every process (a random choice per global minibatch, e.g.
    walkback's n, on which the steps' collectives depend): the method's ``shared_choice``
    during a data-parallel training step."""
    out = [value]
    dist.broadcast_object_list(out, src=0)
    return int(out[0])


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


class LossModule(nn.Module):
    """``forward(x, generator, y=None) -> (B,)``: the method's per-example training loss of
    ``model`` (given the classes y of a class-conditional model, algorithms.md §15).

    The unit DDP wraps. ``model`` keeps its own parameters and state dict (save that one).
    """

    def __init__(self, model: nn.Module, method) -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x: torch.Tensor, generator: torch.Generator | None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        return self.method.loss(given(self.model, y), x, generator)


# The live DDP-wrapped losses of this process, released by :func:`finish`.
_WRAPPED: weakref.WeakSet[DataParallelLoss] = weakref.WeakSet()


class DataParallelLoss:
    """The training loss of a global minibatch, computed data-parallel (or directly).

    ``loss(x_global_rows)`` takes this process's rows of the global batch (see :meth:`shard`)
    and returns a scalar whose gradient, after DDP's average over processes, is the gradient
    of the mean loss over the whole global batch; it also returns the global mean for logging.
    """

    def __init__(self, model: nn.Module, method, ctx: Context, device: torch.device) -> None:
        self.ctx, self.model, self.method = ctx, model, method
        module = LossModule(model, method)
        if ctx.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            module = nn.parallel.DistributedDataParallel(module, device_ids=ids)
            _WRAPPED.add(self)
        self.module = module

    def release(self) -> None:
        """Drop the DDP wrapper (and its reducer), keeping the plain loss module: called by
        :func:`finish` before the process group goes."""
        if isinstance(self.module, nn.parallel.DistributedDataParallel):
            self.module = self.module.module

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This process's contiguous rows of the global minibatch ``idx``."""
        lo, hi = shard_bounds(len(idx), self.ctx.rank, self.ctx.world)
        return idx[lo:hi]

    def __call__(self, x: torch.Tensor, global_size: int, generator: torch.Generator | None,
                 y: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        with self._synced_batch_norm():
            per_example = self.module(x, generator, y)
        objective = per_example.sum() * (self.ctx.world / global_size)  # DDP averages
        total = per_example.detach().sum()
        if self.ctx.world > 1:
            dist.all_reduce(total)
        return objective, float(total) / global_size

    @contextlib.contextmanager
    def _synced_batch_norm(self) -> Iterator[None]:
        """Per-step batch norm with whole-batch statistics across processes (see module doc),
        and per-minibatch random choices shared (:func:`same_on_all_ranks`)."""
        if self.ctx.world == 1:
            yield
            return
        norms = step_norms(self.model)
        for n in norms:
            n.reduce = all_reduce_sum
        kept, self.method.shared_choice = self.method.shared_choice, same_on_all_ranks
        try:
            yield
        finally:
            self.method.shared_choice = kept
            for n in norms:
                n.reduce = None
