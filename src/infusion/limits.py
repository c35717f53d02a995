"""The bounds of the numbers a user gives (the ground floor): seeds, steps, counts and sizes,
each checked where it enters (config validation, the command line), and the free-memory check
that refuses an allocation which cannot fit, from an estimate, before it is made.
"""

from __future__ import annotations

import os

from .errors import InputError

# torch.Generator.manual_seed takes 64 bits; seeds derived from a user's seed add offsets
# far below 2^63 to it, so every seed in [0, 2^63 - 1] stays a valid one
SEED_MAX = 2**63 - 1
STEPS_MAX = 10**6  # chain steps: T, T', sampling and likelihood steps, walkback's extra steps
DRAWS_MAX = 10**6  # proposal draws per example (IS k, the bound's k)
SAMPLES_MAX = 10**7  # samples drawn by one command or run (memory is checked beside it)
EXAMPLES_MAX = 10**9  # examples asked of a split (a split holds fewer: clamped, and said)
BATCH_MAX = 10**7  # examples or samples per batch
EPOCHS_MAX = 10**6  # epochs and other per-epoch counts (patience, checkpoint_every, …)
OPT_STEPS_MAX = 10**12  # train.max_steps: optimiser steps
WIDTH_MAX = 10**5  # units of one hidden layer, channels of one map
LAYERS_MAX = 64  # hidden layers
CLASSES_MAX = 10**6  # classes of a class-conditional model
IMAGE_SIDE_MAX = 4096  # pixels of an image side (data.image_size)
VALUES_MAX = 3 * IMAGE_SIDE_MAX**2  # values of one example (an RGB image of the largest side)
MATMUL_MAX = 65536  # side of bench's peak-measuring matrices
THREADS_MAX = 1024  # CPU threads
CHAINS_MAX = 10**4  # chains drawn beside each other in a figure or an inpainting
REPEATS_MAX = 1000  # repeated evaluations
MINUTES_MAX = 10**8  # wall-time budgets (about 190 years)


def in_range(name: str, value: float, lo: float, hi: float,
             note: str = "") -> tuple[bool, str]:
    """A check for :func:`infusion.errors.require`: ``lo <= value <= hi``, its message naming
    the setting and the range."""
    ok = lo <= value <= hi
    short = name.replace(" ", ".").rsplit(".", 1)[-1]  # train.seed, "evaluation setting seed": seed
    return ok, f"{name}={value}: expected {lo:,} <= {short} <= {hi:,}{note}"


def check_range(name: str, value: float, lo: float, hi: float,
                note: str = "") -> None:
    """Raise :class:`InputError` unless ``lo <= value <= hi`` (the message names ``name``)."""
    ok, msg = in_range(name, value, lo, hi, note)
    if not ok:
        raise InputError(msg)


def free_memory(device=None) -> int | None:
    """Bytes that can still be allocated on ``device`` (the CPU by default): the memory
    available to new processes (``MemAvailable`` of /proc/meminfo, else the free pages of
    ``os.sysconf``), or the free memory of a CUDA device; None where it is unknown."""
    if device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch  # here: `infusion --help` loads this module, not torch

        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, ValueError, AssertionError):
            return None
    available = _meminfo_available()
    if available is not None:
        return available
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _meminfo_available() -> int | None:
    """Linux's MemAvailable (free memory plus what the kernel can reclaim), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(nbytes: float, what: str, device=None) -> None:
    """Refuse, before allocating, work whose memory estimate ``nbytes`` exceeds the free
    memory of ``device`` (:func:`free_memory`); ``what`` names the input that asked for it."""
    free = free_memory(device)
    if free is not None and nbytes > free:
        where = "" if device is None or str(device) == "cpu" else f" on {device}"
        raise InputError(f"{what} needs about {format_bytes(nbytes)} of memory{where}, more than "
                         f"the {format_bytes(free)} free; ask for less")


def format_bytes(n: float) -> str:
    """``1.5 GiB``, ``12 MiB``, …"""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.3g} {units[i]}"


def check_tensor(x, what: str) -> None:
    """Refuse, naming ``what``, a tensor whose values cannot be read: one on the meta device
    (a shape without data), or a sparse, quantized or other non-strided one (pass
    ``x.to_dense()``). Anything that is not a tensor passes."""
    import torch  # here: `infusion --help` loads this module, not torch

    if not isinstance(x, torch.Tensor):
        return
    if x.is_meta:
        raise InputError(f"{what}: a tensor on the meta device holds no values; pass one "
                         "with data (on the CPU or a GPU)")
    if x.layout != torch.strided or x.is_quantized:
        kind = "quantized" if x.is_quantized else f"sparse ({x.layout})"
        raise InputError(f"{what}: a {kind} tensor; pass a dense one (x.to_dense())")


def as_tensor(x, what: str, dtype=None):
    """``x`` (a tensor, an array or nested lists of numbers) as a tensor, checked by
    :func:`check_tensor`; anything that is not a rectangular array of numbers is an
    :class:`InputError` naming ``what``."""
    import numpy as np  # here: `infusion --help` loads this module, not numpy or torch
    import torch

    check_tensor(x, what)
    try:
        if not isinstance(x, torch.Tensor):
            a = np.asarray(x)
            if isinstance(x, (str, bytes)) or a.dtype.kind not in "biuf":
                raise TypeError(f"got {type(x).__name__} of dtype {a.dtype}")
            x = torch.as_tensor(a)
        return x if dtype is None else x.to(dtype)
    except (ValueError, TypeError, RuntimeError, OverflowError) as e:
        raise InputError(f"{what}: expected a tensor or an array of numbers ({e})") from None
