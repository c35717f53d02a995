"""Trackers and hubs, all without a network: ``train.tracker=wandb`` in W&B's offline mode, the
export card's YAML header as huggingface_hub reads it, and ``load_model("hf://…")`` through
huggingface_hub's download function (replaced here by the cache it would fill)."""

from __future__ import annotations

import json
import sys

import huggingface_hub
import pytest
import torch

import infusion
from infusion.chain.sampler import sample_chain
from infusion.errors import InputError
from infusion.evaluate import EvalSettings
from infusion.evaluate.card import model_card

from .conftest import tiny_config


@pytest.fixture
def trained(tiny_export):
    return tiny_export


def _wandb_files(run):
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert files, "no offline W&B run"
    return files


def test_wandb_logs_every_row_offline_and_a_resumed_run_continues_it(tmp_path, monkeypatch):
    """Every numeric value of each epoch's metrics.jsonl row is in the offline W&B run (its
    records hold each value as JSON text); a resumed run writes to the same W&B run id."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"

    def logged_row(epoch: int) -> None:
        # each start of the run writes its own offline file (a start in the same second as
        # the last one writes over it): the newest holds this epoch's row
        logged = max(_wandb_files(run), key=lambda f: f.stat().st_mtime).read_bytes()
        row = [json.loads(line) for line in (run / "metrics.jsonl").open()][epoch - 1]
        assert row["epoch"] == epoch
        for key, value in row.items():
            if key != "epoch" and isinstance(value, float):
                assert key.encode() in logged and json.dumps(value).encode() in logged, key

    infusion.train(tiny_config(train={"tracker": "wandb", "epochs": 1}), run, progress=False)
    run_id = (run / "wandb" / "infusion-run-id").read_text().strip()
    logged_row(1)
    infusion.train(None, run, resume=True, overrides=["train.epochs=2"], progress=False)
    assert (run / "wandb" / "infusion-run-id").read_text().strip() == run_id
    assert {f.stem for f in _wandb_files(run)} == {f"run-{run_id}"}  # one W&B run
    logged_row(2)


def test_a_missing_wandb_is_a_clear_error_before_the_run_starts(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(InputError, match=r"infusion-training\[wandb\]"):
        infusion.train(tiny_config(train={"tracker": "wandb"}), tmp_path / "run",
                       progress=False)
    # nothing of a run started: at most the run's lock file
    assert {p.name for p in (tmp_path / "run").iterdir()} <= {".lock"}


def test_the_card_opens_with_metadata_a_hub_reads(trained, tmp_path):
    root, model, cfg = trained
    report = infusion.evaluate(model, ["is", "parzen"], settings=EvalSettings(
        is_examples=30, is_k=4, n_samples=200), cfg=cfg, progress=False).report
    text = model_card(root / "export", cfg, model.shape, report=report)
    assert text.startswith("---\n")
    card = huggingface_hub.ModelCard(text)
    assert card.data.library_name == "infusion"
    assert card.data.tags == ["infusion", "markov-chain", "generative-model", "spiral"]
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == {"is": report["metrics"]["is"]["mean"],
                      "parzen": report["metrics"]["parzen"]["mean"]}
    assert card.text.lstrip().startswith("# export")


def test_a_card_without_evaluation_or_with_odd_names_stays_valid(trained):
    root, model, cfg = trained
    odd = cfg.__class__(**{**cfg.__dict__, "preset": '"><script>x</script>: - [1'})
    card = huggingface_hub.ModelCard(model_card(root / "export", odd, model.shape))
    assert card.data.library_name == "infusion" and not card.data.eval_results


def test_load_model_from_the_hub_uses_its_download(trained, monkeypatch):
    root, model, _ = trained
    calls = []

    def download(**kwargs):
        calls.append(kwargs)
        return str(root / "export")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    loaded, _ = infusion.load_model("hf://someone/spiral@v1", "cpu")
    assert calls == [{"repo_id": "someone/spiral", "revision": "v1",
                      "allow_patterns": ["config.json", "model.safetensors", "README.md"]}]
    a = sample_chain(model, 20, seed=4).means
    assert torch.equal(sample_chain(loaded, 20, seed=4).means, a)


def test_hub_errors_name_the_repository(trained, monkeypatch, tmp_path):
    def offline(**kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(InputError, match="could not fetch 'hf://someone/spiral'.*no network"):
        infusion.load_model("hf://someone/spiral", "cpu")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **k: str(tmp_path))
    with pytest.raises(InputError, match="holds no infusion export"):
        infusion.load_model("hf://someone/empty", "cpu")
    for bad in ("hf://nobody", "hf://a/b@", "hf:///x/y"):
        with pytest.raises(InputError, match="expected hf://owner/name"):
            infusion.load_model(bad, "cpu")
