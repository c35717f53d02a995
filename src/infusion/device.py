"""The device and the precision (the ground floor): which device a command runs on, whether
bf16 is native there, and the autocast context of the training step."""

from __future__ import annotations

import contextlib
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
