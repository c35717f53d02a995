"""experiments/compare_budgets.py end to end on a tiny fake MNIST: the budget formula, the
recipe chosen on validation rows, the ladder's rows with their plain keys, reuse of finished
runs, and a clean stop when its time runs out."""

from __future__ import annotations

import argparse
import json
import math
import shutil

import pytest

from .conftest import fake_mnist_cache, load_experiment

cb = load_experiment("compare_budgets")

TINY = ["--set", "model.hidden=16,16", "--set", "train.batch_size=32",
        "--set", "train.checkpoint_every=1000", "--unit", "1e9",
        "--samples", "16", "--ref-images", "32", "--nfe", "1,2,5", "--lik-examples", "4",
        "--lik-k", "2", "--budgets", "1,2", "--threads", "1", "--methods", "infusion,flow"]


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    """One tiny tune + ladder + report of infusion and the flow; its work folder and JSON."""
    root = tmp_path_factory.mktemp("ladder")
    mp = pytest.MonkeyPatch()
    fake_mnist_cache(mp, root)
    try:
        cb.main(["--work", str(root / "w")] + TINY)
        yield root / "w", json.loads((root / "w" / "compare_budgets.json").read_text()), mp
    finally:
        mp.undo()


def test_each_run_trains_its_budget_in_flops(ladder):
    """Adam steps = ceil(budget × unit / (batch × FLOPs per example)): the flow's one network
    pass per example buys it about five times the steps of the T = 5 chain."""
    _work, result, _ = ladder
    models = {(x["method"], x["recipe"], x["budget"], x["seed"]): x for x in result["models"]}
    for x in models.values():
        assert x["optimiser_steps"] == math.ceil(x["budget"] * 1e9 / (32 * x["flops_per_example"]))
        assert x["train_flops"] == pytest.approx(x["budget"] * 1e9, rel=0.05)
    inf = next(x for k, x in models.items() if k[0] == "infusion" and k[2] == 1 and k[3] == 0)
    assert inf["passes_per_example"] == (15 if inf["recipe"] == "paper-chain" else 5)


def test_the_recipe_is_the_lowest_validation_fd(ladder):
    _work, result, _ = ladder
    for m in ("infusion", "flow"):
        trials = [r for r in result["tuning"] if r["method"] == m]
        assert {r["recipe"] for r in trials} == set(cb.TRIALS[m])  # four trials each
        assert all(r["budget"] == 1 and r["seed"] == 0 for r in trials)
        assert result["chosen"][m] == min(trials, key=lambda r: r["fd"])["recipe"]
        # the ladder trains the chosen recipe alone
        assert {r["recipe"] for r in result["rows"] if r["method"] == m} == {result["chosen"][m]}


def test_another_data_set_can_train_the_recipes_chosen_here(ladder):
    work, result, _ = ladder
    a = argparse.Namespace(work=str(work), data="fashion", recipes_from="mnist", body="mlp",
                           recipe={})
    assert {m: cb.chosen_recipe(a, m) for m in ("infusion", "flow")} == {
        m: result["chosen"][m] for m in ("infusion", "flow")}
    a.recipes_from = ""  # nothing tuned on fashion
    assert cb.chosen_recipe(a, "infusion") is None


def test_a_report_on_borrowed_recipes_names_them_instead_of_a_search(ladder, tmp_path):
    _work, result, _ = ladder
    a = argparse.Namespace(data="fashion", recipes_from="mnist", unit=1e9, samples=16, recipe={},
                           ref_images=32, body="mlp", set=[])
    cb.report(a, {**result, "rows": []}, tmp_path)
    text = (tmp_path / "compare_budgets.md").read_text()
    chosen = ", ".join(f"{m} {r}" for m, r in result["chosen"].items() if r)
    assert f"Recipes: those chosen on mnist's trials ({chosen}); no search on fashion." in text
    assert "Recipe search" not in text and "not scored yet" not in text
    a.recipes_from, a.data = "", "mnist"
    cb.report(a, {**result, "rows": []}, tmp_path)
    assert "Recipe search" in (tmp_path / "compare_budgets.md").read_text()


def test_rows_hold_every_sampler_nfe_budget_and_seed(ladder):
    work, result, _ = ladder
    keys = {"method", "recipe", "budget", "seed", "sampler", "nfe", "fd", "precision", "recall",
            "reader_confident", "reader_confident_real", "parzen", "sample_seconds_per_1000",
            "mean_pixel", "mean_pixel_real",
            "likelihood"}
    rows = result["rows"]
    assert all(keys <= set(r) for r in rows)
    # seeds 0 and 1 at 1×, seed 0 at 2×
    cells = {(r["method"], r["budget"], r["seed"]) for r in rows}
    assert cells == {(m, b, s) for m in ("infusion", "flow") for b, s in ((1, 0), (1, 1), (2, 0))}
    chain = {(r["sampler"], r["nfe"]) for r in rows if r["method"] == "infusion"}
    T = 15 if result["chosen"]["infusion"] == "paper-chain" else 5
    assert chain == {("ancestral", n) for n in {T} | {n for n in (1, 2, 5) if n > T}}
    flow = {(r["sampler"], r["nfe"]) for r in rows if r["method"] == "flow" and r["seed"] == 0
            and r["budget"] == 1}
    # Heun at 2·steps − 1 evaluations: NFE 1 and 5 (2 rounds down to 1)
    assert flow == {("euler", 1), ("euler", 2), ("euler", 5), ("heun", 1), ("heun", 5)}
    assert all(0 <= r["reader_confident"] <= 1 and r["fd"] >= 0 for r in rows)
    kinds = {x["method"]: x["likelihood_kind"] for x in result["models"]}
    assert kinds == {"infusion": "bound", "flow": "ODE estimate"}
    md = (work / "compare_budgets.md").read_text()
    assert "| infusion |" in md and "| flow |" in md
    for name in ("fd_vs_nfe.png", "fd_vs_budget.png", "samples.png"):
        assert (work / name).stat().st_size > 1000


def test_the_report_names_the_body_and_where_each_run_trained(ladder, tmp_path):
    work, result, _ = ladder
    assert {x["trained_on"] for x in result["models"]} == {"CPU, 1 thread(s)"}
    md = (work / "compare_budgets.md").read_text()
    assert "Body: model.net=mlp, model.hidden=1024,1024." in md
    assert "Settings for every run: model.hidden=16,16, train.batch_size=32" in md
    assert " | CPU, 1 thread(s) | " in md
    # a run resumed elsewhere names each place once, in order
    entries = [{"device": "cpu", "threads": 1}, {"device": "cpu", "threads": 2},
               {"device": "cuda:0", "threads": 16, "cuda_device": "NVIDIA H100 80GB HBM3"},
               {"device": "cpu", "threads": 1}]
    (tmp_path / "environment.json").write_text(json.dumps(entries))
    assert cb.trained_on(tmp_path) == ("CPU, 1 thread(s) + CPU, 2 thread(s) + "
                                       "NVIDIA H100 80GB HBM3")
    (tmp_path / "environment.json").unlink()
    assert cb.trained_on(tmp_path) == "not recorded"


def test_a_second_call_reuses_every_finished_run(ladder, monkeypatch):
    """Nothing trains again and every number comes back the same."""
    work, result, _ = ladder
    monkeypatch.setattr(cb, "train", lambda *a, **k: pytest.fail("retrained a finished run"))
    cb.main(["--work", str(work)] + TINY)
    again = json.loads((work / "compare_budgets.json").read_text())
    assert again["rows"] == result["rows"] and again["tuning"] == result["tuning"]


def test_runs_of_a_trial_no_longer_in_the_search_are_kept_but_not_reported(ladder, tmp_path):
    """A trial replaced in :data:`TRIALS` leaves its runs on disk; the report leaves them out."""
    work, result, _ = ladder
    shutil.copytree(work, tmp_path / "w")
    runs = tmp_path / "w" / "mnist" / "runs"
    src = next(runs.glob(f"flow-{result['chosen']['flow']}-x1-s0"))
    old = runs / "flow-retired-x1-s0"
    shutil.copytree(src, old)
    done = json.loads((old / "done.json").read_text())
    (old / "done.json").write_text(json.dumps({**done, "recipe": "retired"}))
    a = argparse.Namespace(work=str(tmp_path / "w"), data="mnist", recipes_from="", body="mlp",
                           recipe={})
    again = cb.gather(a)
    assert old.exists() and again["rows"] == result["rows"]
    assert again["tuning"] == result["tuning"] and again["models"] == result["models"]


def test_one_cell_trained_again_from_scratch_gives_the_same_numbers(ladder, tmp_path):
    """``--recipe`` skips the search: one cell of the ladder, trained again in a new work
    folder, gives the ladder's rows to the last digit (training and scoring are seeded)."""
    _work, result, _ = ladder
    recipe = result["chosen"]["infusion"]
    cb.main(["--work", str(tmp_path / "w")] + TINY[:-2] + [
        "--methods", "infusion", "--recipe", f"infusion={recipe}", "--budgets", "1",
        "--seeds", "0"])
    again = json.loads((tmp_path / "w" / "compare_budgets.json").read_text())
    assert not again["tuning"] and again["chosen"]["infusion"] == recipe

    def cell(rows):
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows
                if r["method"] == "infusion" and r["budget"] == 1 and r["seed"] == 0]
    assert cell(again["rows"]) and cell(again["rows"]) == cell(result["rows"])
    md = (tmp_path / "w" / "compare_budgets.md").read_text()
    assert f"Recipes given with --recipe, not searched: infusion {recipe}." in md


@pytest.mark.parametrize("bad", ["infusion=cosine", "nosuch=base", "infusion"])
def test_a_recipe_that_is_not_a_trial_is_refused(bad, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cb.main(["--work", str(tmp_path), "--recipe", bad, "--unit", "1e9"])
    assert f"--recipe {bad}" in capsys.readouterr().err


def test_the_driver_stops_cleanly_when_its_minutes_run_out(tmp_path, tiny_mnist, capsys):
    cb.main(["--work", str(tmp_path / "w"), "--minutes", "0.001"] + TINY)
    assert "ran out" in capsys.readouterr().out
    assert not list((tmp_path / "w").rglob("done.json"))


def test_the_unet_body_has_its_own_runs_and_leaves_the_vae_out():
    a = argparse.Namespace(work="W", data="mnist", body="unet", threads=1,
                           set=[], unit=1e12)
    cfg, cost = cb.run_config("flow", "base", 1, 0, a)
    assert (cfg.model.net, cfg.model.hidden) == ("unet", (16, 32, 32))
    # the U-Net's pass costs more than the MLP's: fewer Adam steps for the same FLOPs
    _, mlp_cost = cb.run_config("flow", "base", 1, 0, argparse.Namespace(**{**vars(a), "body": "mlp"}))
    assert cost["optimiser_steps"] < mlp_cost["optimiser_steps"]
    assert cb.runs_dir(a) == cb.Path("W", "mnist", "unet", "runs")
    assert "vae" not in cb.body_methods(a)
    a.body = "mlp"
    assert cb.runs_dir(a) == cb.Path("W", "mnist", "runs") and "vae" in cb.body_methods(a)
    cfg, _ = cb.run_config("flow", "base", 1, 0, a)
    assert (cfg.model.net, cfg.model.hidden) == ("mlp", (1024, 1024))
