"""Training, sampling, checkpoints and resume (algorithms.md §2, §4, §6; docs/design.md
conventions)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from infusion import config, models
from infusion.chain.sampler import sample_chain
from infusion.data import load_data, toy
from infusion.errors import ConfigError
from infusion.io import atomic_write
from infusion.methods import build_method
from infusion.training.loop import RunError, train, training_state_file

from .conftest import tiny_config

QUIET = {"progress": False, "log": lambda s: None}


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_on_toy_data(tmp_path):
    cfg = tiny_config(train={"epochs": 6})
    train(cfg, tmp_path / "run", **QUIET)
    rows = _rows(tmp_path / "run")
    assert len(rows) == 6
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.5
    assert rows[-1]["valid_bound_population"] > rows[0]["valid_bound_population"]


def test_toy_figures_are_readable(tmp_path):
    """2-D runs draw every sample over the data, and the chains as a few panels of many
    points (not one panel per step with 8 dots)."""
    from PIL import Image

    run = tmp_path / "run"
    train(tiny_config(method={"T": 20}, train={"epochs": 1}, sample={"n": 300}), run, **QUIET)
    assert len(np.load(run / "samples.npz")["means"]) == 300
    chains = Image.open(run / "chains.png")
    assert chains.width < 2000 and chains.width > 3 * chains.height  # 6 panels in a row


def test_spiral_samples_lie_near_the_spiral(spiral_run):
    s = np.load(spiral_run / "samples.npz")["samples"].reshape(-1, 2)
    ref = toy("spiral", 4000, 11).images

    def median_nn(points):
        d = torch.cdist(torch.from_numpy(points), torch.from_numpy(ref)).min(1).values
        return d.median().item()

    # A Gaussian with the data's moments is what a model that learned nothing would give.
    rng = np.random.default_rng(0)
    blob = (ref.mean(0) + rng.standard_normal(s.shape) * ref.std(0)).astype(np.float32)
    assert median_nn(s) < 0.02  # the spiral arms are ~0.1 apart
    assert median_nn(s) < 0.4 * median_nn(blob)


def test_seeded_sampling_is_reproducible_and_batch_independent(spiral_run):
    model, _ = models.load_model(spiral_run)
    a = sample_chain(model, 12, seed=5, batch_size=12)
    b = sample_chain(model, 12, seed=5, batch_size=5)
    c = sample_chain(model, 4, seed=9)  # seeds 9..12 = samples 4..7 of the first call
    # Equal up to float rounding: BLAS may sum in another order for another batch size.
    assert torch.allclose(a.samples, b.samples, atol=1e-5) and torch.allclose(a.means, b.means, atol=1e-5)
    assert torch.allclose(a.samples[4:8], c.samples, atol=1e-5)
    assert not torch.equal(a.samples[0], a.samples[1])
    longer = sample_chain(model, 3, steps=model.T * 2, seed=0, return_trajectory=True)
    assert longer.states.shape == (model.T * 2 + 1, 3, 2)
    with pytest.raises(ValueError, match="T' >= the training T"):
        sample_chain(model, 2, steps=model.T - 1)


def test_sampling_requires_step_statistics():
    cfg = tiny_config()
    method = build_method(cfg.method)
    model = method.build_model((2,), cfg.model)
    with pytest.raises(RuntimeError, match="algorithms.md §6"):
        sample_chain(model, 4)


def test_checkpoint_round_trip(spiral_run, tmp_path):
    model, cfg = models.load_model(spiral_run / "checkpoints" / "final.pt")
    assert cfg.preset == "spiral" and model.stats_ready
    ckpt = torch.load(spiral_run / "checkpoints" / "final.pt", weights_only=True)
    again, _ = models.build_model(ckpt["config"], ckpt["shape"], ckpt["model"], "final.pt")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    out = models.save_pretrained(model, cfg, tmp_path / "export")
    from safetensors.torch import load_file

    tensors = load_file(str(out / "model.safetensors"))
    assert torch.equal(tensors["prior.mean"], model.prior.mean)
    assert json.loads((out / "config.json").read_text())["config"]["preset"] == "spiral"
    # the export loads back (from_pretrained, and load_model on the folder) to the same model
    for loaded, _ in (models.from_pretrained(out), models.load_model(out)):
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
        assert loaded.stats_ready and loaded.sample_steps == cfg.sample_steps


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os

    def recreate(tmp):  # a writer that replaces the file, as safetensors' save_file does
        tmp.unlink()
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))

    mask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("x"))
        atomic_write(tmp_path / "b.bin", recreate)
    finally:
        os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]  # no temporary file


def test_resume_continues_the_same_run(tmp_path):
    cfg = tiny_config(train={"epochs": 3})
    train(cfg, tmp_path / "straight", **QUIET)
    half = config.override(cfg, ["train.epochs=2"])
    train(half, tmp_path / "resumed", **QUIET)
    with pytest.raises(RunError, match="--resume"):
        train(half, tmp_path / "resumed", **QUIET)
    train(None, tmp_path / "resumed", resume=True, overrides=["train.epochs=3"], **QUIET)
    assert [r["train_loss"] for r in _rows(tmp_path / "resumed")] == \
        [r["train_loss"] for r in _rows(tmp_path / "straight")]
    a = models.load(tmp_path / "straight")["model"]
    b = models.load(tmp_path / "resumed")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cosine_schedule_decays_the_rate_to_lr_final(tmp_path):
    from infusion.training.loop import learning_rate

    tc = tiny_config(train={"epochs": 4, "lr": 1e-2, "lr_schedule": "cosine",
                            "lr_final": 1e-4}).train
    assert learning_rate(tc, 0, 10) == pytest.approx(1e-2)
    assert learning_rate(tc, 20, 10) == pytest.approx((1e-2 + 1e-4) / 2)  # half way
    assert learning_rate(tc, 40, 10) == pytest.approx(1e-4)
    assert learning_rate(tc, 99, 10) == pytest.approx(1e-4)  # past the end (a longer resume)
    assert learning_rate(tiny_config().train, 7, 10) == 1e-3  # constant: the paper's
    train(tiny_config(train={"epochs": 3, "lr_schedule": "cosine", "lr_final": 1e-5}),
          tmp_path / "run", **QUIET)
    lrs = [r["lr"] for r in _rows(tmp_path / "run")]
    assert lrs[0] < 1e-3 and lrs[0] > lrs[1] > lrs[2] > 1e-5
    with pytest.raises(config.ConfigError, match="lr_final"):
        tiny_config(train={"lr_final": 1.0})


def test_init_from_starts_from_a_trained_model(tmp_path):
    """A warm start (train.init_from) begins where the source model ended: with a rate too
    small to move the weights, its first validation bound is the source's best one."""
    source = tmp_path / "source"
    train(tiny_config(train={"epochs": 3}), source, **QUIET)
    best = max(r["valid_bound_population"] for r in _rows(source))
    export = models.save_pretrained(*models.load_model(source), tmp_path / "export")
    fresh = tiny_config(train={"epochs": 1, "lr": 1e-12})
    for start in (export, source):
        run = tmp_path / f"from-{start.name}"
        train(config.override(fresh, [f"train.init_from={start}"]), run, **QUIET)
        assert _rows(run)[0]["valid_bound_population"] == pytest.approx(best, abs=1e-3)
        assert json.loads((run / "config.json").read_text())["train"]["init_from"] == \
            str(start.resolve())
    train(fresh, tmp_path / "cold", **QUIET)
    assert _rows(tmp_path / "cold")[0]["valid_bound_population"] < best - 1.0
    said = []
    train(config.override(fresh, [f"train.init_from={export}", "model.bn_eps=1e-4"]),
          tmp_path / "eps", progress=False, log=said.append)
    assert any("trained with model.bn_eps=1e-05, this run uses 0.0001" in s for s in said)
    wider = config.override(tiny_config(model={"hidden": (48, 32)}), [f"train.init_from={export}"])
    with pytest.raises(RunError, match="train.init_from=.*does not fit"):
        train(wider, tmp_path / "misfit", **QUIET)
    with pytest.raises(models.CheckpointError, match="does not exist"):
        train(config.override(fresh, ["train.init_from=nowhere"]), tmp_path / "none", **QUIET)
    assert not (tmp_path / "none" / "config.json").exists()  # the directory was not claimed


def test_max_minutes_stops_mid_epoch_and_resumes_the_same_run(tmp_path):
    """train.max_minutes stops within a step of the limit, inside the first epoch, with a
    resumable state; the resumed run is the uninterrupted one, row for row."""
    cfg = tiny_config(train={"epochs": 2, "max_minutes": 1e-6})
    train(cfg, tmp_path / "run", **QUIET)
    state = models.load(training_state_file(tmp_path / "run"))["state"]
    assert (state["epoch"], state["batch"]) == (0, 1)  # one step of the first epoch's eight
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or _rows(tmp_path / "run") == []
    assert (tmp_path / "run" / "checkpoints" / "final.pt").exists()
    train(None, tmp_path / "run", resume=True, overrides=["train.max_minutes=0"], **QUIET)
    train(config.override(cfg, ["train.max_minutes=0"]), tmp_path / "whole", **QUIET)
    keys = ("step", "train_loss", "valid_bound_population")
    assert [[r[k] for k in keys] for r in _rows(tmp_path / "run")] == \
           [[r[k] for k in keys] for r in _rows(tmp_path / "whole")]


def test_max_steps_is_a_budget_in_optimiser_steps(tmp_path):
    # 512 spiral points, 10% held out for validation: 8 batches of 64 an epoch
    cfg = tiny_config(train={"epochs": 50, "max_steps": 5})
    train(cfg, tmp_path / "run", **QUIET)
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [5]  # the first epoch ended at the budget
    assert (tmp_path / "run" / "checkpoints" / "final.pt").exists()
    train(None, tmp_path / "run", resume=True, overrides=["train.max_steps=12"], **QUIET)
    assert [r["step"] for r in _rows(tmp_path / "run")] == [5, 12]
    with pytest.raises(ConfigError, match="train.max_steps=-1"):
        tiny_config(train={"max_steps": -1})


def test_training_on_image_data(tiny_mnist, tmp_path):
    cfg = tiny_config(data={"name": "mnist"}, train={"epochs": 1, "batch_size": 16})
    data = load_data(cfg)
    assert data.pixels and data.shape == (1, 28, 28) and data.train.dtype == torch.uint8
    final = train(cfg, tmp_path / "run", **QUIET)
    model, _ = models.load_model(final)
    s = sample_chain(model, 3)
    assert s.means.shape == (3, 1, 28, 28)
    assert (tmp_path / "run" / "samples.png").exists() and (tmp_path / "run" / "chains.png").exists()


def test_early_stopping_stops_after_patience_epochs_in_a_row_without_improvement(
        tmp_path, monkeypatch):
    """Validation scores fed to the loop, epoch e scoring ``losses[e - 1]`` (lower is better),
    with patience 2: epoch 3 is worse (1 epoch without improvement), epoch 4 the best, epoch 5
    ties it (a tie is no improvement: 1), epoch 6 is worse (2 in a row): the run stops after
    epoch 6 and keeps epoch 4's weights. Counting epochs without improvement in total would
    stop after epoch 5; stopping one epoch late would reach epoch 7, whose score is the best."""
    from infusion.training import loop

    losses = iter([5.0, 4.0, 4.5, 3.0, 3.0, 3.6, 1.0, 0.5, 0.4, 0.3])

    def scores(*_args, **_kwargs):
        loss = next(losses)
        return {"valid_loss": loss, "valid_bound_population": -loss}

    monkeypatch.setattr(loop, "validate", scores)
    cfg = tiny_config(train={"epochs": 10, "patience": 2})
    final = train(cfg, tmp_path / "run", **QUIET)
    rows = _rows(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["valid_loss"] for r in rows] == [5.0, 4.0, 4.5, 3.0, 3.0, 3.6]
    ckpts = tmp_path / "run" / "checkpoints"
    last = torch.load(ckpts / "epoch-0006.pt", weights_only=True)
    assert last["state"]["stopped_early"] and last["state"]["bad_epochs"] == 2
    assert last["state"]["best"] == 3.0
    best = torch.load(ckpts / "best.pt", weights_only=True)
    done = torch.load(final, weights_only=True)
    assert best["epoch"] == done["epoch"] == 4
    weights = [k for k in best["model"] if k.endswith(("weight", "bias"))]
    assert weights and all(torch.equal(done["model"][k], best["model"][k]) for k in weights)
    # epoch 4's weights, not the last epoch's: two more epochs of Adam moved them
    assert not all(torch.equal(last["model"][k], best["model"][k]) for k in weights)


def test_bad_settings_give_clear_errors():
    with pytest.raises(config.ConfigError, match="unknown preset 'nope'"):
        config.preset("nope")
    with pytest.raises(config.ConfigError, match=r"method.infusion.alpha0=1.5.*\[0, 1\]"):
        config.override(config.preset("mnist"), ["method.alpha0=1.5"])
    with pytest.raises(config.ConfigError, match="expected int"):
        config.override(config.preset("mnist"), ["train.epochs=three"])
    with pytest.raises(config.ConfigError, match="unknown setting train.epoch"):
        config.override(config.preset("mnist"), ["train.epoch=3"])
    with pytest.raises(config.ConfigError, match="section.key=value"):
        config.override(config.preset("mnist"), ["epochs"])
    cfg = config.override(config.preset("mnist"), ["model.hidden=64x32", "model.batch_norm=false"])
    assert cfg.model.hidden == (64, 32) and cfg.model.batch_norm is False
    assert config.from_dict(config.to_dict(cfg)) == cfg


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(models.CheckpointError, match="does not exist"):
        models.load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(models.CheckpointError, match="cannot read"):
        models.load(bad)
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(models.CheckpointError, match="not an infusion checkpoint"):
        models.load(tmp_path / "other.pt")
    with pytest.raises(models.CheckpointError, match="run directory"):
        models.load(tmp_path)


def test_a_run_records_its_environment(tmp_path):
    """environment.json: one entry per start or resume, with what made the run."""
    import infusion

    train(tiny_config(train={"epochs": 1}), tmp_path / "run", **QUIET)
    train(None, tmp_path / "run", resume=True, overrides=["train.epochs=2"], **QUIET)
    entries = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert len(entries) == 2
    assert entries[0]["infusion"] == infusion.__version__
    assert entries[0]["torch"] == torch.__version__ and entries[0]["device"] == "cpu"
    assert entries[0]["threads"] >= 1 and isinstance(entries[0]["command"], list)


def test_an_export_explains_itself(tmp_path):
    """``infusion export`` writes a model card: the model, its training commands and
    environment, the evaluation table; and no path of the machine in its config."""
    from infusion.cli import main

    run = tmp_path / "run"
    src = tmp_path / "src-model"
    train(tiny_config(train={"epochs": 1}), src, **QUIET)
    cfg = config.override(tiny_config(train={"epochs": 1}), [f"train.init_from={src}"])
    train(cfg, run, **QUIET)
    assert main(["evaluate", "--checkpoint", str(run), "--metrics", "lb", "--quiet",
                 "--lb-examples", "20"]) == 0
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "# exported" in card and "method `infusion` (T = 4" in card
    assert 'infusion.load_model("exported")' in card and str(tmp_path) not in card
    assert "Commands" in card and "Environment: infusion" in card and "epochs trained" in card
    assert "| lower bound (nats) |" in card and "Fine-tuned from `src-model`" in card
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["train"]["init_from"] == "src-model"  # provenance, not a path
    assert str(tmp_path) not in (out / "config.json").read_text()
