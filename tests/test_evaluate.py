"""`infusion evaluate` end to end on tiny runs: report contents, skipped metrics, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from infusion import evaluate as ev
from infusion import train
from infusion.cli import main
from infusion.errors import InputError
from infusion.evaluate import api
from infusion.evaluate.parzen import LOW_DIM_SIGMA_GRID

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
    rep = ev.evaluate(toy_run, None, out, SMALL, **QUIET).report
    m = rep["metrics"]
    assert set(m) == {"lb", "is", "parzen", "memorisation"}
    assert set(rep["skipped"]) == {"fid", "kid", "precision", "score", "coverage"}  # not images
    assert m["lb"]["n"] == 60 and m["is"]["n"] == 30 and m["is"]["k"] == 20
    assert m["is"]["lb_same_draws"]["mean"] <= m["is"]["by_k"]["10"] <= m["is"]["mean"]
    assert m["lb"]["mean"] < m["is"]["mean"]
    assert len(m["parzen"]["valid_by_sigma"]) == len(LOW_DIM_SIGMA_GRID)  # 2-D: wider grid
    assert m["parzen"]["fixed_sigma"]["sigma"] == 0.17 and m["parzen"]["fixed_sigma"]["n"] == 40
    assert "k = 20 of the paper's 20,000; 1 repeat of 10" in m["is"]["protocol_note"]
    assert rep["status"] == {"state": "complete", "done": ["lb", "is", "parzen", "memorisation"],
                             "running": None, "missing": []}
    assert json.loads(out.read_text())["metrics"]["lb"]["mean"] == m["lb"]["mean"]
    table = out.with_suffix(".md").read_text()
    assert "| lower bound (nats) |" in table and "skipped fid" in table
    per = np.load(out.with_name("per_example.npz"))
    assert per["lb"].shape == (1, 60) and per["parzen"].shape == per["parzen_fixed"].shape == (1, 40)
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
    monkeypatch.setattr(api, "build_method", NoLikelihood)  # the name evaluate() calls
    rep = ev.evaluate(toy_run, "lb,is,parzen", tmp_path / "r.json", SMALL, **QUIET).report
    assert set(rep["metrics"]) == {"parzen"}
    assert "no likelihood" in rep["skipped"]["lb"] and "no likelihood" in rep["skipped"]["is"]


def test_reversibility_is_skipped_for_infusion(toy_run, tmp_path):
    rep = ev.evaluate(toy_run, "reversibility", tmp_path / "r.json", SMALL, **QUIET).report
    assert rep["metrics"] == {} and "walkback" in rep["skipped"]["reversibility"]


def test_checkpoint_without_statistics_gets_them(toy_run, tmp_path):
    epoch_file = next((toy_run / "checkpoints").glob("epoch-*.pt"))
    rep = ev.evaluate(epoch_file, ["lb"], tmp_path / "r.json", SMALL, **QUIET).report
    assert "statistics" in rep["notes"][0] and "lb" in rep["metrics"]


def test_image_report_with_classifier_metrics(tiny_mnist, tmp_path):
    cfg = tiny_config(data={"name": "mnist"}, model={"hidden": (16,)}, method={"T": 2},
                      train={"epochs": 1, "batch_size": 16})
    final = train(cfg, tmp_path / "run", **QUIET)
    s = ev.EvalSettings(is_k=5, n_samples=20, memo_samples=10, batch_size=64)
    rep = ev.evaluate(final, "all", None, s, **QUIET).report
    out = tmp_path / "run" / "eval"
    m = rep["metrics"]
    assert set(m) == set(ev.METRICS) - {"reversibility"}  # an infusion run
    assert "walkback" in rep["skipped"]["reversibility"]
    assert m["lb"]["n"] == 32 and m["lb"]["mean"] < m["is"]["mean"]
    assert m["is-iso"]["isotropic"] is True and m["is-iso-train"]["isotropic"] is True
    iso = rep["isotropic_variance"]  # one variance for every pixel and example, from validation
    table = {float(v): x for v, x in iso["valid_is_by_var"].items()}
    assert len(table) == 33 and iso["n_valid"] == 32 and iso["k"] == 10
    known = _isotropic_table(final, tiny_mnist["valid_x"], list(table), k=10, seed=5000,
                             batch=64)
    for v, value in known.items():
        assert table[v] == pytest.approx(value, rel=1e-6, abs=1e-2), v  # float32 ℓ
    assert iso["final_var"] == m["is-iso"]["final_var"] == max(known, key=known.get)
    assert m["lb-train"]["n"] == m["is-train"]["n"] == 64  # 100 asked, 64 in the fake train set
    assert m["fid"]["value"] > 0 and m["fid"]["n_reference"] == 32
    assert sum(m["coverage"]["histogram"]) == 20
    assert rep["extractor"]["name"] == "mnist-cnn" and "test_accuracy" in rep["extractor"]
    for name in ("report.json", "report.md", "nearest_neighbours.png", "distances.png",
                 "samples.npz", "per_example.npz"):
        assert (out / name).exists(), name
    assert "paper" in (out / "report.md").read_text()


def _isotropic_table(ckpt, valid_raw, grid, k, seed, batch) -> dict[float, float]:
    """The validation IS of the isotropic variant for every s² of ``grid``, computed apart
    from the code under test: s² changes no draw, only the last term, so each draw is
    ℓ(s²) = A − (d/2)·log s² − R/(2s²); two values of s² fix A and R per draw, and the mean
    IS (logsumexp over the k draws − log k) follows for every s² in closed form."""
    import torch
    from scipy.special import logsumexp

    from infusion.data import to_model_space
    from infusion.evaluate import likelihood as lik
    from infusion.methods import build_method
    from infusion.models import load_model

    model, cfg = load_model(ckpt, "cpu")
    method = build_method(cfg.method)
    x = to_model_space(torch.from_numpy(valid_raw), torch.Generator().manual_seed(seed))
    v1, v2 = 0.01, 0.1
    l1, l2 = (lik.log_weights(model, method, x, k, torch.Generator().manual_seed(seed + 1), batch,
                              final_var=v).numpy() for v in (v1, v2))
    half_d = model.d / 2
    r = 2 * (l2 - l1 + half_d * np.log(v2 / v1)) / (1 / v1 - 1 / v2)  # Σ (x − μ_T)² per draw
    a = l1 + half_d * np.log(v1) + r / (2 * v1)
    return {v: float((logsumexp(a - half_d * np.log(v) - r / (2 * v), 1) - np.log(k)).mean())
            for v in grid}


def _numpy_parzen_table(samples, valid_raw, sigmas) -> dict[float, float]:
    """The mean validation Parzen log-density for each σ (algorithms.md §8), in numpy: pixels
    k/256 without noise, a Gaussian kernel of width σ on every sample (float64)."""
    from scipy.special import logsumexp

    s = np.asarray(samples, np.float64).reshape(len(samples), -1)
    x = np.asarray(valid_raw, np.float64).reshape(len(valid_raw), -1) / 256
    d2 = (x**2).sum(1)[:, None] + (s**2).sum(1)[None, :] - 2 * x @ s.T
    d = x.shape[1]
    return {sig: float((logsumexp(-d2 / (2 * sig**2), 1) - np.log(len(s))
                        - 0.5 * d * np.log(2 * np.pi * sig**2)).mean()) for sig in sigmas}


def test_cli_evaluate_and_errors(toy_run, tmp_path, capsys):
    out = tmp_path / "cli.json"
    assert main(["evaluate", "--checkpoint", str(toy_run), "--metrics", "lb,parzen",
                 "--lb-examples", "20", "--n-samples", "50", "--parzen-valid", "20",
                 "--parzen-test", "20", "--out", str(out), "--quiet"]) == 0
    assert set(json.loads(out.read_text())["metrics"]) == {"lb", "parzen"}
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(toy_run), "--metrics", "lb,nope"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"metrics 'lb,bound': unknown \['bound'\]"):
        ev.parse_metrics(["lb", "bound"])  # from Python, a list
    with pytest.raises(InputError, match="metrics '': none given"):
        ev.parse_metrics("")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is_k"):
        ev.EvalSettings(is_k=0).validate()


def test_paper_protocol_reduced_on_tiny_mnist(tiny_mnist, tmp_path):
    """``--protocol paper --k 8 --repeats 2 --examples 20``: every Table 2 row from the same
    draws, each stating its reductions, and the two Parzen rows of Table 1 on means after the
    training T (not sample.steps)."""
    cfg = tiny_config(data={"name": "mnist"}, model={"hidden": (16,)}, method={"T": 2},
                      train={"epochs": 1, "batch_size": 16}, sample={"steps": 4})
    final = train(cfg, tmp_path / "run", **QUIET)
    out = tmp_path / "paper" / "report.json"
    assert main(["evaluate", "--checkpoint", str(final), "--protocol", "paper", "--k", "8",
                 "--repeats", "2", "--examples", "20", "--out", str(out), "--quiet"]) == 0
    rep = json.loads(out.read_text())
    m = rep["metrics"]
    assert set(m) == set(ev.PAPER_METRICS) and rep["status"]["state"] == "complete"
    assert rep["settings"]["protocol"] == "paper"
    assert rep["protocol"]["reductions"] == ["k = 8 of the paper's 20,000", "2 repeats of 10",
                                             "20 test examples of the paper's 1,000",
                                             "64 train examples of the paper's 100"]
    for name in ("lb", "is", "is-iso"):
        assert (m[name]["n"], m[name]["k"], m[name]["repeats"]) == (20, 8, 2)
        assert m[name]["spread"] is not None and m[name]["complete"]
        assert m[name]["protocol_note"] == ("k = 8 of the paper's 20,000; 2 repeats of 10; "
                                            "20 test examples of the paper's 1,000")
    assert m["lb"]["mean"] == m["is"]["lb_same_draws"]["mean"]  # the bound from the IS draws
    assert m["lb"]["same_draws_as"] == "is" and m["lb"]["mean"] < m["is"]["mean"]
    assert m["lb-train"]["mean"] == m["is-train"]["lb_same_draws"]["mean"]
    assert m["is-train"]["protocol_note"] == ("k = 8 of the paper's 20,000; 2 repeats of 10; "
                                              "64 train examples of the paper's 100; the paper "
                                              "scored its train row with minibatch statistics: "
                                              "compare with the -batch row")
    # the train rows as the paper scored them: one minibatch-statistics batch of the 64 examples
    assert m["lb-train-batch"]["bn_stats"] == "batch" and m["lb-train-batch"]["bn_batch"] == 64
    assert m["lb-train-batch"]["protocol_note"].startswith("transductive")
    assert m["lb-train-batch"]["mean"] != m["lb-train"]["mean"]
    spread = m["lb"]["stats_pass_spread"]  # the statistics pass re-run with 3 other seeds
    assert spread["passes"] == 3 and len(spread["others"]) == 3 and spread["std"] > 0
    assert rep["bn_stats"]["mode"] == "stored"
    p = m["parzen"]
    assert p["steps"] == p["training_T"] == 2 and rep["samples"]["steps"] == 2
    assert p["fixed_sigma"]["sigma"] == 0.17 and p["fixed_sigma"]["n_samples"] == 10000
    known = _numpy_parzen_table(np.load(rep["samples"]["file"])["means"],
                                tiny_mnist["valid_x"], [float(v) for v in p["valid_by_sigma"]])
    for v, value in known.items():
        assert p["valid_by_sigma"][str(v)] == pytest.approx(value, rel=1e-9), v
    assert p["sigma"] == max(known, key=known.get)
    table = out.with_suffix(".md").read_text()
    assert "reduced: k = 8 of the paper's 20,000; 2 repeats of 10" in table
    assert "| Parzen window, σ = 0.17 fixed (nats) |" in table and "| 312 |" in table
    assert "| Parzen window, σ chosen on validation (nats) |" in table
    assert "| IS estimate, train (nats) |" in table and "1837.56" in table


def test_interrupted_evaluation_leaves_a_valid_partial_report(toy_run, tmp_path, monkeypatch):
    from infusion.evaluate import likelihood as lik
    from infusion.evaluate import parzen

    def boom(*a, **k):
        raise RuntimeError("boom in Parzen")

    monkeypatch.setattr(parzen, "parzen_estimates", boom)
    out = tmp_path / "r" / "report.json"
    s = ev.EvalSettings(is_examples=10, is_k=4, lb_examples=10, n_samples=30, batch_size=64)
    with pytest.raises(RuntimeError, match="boom"):
        ev.evaluate(toy_run, "lb,is,parzen,memorisation", out, s, **QUIET)
    rep = json.loads(out.read_text())
    st = rep["status"]
    assert st["state"] == "interrupted" and "boom in Parzen" in st["error"]
    assert st["done"] == ["lb", "is"] and st["missing"] == ["parzen", "memorisation"]
    assert st["running"].startswith("Parzen window")
    assert rep["metrics"]["is"]["n"] == 10 and "parzen" not in rep["metrics"]
    assert "**Interrupted report**" in out.with_suffix(".md").read_text()
    assert np.load(out.with_name("per_example.npz"))["is"].shape == (1, 10)

    # interrupted inside the third repetition: the first two are in the report
    monkeypatch.undo()
    real, calls = lik.stream_estimate, []

    def third_fails(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(lik, "stream_estimate", third_fails)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(toy_run, "is,parzen", out, ev.EvalSettings(is_examples=10, is_k=4, repeats=5),
                    **QUIET)
    rep = json.loads(out.read_text())
    e = rep["metrics"]["is"]
    assert (e["repeats"], e["repeats_planned"], e["complete"]) == (2, 5, False)
    assert "partial: 2 of 5 repeats done" in e["protocol_note"]
    assert rep["status"]["state"] == "interrupted" and rep["status"]["missing"] == ["is", "parzen"]
    assert "(2 of 5 done)" in rep["status"]["running"]


def test_cli_flags_reach_the_settings(monkeypatch, capsys):
    seen = {}

    def fake(checkpoint, metrics, out, settings, **kw):
        seen.update(metrics=metrics, settings=settings)

    monkeypatch.setattr(ev, "evaluate", fake)
    assert main(["evaluate", "--checkpoint", "x", "--protocol", "paper", "--k", "8",
                 "--repeats", "2", "--examples", "20", "--train-examples", "5",
                 "--n-samples", "50", "--batch-size", "7", "--seed", "3", "--quiet"]) == 0
    assert seen["metrics"] is None  # the protocol's metrics
    assert seen["settings"] == ev.EvalSettings.paper(k=8, repeats=2, examples=20,
                                                     train_examples=5, n_samples=50,
                                                     batch_size=7, seed=3)
    assert seen["settings"].reductions()[:3] == ["k = 8 of the paper's 20,000", "2 repeats of 10",
                                                 "20 test examples of the paper's 1,000"]
    assert main(["evaluate", "--checkpoint", "x", "--protocol", "paper"]) == 0
    assert seen["settings"] == ev.EvalSettings.paper() and not ev.EvalSettings.paper().reductions()
    assert (seen["settings"].is_k, seen["settings"].repeats, seen["settings"].is_examples,
            seen["settings"].parzen_at_T) == (20000, 10, 1000, True)
    assert main(["evaluate", "--checkpoint", "x", "--k", "50", "--is-examples", "30",
                 "--lb-k", "2", "--metrics", "lb"]) == 0
    assert seen["settings"] == ev.EvalSettings(is_k=50, is_examples=30, lb_k=2)
    assert seen["metrics"] == "lb"
    assert main(["evaluate", "--checkpoint", "x"]) == 0
    assert seen["settings"] == ev.EvalSettings()
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", "x", "--protocol", "paper", "--lb-k", "3"]) == 2
    assert "--lb-k" in capsys.readouterr().err
    with pytest.raises(ValueError, match="protocol"):
        ev.EvalSettings(protocol="papr").validate()


def test_samples_drawn_in_chunks_are_the_samples_drawn_at_once(toy_run, tmp_path):
    """The sample metrics draw their chains a chunk of ``batch_size`` at a time; sample i must
    come from seed ``seed + i`` whatever chunk it falls in, so 30 samples drawn 7 at a time
    (chunks of 7, 7, 7, 7, 2) are the 30 drawn in one chunk, and both are the library's
    ``sample_chain(model, 30, seed=5)``. Seeds restarted at each chunk would repeat the first
    chunk's samples."""
    import torch

    from infusion.chain.sampler import sample_chain
    from infusion.models import load_model

    means = {}
    for chunk in (30, 7):
        s = ev.EvalSettings(n_samples=30, batch_size=chunk, seed=5, parzen_valid=20,
                            parzen_test=20)
        out = tmp_path / f"chunk{chunk}" / "report.json"
        ev.evaluate(toy_run, "parzen", out, s, **QUIET)
        assert json.loads(out.read_text())["samples"]["n"] == 30
        means[chunk] = np.load(out.with_name("samples.npz"))["means"]
    model, _ = load_model(toy_run, "cpu")
    api = sample_chain(model, 30, seed=5).means.numpy()
    # each row is the same per-row arithmetic in batches of different sizes (eval-mode batch
    # norm with stored statistics), so they agree to float32 rounding: 1e-5 on values of
    # order 1, where a repeated chunk differs by the spread of the samples (about 0.1 to 1)
    np.testing.assert_allclose(means[7], means[30], rtol=0, atol=1e-5)
    np.testing.assert_allclose(means[30], api, rtol=0, atol=1e-5)
    assert len(torch.unique(torch.from_numpy(means[7]).round(decimals=3), dim=0)) == 30
