"""Every number and file a user gives is checked where it enters: one ``error:`` line naming
the setting and its range, sizes refused from an estimate before anything is allocated,
tampered and foreign files refused by shape and type before use; and the conditional models
of float vectors sample, as trained and as exported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from infusion import cli, config, limits, models
from infusion.chain.sampler import sample_chain
from infusion.data import DataError, images
from infusion.data.arrays import as_examples
from infusion.errors import ConfigError, InputError
from infusion.evaluate import EvalSettings, evaluate
from infusion.evaluate.features import TorchScriptExtractor
from infusion.generate.files import parse_seeds
from infusion.methods import build_method
from infusion.training.bench import matmul_peak
from infusion.training.loop import train

TINY = ["data.toy_size=128", "model.hidden=8,8", "method.T=2", "train.epochs=1",
        "train.batch_size=32", "train.valid_examples=32", "train.valid_stats_batches=2",
        "sample.n=4", "sample.chains=2"]
QUIET = {"progress": False, "log": lambda s: None}


def run(argv, capsys):
    """``infusion ARGV``: (exit status, stdout, stderr); argparse's usage errors too."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def user_error(argv, capsys, *needles) -> str:
    code, _, err = run(argv, capsys)
    assert code == 2 and "Traceback" not in err and "error:" in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture(scope="module")
def spiral(tmp_path_factory) -> Path:
    """A spiral model trained for one tiny epoch, and its export."""
    root = tmp_path_factory.mktemp("inputs")
    train(config.override(config.preset("spiral"), TINY), root / "run", **QUIET)
    model, cfg = models.load_model(root / "run", "cpu", log=lambda s: None)
    models.save_pretrained(model, cfg, root / "export")
    return root


@pytest.fixture(scope="module")
def conditional(tmp_path_factory) -> Path:
    """``infusion train --data c.npz``: float vectors (N, 2) with classes y, 4 of them."""
    root = tmp_path_factory.mktemp("conditional")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 2)).astype(np.float32) * 3 + 10  # floats outside [0, 1]: mapped
    np.savez(root / "c.npz", x=x, y=rng.integers(0, 4, len(x)))
    code = cli.main(["train", "--data", str(root / "c.npz"), "--run-dir", str(root / "run"),
                     "--quiet", *(f"--set={s}" for s in TINY[1:])])  # TINY but the toy's size
    assert code == 0
    return root


def test_a_conditional_model_of_float_vectors_samples_and_so_does_its_export(conditional, capsys):
    """The labels are not values of the data: only samples and means are mapped back."""
    run_dir, out = conditional / "run", conditional / "out"
    assert run(["sample", "--checkpoint", run_dir, "--class", 3, "--n", 3,
                "--out", out / "one.npz"], capsys)[0] == 0
    assert run(["sample", "--checkpoint", run_dir, "--n", 5, "--out", out / "all.npz"],
               capsys)[0] == 0
    assert run(["export", "--checkpoint", run_dir, "--out", out / "export"], capsys)[0] == 0
    assert run(["sample", "--checkpoint", out / "export", "--classes", "1-2", "--n", 2,
                "--out", out / "export.npz"], capsys)[0] == 0
    one, every, exported = (np.load(out / f) for f in ("one.npz", "all.npz", "export.npz"))
    assert one["labels"].tolist() == [3, 3, 3] and every["labels"].tolist() == [0, 1, 2, 3, 0]
    assert exported["labels"].tolist() == [1, 1, 2, 2]
    cfg = config.from_dict(json.loads((run_dir / "config.json").read_text()))
    for f in (one, every, exported):
        assert f["data_samples"].shape == f["samples"].shape == (len(f["labels"]), 2)
        back = (f["means"].astype(np.float64) - cfg.data.offset) / cfg.data.scale
        np.testing.assert_allclose(f["data_means"], back, rtol=1e-5)


@pytest.mark.parametrize("setting,needle", [
    ("model.hidden=200000,200000", "model.hidden"), ("model.classes=10000000", "model.classes"),
    ("sample.n=100000000000", "sample.n=100000000000: expected 1 <= n <= 10,000,000"),
    ("data.image_size=100000", "data.image_size"), ("data.toy_size=100000000000", "toy_size"),
    ("method.T=1000000000", "method.T=1000000000: expected 1 <= T <= 1,000,000"),
    ("sample.steps=1000000000000", "sample.steps"), ("train.epochs=10000000", "train.epochs"),
    ("train.max_steps=" + "1" + "0" * 30, "train.max_steps"),
    ("train.batch_size=100000000000", "train.batch_size"),
    ("train.seed=" + str(2**70), "train.seed"), ("sample.seed=" + str(2**70), "sample.seed"),
    ("train.seed=-1", "train.seed"), ("data.seed=" + str(2**64), "data.seed"),
    ("sample.eta=5", "sample.eta=5.0: expected 0 <= eta <= 1"),
    ("train.cpu_threads=1000000", "train.cpu_threads"),
    ("method.walkback.extra=10000000", "method.walkback.extra"),
])
def test_every_number_of_the_config_has_a_range_named_in_its_error(setting, needle):
    base = config.preset("spiral-diffusion" if "eta" in setting else "spiral")
    extra = ["method.name=walkback"] if "walkback" in setting else []
    with pytest.raises(ConfigError, match="expected") as e:
        config.override(base, extra + [setting])
    assert needle in str(e.value)


def test_walkback_levels_stay_finite():
    """The hottest temperature 2^(T-1) overflows a float past about 1,000 levels."""
    with pytest.raises(ConfigError, match="method.T=101: expected 1 <= T <= 100"):
        config.override(config.preset("spiral-walkback"), ["method.T=101"])


@pytest.mark.parametrize("argv,needle", [
    (["sample", "--n", 10**11], "--n: expected a whole number >= 1 and <= 10,000,000"),
    (["sample", "--seeds", "0-99999999999"], "more than 10,000,000 values"),
    (["sample", "--seeds", "0-3,5-2"], "the range 5-2 runs backwards"),
    (["sample", "--classes", "0-1,3-2"], "the range 3-2 runs backwards"),
    (["sample", "--classes", "0-999", "--seeds", "0-99999"], "are more than 10,000,000 samples"),
    (["sample", "--seed", 2**64], "--seed: expected a whole number >= 0"),
    (["sample", "--seed", 2**64 - 1, "--n", 2], "9,223,372,036,854,775,807"),
    (["sample", "--class", "99999999999999999999"], "--class"),
    (["sample", "--steps", 10**12], "--steps"), (["sample", "--eta", 5], "--eta"),
    (["sample", "--batch-size", 10**12], "--batch-size"),
    (["evaluate", "--k", 10**14], "--k"), (["evaluate", "--n-samples", 10**11], "--n-samples"),
    (["evaluate", "--eta", "-0.5"], "--eta"), (["evaluate", "--repeats", 10**9], "--repeats"),
    (["evaluate", "--examples", 10**12], "--examples"), (["evaluate", "--seed", 2**64], "--seed"),
    (["inpaint", "--mask", "top", "--chains", 10**9], "--chains"),
    (["figures", "--n", 10**9], "--n"),
])
def test_the_command_line_refuses_numbers_out_of_range(argv, needle, capsys):
    first = {"sample": ["--out", "x.npz"], "evaluate": [], "inpaint": [], "figures": []}[argv[0]]
    where = ["--run-dir", "R"] if argv[0] == "figures" else ["--checkpoint", "R"]
    user_error([argv[0], *where, *first, *argv[1:]], capsys, needle)


def test_bench_and_data_sizes_have_ranges(capsys):
    user_error(["bench", "--preset", "spiral", "--matmul-size", -1], capsys, "--matmul-size")
    user_error(["data", "--name", "folder", "--path", ".", "--image-size", -1], capsys,
               "--image-size")
    with pytest.raises(InputError, match="matmul size -1"):
        matmul_peak(torch.device("cpu"), n=-1)
    with pytest.raises(DataError, match="image size -1"):
        images.ensure("folder", path=".", image_size=-1)


def test_seed_lists_and_classes_beyond_64_bits(conditional):
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(InputError, match="0 to 9,223,372,036,854,775,807"):
        parse_seeds(str(2**63))
    model, _ = models.load_model(conditional / "run", "cpu", log=lambda s: None)
    res = sample_chain(model, 2, seeds=[2**64 - 1, 2**63 + 2])  # what torch.Generator takes
    assert res.labels.tolist() == [(2**64 - 1) % 4, (2**63 + 2) % 4]
    with pytest.raises(InputError, match="integer classes 0..3"):
        sample_chain(model, 1, labels=[10**20])


@pytest.fixture
def small_memory(monkeypatch):
    """A machine with 1 MiB free."""
    monkeypatch.setattr(limits, "free_memory", lambda device=None: 2**20)


def test_sizes_that_cannot_fit_are_refused_before_allocating(spiral, small_memory, tmp_path,
                                                             monkeypatch):
    with pytest.raises(InputError, match=r"model.hidden=\(512, 512\).*needs about .*MiB of "
                       r"memory, more than the 1 MiB free"):
        train(config.override(config.preset("spiral"), TINY + ["model.hidden=512,512"]),
              tmp_path / "big", **QUIET)
    assert not (tmp_path / "big" / "config.json").exists()  # refused before the run began
    model, _ = models.load_model(spiral / "run", "cpu", log=lambda s: None)
    with pytest.raises(InputError, match="5,000 samples of 2 values in batches of 500 needs"):
        sample_chain(model, 5000)
    monkeypatch.setattr(limits, "free_memory", lambda device=None: 1024)
    with pytest.raises(InputError, match="model.safetensors' needs about"):  # an export's weights
        models.load_model(spiral / "export", "cpu")


@pytest.mark.parametrize("name,net,shape,hidden", [
    ("infusion", "mlp", (784,), (64, 32)), ("walkback", "mlp", (20,), (16, 16)),
    ("gsn", "mlp", (784,), (64, 32)), ("diffusion", "mlp", (784,), (64, 32)), ("infusion", "conv", (1, 16, 16), (16, 8)),
    ("infusion", "unet", (1, 16, 16), (8, 16))])
def test_the_activation_estimate_covers_what_a_training_step_keeps(name, net, shape, hidden):
    """The tensors autograd saves for one training step's backward pass (counted by
    saved_tensors_hooks, the weights left out) fit the estimate, which is not wildly above."""
    from infusion.methods import activation_bytes

    ov = [f"method.name={name}", f"model.net={net}", "model.hidden=" + ",".join(map(str, hidden)),
          "method.T=4", "data.name=mnist"]
    cfg = config.override(config.Config(), ov)
    method = build_method(cfg.method)
    torch.manual_seed(0)
    model = method.build_model(shape, cfg.model)
    weights = {w.data_ptr() for w in model.parameters()}
    x = torch.rand(32, *shape).reshape(32, -1)
    saved = {}

    def pack(t):
        if t.data_ptr() not in weights:
            saved[(t.data_ptr(), t.shape)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = method.loss(model, x, torch.Generator().manual_seed(0)).mean()
    loss.backward()
    kept, estimate = sum(saved.values()), activation_bytes(method, shape, cfg, 32)
    assert kept <= estimate <= 12 * kept, (kept, estimate)


def test_a_training_batch_whose_activations_cannot_fit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "free_memory", lambda device=None: 2**30)  # 1 GiB free
    big = config.override(config.preset("spiral"), TINY + ["train.batch_size=10000000"])
    with pytest.raises(InputError, match=r"activations of a training step of "
                       r"train.batch_size=10000000 \(.*GiB\).*more than the 1 GiB free"):
        train(big, tmp_path / "big", **QUIET)
    assert not (tmp_path / "big" / "config.json").exists()
    train(config.override(config.preset("spiral"), TINY), tmp_path / "ok", **QUIET)


def test_an_array_file_claiming_more_than_it_holds_is_refused_from_its_header(
        tmp_path, capsys, monkeypatch):
    huge = tmp_path / "huge.npy"
    with open(huge, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 2)})
        f.write(b"\0" * 64)
    user_error(["train", "--data", huge, "--run-dir", tmp_path / "r"], capsys,
               "(1000000000000, 2)", "truncated or damaged")
    big = tmp_path / "big.npz"
    np.savez_compressed(big, x=np.zeros((1000, 600), np.float32))  # 2.4 MB in a small file
    monkeypatch.setattr(limits, "free_memory", lambda device=None: 2**20)
    user_error(["train", "--data", big, "--run-dir", tmp_path / "r"], capsys,
               "needs about 4.58 MiB of memory, more than the 1 MiB free")


def test_data_with_one_value_per_example_is_refused():
    with pytest.raises(InputError, match="hold one value each"):
        as_examples(np.random.default_rng(0).random((30, 1, 1)))


def _spoilt_run(spiral: Path, tmp_path: Path, change) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(spiral / "run", run_dir)
    (run_dir / "checkpoints" / "final.pt").unlink()
    change(run_dir / "checkpoints")
    return run_dir


def _edit_state(key, edit):
    def change(ckpt_dir):
        path = ckpt_dir / "epoch-0001.pt"
        state = torch.load(path, weights_only=True)
        edit(state) if edit else state.pop(key)
        torch.save(state, path)
    return change


def _as_final(ckpt_dir):
    state = torch.load(ckpt_dir / "epoch-0001.pt", weights_only=True)
    torch.save({k: state[k] for k in ("format", "model", "config", "shape")},
               ckpt_dir / "epoch-0099.pt")  # what final.pt holds: weights and config


@pytest.mark.parametrize("change,needle", [
    (_edit_state("optimizer", None), "not a training state (no optimizer)"),
    (_edit_state("rng", None), "not a training state (no rng)"),
    (_as_final, "not a training state (no optimizer, rng, state)"),
    (_edit_state("config", lambda s: s["config"]["model"].update(hidden=[16, 16])),
     "do not fit the model its config describes"),
])
def test_a_tampered_training_state_is_refused_on_resume(spiral, tmp_path, change, needle, capsys):
    run_dir = _spoilt_run(spiral, tmp_path, change)
    err = user_error(["train", "--resume", "--run-dir", run_dir, "--quiet"], capsys, needle)
    assert len(err.strip().splitlines()) == 1, err


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def test_deeply_nested_or_huge_config_files_are_refused(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text('{"train": ' + _deep(100000) + "}")
    user_error(["train", "--config", deep, "--run-dir", tmp_path / "r"], capsys,
               "nested more than 16 levels deep")
    deep.write_text('{"train": ' + _deep(20) + "}")  # within the parser's reach
    with pytest.raises(ConfigError, match="nested more than 16"):
        config.load_file(str(deep))
    deep.write_text(" " * (config.CONFIG_FILE_MAX + 1))
    with pytest.raises(ConfigError, match="larger than"):
        config.load_file(str(deep))


def _spoilt_export(spiral: Path, tmp_path: Path, meta=None, tensors=None) -> Path:
    from safetensors.torch import load_file, save_file

    out = tmp_path / "export"
    shutil.copytree(spiral / "export", out)
    if meta is not None:
        m = json.loads((out / "config.json").read_text())
        meta(m)
        (out / "config.json").write_text(json.dumps(m))
    if tensors is not None:
        save_file(tensors(load_file(str(out / "model.safetensors"))), str(out / "model.safetensors"))
    return out


def _floats_as(dtype):
    return lambda t: {k: v.to(dtype) if v.is_floating_point() else v for k, v in t.items()}


@pytest.mark.parametrize("meta,tensors,needle", [
    (lambda m: m.update(shape="ab"), None, "data shape 'ab' is not the shape of one example"),
    (lambda m: m.update(shape=[-2]), None, "data shape [-2]"),
    (lambda m: m.update(shape=[2.5]), None, "data shape [2.5]"),
    (lambda m: m["config"]["data"].update(name="mnist"), None, "not that of data.name='mnist'"),
    (lambda m: m["config"]["method"].update(T=10**9), None, "method.T=1000000000"),
    (lambda m: m.update(config=json.loads('{"data": ' + _deep(50) + "}")), None,
     "nested more than 16"),
    (None, _floats_as(torch.int64), "is torch.int64, expected torch.float32"),
    (None, _floats_as(torch.float16), "is torch.float16, expected torch.float32"),
])
def test_a_tampered_export_is_refused_by_shape_and_type(spiral, tmp_path, meta, tensors, needle,
                                                        capsys):
    out = _spoilt_export(spiral, tmp_path, meta, tensors)
    user_error(["sample", "--checkpoint", out, "--out", tmp_path / "s.npz"], capsys, needle)


def test_damaged_or_foreign_files_from_outside(tmp_path, monkeypatch):
    from PIL import Image

    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(InputError, match="not a readable TorchScript model file"):
        TorchScriptExtractor(bad)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16)).save(folder / f"{i}.png")
    Image.new("L", (64, 64)).save(folder / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64×64 is a bomb now (> 2×1000)
    with pytest.raises(DataError, match="bomb.png: not a readable image.*decompression bomb"):
        images.ensure("folder", path=folder, image_size=8, cache=tmp_path / "cache",
                      progress=False)
    monkeypatch.setattr(limits, "free_memory", lambda device=None: 2**20)
    with pytest.raises(InputError, match="4 images of 3×4096×4096 pixels needs about 384 MiB"):
        images.ensure("folder", path=folder, image_size=4096, cache=tmp_path / "cache",
                      progress=False)
    mat = tmp_path / "TFD_48x48.mat"
    mat.write_text("not a MATLAB file")
    with pytest.raises(DataError, match="not a readable MATLAB .mat file"):
        images.ensure("tfd", path=mat, cache=tmp_path / "cache",
                      progress=False)


def test_ddim_eta_lies_in_0_1():
    cfg = config.override(config.preset("spiral-diffusion"), ["model.hidden=8,8", "method.T=4"])
    model = build_method(cfg.method).build_model((2,), cfg.model)
    assert model.solver("ddim", 2, 1.0).eta == 1.0
    with pytest.raises(InputError, match="eta=5.0: expected 0 <= eta <= 1"):
        model.solver("ddim", 2, 5.0)


def test_evaluation_settings_have_ranges_and_the_report_says_what_was_used(spiral, tmp_path):
    for bad in ({"eta": 5.0}, {"is_k": 10**14}, {"n_samples": 10**11}, {"seed": 2**64},
                {"is_examples": 10**12}, {"steps": 10**12}):
        with pytest.raises(InputError, match=f"{next(iter(bad))}="):
            EvalSettings(**bad).validate()
    report = evaluate(spiral / "run", "is", tmp_path / "r.json",
                      EvalSettings(is_examples=10**9, is_k=2), device="cpu", **QUIET).report
    n_test = report["metrics"]["is"]["n"]
    assert report["settings"]["is_examples"] == n_test < 10**9
    assert any(f"is_examples=1,000,000,000: the test split holds {n_test}" in note
               for note in report["notes"])
    assert not any("1,000,000,000" in r for r in report["protocol"]["reductions"])

