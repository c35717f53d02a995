"""No silent wrong result: an input the chosen path would ignore is refused (or applied), a
number is reported only for what it claims to measure, and a model card shows only its own
model's evaluation, without a path of the machine or raw HTML."""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import infusion
from infusion import config, models
from infusion.cli import main
from infusion.data import DataError, load_split
from infusion.errors import ConfigError, InputError
from infusion.evaluate import EvalSettings
from infusion.methods import build_method
from infusion.training.loop import train

from .conftest import tiny_config

QUIET = {"progress": False}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A seconds-long spiral run (preset name "spiral" recorded), trained once for the module:
    copy it before changing anything in it."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    train(dataclasses.replace(tiny_config(), preset="spiral"), run, **QUIET)
    return run


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _model(name: str = "infusion", shape=(2,), **method):
    """An untrained model of ``name`` with its config (stored statistics marked ready)."""
    cfg = tiny_config(method={"name": name, "T": 1 if name == "vae" else 4, **method})
    model = build_method(cfg.method).build_model(shape, cfg.model)
    for norm in model.modules():
        if hasattr(norm, "stat_ready"):
            norm.stat_ready.fill_(True)
    return model.eval(), cfg


# ---------------------------------------------------------------- the statistics-pass spread


def test_the_spread_reruns_the_kind_of_statistics_the_bound_was_scored_with(tiny_run,
                                                                           monkeypatch):
    from infusion.evaluate import likelihood_rows
    from infusion.methods import statistics

    calls = []
    real = statistics.compute_step_statistics

    def recording(*args, **kwargs):
        calls.append(kwargs.get("average", "exact"))
        return real(*args, **kwargs)

    monkeypatch.setattr(statistics, "compute_step_statistics", recording)
    monkeypatch.setattr(likelihood_rows, "compute_step_statistics", recording)  # the re-runs
    res = infusion.evaluate(tiny_run, ["lb"], settings=EvalSettings(
        lb_examples=32, bn_stats="ema", stats_spread=2), out=tiny_run.parent / "ema" / "r.json",
        progress=False)
    spread = res.report["metrics"]["lb"]["stats_pass_spread"]
    assert calls == ["moving"] * 3  # the evaluation's pass, then two re-runs of the same kind
    assert spread["statistics"] == "moving" and len(spread["others"]) == 2


def test_the_spread_is_refused_where_it_cannot_apply(tiny_run, tmp_path):
    out = tmp_path / "r.json"
    with pytest.raises(InputError, match=r"stats_spread=2.*lower bound.*lb"):
        infusion.evaluate(tiny_run, ["is"], out, EvalSettings(stats_spread=2), progress=False)
    with pytest.raises(InputError, match=r"stats_spread=2.*bn_stats=batch"):
        infusion.evaluate(tiny_run, ["lb"], out, EvalSettings(stats_spread=2, bn_stats="batch"),
                          progress=False)
    vae, cfg = _model("vae")
    with pytest.raises(InputError, match=r"stats_spread=1.*no per-step batch norm"):
        infusion.evaluate(vae, ["lb"], out, EvalSettings(stats_spread=1), cfg=cfg,
                          progress=False)
    assert not out.exists()  # refused before anything was written
    # the paper protocol's own spread is left out where it cannot apply, and the report says so
    res = infusion.evaluate(tiny_run, ["is"], out, EvalSettings.paper(
        k=2, repeats=1, examples=8), progress=False)
    assert res.settings["stats_spread"] == 0
    assert any("statistics-pass spread" in n for n in res.report["notes"])


# ---------------------------------------------------------------- a card of its own model


def test_a_report_carries_its_models_fingerprint_and_export_refuses_another(tiny_run,
                                                                           tmp_path, capsys):
    a = _copy(tiny_run, tmp_path / "a")
    b = tmp_path / "b"
    train(config.override(tiny_config(), ["train.seed=1"]), b, **QUIET)
    assert main(["evaluate", "--checkpoint", str(a), "--metrics", "lb", "--lb-examples", "16",
                 "--quiet"]) == 0
    report = json.loads((a / "eval" / "report.json").read_text())
    model, _ = models.load_model(a, "cpu")
    assert report["model_sha256"] == models.model_fingerprint(model)
    capsys.readouterr()
    # --report of another model
    assert main(["export", "--checkpoint", str(b), "--out", str(tmp_path / "xb"),
                 "--report", str(a / "eval" / "report.json")]) == 2
    err = capsys.readouterr().err
    assert "another model" in err and "report.json" in err
    # the run's own eval/report.json left from a run it replaced (another model)
    (b / "eval").mkdir(exist_ok=True)
    shutil.copy(a / "eval" / "report.json", b / "eval" / "report.json")
    assert main(["export", "--checkpoint", str(b), "--out", str(tmp_path / "xb")]) == 2
    assert "another model" in capsys.readouterr().err
    assert not (tmp_path / "xb").exists()
    # a report without a fingerprint cannot be checked
    del report["model_sha256"]
    (tmp_path / "old.json").write_text(json.dumps(report))
    assert main(["export", "--checkpoint", str(a), "--out", str(tmp_path / "xa"),
                 "--report", str(tmp_path / "old.json")]) == 2
    assert "fingerprint" in capsys.readouterr().err
    # its own report goes into the card
    assert main(["export", "--checkpoint", str(a), "--out", str(tmp_path / "xa")]) == 0
    assert "| lower bound (nats) |" in (tmp_path / "xa" / "README.md").read_text()


def test_the_card_holds_no_machine_path_and_no_raw_html(tiny_run, tmp_path):
    run = tmp_path / "run"
    cfg = dataclasses.replace(tiny_config(), preset='<img src=x onerror="alert(1)">`x`')
    train(cfg, run, **QUIET)
    env = json.loads((run / "environment.json").read_text())
    env[0]["command"] = ["infusion", "train", "--run-dir", "/home/someone/runs/x", "--set",
                         "data.path=/home/someone/data.npz"]
    (run / "environment.json").write_text(json.dumps(env))
    out = (tmp_path / "exported").absolute()
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    body = card.split("\n---\n", 1)[1]  # the markdown after the YAML header
    assert str(tmp_path) not in card and "/home/someone" not in card
    assert "<img" not in body and "&lt;img" in body
    assert "infusion sample --checkpoint exported" in card
    assert "--run-dir x" in card and "data.path=data.npz" in card


def test_the_card_does_not_call_an_epoch_checkpoint_the_best(tiny_run, tmp_path):
    out = tmp_path / "x"
    epoch = tiny_run / "checkpoints" / "epoch-0002.pt"
    assert main(["export", "--checkpoint", str(epoch), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "epoch-0002.pt" in card and "the weights are those of the best" not in card
    assert main(["export", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "f")]) == 0
    assert "the weights are those of the best" in (tmp_path / "f" / "README.md").read_text()


# ---------------------------------------------------------------- inpainting


def test_inpaint_refuses_a_method_that_cannot_clamp():
    from infusion.chain.sampler import sample_chain
    from infusion.generate.inpaint import half_mask, inpaint

    vae, _ = _model("vae", (1, 6, 6))
    images = torch.rand(2, 1, 6, 6)
    mask = half_mask("top", (1, 6, 6))
    with pytest.raises(InputError, match=r"(?i)vae.*cannot be clamped"):
        inpaint(vae, images, mask, chains=1, steps=1)
    with pytest.raises(InputError, match="cannot be clamped"):
        sample_chain(vae, 2, 1, clamp=(mask.reshape(-1), images[0].reshape(-1)))
    chain, _ = _model("infusion", (1, 6, 6))  # a chain reads its state: clamping conditions it
    assert inpaint(chain, images, mask, chains=1, steps=4).completions.shape == (2, 1, 1, 6, 6)


# ---------------------------------------------------------------- variances and NaN bounds


def test_non_positive_variances_are_refused_at_load(tmp_path):
    model, cfg = _model()
    model.prior.var[0] = -0.5
    models.save_pretrained(model, cfg, tmp_path / "prior")
    with pytest.raises(models.CheckpointError, match=r"prior\.var.*-0\.5.*expected > 0"):
        models.load_model(tmp_path / "prior", "cpu")
    model, cfg = _model()
    model.net.norms[0].stat_var[1, 3] = -2.0
    models.save_pretrained(model, cfg, tmp_path / "bn")
    with pytest.raises(models.CheckpointError, match=r"stat_var.*-2.*expected >= 0"):
        models.load_model(tmp_path / "bn", "cpu")


def test_a_non_finite_bound_is_an_error_not_a_result(tmp_path):
    model, cfg = _model()
    model.prior.var.fill_(-1.0)  # a model in memory is not checked at load
    out = tmp_path / "r.json"
    with pytest.raises(InputError, match=r"lb.*not finite"):
        infusion.evaluate(model, ["lb"], out, EvalSettings(lb_examples=16), cfg=cfg,
                          progress=False)
    report = json.loads(out.read_text())
    assert "lb" not in report["metrics"] and report["status"]["state"] == "interrupted"


# ---------------------------------------------------------------- demo


def test_demo_refuses_a_run_directory_of_another_preset(tiny_run, tmp_path, capsys):
    finished = _copy(tiny_run, tmp_path / "finished")
    assert main(["demo", "--run-dir", str(finished)]) == 2
    err = capsys.readouterr().err
    assert "preset 'spiral'" in err and "mnist-demo" in err
    unfinished = _copy(tiny_run, tmp_path / "unfinished")
    (unfinished / "checkpoints" / "final.pt").unlink()
    (unfinished / "checkpoints" / "latest").write_text("epoch-0002.pt\n")
    before = sorted(p.name for p in unfinished.rglob("*"))
    assert main(["demo", "--run-dir", str(unfinished)]) == 2
    assert "preset 'spiral'" in capsys.readouterr().err
    assert sorted(p.name for p in unfinished.rglob("*")) == before
    # a finished demo: --set has nothing to change
    demo = tmp_path / "demo"
    (demo / "checkpoints").mkdir(parents=True)
    (demo / "config.json").write_text(json.dumps(config.to_dict(config.preset("mnist-demo"))))
    (demo / "checkpoints" / "final.pt").write_bytes(b"")
    assert main(["demo", "--run-dir", str(demo), "--set", "train.epochs=3"]) == 2
    assert "--set" in capsys.readouterr().err


# ---------------------------------------------------------------- inputs that were ignored


def _write_idx(folder: Path, arrays: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    train_x = np.concatenate([arrays["train_x"], arrays["valid_x"]])
    train_y = np.concatenate([arrays["train_y"], arrays["valid_y"]])
    for name, a in (("train-images-idx3-ubyte", train_x[:, 0]),
                    ("train-labels-idx1-ubyte", train_y.astype(np.uint8)),
                    ("t10k-images-idx3-ubyte", arrays["test_x"][:, 0]),
                    ("t10k-labels-idx1-ubyte", arrays["test_y"].astype(np.uint8))):
        magic = 2051 if a.ndim == 3 else 2049
        head = struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in a.shape)
        (folder / name).write_bytes(head + a.astype(np.uint8).tobytes())


def test_idx_dir_beside_a_cache_is_checked_not_ignored(tiny_mnist, tmp_path, monkeypatch,
                                                       capsys):
    from infusion.data import mnist

    unpinned = dataclasses.replace(mnist.MNIST, raw={})  # the fake files have no official sha
    _write_idx(tmp_path / "same", tiny_mnist)
    assert mnist.ensure_idx_set(unpinned, idx_dir=tmp_path / "same").is_file()
    other = dict(tiny_mnist, test_x=255 - tiny_mnist["test_x"])
    _write_idx(tmp_path / "other", other)
    with pytest.raises(DataError, match=r"idx_dir .*other.*differ from the cache"):
        mnist.ensure_idx_set(unpinned, idx_dir=tmp_path / "other")
    assert main(["data", "--name", "mnist", "--idx-dir", str(tmp_path / "other")]) == 2
    assert "idx" in capsys.readouterr().err


def test_options_and_settings_the_path_ignores_are_refused(tiny_run, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"data\.path.*data\.name='fashion'"):
        config.override(config.preset("fashion"), [f"data.path={tmp_path}"])
    with pytest.raises(ConfigError, match=r"data\.path.*data\.name='spiral'"):
        config.override(config.preset("spiral"), [f"data.path={tmp_path}"])
    assert main(["data", "--name", "fashion", "--path", str(tmp_path)]) == 2
    assert "--path" in capsys.readouterr().err
    assert main(["data", "--name", "cifar10", "--idx-dir", str(tmp_path)]) == 2
    assert "--idx-dir" in capsys.readouterr().err
    assert main(["data", "--name", "cifar10", "--image-size", "32"]) == 2
    assert "--image-size" in capsys.readouterr().err
    # another method's settings
    with pytest.raises(ConfigError, match=r"method\.infusion\.omega.*method\.name=vae"):
        config.override(config.preset("spiral-vae"), ["method.infusion.omega=0.3"])
    with pytest.raises(ConfigError, match=r"method\.infusion\.omega.*method\.name=vae"):
        config.override(config.preset("spiral"), ["method.infusion.omega=0.3",
                                                  "method.name=vae", "method.T=1"])
    assert config.override(config.preset("spiral"), ["method.name=vae", "method.T=1",
                                                     "method.vae.latent=4"]).method.vae.latent == 4
    file = tmp_path / "vae.json"
    file.write_text(json.dumps({"method": {"name": "vae", "T": 1, "infusion": {"omega": 0.3}}}))
    with pytest.raises(ConfigError, match=r"method\.infusion\.omega.*method\.name=vae"):
        config.load_file(str(file))
    # --n or --seed beside --seeds
    out = tmp_path / "s.npz"
    for extra in (["--n", "8"], ["--seed", "5"]):
        assert main(["sample", "--checkpoint", str(tiny_run), "--seeds", "0-3", *extra,
                     "--out", str(out)]) == 2
        assert extra[0] in capsys.readouterr().err and not out.exists()


def test_images_in_a_linked_subfolder_are_not_left_out(tmp_path):
    from PIL import Image

    from infusion.data.images import load_images

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(elsewhere / f"{i}.png")
    photos = tmp_path / "photos"
    (photos / "real").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8), 200, np.uint8)).save(photos / "real" / f"{i}.png")
    (photos / "linked").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(DataError, match=r"linked.*link to a folder"):
        load_images("folder", "train", path=photos, image_size=8, cache=tmp_path / "cache")
    (photos / "linked").unlink()  # images only in a real subfolder are read
    assert len(load_images("folder", "train", path=photos, image_size=8,
                           cache=tmp_path / "cache").images) == 1


# ---------------------------------------------------------------- no machine path in an export


def _strings(value):
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_an_export_holds_no_machine_path_and_samples_floats_in_data_space(tmp_path):
    """A ``--data`` run of float vectors: its export's config.json names the data file only,
    and records what mapping samples back needs, so the export samples in the data's own
    units exactly as the run does — without the data file, wherever it goes. An export of an
    older version, with the file's absolute path, still loads and samples the same."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "v.npz", x=(rng.normal(size=(96, 2)) * 3 + 10).astype(np.float32))
    run, out = tmp_path / "run", tmp_path / "export"
    tiny = ["model.hidden=8,8", "method.T=2", "train.epochs=1", "train.batch_size=32",
            "train.valid_examples=32", "train.valid_stats_batches=2"]
    assert main(["train", "--data", str(tmp_path / "v.npz"), "--run-dir", str(run), "--quiet",
                 *(f"--set={s}" for s in tiny)]) == 0
    assert main(["sample", "--checkpoint", str(run), "--n", "5", "--out",
                 str(tmp_path / "run.npz")]) == 0
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    meta = json.loads((out / "config.json").read_text())
    absolute = [s for s in _strings(meta) if s.startswith(("/", "\\")) or str(tmp_path) in s
                or (len(s) > 2 and s[1] == ":" and s[2] in "/\\")]
    assert absolute == [], absolute
    data_file = Path(json.loads((run / "config.json").read_text())["data"]["path"])
    assert meta["config"]["data"]["path"] == data_file.name
    assert meta["config"]["data"]["dtype"] == "float32"
    # a run of an older version records no dtype: its export reads it at save time
    _, cfg = models.load_model(run, "cpu")
    older_run = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dtype="", scale=()))
    assert models.portable(older_run)["data"]["dtype"] == "float32"
    # an export of an older version: the absolute path, nothing recorded beside it
    old = _copy(out, tmp_path / "old-export")
    old_meta = json.loads((old / "config.json").read_text())
    old_keys = ("name", "n_train", "toy_size", "seed", "image_size", "sha256", "scale", "offset")
    old_meta["config"]["data"] = {k: old_meta["config"]["data"][k] for k in old_keys}
    old_meta["config"]["data"]["path"] = str(data_file)
    (old / "config.json").write_text(json.dumps(old_meta))
    assert main(["sample", "--checkpoint", str(old), "--n", "5", "--out",
                 str(tmp_path / "old.npz")]) == 0
    # the export samples without the data file: moved away with its run
    shutil.move(run, tmp_path / "moved")
    assert main(["sample", "--checkpoint", str(out), "--n", "5", "--out",
                 str(tmp_path / "export.npz")]) == 0
    ran, exported, older = (np.load(tmp_path / f) for f in ("run.npz", "export.npz", "old.npz"))
    for f in (exported, older):
        for k in ("samples", "means", "data_samples", "data_means"):
            np.testing.assert_array_equal(f[k], ran[k])
    assert np.abs(ran["data_means"]).max() > 2  # in the data's units, not model space
    # the data file copied beside the export is found there (evaluation reads it)
    shutil.copy(tmp_path / "moved" / "data" / data_file.name, out / data_file.name)
    _, cfg = models.load_model(out, "cpu")
    assert cfg.data.path == str((out / data_file.name).absolute())
    assert len(load_split(cfg.data, "valid").images) > 0
