"""Watching a run (infusion.training.watch): callbacks, preview grids, TensorBoard, resumed without
repeated events."""

from __future__ import annotations

import json
import sys

import pytest

from infusion import train
from infusion.errors import InputError

from .conftest import tiny_config


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc, [(e.step, e.value) for e in acc.Scalars(tag)]


def test_callbacks_grids_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    run, events = tmp_path / "run", []
    cfg = tiny_config(train={"sample_every": 1, "tensorboard": True})
    train(cfg, run, progress=False, log=lambda s: None, callbacks=[events.append])
    rows = _rows(run)
    assert [e.epoch for e in events] == [1, 2]
    assert [e.row for e in events] == rows  # the callback sees the metrics.jsonl rows
    assert all(e.grid == run / "samples" / f"epoch-{e.epoch:04d}.png" and e.grid.is_file()
               for e in events)
    acc, loss = _scalars(run / "tensorboard", "valid_loss")
    assert loss == [(r["epoch"], pytest.approx(r["valid_loss"], rel=1e-6)) for r in rows]
    assert [e.step for e in acc.Images("samples")] == [1, 2]
    # resumed for one more epoch: TensorBoard holds each epoch once
    train(None, run, resume=True, overrides=["train.epochs=3"], progress=False,
          log=lambda s: None)
    _, loss = _scalars(run / "tensorboard", "valid_loss")
    assert [step for step, _ in loss] == [1, 2, 3]
    assert [v for _, v in loss] == [pytest.approx(r["valid_loss"], rel=1e-6) for r in _rows(run)]


def test_missing_tensorboard_is_a_clear_error_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    run = tmp_path / "run"
    with pytest.raises(InputError, match="tensorboard package"):
        train(tiny_config(train={"tensorboard": True}), run, progress=False, log=lambda s: None)
    assert {p.name for p in run.iterdir()} <= {".lock"}  # the run directory is not claimed
    monkeypatch.undo()
    train(tiny_config(train={"epochs": 1}), run, progress=False, log=lambda s: None)


def test_preview_does_not_change_training(tmp_path):
    """The preview draws from its own generators on a copy: the run's weights are the same."""
    import torch

    from infusion.models import load

    finals = []
    for every in (0, 1):
        run = tmp_path / f"run{every}"
        train(tiny_config(train={"sample_every": every}), run, progress=False, log=lambda s: None)
        finals.append(load(run / "checkpoints" / "final.pt")["model"])
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
