"""infusion.fit and `infusion train --data` on a user's own data (issue 12): arrays, tensors,
Datasets, .npy/.npz files and folders of images; the recorded map into model space; runs
that work from another directory; clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import infusion
from infusion import config
from infusion.cli import main
from infusion.data import DataError, load_split, shape_of, to_data_space
from infusion.errors import InputError
from infusion.training.fit import mlp_widths
from infusion.training.rundir import RunError

TINY = ["model.hidden=16,16", "method.T=3", "train.epochs=1", "train.batch_size=32",
        "train.valid_examples=64", "sample.n=4", "sample.chains=2"]
QUIET = {"progress": False, "log": lambda _: None}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def ring(n: int, seed: int = 0) -> np.ndarray:
    """2-D points on an ellipse far from [0, 1]²: centre (100, -5), radii 10 and 3."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 2 * np.pi, n)
    noise = 0.1 * rng.standard_normal((n, 2))
    return np.stack([100 + 10 * np.cos(t), -5 + 3 * np.sin(t)], 1) + noise


def write_pngs(folder: Path, n: int, size=(10, 12)) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"im{i:02d}.png")
    return folder


def test_points_in_their_own_scale_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x = ring(600)
    res = infusion.fit(x, run_dir="runs/ring", overrides=[*TINY, "train.epochs=4"], **QUIET)
    model, cfg = res  # unpacks like load_model
    assert isinstance(model, infusion.ChainModel) and not model.training and model.stats_ready
    dc = cfg.data
    assert dc.name == "arrays" and Path(dc.path).is_absolute() and len(dc.sha256) == 64
    assert Path(dc.path).parent == tmp_path / "runs" / "ring" / "data"
    # the recorded map: min/max of the training split onto [0.05, 0.95], per dimension
    train = load_split(dc, "train").images
    assert train.dtype == np.float32 and train.shape == (540, 2)  # 10% split off for valid
    assert train.min(0) == pytest.approx([0.05, 0.05], abs=1e-5)
    assert train.max(0) == pytest.approx([0.95, 0.95], abs=1e-5)
    back = to_data_space(train, dc)
    assert np.abs(back[:, None] - x[None]).sum(-1).min(1).max() < 1e-3  # the user's points
    assert len(load_split(dc, "valid").images) == 60
    # samples come back in the data's scale: around (100, -5), not inside [0, 1]
    s = res.sample(400, seed=1)
    assert s.shape == (400, 2) and s.dtype == np.float32
    assert 85 < np.median(s[:, 0]) < 115 and -9 < np.median(s[:, 1]) < -1
    assert 2 < s[:, 0].std() < 20
    config_json = json.loads((tmp_path / "runs/ring/config.json").read_text())
    assert config_json["data"]["path"] == dc.path and config_json["data"]["scale"] == list(dc.scale)

    # a fresh process elsewhere: load_model, sampling in the data's scale, evaluate
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = textwrap.dedent("""
        import json, infusion
        from infusion.data import to_data_space
        model, cfg = infusion.load_model("../runs/ring")
        s = to_data_space(infusion.sample_chain(model, 200, seed=1).samples, cfg.data)
        print(json.dumps([float(s[:, 0].mean()), float(s[:, 1].mean())]))
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    mx, my = json.loads(r.stdout.strip().splitlines()[-1])
    assert 85 < mx < 115 and -9 < my < -1
    r = subprocess.run([sys.executable, "-m", "infusion", "evaluate", "--checkpoint",
                        "../runs/ring", "--metrics", "lb,parzen", "--n-samples", "100",
                        "--quiet", "--out", "report.json"], cwd=elsewhere, capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    rep = json.loads((elsewhere / "report.json").read_text())["metrics"]
    for name in ("lb", "parzen"):  # densities also in the data's own units (log|det| added)
        log_det = float(np.log(np.asarray(dc.scale)).sum())
        assert rep[name]["data_units"]["mean"] == pytest.approx(rep[name]["mean"] + log_det)
    r = subprocess.run([sys.executable, "-m", "infusion", "sample", "--checkpoint",
                        "../runs/ring", "--n", "300", "--out", "s.npz"], cwd=elsewhere,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    z = np.load(elsewhere / "s.npz")
    assert z["means"].max() <= 1 and 85 < np.median(z["data_means"][:, 0]) < 115
    np.testing.assert_allclose(z["data_samples"], to_data_space(z["samples"], dc), rtol=1e-6)

    # the run directory is refused before anything is written; a changed data file is caught
    with pytest.raises(RunError, match="already holds a run"):
        infusion.fit(x[:100], run_dir="runs/ring", overrides=TINY, **QUIET)
    assert sorted(p.name for p in (tmp_path / "runs/ring/data").iterdir()) == [
        Path(dc.path).name, Path(dc.path).name + ".sha256"]
    with open(dc.path, "ab") as f:
        f.write(b"x")
    with pytest.raises(DataError, match="has changed"):
        load_split(dc, "train")


def test_folder_of_pngs_is_stored_with_the_run(tmp_path):
    folder = write_pngs(tmp_path / "pics", 12)
    res = infusion.fit(folder, run_dir=tmp_path / "run",
                       overrides=[*TINY, "data.image_size=8"], **QUIET)
    dc = res.config.data
    assert dc.name == "arrays" and Path(dc.path).parent == tmp_path / "run" / "data"
    assert res.model.shape == (3, 8, 8) and res.config.model.net == "mlp"
    s = res.sample(3)
    assert s.shape == (3, 3, 8, 8) and s.dtype == np.uint8  # pixels, as the data
    sizes = {s: len(load_split(dc, s).images) for s in ("train", "valid", "test")}
    assert sizes == {"train": 10, "valid": 1, "test": 1}  # the loader's 80/10/10 split
    # the decoded pixels travel with the run: the folder can go
    test = load_split(dc, "test").images
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
    _, cfg = infusion.load_model(tmp_path / "run")
    np.testing.assert_array_equal(load_split(cfg.data, "test").images, test)


def test_cli_data_with_the_folder_preset(tmp_path):
    folder = write_pngs(tmp_path / "pics", 12, size=(40, 40))
    run = tmp_path / "run"
    tiny_conv = ["--set", "model.hidden=4,4,4", "--set", "method.T=2", "--set", "train.epochs=1",
                 "--set", "train.batch_size=8", "--set", "sample.n=2", "--set", "sample.chains=2"]
    assert main(["train", "--data", str(folder), "--preset", "folder", "--run-dir", str(run),
                 "--quiet", *tiny_conv]) == 0
    cfg = config.from_dict(json.loads((run / "config.json").read_text()))
    assert cfg.preset == "folder" and cfg.model.net == "conv"
    assert cfg.data.name == "arrays" and shape_of(cfg.data) == (3, 32, 32)  # the preset's crops
    assert "about" in config.PRESETS["folder"]


def test_uint8_images_channels_last(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 6, 6, 3), dtype=np.uint8)  # (N, H, W, C)
    res = infusion.fit(x, run_dir=tmp_path / "run", overrides=TINY, **QUIET)
    dc = res.config.data
    assert res.model.shape == shape_of(dc) == (3, 6, 6) and dc.scale == dc.offset == ()
    train = load_split(dc, "train").images
    assert train.dtype == np.uint8 and train.shape == (36, 3, 6, 6)  # dequantised as MNIST
    assert {a.tobytes() for a in train} <= {a.transpose(2, 0, 1).tobytes() for a in x}
    assert res.sample(2).dtype == np.uint8


def test_tensor_dataset_of_pairs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(50, 5, generator=g)  # floats already in [0, 1]: used as they are
    ds = torch.utils.data.TensorDataset(x, torch.zeros(50))
    res = infusion.fit(ds, overrides=TINY, **QUIET)
    assert res.run_dir.parent == Path("runs") and res.run_dir.name.startswith("fit-")
    dc = res.config.data
    assert res.model.shape == (5,) and dc.scale == () and dc.name == "arrays"
    both = np.concatenate([load_split(dc, s).images for s in ("train", "valid")])
    assert sorted(map(tuple, both)) == sorted(map(tuple, x.numpy()))
    s = res.sample(4)
    assert s.shape == (4, 5) and s.dtype == np.float32


def test_npz_with_train_and_valid_and_cli(tmp_path):
    train, valid = ring(200), ring(30, seed=1)
    npz = tmp_path / "mine.npz"
    np.savez(npz, train=train, valid=valid)
    run = tmp_path / "run"
    sets = [a for o in TINY for a in ("--set", o)]
    assert main(["train", "--data", str(npz), "--run-dir", str(run), "--quiet", *sets]) == 0
    _, cfg = infusion.load_model(run)
    dc = cfg.data
    assert len(load_split(dc, "train").images) == 200  # the user's split, nothing held back
    np.testing.assert_allclose(to_data_space(load_split(dc, "valid").images, dc), valid,
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(load_split(dc, "test").images, load_split(dc, "valid").images)
    # a .npy from Python, with the validation set given separately
    np.save(tmp_path / "x.npy", train)
    res = infusion.fit(tmp_path / "x.npy", valid=valid, run_dir=tmp_path / "run2",
                       overrides=TINY, **QUIET)
    assert len(load_split(res.config.data, "valid").images) == 30


def test_mlp_widths_rule():
    assert mlp_widths(2) == (128, 128)
    assert mlp_widths(300) == (640, 640)
    assert mlp_widths(784) == (1200, 1200)


def test_a_moved_run_directory_finds_its_own_data(tmp_path):
    import shutil

    from infusion import evaluate as ev

    res = infusion.fit(ring(200), run_dir=tmp_path / "a" / "ring", overrides=TINY, **QUIET)
    moved = tmp_path / "b" / "ring"
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    _, cfg = infusion.load_model(moved)
    assert cfg.data.path == str(moved / "data" / Path(res.config.data.path).name)
    rep = ev.evaluate(moved, ["lb"], tmp_path / "r.json", ev.EvalSettings(lb_examples=10),
                      **QUIET).report
    assert np.isfinite(rep["metrics"]["lb"]["mean"])
    # fit again over it with other data: the replaced run's data file goes with it
    res2 = infusion.fit(ring(150, seed=1), run_dir=moved, overrides=TINY, overwrite=True,
                        **QUIET)
    name = Path(res2.config.data.path).name
    assert sorted(p.name for p in (moved / "data").iterdir()) == [name, name + ".sha256"]


def test_relative_data_paths_are_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config.override(config.preset("folder"), ["data.path=pics"])
    assert cfg.data.path == str(tmp_path / "pics")
    assert config.from_dict(config.to_dict(cfg)) == cfg


@pytest.mark.parametrize("make,message", [
    (lambda p: np.arange(10.0), "1-D array"),
    (lambda p: np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, 4.0]] * 5), "NaN"),
    (lambda p: np.zeros((0, 3)), "empty"),
    (lambda p: (p / "points.csv", (p / "points.csv").write_text("1,2\n3,4\n"))[0], ".csv"),
    (lambda p: (p / "empty", (p / "empty").mkdir(), (p / "empty/a.txt").write_text("x"))[0],
     "0 image"),
    (lambda p: p / "missing.npy", "no such file"),
    (lambda p: np.ones((20, 1)), "one value per example"),
    (lambda p: np.array(["a", "b"] * 10).reshape(10, 2), "expected numbers"),
])
def test_bad_input_names_the_problem(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        infusion.fit(make(tmp_path), run_dir=tmp_path / "run", overrides=TINY, **QUIET)
    assert not (tmp_path / "run").exists()  # nothing written


def test_cli_bad_data_is_one_line(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert main(["train", "--data", str(bad), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and ".npy or .npz" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
