"""How an evaluation normalises per-step batch norm (algorithms.md §6): stored statistics (a
fixed model: an example's ℓ does not depend on the others scored with it), each evaluation
batch's own (transductive: it does), and the authors' moving average."""

from __future__ import annotations

import pytest
import torch

from infusion import evaluate as ev
from infusion.data import load_data
from infusion.errors import InputError
from infusion.evaluate.likelihood import log_weights
from infusion.methods import build_method
from infusion.models import load_model

QUIET = {"progress": False, "log": lambda s: None}


def _rows(model, method, x, bn):
    return log_weights(model, method, x, 1, torch.Generator().manual_seed(3), batch_size=8,
                       bn_stats=bn)[:, 0]


def test_stored_statistics_score_each_example_alone_and_batch_ones_do_not(spiral_run):
    """Two batches of 8 that share their first 4 examples, with the same noise: with stored
    statistics those 4 get the same ℓ in both; with batch statistics they do not."""
    model, cfg = load_model(spiral_run)
    method = build_method(cfg.method)
    x = load_data(cfg, "cpu").valid[:12]
    a, b = x[:8], torch.cat([x[:4], x[8:12]])
    assert torch.equal(_rows(model, method, a, "stored")[:4], _rows(model, method, b, "stored")[:4])
    batch_a, batch_b = _rows(model, method, a, "batch")[:4], _rows(model, method, b, "batch")[:4]
    assert (batch_a - batch_b).abs().min() > 1e-4
    assert not model.training and model.stats_ready  # the mode is restored


def test_without_batch_norm_both_modes_agree(tmp_path):
    """A body without batch norm has nothing to normalise: batch mode is stored mode exactly."""
    from infusion import train

    from .conftest import tiny_config

    final = train(tiny_config(model={"batch_norm": False}), tmp_path / "run", **QUIET)
    model, cfg = load_model(final)
    method = build_method(cfg.method)
    x = load_data(cfg, "cpu").valid[:8]
    assert torch.equal(_rows(model, method, x, "stored"), _rows(model, method, x, "batch"))


def test_batch_mode_refuses_a_batch_of_one(spiral_run):
    model, cfg = load_model(spiral_run)
    x = load_data(cfg, "cpu").valid[:9]
    with pytest.raises(InputError, match="fewer than 2"):
        log_weights(model, build_method(cfg.method), x[:1], 2, None, bn_stats="batch")
    # 9 examples in batches of 8: two even batches (5 + 4), not 8 + 1
    log_weights(model, build_method(cfg.method), x, 1, None, batch_size=8, bn_stats="batch")
    with pytest.raises(InputError, match="bn_stats='median'"):
        log_weights(model, build_method(cfg.method), x, 1, None, bn_stats="median")


def test_evaluate_names_its_mode_and_ema_changes_the_statistics(spiral_run, tmp_path):
    s = ev.EvalSettings(lb_examples=40, is_examples=20, is_k=4, batch_size=64)
    stored = ev.evaluate(spiral_run, "lb", tmp_path / "a.json", s, **QUIET).report
    ema = ev.evaluate(spiral_run, "lb", tmp_path / "b.json", ev.EvalSettings(
        **{**s.__dict__, "bn_stats": "ema"}), **QUIET).report
    batch = ev.evaluate(spiral_run, "lb", tmp_path / "c.json", ev.EvalSettings(
        **{**s.__dict__, "bn_stats": "batch"}), **QUIET).report
    assert [r["bn_stats"]["mode"] for r in (stored, ema, batch)] == ["stored", "ema", "batch"]
    assert stored["metrics"]["lb"]["bn_stats"] == "stored"
    assert batch["metrics"]["lb"]["bn_stats"] == "batch"
    assert batch["metrics"]["lb"]["protocol_note"].startswith("transductive")
    values = [r["metrics"]["lb"]["mean"] for r in (stored, ema, batch)]
    assert len(set(values)) == 3
    assert "TRANSDUCTIVE" in (tmp_path / "c.md").read_text()
    assert "batch-norm statistics: ema" in ema["protocol"]["reductions"][-1]
    with pytest.raises(InputError, match="bn_stats"):
        ev.EvalSettings(bn_stats="running").validate()
