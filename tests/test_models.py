"""Models load and save below the trainer (``infusion.models``): sampling and evaluation never
import ``infusion.training``, an export loads without its training set, and the one function
that reads the training set for the §6 statistics says so."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

import infusion
from infusion.chain.sampler import sample_chain
from infusion.methods import statistics


class ReadTheTrainingSet(AssertionError):
    pass


@pytest.fixture
def exported(tiny_export):
    root, model, _ = tiny_export
    return root, model


def _no_training_set(monkeypatch):
    def refuse(*args, **kwargs):
        raise ReadTheTrainingSet("the training set was read")

    monkeypatch.setattr(statistics, "load_data", refuse)


def test_an_export_loads_and_samples_without_its_training_set(exported, monkeypatch):
    root, model = exported
    _no_training_set(monkeypatch)
    loaded, _ = infusion.load_model(root / "export", "cpu")
    assert loaded.stats_ready
    assert torch.equal(sample_chain(loaded, 16, seed=2).means, sample_chain(model, 16, seed=2).means)


def test_a_checkpoint_without_statistics_reads_the_training_set_and_says_so(exported, caplog,
                                                                             monkeypatch):
    root, _ = exported
    epoch = max((root / "run" / "checkpoints").glob("epoch-*.pt"))
    with caplog.at_level(logging.INFO, logger="infusion"):
        model, _ = infusion.load_model(epoch, "cpu")
    assert model.stats_ready
    assert any("reading the training set (spiral" in r.getMessage() for r in caplog.records)
    _no_training_set(monkeypatch)  # the same load with the door shut: it went through it
    with pytest.raises(ReadTheTrainingSet):
        infusion.load_model(epoch, "cpu")
    unready, _ = infusion.load_model(epoch, "cpu", statistics=False)  # and statistics=False
    assert not unready.stats_ready  # does not


def test_sampling_and_evaluation_do_not_import_the_trainer():
    code = ("import sys, infusion.models, infusion.chain.sampler, infusion.generate.files, "
            "infusion.generate.inpaint, infusion.evaluate, infusion.evaluate.card, "
            "infusion.evaluate.paper_figures; "
            "print(sorted(m for m in sys.modules if m.startswith('infusion.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
