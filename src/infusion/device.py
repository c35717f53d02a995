"""The device and the precision (the ground floor): which device a command runs on, how many
torch threads a CPU run uses beside other work, whether bf16 is native there, and the
autocast context of the training step."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import torch

from .errors import InputError


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


def other_busy_processes(readings: int = 3, interval: float = 0.02) -> int:
    """How many processes besides this one are running on the CPUs now: the least of a few
    readings of ``procs_running`` in /proc/stat (a short spike is not counted), minus this
    process; 0 where /proc/stat cannot be read."""
    counts = []
    for i in range(readings):
        try:
            with open("/proc/stat") as f:
                line = next(x for x in f if x.startswith("procs_running"))
            counts.append(int(line.split()[1]))
        except (OSError, StopIteration, ValueError, IndexError):
            return 0
        if i + 1 < readings:
            time.sleep(interval)
    return max(0, min(counts) - 1)


def cpu_threads(requested: int) -> tuple[int, str]:
    """The torch threads a CPU training uses, and why, for ``train.cpu_threads``: a number
    asked for is kept; 0 (the default) is torch's own (one per core) unless other processes
    are running, when ``cores − busy`` threads are used while that leaves at least one core.
    Several torch threads wait for each other, and one of them sharing a core with another
    job stalls them all: measured on 2 cores beside one busy process, 2 threads trained 2.8×
    slower than 1; beside two, 2 threads were 1.2× faster than 1 (docs/results.md, "How many
    threads should a training run use on a busy machine?")."""
    default = torch.get_num_threads()
    if requested:
        return requested, ""
    cores = os.cpu_count() or 1
    busy = other_busy_processes() if cores > 1 else 0
    if 0 < busy < cores and cores - busy < default:
        return cores - busy, (f"{busy} other process(es) running on this machine's {cores} "
                              f"cores: training on {cores - busy} torch thread(s), not "
                              f"{default} (train.cpu_threads=N to choose)")
    return default, ""


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 matrix products are native here: CUDA, or a CPU with AVX-512 BF16 / AMX.
    (A CPU without them emulates bf16, far slower than fp32: docs/results.md.)"""
    if device.type == "cuda":
        return True
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def mixed_precision(model: torch.nn.Module, device: torch.device, precision: str) -> Callable:
    """A context factory for the training step: bf16 autocast where ``train.precision`` is
    "bf16", else nothing ("auto" is fp32 everywhere: bf16 measured no faster for the mnist
    preset on a data-centre GPU, whose step is bound by kernel launches, and a CPU without
    native bf16 emulates it, docs/results.md; the paper trained in fp32).

    The network body's outputs are cast back to fp32, so μ, σ², the log-densities (σ² ≥ 1e-4)
    and the loss are computed in full precision; the weights stay fp32 (Adam's master copy).
    """
    if precision != "bf16":
        return contextlib.nullcontext
    model.net.register_forward_hook(lambda _m, _i, out: tuple(o.float() for o in out))
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
