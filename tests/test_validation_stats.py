"""Validation scores a fixed model: per-step statistics from a short pass, the minibatch-
statistics bound beside it, selection on the former (algorithms.md §6–7)."""

from __future__ import annotations

import json

import pytest
import torch

from infusion import figures, models
from infusion.chain.nets import StepBatchNorm, step_norms
from infusion.data import load_data
from infusion.methods import build_method
from infusion.training.loop import train
from infusion.training.validation import validate

from .conftest import tiny_config

QUIET = {"progress": False, "log": lambda s: None}


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_moving_average_is_the_authors_running_mean_and_inverse_std():
    """``average="moving"``: m ← 0.9·m + 0.1·mean, s ← 0.9·s + 0.1/√(var + ε) from (0, 1),
    stored so that eval-mode normalisation is (h − m)·s (a closed form over two batches)."""
    eps = 1e-4
    bn = StepBatchNorm(3, steps=1, eps=eps).train()
    gen = torch.Generator().manual_seed(0)
    h1, h2 = torch.randn(8, 3, generator=gen) * 2 + 1, torch.randn(5, 3, generator=gen) - 3
    bn.start_collect("moving")
    bn(h1, 1)
    bn(h2, 1)
    bn.finish_collect()
    m1, m2 = h1.double().mean(0), h2.double().mean(0)
    s1 = 1 / (h1.double().var(0, unbiased=False) + eps).sqrt()
    s2 = 1 / (h2.double().var(0, unbiased=False) + eps).sqrt()
    m = 0.9 * (0.1 * m1) + 0.1 * m2
    s = 0.9 * (0.9 * 1 + 0.1 * s1) + 0.1 * s2
    x = torch.randn(4, 3, generator=gen)
    bn.eval()
    assert torch.allclose(bn(x, 1).double(), (x.double() - m) * s, atol=1e-5)
    with pytest.raises(Exception, match="expected one of exact, moving"):
        bn.start_collect("median")


def test_validation_restores_the_model_and_logs_both_modes(tmp_path):
    """validate() leaves a training model as it found it (train mode, no stored statistics);
    the bound with minibatch statistics differs from the fixed model's."""
    cfg = tiny_config(train={"epochs": 3, "train_bound_examples": 128})
    train(cfg, tmp_path / "run", **QUIET)
    model, cfg = models.load_model(tmp_path / "run")
    for n in step_norms(model):  # as during training: no statistics yet
        n.stat_ready.fill_(False)
    model.train()
    scores = validate(model, build_method(cfg.method), load_data(cfg, "cpu"), cfg)
    assert model.training and not model.stats_ready
    assert set(scores) == {"valid_loss", "valid_bound_population", "valid_bound_batch",
                           "train_bound_population", "train_bound_batch"}
    assert abs(scores["valid_bound_population"] - scores["valid_bound_batch"]) > 1e-3
    off = validate(model, build_method(cfg.method), load_data(cfg, "cpu"),
                   tiny_config(train={"valid_batch_stats": False}))
    assert "valid_bound_batch" not in off and "valid_bound_population" in off


def test_best_epoch_is_chosen_on_the_population_bound(tmp_path):
    """best.pt holds the epoch with the highest population-statistics validation bound (in
    this run, epoch 5, where the minibatch-statistics bound peaks at epoch 4)."""
    train(tiny_config(train={"epochs": 6, "lr": 1e-2, "seed": 1}), tmp_path / "run", **QUIET)
    rows = _rows(tmp_path / "run")
    best = max(rows, key=lambda r: r["valid_bound_population"])["epoch"]
    assert best != max(rows, key=lambda r: r["valid_bound_batch"])["epoch"]  # the test can fail
    saved = models.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert saved["epoch"] == best


def test_old_runs_curves_name_their_mode(tmp_path):
    """metrics.jsonl of runs before 0.3 (``valid_bound`` with minibatch statistics) is read
    with the mode in its keys and still draws."""
    f = tmp_path / "metrics.jsonl"
    f.write_text("".join(json.dumps({"epoch": e, "train_loss": 1.0 / e, "valid_loss": 2.0 / e,
                                     "valid_bound": 10.0 * e, "train_bound": 11.0 * e}) + "\n"
                         for e in (1, 2, 3)))
    rows = figures.read_metric_rows(f)
    assert rows[0]["valid_bound_batch"] == 10.0 and "valid_bound" not in rows[0]
    assert figures.save_curves(tmp_path / "curves.png", f).stat().st_size > 1000
