"""Faults survived and nothing lost (issue 13): the run lock, divergence, resume overrides,
stuck and used run directories, kills at random moments, and loading that executes nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from infusion import config, models
from infusion.training.loop import Diverged, Interrupted, RunError, train

TINY = ["data.toy_size=512", "model.hidden=8,8", "method.T=3", "train.epochs=2",
        "train.batch_size=32", "train.valid_examples=64", "sample.n=4", "sample.chains=2"]


def tiny(*extra: str) -> config.Config:
    return config.override(config.preset("spiral"), TINY + list(extra))


def quiet(_):
    return None


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_used_run_directory_is_refused_unless_overwrite(tmp_path):
    run = tmp_path / "run"
    train(tiny(), run, progress=False, log=quiet)
    before = (run / "config.json").read_text()
    with pytest.raises(RunError, match="already holds a run.*--resume.*--overwrite"):
        train(tiny("train.lr=0.01"), run, progress=False, log=quiet)
    assert (run / "config.json").read_text() == before  # nothing replaced
    train(tiny("train.lr=0.01"), run, overwrite=True, progress=False, log=quiet)
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.01
    assert len(rows(run)) == 2


def test_a_run_that_never_checkpointed_says_how_to_restart(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    with pytest.raises(RunError, match="nothing to resume.*--overwrite"):
        train(None, run, resume=True, progress=False, log=quiet)
    with pytest.raises(RunError, match="saved no resumable state"):
        train(tiny(), run, progress=False, log=quiet)
    train(tiny(), run, overwrite=True, progress=False, log=quiet)


def test_a_locked_run_directory_is_refused(tmp_path):
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # another process (here: this one) holds the run
        f.write("4242")
        f.flush()
        code = ("import sys; from infusion import config; from infusion.training.loop import train\n"
                f"train(config.override(config.preset('spiral'), {TINY!r}), {str(run)!r}, "
                "progress=False, log=lambda s: None)")
        res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                             text=True, timeout=120)
    assert res.returncode != 0 and "in use by another infusion process (pid 4242)" in res.stderr
    assert not (run / "config.json").exists()


def test_divergence_stops_with_a_clear_error_and_keeps_the_finite_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(tiny("train.epochs=1"), run, progress=False, log=quiet)
    good = models.load(run / "checkpoints" / "epoch-0001.pt")
    with pytest.raises(Diverged, match="diverged.*epoch-0001.pt.*train.lr"):
        train(None, run, resume=True, overrides=["train.epochs=3", "train.lr=1e30"],
              progress=False, log=quiet)
    kept = models.load(run / "checkpoints" / "epoch-0001.pt")
    assert all(torch.equal(kept["model"][k], v) for k, v in good["model"].items())
    assert not any(torch.isnan(v).any() for v in kept["model"].values())
    # the final model was not replaced by a NaN one, and resuming with a sane rate works
    train(None, run, resume=True, overrides=["train.epochs=2", "train.lr=1e-3"],
          progress=False, log=quiet)
    assert [r["epoch"] for r in rows(run)] == [1, 2]


def test_resume_applies_the_learning_rate_and_refuses_other_sections(tmp_path):
    run = tmp_path / "run"
    train(tiny("train.epochs=1"), run, progress=False, log=quiet)
    before = (run / "config.json").read_text()
    with pytest.raises(RunError, match="cannot change 'model.hidden'"):
        train(None, run, resume=True, overrides=["model.hidden=4,4"], progress=False, log=quiet)
    assert (run / "config.json").read_text() == before  # a refused resume writes nothing
    train(None, run, resume=True, overrides=["train.epochs=2", "train.lr=0.0123"],
          progress=False, log=quiet)
    state = models.load(run / "checkpoints" / "epoch-0002.pt")
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.0123
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.0123


def test_a_signal_stops_after_a_checkpoint_and_resume_is_exact(tmp_path):
    whole = tmp_path / "whole"
    train(tiny(), whole, progress=False, log=quiet)
    run = tmp_path / "run"

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("epoch 1:"):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted, match="SIGINT after epoch 1"):
        train(tiny(), run, progress=False, log=stop_after_epoch_1)
    assert [r["epoch"] for r in rows(run)] == [1]
    train(None, run, resume=True, progress=False, log=quiet)
    assert [{k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k}
            for r in rows(run)] == [{k: v for k, v in r.items()
                                     if "seconds" not in k and "per_s" not in k}
                                    for r in rows(whole)]


KILL_SCRIPT = """
import sys
from infusion import config
from infusion import train
cfg = config.override(config.preset("spiral"), sys.argv[2:])
train(cfg, sys.argv[1], resume=sys.argv[1].endswith("resume"), progress=False, log=lambda s: None)
"""


def test_kill_at_a_random_moment_then_resume_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL mid-run (checkpoints every step: ``train.checkpoint_minutes`` tiny), a random
    moment after the first epoch's checkpoint, then --resume: the final weights and every
    metrics row equal an uninterrupted run's."""
    delay = random.uniform(0.2, 1.2)
    print(f"killed {delay:.2f} s after the first checkpoint")  # shown if the test fails
    settings = TINY + ["train.checkpoint_minutes=1e-9", "data.toy_size=2048"]
    whole = tmp_path / "whole"
    train(config.override(config.preset("spiral"), settings), whole, progress=False, log=quiet)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(run), *settings], env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not list((run / "checkpoints").glob("epoch-*.pt")):
        time.sleep(0.05)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed mid-run, not finished
    run.rename(tmp_path / "resume")
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "resume"), *settings],
                   env=env, check=True, timeout=300)
    a = models.load(tmp_path / "resume" / "checkpoints" / "final.pt")["model"]
    b = models.load(whole / "checkpoints" / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert [r["valid_bound_population"] for r in rows(tmp_path / "resume")] == \
           [r["valid_bound_population"] for r in rows(whole)]
    assert not list((tmp_path / "resume").glob("**/.*.tmp"))


def test_latest_pointer_cannot_leave_the_run_directory(tmp_path, spiral_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(spiral_run, run)
    (run / "checkpoints" / "latest").write_text("../../elsewhere.pt\n")
    with pytest.raises(models.CheckpointError, match="must name a file in"):
        models.load_model(run)


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path, spiral_run):
    ckpt = models.load(spiral_run)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name] = torch.full_like(ckpt["model"][name], float("nan"))
    bad = tmp_path / "nan.pt"
    torch.save({k: v for k, v in ckpt.items() if k != "path"}, bad)
    with pytest.raises(models.CheckpointError, match="non-finite weights"):
        models.load_model(bad)


def test_pickled_code_in_a_checkpoint_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": Evil(), "config": {}, "shape": [2]}, bad)
    with pytest.raises(models.CheckpointError, match="cannot read checkpoint"):
        models.load_model(bad)
    assert not marker.exists()
