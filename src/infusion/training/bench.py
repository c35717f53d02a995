"""``infusion bench``: training and sampling speed of a preset next to the device's peak, and
the quick probe that tells a run how long it will take here (:func:`probe`).

Training runs the preset's real step (dequantised synthetic pixels of the data set's shape,
the method's loss, backward, Adam, EMA, with the run's precision and compile settings) and
reports example-steps per second (examples × chain steps). Its floating-point work is counted
by :class:`torch.utils.flop_counter.FlopCounterMode` over one forward + backward, and the
achieved FLOP/s is shown as a fraction of a measured peak: the time of a large matrix
multiply in the same precision on the same device. Sampling runs :func:`sampler.sample_chain`
(per-sample seeds) and reports images per second. Peak memory is CUDA's peak allocation, or
the process's peak resident set on the CPU.
"""

from __future__ import annotations

import contextlib
import platform
import resource
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..chain.model import given
from ..chain.sampler import sample_chain
from ..config import Config
from ..data import TOYS, Data, shape_of, to_model_space
from ..device import mixed_precision
from ..errors import InputError
from ..limits import MATMUL_MAX, check_memory
from ..methods import build_method, check_model_memory
from ..methods.statistics import compute_step_statistics
from .ema import EMA

# Training-set sizes (algorithms.md §1 and :mod:`infusion.data`) for the full-run estimate.
TRAIN_SIZES = {"mnist": 50_000, "fashion": 50_000, "cifar10": 45_000, "svhn": 65_932,
               "celeba": 162_770,
               "tfd": 0, "folder": 0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, min_seconds: float,
           min_reps: int) -> float:
    """Seconds per call of fn, averaged over at least min_reps calls and min_seconds."""
    fn()  # warm-up
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - t0 < min_seconds:
        fn()
        reps += 1
        if device.type == "cuda" and reps % 10 == 0:
            _sync(device)
    _sync(device)
    return (time.perf_counter() - t0) / reps


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None,
                min_seconds: float = 1.0, repeats: int = 5) -> float:
    """Measured FLOP/s of an n×n by n×n matrix multiply (2n³ FLOPs) on ``device``: the best of
    ``repeats`` timings (a peak; other jobs on a shared machine only ever slow it down)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    if not 1 <= n <= MATMUL_MAX:
        raise InputError(f"matmul size {n}: expected 1 to {MATMUL_MAX:,}")
    check_memory(3 * n * n * torch.finfo(dtype).bits // 8, f"--matmul-size {n}", device)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    return max(2 * n**3 / _timed(lambda: a @ b, device, min_seconds / repeats, 2)
               for _ in range(repeats))


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA peak allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def _training_step(cfg: Config, device: torch.device, B: int):
    """The preset's real training step on a synthetic batch of B examples: (step function,
    model, method, raw batch, classes, whether bf16 autocast is on)."""
    shape = shape_of(cfg.data)
    method = build_method(cfg.method)
    check_model_memory(method, shape, cfg, 4 + (cfg.train.ema > 0), device, batch=B)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = method.build_model(shape, cfg.model).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    if cfg.data.name not in TOYS:
        raw = torch.randint(0, 256, (B, *shape), generator=g, device=device, dtype=torch.uint8)
    else:
        raw = 0.05 + 0.9 * torch.rand(B, *shape, generator=g, device=device)

    def batch() -> torch.Tensor:
        return to_model_space(raw, g)

    model.prior.fit(batch(), cfg.model.prior_var_floor)
    classes = None  # a class-conditional model: random classes (algorithms.md §15)
    if model.classes:
        classes = torch.randint(0, model.classes, (B,), generator=g, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    ema = EMA(model, cfg.train.ema) if cfg.train.ema > 0 else None
    if cfg.train.compile:
        model.net.compile()
    autocast = mixed_precision(model, device, cfg.train.precision)

    def train_step() -> None:
        with autocast():
            loss = method.loss(given(model, classes), batch(), g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(model)

    model.train()
    return train_step, model, method, raw, classes, autocast is not contextlib.nullcontext


def run_seconds(cfg: Config, example_steps_per_s: float) -> tuple[float, float]:
    """(seconds per epoch with validation, seconds of the whole run) at this training speed.

    An epoch: the training set's example-steps, plus validation's forward chains (each ≈ 1/3
    of a training step per example): the loss and the bound on ``train.valid_examples``, the
    train-set bound on ``train.train_bound_examples``, their minibatch-statistics twins, and
    the short statistics pass; the run adds the final statistics pass (algorithms.md §6)."""
    tc, T = cfg.train, cfg.method.T
    n_train = cfg.data.n_train or TRAIN_SIZES.get(cfg.data.name) or cfg.data.toy_size
    twins = 2 if tc.valid_batch_stats else 1
    forward = (tc.valid_examples * (1 + twins) + tc.train_bound_examples * twins
               + tc.valid_stats_batches * tc.batch_size)
    epoch_s = (n_train + forward / 3) * T / example_steps_per_s
    return epoch_s, tc.epochs * epoch_s + n_train * T / (3 * example_steps_per_s)


def probe(cfg: Config, device: torch.device, seconds: float = 2.0) -> dict[str, Any]:
    """How fast the preset trains here, from a few timed steps (``seconds`` each way), with the
    current thread count and, on a CPU with more than one, with one thread. Sharing cores
    with other work, several torch threads can run far slower than one (they wait for each
    other): ``busy`` says one thread was at least as fast. The thread count is restored."""
    B = cfg.train.batch_size
    step, *_ = _training_step(cfg, device, B)
    T, threads = cfg.method.T, torch.get_num_threads()
    rate = B * T / _timed(step, device, seconds, 2)
    one = None
    if device.type == "cpu" and threads > 1:
        torch.set_num_threads(1)
        try:
            one = B * T / _timed(step, device, seconds, 2)
        finally:
            torch.set_num_threads(threads)
    busy = one is not None and one >= rate
    best = max(rate, one or 0.0)
    epoch_s, run_s = run_seconds(cfg, best)
    return {"threads": threads, "example_steps_per_s": rate, "one_thread": one, "busy": busy,
            "best_threads": 1 if busy else threads, "epoch_s": epoch_s, "run_s": run_s}


def bench(cfg: Config, device: torch.device, *, steps: int = 20, batch_size: int = 0,
          sample_n: int = 0, min_seconds: float = 2.0, matmul_n: int | None = None
          ) -> dict[str, Any]:
    """Measure one preset on one device; returns a plain dict of the figures. ``matmul_n``:
    side of the peak-measuring matrices (default 2048 on the CPU, 8192 on CUDA)."""
    B = batch_size or cfg.train.batch_size
    shape = shape_of(cfg.data)
    pixels = cfg.data.name not in TOYS
    train_step, model, method, raw, classes, bf16 = _training_step(cfg, device, B)
    counter = FlopCounterMode(display=False)
    with counter:
        train_step()
    flops = counter.get_total_flops()  # matmuls and convolutions, forward + backward
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s = _timed(train_step, device, min_seconds, steps)
    T = cfg.method.T
    ex_steps = B * T / step_s

    # algorithms.md §6 statistics from the synthetic batch, so the sampler runs as it does after training
    compute_step_statistics(model, method, Data(raw, raw, shape, pixels, classes, classes), B)
    model.eval()
    n = sample_n or B
    steps_sample = cfg.sample.steps or T
    sample_s = _timed(lambda: sample_chain(model, n, steps_sample, seed=0, batch_size=n),
                      device, min_seconds, 2)
    mem, mem_kind = _peak_memory(device)

    peak32 = matmul_peak(device, torch.float32, matmul_n)
    peak16 = matmul_peak(device, torch.bfloat16, matmul_n) if device.type == "cuda" else None
    peak = peak16 if bf16 and peak16 else peak32
    achieved = flops / step_s
    epoch_s, run_s = run_seconds(cfg, ex_steps)  # early stopping may end a run sooner
    run_min = run_s / 60
    return {
        "preset": cfg.preset, "device": _device_name(device), "batch_size": B, "T": T,
        "precision": "bf16" if bf16 else "fp32", "compile": cfg.train.compile,
        "train_step_s": step_s, "train_example_steps_per_s": ex_steps,
        "train_examples_per_s": B / step_s,
        "sample_images_per_s": n / sample_s, "sample_steps": steps_sample,
        "peak_memory_mib": mem, "peak_memory_kind": mem_kind,
        "flops_per_train_step": flops, "achieved_tflops": achieved / 1e12,
        "matmul_peak_fp32_tflops": peak32 / 1e12,
        "matmul_peak_bf16_tflops": None if peak16 is None else peak16 / 1e12,
        "fraction_of_peak": achieved / peak,
        "epoch_estimate_s": epoch_s, "full_run_estimate_min": run_min,
        "full_run_epochs": cfg.train.epochs, "threads": torch.get_num_threads(),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def format_report(r: dict[str, Any]) -> str:
    """The figures as aligned text lines."""
    peak16 = r["matmul_peak_bf16_tflops"]
    lines = [
        (f"preset {r['preset']} on {r['device']}: batch {r['batch_size']}, T = {r['T']}, "
        f"{r['precision']}{', compiled' if r['compile'] else ''}"),
        (f"  training        {r['train_example_steps_per_s']:>14,.0f} example-steps/s "
        f"({r['train_examples_per_s']:,.1f} examples/s, {r['train_step_s'] * 1e3:.1f} ms/step)"),
        f"  sampling        {r['sample_images_per_s']:>14,.1f} images/s ({r['sample_steps']} steps)",
        f"  peak memory     {r['peak_memory_mib']:>14,.0f} MiB ({r['peak_memory_kind']})",
        (f"  model FLOP/s    {r['achieved_tflops'] * 1e3:>14,.1f} GFLOP/s "
        f"({r['flops_per_train_step'] / 1e9:,.1f} GFLOP per step, forward + backward)"),
        f"  matmul peak     {r['matmul_peak_fp32_tflops'] * 1e3:>14,.1f} GFLOP/s fp32"
        + (f", {peak16 * 1e3:,.1f} GFLOP/s bf16" if peak16 else ""),
        f"  fraction        {r['fraction_of_peak']:>14.1%} of the {r['precision']} matmul peak",
        (f"  full run        {r['full_run_estimate_min']:>14,.1f} min estimated for "
        f"{r['full_run_epochs']} epochs ({r['epoch_estimate_s']:,.1f} s/epoch with validation)"),
    ]
    return "\n".join(lines)
