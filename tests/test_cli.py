"""The command line end to end on tiny data, and its error handling."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from infusion.cli import main

TINY = ["--set", "data.toy_size=256", "--set", "model.hidden=16", "--set", "method.T=3",
        "--set", "train.epochs=1", "--set", "train.batch_size=64", "--set", "sample.n=8",
        "--quiet"]


def test_train_then_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "spiral", "--run-dir", str(run), *TINY]) == 0
    for name in ("config.json", "metrics.jsonl", "samples.npz", "samples.png", "chains.png",
                 "curve.png", "checkpoints/final.pt", "checkpoints/latest"):
        assert (run / name).exists(), name
    out = tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(run), "--n", "10", "--steps", "6",
                 "--seed", "3", "--out", str(out)]) == 0
    z = np.load(out)
    assert z["samples"].shape == z["means"].shape == (10, 2)  # 2-D points
    assert z["samples"].dtype == np.float32 and out.with_suffix(".png").exists()
    # sampling from a mid-training checkpoint computes the algorithms.md §6 statistics first
    epoch_file = next((run / "checkpoints").glob("epoch-*.pt"))
    assert main(["sample", "--checkpoint", str(epoch_file), "--n", "4", "--out",
                 str(tmp_path / "e.npz")]) == 0
    assert "statistics" in capsys.readouterr().err
    assert main(["train", "--resume", "--run-dir", str(run), "--set", "train.epochs=2",
                 "--quiet"]) == 0


def test_image_cli(tiny_mnist, tmp_path):
    run = tmp_path / "mnist"
    args = ["train", "--preset", "mnist-demo", "--run-dir", str(run), "--set", "model.hidden=16",
            "--set", "method.T=2", "--set", "train.epochs=1", "--set", "train.batch_size=16",
            "--set", "sample.steps=4", "--set", "sample.n=4", "--quiet"]
    assert main(args) == 0
    out = tmp_path / "m.npz"
    assert main(["sample", "--checkpoint", str(run), "--n", "5", "--out", str(out)]) == 0
    z = np.load(out)
    assert z["means"].shape == (5, 1, 28, 28)
    assert 0 <= z["means"].min() and z["means"].max() <= 1


@pytest.mark.parametrize("args,message", [
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--preset", "spiral", "--set", "method.alpha0=2"], "must lie in [0, 1]"),
    (["train", "--preset", "spiral", "--set", "method.omega"], "section.key=value"),
    (["sample", "--checkpoint", "/nonexistent/run", "--n", "2", "--out", "x.npz"], "does not exist"),
])
def test_errors_are_one_clear_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_sample_rejects_bad_output_name(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "spiral", "--run-dir", str(run), *TINY]) == 0
    assert main(["sample", "--checkpoint", str(run), "--n", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert ".npz" in capsys.readouterr().err


def test_console_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "infusion", "presets"], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0 and "mnist-demo" in r.stdout and "spiral" in r.stdout


def test_evaluate_help_names_every_metric():
    """The --metrics help is written out by hand (the CLI does not import torch); it must name
    every metric evaluate accepts."""
    import argparse

    from infusion.cli import build_parser
    from infusion.evaluate.protocol import METRICS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = next(a.help for a in sub.choices["evaluate"]._actions if "--metrics" in a.option_strings)
    assert set(text.split("comma list of ")[1].split(" ")[0].split(",")) == set(METRICS)
