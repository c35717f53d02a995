"""``infusion.evaluate`` from Python: the result object's numbers are the report's, in memory
and on disk; a model in memory leaves no files behind; bad names answer clearly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import infusion
from infusion.evaluate import EvalSettings, EvaluationResult, Metric
from infusion.evaluate.report import report_metrics

from .conftest import tiny_config

QUIET = {"progress": False, "device": "cpu"}
SMALL = EvalSettings(is_examples=40, is_k=5, n_samples=300, memo_samples=100)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "run"
    infusion.train(tiny_config(), path, progress=False)
    return path


def test_evaluate_a_run_directory(run, tmp_path):
    result = infusion.evaluate(run, ["is", "parzen"], tmp_path / "r.json", SMALL, **QUIET)
    assert isinstance(result, EvaluationResult) and result.path == tmp_path / "r.json"
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert result.to_dict() == on_disk
    assert result.to_markdown() == (tmp_path / "r.md").read_text()
    is_ = result["is"]
    assert isinstance(is_, Metric)
    assert (is_.value, is_.stderr, is_.n) == (on_disk["metrics"]["is"]["mean"],
                                              on_disk["metrics"]["is"]["stderr"], 40)
    # Parzen's headline is the σ chosen on validation data
    assert result["parzen"].value == on_disk["metrics"]["parzen"]["mean"]
    assert set(result.metrics) == {"is", "parzen"} and "is" in result and "lb" not in result
    assert result.settings["is_k"] == 5 and result.settings["is_examples"] == 40
    assert "is=" in repr(result)
    with pytest.raises(KeyError, match="no metric 'fid' in this evaluation; it has is, parzen"):
        result["fid"]


def test_a_model_in_memory_writes_nothing_unless_asked(run, tmp_path, monkeypatch):
    model, cfg = infusion.load_model(run, "cpu")
    monkeypatch.chdir(tmp_path)
    result = infusion.evaluate(model, "is", settings=SMALL, cfg=cfg, **QUIET)
    assert result.path is None and list(tmp_path.iterdir()) == []
    # the same draws as the run directory's evaluation: the same number
    again = infusion.evaluate(run, "is", tmp_path / "out" / "r.json", SMALL, **QUIET)
    assert result["is"].value == again["is"].value


def test_a_model_in_memory_needs_its_config(run):
    model, _ = infusion.load_model(run, "cpu")
    with pytest.raises(infusion.errors.InputError, match="needs cfg="):
        infusion.evaluate(model, "is", settings=SMALL, **QUIET)


def test_infusion_evaluate_is_callable_from_a_fresh_import():
    """``infusion.evaluate`` is the package and its function, whichever is imported first."""
    code = ("import infusion, infusion.evaluate.metrics; f = infusion.evaluate; "
            "from infusion.evaluate import evaluate; "
            "assert callable(f) and f.__call__ and evaluate.__module__ == 'infusion.evaluate.api'; "
            "assert infusion.evaluate.EvaluationResult is infusion.EvaluationResult")
    for first in ("import infusion; infusion.evaluate; ", ""):
        subprocess.run([sys.executable, "-c", first + code], check=True)


def test_precision_and_recall_are_two_metrics():
    report = {"metrics": {"precision": {"precision": 0.8, "recall": 0.6, "k": 3,
                                        "n_samples": 100},
                          "fid": {"value": 12.5, "n_samples": 100, "n_reference": 50}}}
    m = report_metrics(report)
    assert (m["precision"].value, m["recall"].value, m["fid"].value) == (0.8, 0.6, 12.5)
    assert m["fid"].n == 100 and m["fid"].stderr is None

