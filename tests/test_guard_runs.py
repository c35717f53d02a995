"""The promises of a training or evaluation run, each caught by its own test (issue 28): the
EMA weights are the ones validated and saved as best.pt, the run lock keeps a second process
out, each NaN guard (the loss check, the weight check) works alone, and a hard kill of the
paper protocol leaves a report with the repetitions already done."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from infusion import config, models
from infusion.data import load_data
from infusion.methods import build_method
from infusion.methods.infusion import Infusion
from infusion.training import rundir
from infusion.training.loop import Diverged, RunError, train
from infusion.training.validation import validate

from .conftest import tiny_config

QUIET = {"progress": False, "log": lambda s: None}


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- EMA
def test_validation_and_best_weights_are_the_ema_ones(tmp_path):
    """With train.ema and validation on: best.pt (and so final.pt) holds the averaged weights,
    and the epoch's validation scores are those of the averaged weights, recomputed here."""
    run = tmp_path / "run"
    train(tiny_config(train={"ema": 0.9, "epochs": 1}), run, **QUIET)
    state = models.load(run / "checkpoints" / "epoch-0001.pt")
    shadow, raw = state["ema"]["shadow"], state["model"]
    best = models.load(run / "checkpoints" / "best.pt", weights_only=True)["model"]
    final = models.load(run / "checkpoints" / "final.pt")["model"]
    assert shadow and set(shadow) <= set(best)
    for k, v in shadow.items():
        assert torch.equal(best[k], v), k  # best.pt: the EMA's weights ...
        assert torch.equal(final[k], v), k
    assert any(not torch.equal(raw[k], v) for k, v in shadow.items())  # ... not the raw ones

    cfg = config.from_dict(json.loads((run / "config.json").read_text()))
    data, method = load_data(cfg, progress=False), build_method(cfg.method)

    def scores(weights: dict) -> dict:
        model = method.build_model(data.shape, cfg.model)
        model.load_state_dict({**raw, **weights})
        model.train()  # as the loop leaves it after an epoch
        return validate(model, method, data, cfg)

    row = _rows(run)[0]
    ema, plain = scores(shadow), scores({})
    for key in ("valid_loss", "valid_bound_population"):
        assert row[key] == pytest.approx(ema[key], rel=1e-5, abs=1e-4), key
        assert abs(plain[key] - ema[key]) > 1e-3, key  # the two weights score differently


# ----------------------------------------------------------------------------- the run lock
HOLDER = """
import sys
from pathlib import Path
from infusion.training import rundir
with rundir.lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_the_run_lock_keeps_a_second_process_out(tmp_path):
    """Another process holds the run's lock through rundir.lock (as `infusion train` does):
    this process is refused while it holds it, and gets it once it has let go."""
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        held = rf"in use by another infusion process \(pid {holder.pid}\)"
        with pytest.raises(RunError, match=held), rundir.lock(run):
            pass
        with pytest.raises(RunError, match="in use"):  # a whole training run is refused too
            train(tiny_config(train={"epochs": 1}), run, **QUIET)
        assert not (run / "config.json").exists()
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    with rundir.lock(run):  # released
        pass


# ----------------------------------------------------------------------------- NaN guards
def test_the_loss_check_alone_stops_a_nan_loss(tmp_path, monkeypatch):
    """The third training step's loss is NaN (weights still finite): the loss check stops the
    run at that step, before the NaN reaches the weights (the weight check would only see it
    at the end of the epoch)."""
    real, calls = Infusion.denoising_loss, []

    def nan_at_step_3(self, model, x, generator):
        out = real(self, model, x, generator)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 3:
                return out * float("nan")
        return out

    monkeypatch.setattr(Infusion, "denoising_loss", nan_at_step_3)
    run = tmp_path / "run"
    with pytest.raises(Diverged, match=r"diverged at epoch 1, step 3\b.*\bnan\b"):
        train(tiny_config(train={"epochs": 1}), run, **QUIET)
    assert len(calls) == 3  # no further step was taken
    assert not list((run / "checkpoints").glob("*.pt"))


def test_the_weight_check_alone_stops_non_finite_weights(tmp_path, monkeypatch):
    """The last optimiser step of a run (train.max_steps=3) leaves an infinite weight while
    every loss was finite: the weight check refuses to checkpoint it, and the run stops with
    the last finite checkpoint (none here) instead of writing final.pt."""
    real, steps = torch.optim.Adam.step, []

    def step(self, *a, **k):
        out = real(self, *a, **k)
        steps.append(1)
        if len(steps) == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    run = tmp_path / "run"
    with pytest.raises(Diverged, match=r"diverged.*non-finite weights"):
        train(tiny_config(train={"epochs": 1, "max_steps": 3}), run, **QUIET)
    assert len(steps) == 3
    assert not list((run / "checkpoints").glob("*.pt"))


# ----------------------------------------------------------------------------- hard kill
KILLED_EVALUATION = """
import os, sys
from infusion import evaluate as ev
from infusion.evaluate import likelihood as lik

real, calls = lik.stream_estimate, []

def die_in_the_second_repetition(*a, **k):
    calls.append(1)
    if len(calls) == 2:
        os._exit(9)  # a hard kill: no handler, no finally
    return real(*a, **k)

lik.stream_estimate = die_in_the_second_repetition
ev.evaluate(sys.argv[1], None, sys.argv[2],
            ev.EvalSettings.paper(k=4, repeats=3, examples=12, train_examples=8, n_samples=40),
            progress=False, log=lambda s: None)
"""


def test_a_hard_kill_of_the_paper_protocol_keeps_the_finished_repetitions(tmp_path):
    """`evaluate --protocol paper` killed (os._exit) inside its second repetition: the report
    on disk holds the first repetition of the IS row and its bound (from the same draws)."""
    run = tmp_path / "run"
    train(tiny_config(train={"epochs": 1}), run, **QUIET)
    out = tmp_path / "ev" / "report.json"
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_EVALUATION), str(run),
                          str(out)], check=False, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 9, res.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["status"]["state"] == "running"  # nobody marked it: the process died
    for name in ("is", "lb"):
        e = rep["metrics"][name]
        assert (e["repeats"], e["repeats_planned"], e["complete"], e["n"]) == (1, 3, False, 12)
        assert "partial: 1 of 3 repeats done" in e["protocol_note"]
    assert "(1 of 3 done)" in rep["status"]["running"]
    assert "is" not in rep["status"]["done"]
    import numpy as np

    assert np.load(out.with_name("per_example.npz"))["is"].shape == (1, 12)
    assert "IS estimate" in out.with_suffix(".md").read_text()
