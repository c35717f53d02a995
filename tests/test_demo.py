"""``infusion demo``: a fixed amount of work that says how long it will take here, and takes
one thread where the machine's other work makes several slower than one."""

from __future__ import annotations

import json

import torch

from infusion import config
from infusion.cli import main
from infusion.training import bench
from infusion.training.loop import train

from .conftest import tiny_config

TINY = ["--set", "model.hidden=16", "--set", "method.T=2", "--set", "train.epochs=1",
        "--set", "train.batch_size=16", "--set", "sample.steps=4", "--set", "sample.n=4",
        "--set", "train.valid_examples=16", "--set", "train.train_bound_examples=16",
        "--quiet"]


def test_the_demo_is_fixed_work_and_says_how_long(tiny_mnist, tmp_path, capsys):
    # no preset has a time cap: the same model on any machine, however busy
    assert [n for n in config.PRESETS if config.preset(n).train.max_minutes] == []
    assert main(["demo", "--run-dir", str(tmp_path / "demo"), "--device", "cpu", *TINY]) == 0
    out = capsys.readouterr().out
    assert "example-steps/s here" in out and "minutes" in out and str(tmp_path / "demo") in out
    saved = json.loads((tmp_path / "demo" / "config.json").read_text())
    assert saved["train"]["max_minutes"] == 0 and saved["train"]["epochs"] == 1


def test_a_busy_machine_gets_one_thread(tiny_mnist, tmp_path, capsys, monkeypatch):
    def busy(cfg, device, seconds=2.0):
        return {"threads": 2, "example_steps_per_s": 100.0, "one_thread": 900.0, "busy": True,
                "best_threads": 1, "epoch_s": 60.0, "run_s": 480.0}

    monkeypatch.setattr(bench, "probe", busy)
    assert main(["demo", "--run-dir", str(tmp_path / "demo"), "--device", "cpu", *TINY]) == 0
    assert "busy" in capsys.readouterr().out
    assert json.loads((tmp_path / "demo" / "config.json").read_text())["train"]["cpu_threads"] == 1


def test_probe_measures_both_thread_counts_and_restores_them():
    threads = torch.get_num_threads()
    cfg = tiny_config()
    p = bench.probe(cfg, torch.device("cpu"), seconds=0.05)
    assert p["example_steps_per_s"] > 0 and p["run_s"] > p["epoch_s"] > 0
    assert (p["one_thread"] is None) == (threads == 1)
    assert torch.get_num_threads() == threads
    # the estimate is the run's work at the measured speed: twice the epochs, about twice the time
    longer = config.override(cfg, [f"train.epochs={2 * cfg.train.epochs}"])
    _, run2 = bench.run_seconds(longer, 1000.0)
    _, run1 = bench.run_seconds(cfg, 1000.0)
    assert 1.9 < run2 / run1 < 2.0


def test_one_thread_or_two_train_the_same_model(tmp_path):
    """What lets the demo change its thread count: the training is the same either way."""
    rows, threads = [], torch.get_num_threads()
    try:
        for n in (1, 2):
            run = tmp_path / f"t{n}"
            train(tiny_config(model={"hidden": (64, 64)}, train={"cpu_threads": n}), run,
                  progress=False, log=lambda s: None)
            rows.append([json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()])
    finally:
        torch.set_num_threads(threads)  # train.cpu_threads is process-wide
    keys = ("train_loss", "valid_bound_population")
    assert [[r[k] for k in keys] for r in rows[0]] == [[r[k] for k in keys] for r in rows[1]]
