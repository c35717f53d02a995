"""Speed features: ``infusion bench``, the torch threads beside other work, the EMA of the
weights, mixed precision."""

from __future__ import annotations

import contextlib

import pytest
import torch

from infusion import cli, config, train
from infusion.device import mixed_precision
from infusion.training.bench import bench, matmul_peak
from infusion.training.ema import EMA

from .conftest import tiny_config


def test_bench_counts_the_mlp_flops_exactly():
    cfg = config.override(config.preset("spiral"), ["model.hidden=16,8", "method.T=3"])
    r = bench(cfg, torch.device("cpu"), steps=1, batch_size=32, min_seconds=0.05, matmul_n=256)
    B, T, d, h1, h2 = 32, 3, 2, 16, 8
    # forward 2·(d·h1 + h1·h2 + 2·h2·d) per example-step; backward twice that, except the
    # first layer, whose input (the detached z) needs no gradient
    per = 2 * (2 * d * h1 + 3 * h1 * h2 + 3 * 2 * h2 * d)
    assert r["flops_per_train_step"] == B * T * per
    assert r["train_example_steps_per_s"] > 0 and r["sample_images_per_s"] > 0
    assert r["peak_memory_mib"] > 0 and r["matmul_peak_fp32_tflops"] > 0
    assert r["fraction_of_peak"] == pytest.approx(r["achieved_tflops"] / r["matmul_peak_fp32_tflops"])
    assert r["train_example_steps_per_s"] == pytest.approx(B * T / r["train_step_s"])


def test_bench_runs_a_class_conditional_model():
    """The class embedding is a lookup: the same matmul FLOPs as the unconditional model."""
    sets = ["model.hidden=16,8", "method.T=3"]
    plain = config.override(config.preset("spiral"), sets)
    cond = config.override(plain, ["model.classes=4"])
    kw = {"steps": 1, "batch_size": 32, "min_seconds": 0.05, "matmul_n": 256}
    r = bench(cond, torch.device("cpu"), **kw)
    assert r["flops_per_train_step"] == bench(plain, torch.device("cpu"), **kw)["flops_per_train_step"]
    assert r["sample_images_per_s"] > 0


def test_matmul_peak_is_a_rate(monkeypatch):
    """On a clock that advances 0.25 s per multiply, the timing is 0.25 s a call and the peak
    2n³ / (the best of the repeats); the timed call is the n×n product itself."""
    from infusion.training import bench as bench_mod

    clock, products = [0.0], []

    def fake_timed(fn, device, min_seconds, min_reps):
        products.append(fn())
        return real_timed(lambda: clock.__setitem__(0, clock[0] + 0.25), device, min_seconds,
                          min_reps)

    real_timed = bench_mod._timed
    monkeypatch.setattr(bench_mod.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(bench_mod, "_timed", fake_timed)
    assert matmul_peak(torch.device("cpu"), n=64, min_seconds=3.0, repeats=3) == 2 * 64**3 / 0.25
    assert len(products) == 3 and products[0].shape == (64, 64)
    g = torch.Generator().manual_seed(0)  # the matrices: two standard-normal draws of seed 0
    a, b = torch.randn(64, 64, generator=g), torch.randn(64, 64, generator=g)
    torch.testing.assert_close(products[0], a @ b)
    assert real_timed(lambda: clock.__setitem__(0, clock[0] + 0.5), torch.device("cpu"), 1.2, 2) \
        == 0.5  # seconds per call: 3 calls to pass 1.2 s, after one warm-up


def test_bench_cli_prints_figures_beside_the_peak(capsys):
    code = cli.main(["bench", "--preset", "spiral", "--steps", "1", "--batch-size", "16",
                     "--set", "model.hidden=8,8", "--set", "method.T=2", "--matmul-size", "256"])
    out = capsys.readouterr().out
    assert code == 0
    for words in ("example-steps/s", "images/s", "peak memory", "matmul peak",
                  "of the fp32 matmul peak", "min estimated"):
        assert words in out


def test_ema_update_and_warm_up():
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = EMA(net, decay=0.99)
    with torch.no_grad():
        net.weight.fill_(2.0)
    ema.update(net)  # warm-up rate (1 + 0)/(10 + 0) = 0.1: 0.1·1 + 0.9·2
    assert torch.allclose(ema.shadow["weight"], torch.tensor([[1.9]]))
    assert ema.rate() == (1 + 1) / (10 + 1)
    with ema.applied(net):
        assert torch.allclose(net.weight, torch.tensor([[1.9]]))
    assert torch.allclose(net.weight, torch.tensor([[2.0]]))


def test_ema_is_saved_resumed_and_sampled(tmp_path):
    sets = {"train": {"ema": 0.9, "valid_examples": 0}}  # no validation: final = last EMA
    train(tiny_config(**sets), tmp_path / "straight", progress=False, log=lambda s: None)
    one = tiny_config(train={**sets["train"], "epochs": 1})
    train(one, tmp_path / "resumed", progress=False, log=lambda s: None)
    train(None, tmp_path / "resumed", resume=True, overrides=["train.epochs=2"],
          progress=False, log=lambda s: None)

    def load(run, name):
        return torch.load(tmp_path / run / "checkpoints" / name, weights_only=True)

    state = load("straight", "epoch-0002.pt")
    assert state["ema"]["updates"] == state["state"]["step"] > 0
    final = load("straight", "final.pt")["model"]
    for k, v in state["ema"]["shadow"].items():
        assert torch.equal(final[k], v), k  # the final checkpoint holds the EMA weights
        assert not torch.equal(state["model"][k], v), k  # which differ from the raw weights
    resumed = load("resumed", "final.pt")["model"]
    for k in final:
        assert torch.equal(resumed[k], final[k]), k  # resuming continued the same average


def test_bf16_autocast_keeps_the_heads_in_fp32():
    from infusion.methods import build_method

    cfg = tiny_config(train={"precision": "bf16"})
    model = build_method(cfg.method).build_model((2,), cfg.model)
    ctx = mixed_precision(model, torch.device("cpu"), "bf16")
    z = torch.rand(8, 2)
    with ctx():
        a_mu, _ = model.net(z, 1)
        inner = model.net.linears[0](z)
    assert inner.dtype == torch.bfloat16 and a_mu.dtype == torch.float32
    with mixed_precision(model, torch.device("cpu"), "auto")():
        assert model.net.linears[0](z).dtype == torch.float32
    # "auto" is fp32 on CUDA too (bf16 measured no faster there for mnist): no autocast.
    assert mixed_precision(model, torch.device("cuda"), "auto") is contextlib.nullcontext


def test_bf16_training_is_the_fp32_run_up_to_bf16_rounding(tmp_path):
    """One epoch trained with train.precision=bf16 and the same epoch in fp32, from the same
    weights, batches and noise: bf16 products change the result (so the setting is applied),
    but only by bf16 rounding (the heads, the loss and the weights stay fp32), and the final
    checkpoint holds fp32 weights."""
    import json

    runs = {}
    for precision in ("auto", "bf16"):
        final = train(tiny_config(train={"precision": precision, "epochs": 1}),
                      tmp_path / precision, progress=False, log=lambda s: None)
        row = json.loads((tmp_path / precision / "metrics.jsonl").read_text())
        runs[precision] = (row, torch.load(final, weights_only=True))
    (row32, ck32), (row16, ck16) = runs["auto"], runs["bf16"]
    assert ck16["config"]["train"]["precision"] == "bf16"
    weights = [k for k, v in ck16["model"].items() if v.is_floating_point()]
    assert len(weights) > 10 and all(ck16["model"][k].dtype == torch.float32 for k in weights)
    assert any(not torch.equal(ck16["model"][k], ck32["model"][k]) for k in weights)
    # measured on this project's CPU: the epoch's mean loss (about −0.27 nats) moves by 3e-4
    # in bf16, and by 5.5e-3 when the heads are left in bf16 too (their outputs not cast back
    # to fp32 before μ, σ² and the log-densities); 2.5e-3 lies between
    assert row16["train_loss"] == pytest.approx(row32["train_loss"], abs=2.5e-3)
    assert row16["valid_loss"] == pytest.approx(row32["valid_loss"], abs=2.5e-3)


@pytest.mark.parametrize("cores,busy,requested,expected", [
    (2, 0, 0, 2),  # quiet: torch's default, one per core
    (2, 1, 0, 1),  # one other job on 2 cores: one thread (2.8x faster, docs/results.md)
    (2, 2, 0, 2),  # both cores taken: two threads get the larger share
    (8, 3, 0, 5),
    (2, 1, 2, 2),  # asked for: kept
    (1, 1, 0, 1),  # one core: nothing to share out
])
def test_auto_threads_make_room_for_other_work(monkeypatch, cores, busy, requested, expected):
    from infusion import device

    monkeypatch.setattr(device.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(device, "other_busy_processes", lambda: busy)
    monkeypatch.setattr(torch, "get_num_threads", lambda: cores)  # torch's default
    threads, why = device.cpu_threads(requested)
    assert threads == expected
    assert bool(why) == (threads != torch.get_num_threads())


def test_a_run_beside_a_busy_process_says_it_trains_on_fewer_threads(tmp_path, monkeypatch):
    from infusion import device

    monkeypatch.setattr(device.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(device, "other_busy_processes", lambda: 1)
    threads = torch.get_num_threads()
    lines = []
    try:
        torch.set_num_threads(2)
        train(tiny_config(train={"epochs": 1}), tmp_path / "run", progress=False,
              log=lines.append)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert any("1 other process(es) running" in s and "1 torch thread" in s for s in lines)


def test_the_busy_count_sees_busy_processes_the_test_starts(monkeypatch):
    """The count reads ``procs_running`` in /proc/stat (the least of three readings, less this
    process). Two processes that spin on the CPU, started here, are runnable at every reading,
    so the count is at least 2 (other work on the machine can only add to it); and with
    readings of 4, 2 and 6 (a short spike and a dip) it is 2 − 1 = 1."""
    import io
    import os
    import subprocess
    import sys
    import time

    from infusion import device

    if not os.path.isfile("/proc/stat"):
        pytest.skip("no /proc/stat on this system")
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        deadline = time.monotonic() + 10  # each child: out of the interpreter's start-up
        for p in spin:
            while time.monotonic() < deadline:
                with open(f"/proc/{p.pid}/stat") as f:
                    ticks = int(f.read().rsplit(")", 1)[1].split()[11])  # utime
                if ticks >= 10:  # 0.1 s of CPU: past start-up (about 0.02 s)
                    break
                time.sleep(0.02)
        busy = device.other_busy_processes()
    finally:
        for p in spin:
            p.kill()
            p.wait()
    assert busy >= 2

    readings = iter([4, 2, 6])

    def fake_open(path, *args, **kwargs):
        assert path == "/proc/stat"
        return io.StringIO(f"cpu  1 2 3 4\nprocs_running {next(readings)}\nprocs_blocked 7\n")

    monkeypatch.setattr(device, "open", fake_open, raising=False)
    assert device.other_busy_processes() == 1
