"""`infusion evaluate` end to end on tiny runs: report contents, skipped metrics, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from infusion import evaluate as ev
from infusion import train
from infusion.cli import main
from infusion.likelihood import LOW_DIM_SIGMA_GRID

from .conftest import tiny_config

QUIET = {"progress": False, "log": lambda s: None}
SMALL = ev.EvalSettings(lb_examples=60, is_examples=30, is_k=20, n_samples=120,
                        parzen_valid=50, parzen_test=40, memo_samples=30, batch_size=256)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("toy")
    train(tiny_config(), run, **QUIET)
    return run


def test_toy_report(toy_run, tmp_path):
    out = tmp_path / "r" / "report.json"
    rep = ev.evaluate(toy_run, None, out, SMALL, **QUIET)
    m = rep["metrics"]
    assert set(m) == {"lb", "is", "parzen", "memorisation"}
    assert set(rep["skipped"]) == {"fid", "score", "coverage"}  # 2-D points are not images
    assert m["lb"]["n"] == 60 and m["is"]["n"] == 30 and m["is"]["k"] == 20
    assert m["is"]["lb_same_draws"]["mean"] <= m["is"]["by_k"]["10"] <= m["is"]["mean"]
    assert m["lb"]["mean"] < m["is"]["mean"]
    assert len(m["parzen"]["valid_by_sigma"]) == len(LOW_DIM_SIGMA_GRID)  # 2-D: wider grid
    assert json.loads(out.read_text())["metrics"]["lb"]["mean"] == m["lb"]["mean"]
    table = out.with_suffix(".md").read_text()
    assert "| lower bound (nats) |" in table and "skipped fid" in table
    per = np.load(out.with_name("per_example.npz"))
    assert per["lb"].shape == (1, 60) and per["parzen"].shape == (1, 40)
    assert np.load(out.with_name("samples.npz"))["means"].shape == (120, 2)
    assert rep["seconds"]["total"] > 0 and rep["machine"]["cpu_count"]


def test_methods_without_log_weight_are_skipped(toy_run, tmp_path, monkeypatch):
    from infusion import methods

    real = methods.build_method

    class NoLikelihood:  # the infusion method, declaring no likelihood
        name, has_likelihood, has_infusion_chain, has_reversibility = "infusion", False, False, False

        def __init__(self, cfg):
            self.inner = real(cfg)

        def build_model(self, *a, **k):
            return self.inner.build_model(*a, **k)

        def loss(self, *a, **k):
            return self.inner.loss(*a, **k)

    monkeypatch.setattr(methods, "build_method", NoLikelihood)
    rep = ev.evaluate(toy_run, "lb,is,parzen", tmp_path / "r.json", SMALL, **QUIET)
    assert set(rep["metrics"]) == {"parzen"}
    assert "no likelihood" in rep["skipped"]["lb"] and "no likelihood" in rep["skipped"]["is"]


def test_reversibility_is_skipped_for_infusion(toy_run, tmp_path):
    rep = ev.evaluate(toy_run, "reversibility", tmp_path / "r.json", SMALL, **QUIET)
    assert rep["metrics"] == {} and "walkback" in rep["skipped"]["reversibility"]


def test_checkpoint_without_statistics_gets_them(toy_run, tmp_path):
    epoch_file = next((toy_run / "checkpoints").glob("epoch-*.pt"))
    rep = ev.evaluate(epoch_file, ["lb"], tmp_path / "r.json", SMALL, **QUIET)
    assert "statistics" in rep["notes"][0] and "lb" in rep["metrics"]


def test_image_report_with_classifier_metrics(tiny_mnist, tmp_path):
    cfg = tiny_config(data={"name": "mnist"}, model={"hidden": (16,)}, method={"T": 2},
                      train={"epochs": 1, "batch_size": 16})
    final = train(cfg, tmp_path / "run", **QUIET)
    s = ev.EvalSettings(is_k=5, n_samples=20, memo_samples=10, batch_size=64)
    rep = ev.evaluate(final, "all", None, s, **QUIET)
    out = tmp_path / "run" / "eval"
    m = rep["metrics"]
    assert set(m) == set(ev.METRICS) - {"reversibility"}  # an infusion run
    assert "walkback" in rep["skipped"]["reversibility"]
    assert m["lb"]["n"] == 32 and m["lb"]["mean"] < m["is"]["mean"]
    assert m["is-iso"]["isotropic"] is True
    assert m["fid"]["value"] > 0 and m["fid"]["n_reference"] == 32
    assert sum(m["coverage"]["histogram"]) == 20
    assert rep["extractor"]["name"] == "mnist-cnn" and "test_accuracy" in rep["extractor"]
    for name in ("report.json", "report.md", "nearest_neighbours.png", "distances.png",
                 "samples.npz", "per_example.npz"):
        assert (out / name).exists(), name
    assert "paper" in (out / "report.md").read_text()


def test_cli_evaluate_and_errors(toy_run, tmp_path, capsys):
    out = tmp_path / "cli.json"
    assert main(["evaluate", "--checkpoint", str(toy_run), "--metrics", "lb,parzen",
                 "--lb-examples", "20", "--n-samples", "50", "--parzen-valid", "20",
                 "--parzen-test", "20", "--out", str(out), "--quiet"]) == 0
    assert set(json.loads(out.read_text())["metrics"]) == {"lb", "parzen"}
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(toy_run), "--metrics", "lb,nope"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is_k"):
        ev.EvalSettings(is_k=0).validate()
