"""The experiment scripts: toy-suite metrics against known answers, and both scripts end to end
on a tiny budget."""

from __future__ import annotations

import json
import math

import pytest
import torch

from .conftest import load_experiment

toy_suite = load_experiment("toy_suite")


def test_mmd_known_answers():
    g = torch.Generator().manual_seed(0)
    a = 0.1 * torch.randn(800, 2, generator=g)
    b = 0.1 * torch.randn(800, 2, generator=g)
    same = toy_suite.mmd2(a, b)
    assert abs(same) < 1e-2  # unbiased: ~0 for one distribution
    assert toy_suite.mmd2(a, b + 0.1) > 0.1 > 10 * abs(same)
    # two point masses δ apart: MMD² = 2·Σ_h (1 − exp(−δ²/(2h²)))
    p0, delta = torch.zeros(5, 2), 0.04
    exact = sum(2 * (1 - math.exp(-delta ** 2 / (2 * h * h))) for h in toy_suite.BANDWIDTHS)
    assert toy_suite.mmd2(p0, p0 + torch.tensor([delta, 0.0])) == pytest.approx(exact, rel=1e-6)


def test_kde_log_likelihood_known_answer():
    s = torch.zeros(1, 2)  # one sample: the KDE is N(0, h² I)
    x = torch.tensor([[0.01, -0.02]])
    h = 0.05
    exact = -0.5 * (0.01 ** 2 + 0.02 ** 2) / h ** 2 - math.log(2 * math.pi * h ** 2)
    assert toy_suite.kde_log_likelihood(s, x, h) == pytest.approx(exact, rel=1e-6)


def test_toy_suite_end_to_end(tmp_path):
    toy_suite.main(["--out", str(tmp_path), "--methods", "gsn", "--datasets", "circle",
                    "--epoch-scale", "0.04", "--n", "200", "--set", "data.toy_size=1000",
                    "--set", "train.valid_examples=100", "--set", "sample.steps=10"])
    table = (tmp_path / "toy_suite.md").read_text()
    assert "| gsn |" in table and "| data |" in table
    rows = json.loads((tmp_path / "toy_suite.json").read_text())["rows"]
    by = {r["method"]: r for r in rows}
    assert by["data"]["mmd2"] < by["gsn"]["mmd2"]  # real points beat a 1-epoch model
    assert (tmp_path / "toy_samples.png").exists() and (tmp_path / "toy_ranking.png").exists()


def test_compare_mnist_end_to_end(tiny_mnist, tmp_path):
    compare = load_experiment("compare_mnist")
    compare.main(["--out", str(tmp_path), "--methods", "diffusion,walkback", "--no-fid",
                  "--net", "unet", "--hidden", "4", "--budget", "2e9", "--diffusion-T", "20",
                  "--steps", "5,10,20", "--solver-max", "5", "--chain-max", "10",
                  "--samples", "40", "--test", "32", "--valid", "32", "--lik-examples", "4",
                  "--lik-k", "3"])
    report = json.loads((tmp_path / "compare_mnist.json").read_text())
    rows, models = report["rows"], report["models"]
    assert [(r["method"], r["sampler"], r["steps"]) for r in rows] == [
        ("diffusion", "ancestral", 5), ("diffusion", "ancestral", 10),
        ("diffusion", "ancestral", 20), ("diffusion", "ddim", 5), ("diffusion", "dpm++2m", 5),
        ("walkback", "ancestral", 8), ("walkback", "ancestral", 10)]
    assert all(math.isfinite(r["parzen"]) for r in rows)
    # the same training FLOPs: diffusion runs its network once an example, walkback ~20 times
    diff, walk = models
    assert diff["passes_per_example"] == 1 and walk["passes_per_example"] > 8
    assert diff["optimiser_steps"] > 8 * walk["optimiser_steps"]
    for m in models:
        assert 2e9 <= m["train_flops"] < 2e9 + m["flops_per_example"] * m["batch"]
        steps = [json.loads(x)["step"] for x in
                 (tmp_path / "runs" / m["method"] / "metrics.jsonl").read_text().splitlines()]
        assert steps[-1] == m["optimiser_steps"]  # train.max_steps ended the run there
        run_cfg = json.loads((tmp_path / "runs" / m["method"] / "config.json").read_text())
        assert run_cfg["model"]["net"] == "unet"  # one body for every method
    assert diff["lik_kind"] == "lower bound" and "is" in walk and math.isfinite(walk["lik"])
    assert "| diffusion | ddim | 5 |" in (tmp_path / "compare_mnist.md").read_text()
    assert (tmp_path / "compare_mnist.png").stat().st_size > 0
