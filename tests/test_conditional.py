"""Class-conditional infusion (algorithms.md §15): the class reaches the operator, the chain,
losses and estimates are the unconditional ones with p(t)(· | z, y), and every entrance
(training, sampling, evaluation, fit on a user's labelled arrays, the CLI) carries the class."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import infusion
from infusion import config, models
from infusion import evaluate as ev
from infusion.chain.nets import step_norms
from infusion.chain.sampler import sample_chain
from infusion.cli import main
from infusion.data import DataError
from infusion.errors import ConfigError, InputError
from infusion.evaluate.likelihood import log_weights
from infusion.methods import build_method
from infusion.training.loop import train

from .conftest import tiny_config

QUIET = {"progress": False, "log": lambda s: None}


def _model(classes=3, net="mlp", hidden=(16, 16), shape=(2,)):
    cfg = tiny_config(model={"classes": classes, "net": net, "hidden": hidden})
    torch.manual_seed(0)
    return build_method(cfg.method).build_model(shape, cfg.model).eval(), cfg


@pytest.mark.parametrize("net,hidden,shape", [("mlp", (16, 16), (2,)),
                                              ("conv", (8, 4), (1, 16, 16)),
                                              ("unet", (4, 6), (1, 10, 10))])
def test_the_class_reaches_the_operator(net, hidden, shape):
    """Zero-initialised embeddings: at first every class gives the unconditional transition;
    once they differ, the rows whose class changed move. With stored statistics (eval mode) a
    row's transition depends on its own state and class alone, as a batch of one gives it;
    with batch statistics (training) a class change elsewhere in the batch moves row 0 too,
    through the batch's moments."""
    model, _ = _model(3, net, hidden, shape)
    z = torch.rand(4, model.d)
    y0, y1 = torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 2, 1])
    model.train()  # batch statistics: a step on one batch
    a, b = model.given(y0)(z, 1), model.given(y1)(z, 1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    for table in model.net.class_embeds:
        torch.nn.init.normal_(table.weight)
    a, b = model.given(y0)(z, 1), model.given(y1)(z, 1)
    assert not torch.allclose(a[0][1:], b[0][1:])  # rows whose class changed
    assert not torch.allclose(a[0][0], b[0][0])  # and row 0, through the batch's moments
    for norm in step_norms(model):
        norm.stat_ready.fill_(True)  # stored statistics (mean 0, variance 1)
    model.eval()
    a, b = model.given(y0)(z, 1), model.given(y1)(z, 1)
    torch.testing.assert_close(a[0][0], b[0][0])  # row 0 kept class 0: nothing else matters
    assert not torch.allclose(a[0][1:], b[0][1:])
    for i in range(4):
        alone = model.given(y1[i:i + 1])(z[i:i + 1], 1)
        torch.testing.assert_close(b[0][i:i + 1], alone[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b[1][i:i + 1], alone[1], rtol=1e-5, atol=1e-6)
    model.train()
    with pytest.raises(InputError, match="class-conditional"):
        model(z, 1)  # no classes
    with pytest.raises(InputError, match=r"expected \(4,\)"):
        model.given(torch.zeros(3, dtype=torch.long))(z, 1)
    plain, _ = _model(0, net, hidden, shape)
    with pytest.raises(InputError, match="unconditional"):
        plain.given(y0)
    assert plain.given(None) is plain
    assert not any("class_embeds" in k for k in plain.state_dict())  # old checkpoints load


def test_config_refuses_conditional_where_it_is_not_built():
    with pytest.raises(ConfigError, match="model.classes=10: class-conditional models are built"):
        tiny_config(method={"name": "diffusion"}, model={"classes": 10})
    with pytest.raises(ConfigError, match="model.classes=-1"):
        tiny_config(model={"classes": -1})


def test_conditional_bound_is_the_unconditional_one_given_y():
    """With a class embedding that is zero the conditional ℓ draws are exactly the
    unconditional model's (same weights, same noise): the chain and bound are unchanged."""
    cond, cfg = _model(3)
    plain, _ = _model(0)
    plain.load_state_dict({k: v for k, v in cond.state_dict().items() if "class_embeds" not in k})
    method = build_method(cfg.method)
    from infusion.data import Data
    from infusion.methods.statistics import compute_step_statistics

    x = torch.rand(64, 2) * 0.5 + 0.25
    y = torch.arange(64) % 3
    data = Data(x, x, (2,), False, y, y)
    compute_step_statistics(cond, method, data, 32)
    compute_step_statistics(plain, method, Data(x, x, (2,), False), 32)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = log_weights(cond, method, x[:5], 7, g1, labels=y[:5])
    b = log_weights(plain, method, x[:5], 7, g2)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.fixture(scope="module")
def clusters_fit(tmp_path_factory):
    """Two well-separated 2-D clusters labelled 0 and 1, fitted through infusion.fit."""
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 2, n)
    centres = np.array([[-2.0, -2.0], [2.0, 2.0]])
    x = (centres[y] + 0.3 * rng.standard_normal((n, 2))).astype(np.float32)
    run = tmp_path_factory.mktemp("cond") / "run"
    res = infusion.fit(x, labels=y, run_dir=run, preset=tiny_config(
        model={"hidden": (64, 64)}, method={"T": 6},
        train={"epochs": 12, "batch_size": 64, "lr": 3e-3}), progress=False, log=lambda s: None)
    return res, x, y


def test_fit_on_labelled_arrays_draws_each_class_where_it_lives(clusters_fit):
    res, _, _ = clusters_fit
    assert res.model.classes == 2 and res.config.model.classes == 2
    for c, centre in ((0, -2.0), (1, 2.0)):
        s = sample_chain(res.model, 200, labels=[c] * 200).samples.numpy()
        pts = infusion.data.to_data_space(s, res.config.data)
        own = (np.linalg.norm(pts - centre, axis=1) < 1.0).mean()
        other = (np.linalg.norm(pts + centre, axis=1) < 1.0).mean()
        assert own > 0.8 and other < 0.1, (c, own, other)  # unconditional: about 0.5 each
    default = sample_chain(res.model, 6, seed=10)
    assert default.labels.tolist() == [0, 1, 0, 1, 0, 1]  # seed modulo the classes
    with pytest.raises(InputError, match="labels span 0..2"):
        sample_chain(res.model, 2, labels=[0, 2])


def test_conditional_likelihood_and_run_files(clusters_fit):
    """log p(x | y) with the right class beats the wrong one by a wide margin on separated
    clusters; evaluate reports conditional rows; training wrote the class grid."""
    res, x, y = clusters_fit
    method = build_method(res.config.method)
    xm = torch.from_numpy(infusion.data.apply_affine(x[:50], res.config.data.scale,
                                                     res.config.data.offset))
    right = log_weights(res.model, method, xm, 20, torch.Generator().manual_seed(0),
                        labels=torch.from_numpy(y[:50]))
    wrong = log_weights(res.model, method, xm, 20, torch.Generator().manual_seed(0),
                        labels=torch.from_numpy(1 - y[:50]))
    assert (right.mean(1) > wrong.mean(1) + 5).float().mean() > 0.9
    assert (res.run_dir / "samples_by_class.png").exists()
    small = ev.EvalSettings(lb_examples=40, is_examples=40, is_k=10)
    report = ev.evaluate(res.checkpoint, "lb,is", res.run_dir / "ev" / "r.json", small,
                         **QUIET).report
    assert report["metrics"]["lb"]["conditional"].startswith("log p(x | y)")
    assert any("class-conditional" in n for n in report["notes"])


def test_fit_label_errors(tmp_path):
    x = np.random.default_rng(0).standard_normal((40, 2)).astype(np.float32)
    with pytest.raises(InputError, match="39 classes for 40 training examples"):
        infusion.fit(x, labels=np.zeros(39, np.int64), run_dir=tmp_path / "a")
    with pytest.raises(InputError, match="one integer class"):
        infusion.fit(x, labels=np.zeros(40), run_dir=tmp_path / "b")
    with pytest.raises(InputError, match="valid_labels"):
        infusion.fit(x, valid=x[:5], labels=np.zeros(40, np.int64), run_dir=tmp_path / "c")


def test_mnist_conditional_training_and_cli(tiny_mnist, tmp_path, capsys):
    cfg = config.override(config.preset("mnist-cond"), [
        "model.hidden=32,32", "train.epochs=1", "train.batch_size=16", "train.valid_examples=16",
        "sample.n=4", "sample.chains=2", "train.sample_every=1"])
    run = tmp_path / "run"
    train(cfg, run, **QUIET)
    model, _ = models.load_model(run)
    assert model.classes == 10
    assert (run / "samples" / "epoch-0001.png").exists()  # the preview grid, given classes
    out = tmp_path / "s.npz"
    main(["sample", "--checkpoint", str(run), "--classes", "3-5", "--n", "2", "--out", str(out),
          "--png-dir", str(tmp_path / "png")])
    z = np.load(out)
    assert z["labels"].tolist() == [3, 3, 4, 4, 5, 5]
    # the same seeds in each row: one class changes, the noise does not
    assert sorted(p.name for p in (tmp_path / "png").iterdir())[:2] == [
        "class-3-seed-000000.png", "class-3-seed-000001.png"]
    main(["sample", "--checkpoint", str(run), "--class", "7", "--n", "3", "--out",
          str(tmp_path / "c7.npz")])
    assert np.load(tmp_path / "c7.npz")["labels"].tolist() == [7, 7, 7]
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(run), "--classes", "x", "--out", str(out)])
    assert "--classes 'x'" in capsys.readouterr().err
    plain = tmp_path / "plain"
    train(tiny_config(train={"epochs": 1}), plain, **QUIET)
    assert main(["sample", "--checkpoint", str(plain), "--class", "1", "--out",
                 str(tmp_path / "p.npz")]) != 0
    assert "unconditional" in capsys.readouterr().err
    assert not (tmp_path / "p.npz").exists()
    with pytest.raises(InputError, match="labels span 0..10"):
        sample_chain(model, 2, labels=[0, 10])
    cfg_json = json.loads((run / "config.json").read_text())
    assert cfg_json["model"]["classes"] == 10
    from infusion.evaluate.paper_figures import make_figures

    done = make_figures(run, n=4)  # chains and curves with each target's class
    for name in ("fig1_sampling_chains", "fig4_nearest_neighbours",
                 "fig7_constant_vs_increasing", "likelihood_vs_k"):
        assert not str(done[name]).startswith("skipped"), (name, done[name])


def test_conditional_needs_labelled_data(tmp_path):
    with pytest.raises(DataError, match="needs labelled data"):
        train(tiny_config(model={"classes": 2}, train={"epochs": 1}), tmp_path / "r", **QUIET)


def test_fit_reads_the_classes_an_npz_holds(tmp_path):
    """``infusion train --data file.npz`` with train_x/train_y … (or x and y) trains a
    class-conditional model and evaluates log p(x | y) on the file's own test split."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    quick = ["train.epochs=1", "train.batch_size=32", "model.hidden=16,16", "method.T=3"]
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    res = infusion.fit(tmp_path / "xy.npz", run_dir=tmp_path / "a", overrides=quick, **QUIET)
    assert res.model.classes == 2
    np.savez(tmp_path / "split.npz", train_x=x[:80], train_y=y[:80], valid_x=x[80:100],
             valid_y=y[80:100], test_x=x[100:], test_y=y[100:])
    res = infusion.fit(tmp_path / "split.npz", run_dir=tmp_path / "b", overrides=quick, **QUIET)
    small = ev.EvalSettings(lb_examples=20, is_examples=20, is_k=4)
    report = ev.evaluate(res.checkpoint, "lb", tmp_path / "r.json", small, **QUIET).report
    assert report["metrics"]["lb"]["n"] == 20 and "conditional" in report["metrics"]["lb"]
    np.savez(tmp_path / "notest.npz", train_x=x[:80], train_y=y[:80], valid_x=x[80:100],
             valid_y=y[80:100], test_x=x[100:])
    with pytest.raises(InputError, match="test examples need their classes"):
        infusion.fit(tmp_path / "notest.npz", run_dir=tmp_path / "c", overrides=quick, **QUIET)
