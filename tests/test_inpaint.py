"""Inpainting, algorithms.md §9: clamped dimensions never move; completions vary across chains; CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from infusion.cli import main
from infusion.generate.inpaint import half_mask, inpaint, load_mask_file, parse_mask

from .conftest import tiny_config


@pytest.fixture
def mnist_run(tiny_mnist, tmp_path):
    """A tiny model trained for one epoch on the fake MNIST of conftest."""
    from infusion import train

    cfg = tiny_config(data={"name": "mnist", "n_train": 0}, model={"hidden": (24,)},
                      method={"T": 3, "alpha0": 0.1, "omega": 0.3},
                      train={"epochs": 1, "batch_size": 32, "valid_examples": 32},
                      sample={"n": 4, "chains": 2})
    run = tmp_path / "run"
    train(cfg, run, progress=False, log=lambda s: None)
    return run


def test_half_masks_observe_the_named_half():
    top = half_mask("top", (1, 4, 6))
    assert top.shape == (1, 4, 6) and top[:, :2].all() and not top[:, 2:].any()
    assert torch.equal(half_mask("bottom", (1, 4, 6)), ~top)
    left = half_mask("left", (3, 4, 6))
    assert left[:, :, :3].all() and not left[:, :, 3:].any()
    assert torch.equal(half_mask("right", (3, 4, 6)), ~left)
    with pytest.raises(ValueError, match="middle"):
        half_mask("middle", (1, 4, 6))
    with pytest.raises(ValueError, match="image data"):
        half_mask("top", (2,))


def test_mask_files_png_npy_and_bad_ones(tmp_path):
    a = np.zeros((4, 6), np.uint8)
    a[1, 2] = 255
    Image.fromarray(a).save(tmp_path / "m.png")
    np.save(tmp_path / "m.npy", a.astype(np.float32))
    for name in ("m.png", "m.npy"):
        m = load_mask_file(tmp_path / name, (1, 4, 6))
        assert m.dtype == torch.bool and int(m.sum()) == 1 and bool(m[0, 1, 2])
    np.save(tmp_path / "wrong.npy", np.ones((5, 6)))
    with pytest.raises(ValueError, match=r"shape \(5, 6\).*4×6"):
        load_mask_file(tmp_path / "wrong.npy", (1, 4, 6))
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read mask file"):
        load_mask_file(tmp_path / "junk.png", (1, 4, 6))
    (tmp_path / "m.txt").write_text("1")
    with pytest.raises(ValueError, match=".png or .npy"):
        load_mask_file(tmp_path / "m.txt", (1, 4, 6))
    with pytest.raises(FileNotFoundError):
        load_mask_file(tmp_path / "absent.npy", (1, 4, 6))
    np.save(tmp_path / "all.npy", np.ones((4, 6)))
    with pytest.raises(ValueError, match="nothing to complete"):
        parse_mask(str(tmp_path / "all.npy"), (1, 4, 6))


def test_clamped_dimensions_never_move_and_chains_differ(mnist_run):
    from infusion.generate.inpaint import load_images
    from infusion.models import load_model

    model, _ = load_model(mnist_run)
    images, _ = load_images("mnist", "test", 3)
    mask = half_mask("top", model.shape)
    res = inpaint(model, images, mask, chains=4, steps=5, seed=0, return_trajectory=True)
    assert res.completions.shape == (3, 4, 1, 28, 28)
    assert res.trajectory.shape == (6, 3, 4, 1, 28, 28)
    observed = images[:, None].expand(3, 4, 1, 28, 28)[:, :, mask]
    for step in res.trajectory:  # z(0) … z(T'): observed pixels exactly at their data values
        assert torch.equal(step[:, :, mask], observed)
    assert torch.equal(res.completions[:, :, mask], observed)
    free = res.completions[:, :, ~mask]  # (3, 4, free)
    assert (free[:, 0] - free[:, 1]).abs().max() > 1e-3  # chains differ
    assert (res.trajectory[-1][:, :, ~mask] - res.trajectory[0][:, :, ~mask]).abs().max() > 1e-3
    # The masked start shows the observed part and a flat shade elsewhere.
    assert torch.equal(res.starts[:, mask], images[:, mask])
    assert torch.all(res.starts[:, ~mask] == 0.5)
    # Same seed, same completions; a chain does not depend on the batch it was drawn in.
    again = inpaint(model, images[:1], mask, chains=4, steps=5, seed=0)
    assert torch.allclose(again.completions[0], res.completions[0], atol=1e-5)


def test_cli_inpaint_end_to_end(mnist_run, tmp_path, capsys):
    out = tmp_path / "inp"
    rc = main(["inpaint", "--checkpoint", str(mnist_run), "--mask", "left", "--chains", "3",
               "--n", "2", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    with np.load(out / "inpaint.npz") as z:
        assert z["completions"].shape == (2, 3, 1, 28, 28)
        assert z["originals"].shape == (2, 1, 28, 28) and z["labels"].shape == (2,)
        assert z["mask"][0, :, :14].all() and not z["mask"][0, :, 14:].any()
    png = Image.open(out / "inpaint.png")
    # Fig. 5 layout: 2 rows of original, masked start and 3 completions, 28 px + 2 px padding, x2.
    assert png.size == (2 * (5 * 30 + 2), 2 * (2 * 30 + 2))
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones((3, 3)))
    rc = main(["inpaint", "--checkpoint", str(mnist_run), "--mask", str(bad), "--out",
               str(tmp_path / "x"), "--device", "cpu"])
    assert rc == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


class _MeanBrightnessClassifier:
    """A fake extractor with known readings: class = round(10 × mean brightness), clipped."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        cls = (x.reshape(len(x), -1).mean(1) * 10).round().clamp(0, 9).long()
        return torch.nn.functional.one_hot(cls, 10).float()


def _result(originals, completions, mask):
    from infusion.generate.inpaint import Inpainting

    return Inpainting(originals, mask, originals, completions, completions)


def test_classifier_consistency_known_answers():
    from infusion.generate.inpaint import classifier_consistency

    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    mask[0, 0] = True  # the top row observed
    originals = torch.stack([torch.full((1, 2, 2), 0.3), torch.full((1, 2, 2), 0.6)])
    # image 0: completions read 3, 3, 5 (2 of 3 right); image 1: 6, 6, 6 (all right)
    completions = torch.stack([torch.stack([torch.full((1, 2, 2), v) for v in row])
                               for row in ((0.3, 0.31, 0.5), (0.6, 0.6, 0.62))])
    s = classifier_consistency(_result(originals, completions, mask), torch.tensor([3, 6]),
                               _MeanBrightnessClassifier())
    assert s["completions"] == pytest.approx(5 / 6)
    assert s["originals"] == 1.0
    assert s["masked"] == 0.0  # bottom row black: means 0.15 and 0.3 read 1 or 2 and 3, not 3 and 6
    assert s["chains_agree"] == 0.5 and s["classes_per_image"] == 1.5
    with pytest.raises(ValueError, match="labels"):
        classifier_consistency(_result(originals, completions, mask), torch.tensor([3]),
                               _MeanBrightnessClassifier())


def test_cli_inpaint_classify_writes_scores(mnist_run, tmp_path, capsys, monkeypatch):
    import json

    from infusion.evaluate import metrics

    monkeypatch.setitem(metrics._REGISTRY, "fake-brightness", lambda **kw: _MeanBrightnessClassifier())
    out = tmp_path / "inp"
    assert main(["inpaint", "--checkpoint", str(mnist_run), "--mask", "top", "--chains", "2",
                 "--n", "3", "--out", str(out), "--device", "cpu",
                 "--classify", "fake-brightness"]) == 0
    scores = json.loads((out / "inpaint_scores.json").read_text())
    assert scores["images"] == 3 and scores["chains"] == 2 and scores["mask"] == "top"
    assert 0 <= scores["completions"] <= 1 and 1 <= scores["classes_per_image"] <= 2
    assert "of completions read as the true digit" in capsys.readouterr().out
    rc = main(["inpaint", "--checkpoint", str(mnist_run), "--mask", "top", "--out",
               str(tmp_path / "y"), "--classify", "no-such-reader"])
    assert rc == 2 and "no-such-reader" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()  # refused before any work
