"""The paper's figures from one run directory (Figs. 1, 2, 3, 4, 7)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from infusion.cli import main

from .conftest import tiny_config


def _train(run, **train):
    from infusion.training.loop import train as fit

    cfg = tiny_config(data={"name": "mnist"}, model={"hidden": (24,)},
                      method={"T": 3, "alpha0": 0.1, "omega": 0.3},
                      train={"epochs": 2, "batch_size": 32, "valid_examples": 32, **train},
                      sample={"n": 12, "chains": 2})
    fit(cfg, run, progress=False, log=lambda s: None)
    return cfg


def test_figures_from_a_run(tiny_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    _train(run, record_chains_at=(0, 2), record_chains_n=4, train_bound_examples=32)
    rc = main(["figures", "--run-dir", str(run), "--n", "4", "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    names = ["fig1_sampling_chains", "fig2_infusion_chains", "fig3_bound_curves",
             "fig4_nearest_neighbours", "fig7_constant_vs_increasing", "likelihood_vs_k"]
    for name in names:
        path = run / "figures" / f"{name}.png"
        assert f"{name}: {path}" in printed
        assert Image.open(path).size[0] > 50
    assert "reversibility: skipped:" in printed and "walkback" in printed  # an infusion run
    # Fig. 1: 4 chains × (T' = T = 3 steps + z(0)) columns of 28 px + 2 px padding, ×2, and
    # the step labels above them
    width, height = Image.open(run / "figures" / "fig1_sampling_chains.png").size
    assert width == 2 * (4 * 30 + 2) and 2 * (4 * 30 + 2) + 10 < height < 2 * (4 * 30 + 2) + 60


def test_missing_records_are_skipped_with_a_reason(tiny_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    _train(run)  # no recorded chains, no train bound
    assert main(["figures", "--run-dir", str(run), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "fig2_infusion_chains: skipped:" in printed and "record_chains_at" in printed
    assert (run / "figures" / "fig3_bound_curves.png").exists()  # valid bound alone
    assert main(["figures", "--run-dir", str(tmp_path / "nope")]) == 2


def test_constant_and_increasing_chains_share_noise_but_not_rates(tiny_mnist, tmp_path):
    from infusion.evaluate.paper_figures import constant_vs_increasing_chains
    from infusion.models import load_model

    run = tmp_path / "run"
    cfg = _train(run)
    model, _ = load_model(run)
    x = torch.rand(4, 784, generator=torch.Generator().manual_seed(0))
    (t1, inc, tg), (t2, const, _) = constant_vs_increasing_chains(model, cfg, x, seed=1)
    assert "increasing" in t1 and "constant" in t2
    assert inc.shape == const.shape == (cfg.method.T + 1, 4, 1, 28, 28)
    np.testing.assert_array_equal(tg.reshape(4, -1), x.numpy())
    # Rates 0.1, 0.4, 0.7 versus a constant 0.4: the share of pixels at the target differs.
    near = [np.mean(np.abs(c[1:-1].reshape(2, 4, -1) - x.numpy()) < 0.05, axis=(1, 2))
            for c in (inc, const)]
    assert near[0][1] > near[1][1]  # step 2: α = 0.7 against 0.4


def test_infusion_chain_figure_is_labelled_and_compact(tmp_path):
    """Fig. 2 for 3 epochs of T = 15 MNIST chains (8 targets) of random pixels, the worst case
    for PNG compression: 17 labelled columns, under 1 MB (version 0.1 wrote about 4 MB)."""
    from infusion.evaluate.paper_figures import fig2_infusion_chains
    from infusion.io import save_npz

    rng = np.random.default_rng(0)
    for epoch in (0, 1, 5):
        save_npz(tmp_path / "infusion_chains" / f"epoch-{epoch:04d}.npz",
                 chain=rng.random((16, 8, 1, 28, 28)).astype(np.float32),
                 targets=rng.random((8, 1, 28, 28)).astype(np.float32), epoch=np.array(epoch))
    out = fig2_infusion_chains(tmp_path / "fig2.png", tmp_path)
    assert out.stat().st_size < 1_000_000
    width, height = Image.open(out).size
    assert 700 < width < 1200 and height > 3 * 0.8 * width * 8 / 17  # three panels of 8 x 17
