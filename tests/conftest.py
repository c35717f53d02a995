"""Shared fixtures: an isolated cache, a tiny fake MNIST, and a small trained spiral model;
and a loader for the scripts of ``experiments/``."""

from __future__ import annotations

import importlib.util
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import infusion
from infusion import config, data
from infusion.data import mnist

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_experiment(name: str):
    """The module of ``experiments/NAME.py``, imported with its folder on ``sys.path`` (its
    scripts import their siblings)."""
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(EXPERIMENTS))


def fake_mnist_cache(mp, root) -> dict:
    """Fill a fake MNIST cache under ``root`` (64/32/32 random 'digits': strokes on a blank
    canvas) and point the library at it through ``mp`` (a pytest MonkeyPatch)."""
    mp.setenv("INFUSION_CACHE", str(root / "cache"))
    sizes = {"train": 64, "valid": 32, "test": 32}
    mp.setattr(mnist, "_SPLIT_SIZES", sizes)
    rng = np.random.default_rng(0)
    arrays = {}
    for s, n in sizes.items():
        x = np.zeros((n, 1, 28, 28), np.uint8)
        for i in range(n):
            r = rng.integers(4, 20)
            x[i, 0, r:r + 8, 6:22] = rng.integers(100, 256)
        arrays[f"{s}_x"], arrays[f"{s}_y"] = x, rng.integers(0, 10, n).astype(np.int64)
    path = data.cache_dir() / "mnist" / "mnist-uint8.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    data.write_cache(path, arrays)
    return arrays


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    """A fake MNIST cache with 64/32/32 random 'digits' (strokes on a blank canvas)."""
    return fake_mnist_cache(monkeypatch, tmp_path)


def tiny_config(**sections) -> config.Config:
    """A seconds-long spiral config, with section overrides as dicts."""
    base = {
        "data": {"name": "spiral", "toy_size": 512},
        "model": {"hidden": (32, 32)},
        "method": {"T": 4, "omega": 0.2},
        "train": {"epochs": 2, "batch_size": 64, "patience": 0, "valid_examples": 128},
        "sample": {"n": 16, "chains": 2},
    }
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    # flat method keys (``omega``, ``vw_n1``, ``diff_predict``) into their method's section
    method = {}
    for k, v in base["method"].items():
        section, key = config._FLAT_METHOD_KEYS.get(k, (None, k))
        if section is not None:
            method.setdefault(section, {})[key] = v
        elif k in config.METHOD_SETTINGS:
            method.setdefault(k, {}).update(v)
        else:
            method[k] = v
    return config.from_dict({**base, "method": method}).validate()


@pytest.fixture(scope="session")
def spiral_run(tmp_path_factory):
    """The `spiral` preset trained once for the session, on half its points (60–137 s on this
    project's 2-core machine, the suite's largest cost; samples still lie within 0.008 of the
    spiral; at 20 epochs they lay 0.017 from it, which fails the quality test)."""
    from infusion import train

    run = tmp_path_factory.mktemp("spiral")
    torch.manual_seed(123)  # must not matter: training uses its own generators
    cfg = config.override(config.preset("spiral"),  # a short statistics pass, one mode
                          ["data.toy_size=4000", "train.valid_examples=1000",
                           "train.valid_stats_batches=4", "train.valid_batch_stats=false"])
    train(cfg, run, progress=False, log=lambda s: None)
    return run


def short_fit(method, model, x, steps: int, batch: int | None = None, lr: float = 3e-3):
    """Adam on ``method.loss`` for ``steps`` minibatches of ``x``; returns the mean loss on all
    of ``x`` (fixed noise) before and after, for "a short run lowers the loss" tests."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)

    def score():
        with torch.no_grad():
            return float(method.loss(model, x, torch.Generator().manual_seed(5)).mean())

    before = score()
    for _ in range(steps):
        xb = x if batch is None else x[torch.randperm(len(x), generator=g)[:batch]]
        opt.zero_grad()
        method.loss(model, xb, g).mean().backward()
        opt.step()
    return before, score()


def with_alarm(fn, seconds: int = 20):
    """``fn()``, failing instead of hanging."""
    def hung(*_):
        raise TimeoutError("hung")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """A tiny spiral run (``ROOT/run``) and its export (``ROOT/export``), trained once for the
    session: (ROOT, model, config). Copy them before changing them."""
    root = tmp_path_factory.mktemp("tiny-export")
    infusion.train(tiny_config(), root / "run", progress=False)
    model, cfg = infusion.load_model(root / "run", "cpu")
    infusion.save_pretrained(model, cfg, root / "export")
    return root, model, cfg
