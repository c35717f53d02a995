"""Which generator wins when each is trained properly? Infusion, diffusion, flow matching,
variational walkback, GSN and the VAE on one MLP body, each tuned with the same small recipe
search, then trained on a ladder of budgets in units of ``make demo``'s training compute
(algorithms.md §10–§16).

**Budget.** One unit (1×) is the training FLOPs of the ``mnist-demo`` preset: 8 epochs of the
50,000 training images through its T = 5 chain on the 2×1024 MLP (matmuls, forward and
backward, as ``infusion bench`` counts them; :func:`compare_mnist.training_cost`). A method's
run at budget b stops at ``train.max_steps`` = b × unit / (batch × its FLOPs per example):
diffusion and the flow (one network pass per example) take about five times the Adam steps of
the demo's chain. No validation pass during training, no early stopping: the last weights
(their EMA where the recipe keeps one) are scored.

**Equal tuning.** Every method gets the same four trials at 1×, seed 0 (:data:`TRIALS`): the
shared base recipe (batch 256, Adam 1e-3 constant, EMA 0.999), the rate doubled, no EMA, and
the method's own key setting (infusion: the paper's chain T = 15, ω = 0.01 against the demo's
T = 5, ω = 0.1; diffusion: the cosine schedule with the x₀ head, against the preset's linear
schedule and v head; the flow: logit-normal times; walkback: temperatures ×√2 over 15 levels;
GSN: Gaussian corruption; the VAE: 10 latent dimensions). The trial with the lowest classifier
FD against **validation** images, at the step count where the method does best, is the
method's recipe. Test images are not looked at until then.

**Ladder.** The chosen recipe trains at each ``--budgets`` multiple: seeds ``--seeds`` at 1×,
seed 0 above (seed 0 at 1× is the tuning run itself). Each model is sampled at NFE 1, 2, 5, 10,
15, 25, 50, 100 where it can (chains from their training T up; diffusion ancestral, DDIM and
DPM-Solver++; the flow Euler and Heun; the VAE once) and scored against test images: the
project's classifier FD and precision / recall, the share of samples the independent MLP
reader of ``experiments/read_samples.py`` reads with p ≥ 0.9 beside its share for real test
images, Parzen (σ on validation images), sampling seconds per 1,000 samples; and the model's
likelihood on the first ``--lik-examples`` test images (infusion's and walkback's bound and IS,
the VAE's ELBO and IWAE, k = ``--lik-k``; diffusion's bound; the flow's ODE estimate).

**Resumable.** Runs live in ``--work`` (outside the checkout); a finished run and its scores
are reused, a stopped or killed one resumes from its last checkpoint (training is
deterministic). ``--minutes`` stops the driver cleanly between or inside runs; run it again
to go on. Several drivers may share ``--work`` on disjoint ``--methods``; ``--stage report``
gathers everything finished into ``--out``::

    W=~/infusion-runs/compare-budgets
    python experiments/compare_budgets.py --stage tune --methods infusion,diffusion,flow \\
        --work $W --minutes 150 --threads 1
    python experiments/compare_budgets.py --stage ladder --work $W --minutes 150 --threads 1
    python experiments/compare_budgets.py --stage report --work $W \\
        --out experiments/results/compare_budgets_mnist

One cell of the ladder trains from scratch without its search where ``--recipe`` names the
trial (training is deterministic on one thread, so its numbers are the ladder's)::

    python experiments/compare_budgets.py --stage all --work /tmp/cell --methods infusion,gsn \
        --recipe infusion=base --recipe gsn=no-ema --budgets 1 --seeds 0 --threads 1

On a GPU, the ladder to 64× (``--budgets 1,4,16,64``) and the U-Net body (``--body unet``,
its runs in their own folder; the VAE, an MLP, sits it out) take ``--device cuda``.

Fashion-MNIST trains the recipes chosen on MNIST (``--recipes-from mnist``), at 1×::

    python experiments/compare_budgets.py --data fashion --recipes-from mnist --budgets 1 \\
        --seeds 0 --work $W --out experiments/results/compare_budgets_fashion

Writes ``compare_budgets.json`` (``rows``: one per method, recipe, budget, seed, sampler and
NFE; ``tuning``: the validation rows of every trial; ``models``: training cost and likelihood
of each model), ``compare_budgets.md`` and the figures ``fd_vs_nfe.png`` (a panel per budget,
a line per method), ``fd_vs_budget.png`` and ``samples.png`` (each method at 1, 5 and 15 NFE).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

sys.path.insert(0, str(Path(__file__).parent))  # sibling scripts

from compare_mnist import training_cost
from demo_recipes import mlp_reader

import infusion
from infusion import config, train
from infusion.chain.sampler import sample_chain
from infusion.config import DataConfig
from infusion.data import load_split, to_unit
from infusion.device import resolve_device
from infusion.errors import UserError
from infusion.evaluate.card import environment_entries
from infusion.evaluate.likelihood import estimate_likelihood
from infusion.evaluate.metrics import (
    class_coverage,
    default_extractor,
    get_extractor,
    sample_quality,
)
from infusion.evaluate.parzen import parzen_estimate
from infusion.methods import build_method
from infusion.models import load_model
from infusion.training.rundir import training_state_file

PRESETS = {"infusion": "mnist-demo", "diffusion": "mnist-diffusion", "flow": "mnist-flow",
           "walkback": "mnist-walkback", "gsn": "mnist-gsn", "vae": "mnist-vae50"}
# The recipe every method starts from: the demo's training on the 2×1024 MLP.
COMMON = ["train.batch_size=256", "train.lr=1e-3",
          "train.lr_schedule=constant", "train.ema=0.999", "train.epochs=100000",
          "train.patience=0", "train.valid_examples=0", "train.train_bound_examples=0",
          "train.record_chains_at=", "sample.n=100", "data.n_train=0"]
# The shared body: the 2×1024 MLP, or (``--body unet``, for a GPU) the U-Net of
# algorithms.md §14 at 16, 32, 32 channels; the VAE builds MLPs only and sits the U-Net out.
BODIES = {"mlp": ["model.net=mlp", "model.hidden=1024,1024"],
          "unet": ["model.net=unet", "model.hidden=16,32,32"]}
SHARED_TRIALS = {"base": [], "lr2e-3": ["train.lr=2e-3"], "no-ema": ["train.ema=0"]}
KEY_TRIALS = {
    "infusion": ("paper-chain", ["method.T=15", "method.infusion.omega=0.01"]),
    "diffusion": ("cosine-x0", ["method.diffusion.schedule=cosine", "method.diffusion.predict=x0"]),
    "flow": ("logit-normal", ["method.flow.time_sampling=logit_normal"]),
    "walkback": ("sqrt2-15", ["method.walkback.schedule=sqrt2", "method.T=15", "sample.steps=20"]),
    "gsn": ("gaussian-0.3", ["method.gsn.noise=gaussian", "method.gsn.noise_level=0.3"]),
    "vae": ("latent10", ["method.vae.latent=10"]),
}
TRIALS = {m: {**SHARED_TRIALS, KEY_TRIALS[m][0]: KEY_TRIALS[m][1]} for m in PRESETS}
SAMPLERS = {"diffusion": ("ancestral", "ddim", "dpm++2m"), "flow": ("euler", "heun")}
NFES = (1, 2, 5, 10, 15, 25, 50, 100)
DEMO_EPOCHS, TRAIN_IMAGES = 8, 50_000


@dataclass
class Scoring:
    """What every model is scored against: real images (uint8 and in [0, 1]), the classifier,
    the independent reader and its share of confident reads of real test images."""

    ref: np.ndarray  # the images FD, precision / recall and Parzen's test term use
    ref_unit: torch.Tensor
    valid: np.ndarray  # Parzen's σ
    extractor: object
    reader: object
    reader_real: float


def body_methods(a) -> list[str]:
    """The methods that can train on ``--body`` (the VAE only on the MLP)."""
    return [m for m in PRESETS if a.body == "mlp" or m != "vae"]


def runs_dir(a, data: str = "") -> Path:
    """Where the runs of ``--data`` (or ``data``) on ``--body`` live under ``--work``."""
    body = () if a.body == "mlp" else (a.body,)
    return Path(a.work, data or a.data, *body, "runs")


def run_config(m: str, recipe: str, budget: float, seed: int, a) -> tuple[config.Config, dict]:
    """The config of one run and its training cost (FLOPs and passes per example, steps)."""
    sets = BODIES[a.body] + COMMON + [f"data.name={a.data}", f"train.seed={seed}",
                     f"train.cpu_threads={a.threads}"] + TRIALS[m][recipe] + a.set
    cfg = config.override(config.preset(PRESETS[m]), sets)
    passes, flops = cost_per_example(cfg)
    steps = max(1, math.ceil(budget * a.unit / (cfg.train.batch_size * flops)))
    cfg = config.override(cfg, [f"train.max_steps={steps}"])
    return cfg, {"flops_per_example": flops, "passes_per_example": passes,
                 "optimiser_steps": steps, "batch": cfg.train.batch_size,
                 "train_flops": steps * cfg.train.batch_size * flops}


_COSTS: dict[str, tuple[float, float]] = {}


def cost_per_example(cfg: config.Config) -> tuple[float, float]:
    """:func:`compare_mnist.training_cost` of ``cfg``, counted once per method, body and data
    set (the rate, the EMA and the seed change no FLOP)."""
    d = config.to_dict(cfg)
    key = json.dumps([d["method"], d["model"], cfg.data.name], sort_keys=True)
    if key not in _COSTS:
        _COSTS[key] = training_cost(cfg)
    return _COSTS[key]


def demo_unit() -> float:
    """Training FLOPs of ``make demo``: 8 epochs of 50,000 images, its FLOPs per example."""
    return DEMO_EPOCHS * TRAIN_IMAGES * training_cost(config.preset("mnist-demo"))[1]


def steps_done(run_dir: Path) -> int:
    """Optimiser steps in the run's last resumable checkpoint (0 if none)."""
    try:
        path = training_state_file(run_dir)
    except UserError:
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True)["state"]["step"])


class OutOfTime(Exception):
    """The driver's ``--minutes`` ran out; its runs are resumable."""


def train_or_resume(cfg: config.Config, run_dir: Path, deadline: float, device,
                    resume: bool | None = None) -> None:
    """Train ``cfg`` into ``run_dir``, or resume the run there (``resume``: whether it has a
    checkpoint, looked up where not given), stopping by ``deadline`` (:class:`OutOfTime` if
    less than a minute is left)."""
    minutes = (deadline - time.time()) / 60
    if minutes < 1:
        raise OutOfTime
    limit = [f"train.max_minutes={minutes:.2f}" if math.isfinite(minutes) else "train.max_minutes=0"]
    quiet = {"progress": False, "log": lambda s: None}
    if resume is None:
        resume = steps_done(run_dir) > 0
    if resume:
        train(None, run_dir, resume=True, overrides=limit, device=device, **quiet)
    else:
        train(config.override(cfg, limit), run_dir, overwrite=run_dir.exists(), device=device,
              **quiet)


def train_run(m: str, recipe: str, budget: float, seed: int, a, deadline: float) -> Path:
    """Train (or reuse, or resume) one run; its directory, with ``done.json`` once finished."""
    run_dir = runs_dir(a) / f"{m}-{recipe}-x{budget:g}-s{seed}"
    done = run_dir / "done.json"
    if done.exists():
        return run_dir
    if deadline - time.time() < 60:
        raise OutOfTime
    cfg, cost = run_config(m, recipe, budget, seed, a)
    t0, start = time.time(), steps_done(run_dir)
    if start > 0:
        print(f"resuming {run_dir.name} at step {start}", flush=True)
    else:
        print(f"training {run_dir.name}: {cost['optimiser_steps']:,} steps", flush=True)
    train_or_resume(cfg, run_dir, deadline, a.device, resume=start > 0)
    seconds = time.time() - t0
    clock = run_dir / "wall_seconds.txt"  # summed over resumed pieces
    total = seconds + (float(clock.read_text()) if clock.exists() else 0.0)
    clock.write_text(f"{total:.1f}\n")
    if steps_done(run_dir) < cost["optimiser_steps"]:
        raise OutOfTime
    done.write_text(json.dumps({"method": m, "recipe": recipe, "budget": budget, "seed": seed,
                                **cost, "wall_seconds": total}, indent=1))
    return run_dir


def sample_plan(m: str, T: int, nfes) -> list[tuple[str, int]]:
    """(sampler, steps) pairs a model is scored at: chains from their training T up, the VAE
    once, diffusion's and the flow's samplers at each NFE (Heun: 2·steps − 1 evaluations)."""
    if m == "vae":
        return [("ancestral", 1)]
    if m in SAMPLERS:
        plan = []
        for s in SAMPLERS[m]:
            steps = ({max(1, (n + 1) // 2) for n in nfes} if s == "heun" else
                     {n for n in nfes if s != "ancestral" or n <= T})
            plan += [(s, k) for k in sorted(steps)]
        return plan
    return [("ancestral", k) for k in sorted({T} | {n for n in nfes if n > T})]


def nfe(sampler: str, steps: int) -> int:
    return 2 * steps - 1 if sampler == "heun" else steps


def score_model(run_dir: Path, scoring: Scoring, a, full: bool) -> list[dict]:
    """One row per (sampler, steps): FD (and, with ``full``, precision / recall, the reader's
    confident share, Parzen) of ``--samples`` final means against ``scoring.ref``."""
    model, cfg = load_model(run_dir, a.device, log=lambda s: None)
    m = cfg.method.name
    rows = []
    for sampler, steps in sample_plan(m, cfg.method.T, a.nfe):
        t0 = time.time()
        means = sample_chain(model, a.samples, steps, seed=0, sampler=sampler,
                             batch_size=500).means.clamp(0, 1).reshape(-1, 1, 28, 28).cpu()
        seconds = time.time() - t0
        q = sample_quality(scoring.extractor, means, scoring.ref_unit,
                           metrics=("fid", "precision") if full else ("fid",))
        row = {"sampler": sampler, "steps": steps, "nfe": nfe(sampler, steps),
               "fd": q["fid"]["value"], "sample_seconds_per_1000": 1000 * seconds / a.samples}
        if full:
            parzen = parzen_estimate(means.reshape(len(means), -1), scoring.valid, scoring.ref)
            row.update(precision=q["precision"]["precision"], recall=q["precision"]["recall"],
                       reader_confident=class_coverage(scoring.reader(means))["confident_fraction"],
                       reader_confident_real=scoring.reader_real,
                       # faint, dark or grey samples show here (the test images': real)
                       mean_pixel=float(means.mean()),
                       mean_pixel_real=float(scoring.ref_unit.mean()),
                       parzen=parzen.mean, parzen_se=parzen.stderr,
                       parzen_sigma=parzen.extra["sigma"])
        rows.append(row)
    return rows


def likelihood(run_dir: Path, test: np.ndarray, a) -> dict:
    """The model's likelihood on the first ``--lik-examples`` test images (nats)."""
    model, cfg = load_model(run_dir, a.device, log=lambda s: None)
    method = build_method(cfg.method)
    if not method.has_likelihood or a.lik_examples == 0:
        return {}
    m = cfg.method.name
    k = a.lik_k if m in ("infusion", "walkback", "vae") else 1
    kinds = {"infusion": ("bound", "IS"), "walkback": ("bound", "IS"), "vae": ("ELBO", "IWAE"),
             "diffusion": ("bound", None), "flow": ("ODE estimate", None)}
    t0 = time.time()
    est = estimate_likelihood(model, method, torch.from_numpy(test[: a.lik_examples]), k, seed=0)
    out = {"likelihood_kind": kinds[m][0], "likelihood": est["lb"].mean,
           "likelihood_se": est["lb"].stderr, "likelihood_k": k,
           "likelihood_examples": min(a.lik_examples, len(test)),
           "likelihood_seconds": time.time() - t0}
    if kinds[m][1]:
        out.update(likelihood_is_kind=kinds[m][1], likelihood_is=est["is"].mean,
                   likelihood_is_se=est["is"].stderr)
    return out


def cached(path: Path, make):
    """JSON ``path``, or ``make()`` written there (atomically) first."""
    if path.exists():
        return json.loads(path.read_text())
    value = make()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)
    return value


def scoring_for(a, split: str) -> Scoring:
    """The images, classifier and reader that ``split`` ("valid" or "test") rows are scored on."""
    data = DataConfig(name=a.data)
    ref = load_split(data, split).images[: a.ref_images]
    valid = load_split(data, "valid").images[: a.ref_images]
    if split != "test":  # the reader reads test rows only
        return Scoring(ref, to_unit(torch.from_numpy(ref)), valid,
                       get_extractor(default_extractor(a.data)), None, math.nan)
    train_split, test = load_split(data, "train"), load_split(data, "test")
    reader, _ = mlp_reader(to_unit(torch.from_numpy(train_split.images)),
                           torch.from_numpy(train_split.labels),
                           to_unit(torch.from_numpy(test.images)), torch.from_numpy(test.labels))
    real = class_coverage(reader(to_unit(torch.from_numpy(test.images))))["confident_fraction"]
    return Scoring(ref, to_unit(torch.from_numpy(ref)), valid,
                   get_extractor(default_extractor(a.data)), reader, real)


def tune(a, methods, deadline: float) -> None:
    """Every trial of every method at 1×, seed 0, scored on validation images."""
    scoring = None
    for m in methods:
        for recipe in TRIALS[m]:
            run_dir = train_run(m, recipe, 1, 0, a, deadline)
            if scoring is None and not (run_dir / "valid_rows.json").exists():
                scoring = scoring_for(a, "valid")
            rows = cached(run_dir / "valid_rows.json",
                          partial(score_model, run_dir, scoring, a, full=False))
            best = min(rows, key=lambda r: r["fd"])
            print(f"{m} {recipe}: best validation FD {best['fd']:.1f} "
                  f"({best['sampler']}, {best['nfe']} NFE)", flush=True)


def chosen_recipe(a, m: str) -> str | None:
    """The recipe given by ``--recipe``, or else the trial with the lowest validation FD at its
    best NFE, once all trials are scored (the trials on ``--recipes-from``'s data set where
    given)."""
    if m in a.recipe:
        return a.recipe[m]
    runs = runs_dir(a, a.recipes_from or a.data)
    best = {}
    for recipe in TRIALS[m]:
        path = runs / f"{m}-{recipe}-x1-s0" / "valid_rows.json"
        if not path.exists():
            return None
        best[recipe] = min(r["fd"] for r in json.loads(path.read_text()))
    return min(best, key=best.get)


def ladder_plan(a) -> list[tuple[float, int]]:
    """(budget, seed) pairs: every seed at the lowest budget, seed 0 above it."""
    low = min(a.budgets)
    return [(b, s) for b in a.budgets for s in (a.seeds if b == low else a.seeds[:1])]


def ladder(a, methods, deadline: float) -> None:
    """The chosen recipe of each method at every budget, scored on test images."""
    scoring, test = None, load_split(DataConfig(name=a.data), "test").images[: a.ref_images]
    for budget, seed in ladder_plan(a):
        for m in methods:
            recipe = chosen_recipe(a, m)
            if recipe is None:
                print(f"{m}: its trials are not all scored yet; run --stage tune first", flush=True)
                continue
            run_dir = train_run(m, recipe, budget, seed, a, deadline)
            if scoring is None and not (run_dir / "test_rows.json").exists():
                scoring = scoring_for(a, "test")
            cached(run_dir / "test_rows.json", partial(score_model, run_dir, scoring, a, full=True))
            cached(run_dir / "likelihood.json", partial(likelihood, run_dir, test, a))
            print(f"{m} {recipe} x{budget:g} seed {seed}: scored", flush=True)


def gather(a) -> dict:
    """Every finished run's rows, the tuning rows and the models, as written to the JSON."""
    runs = runs_dir(a)
    rows, tuning, models = [], [], []
    for done in sorted(runs.glob("*/done.json")):
        info = json.loads(done.read_text())
        if info["recipe"] not in TRIALS[info["method"]]:
            continue  # a trial no longer in the search (its run is kept, not reported)
        key = {k: info[k] for k in ("method", "recipe", "budget", "seed")}
        for r in json.loads(_read(done.parent / "valid_rows.json", "[]")):
            tuning.append({**key, **r})
        test_rows = json.loads(_read(done.parent / "test_rows.json", "[]"))
        lik = json.loads(_read(done.parent / "likelihood.json", "{}"))
        if test_rows:
            info.pop("threads", None)  # older runs: the flag of the call that ended them
            models.append({**info, **lik, "trained_on": trained_on(done.parent)})
            rows += [{**key, **r, **{k: v for k, v in lik.items() if k.startswith("likelihood")}}
                     for r in test_rows]
    return {"rows": rows, "tuning": tuning, "models": models,
            "chosen": {m: chosen_recipe(a, m) for m in body_methods(a)}}


def trained_on(run_dir: Path) -> str:
    """Where a run trained, from its ``environment.json`` (an entry per start or resume): the
    GPU's name, or the CPU and its torch threads; pieces that differ are joined by " + "."""
    places = [e.get("cuda_device") or f"CPU, {e.get('threads', '?')} thread(s)"
              for e in environment_entries(run_dir / "environment.json")]
    return " + ".join(dict.fromkeys(places)) or "not recorded"


def machine(a) -> str:
    """The machine that scores the runs: the processor, and the GPU where ``--device`` is one."""
    device = resolve_device(a.device)
    gpu = f"; {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"{cpu_name()}, {os.cpu_count()} cores, {a.threads or torch.get_num_threads()} "
            f"torch thread(s) per run{gpu}")


def version() -> str:
    """The library's version, and the checkout's commit where there is one."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=10,
                             check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return infusion.__version__ + (f" (git {sha})" if sha else "")


def cpu_name() -> str:
    """The processor's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read(path: Path, default: str) -> str:
    return path.read_text() if path.exists() else default


def spread(values: list[float], digits: int = 1) -> str:
    """Mean, and ± half the range where there are two seeds or more."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


def recipe_lines(a, result: dict) -> list[str]:
    """The recipe search's table: each trial's best validation FD, the chosen one marked."""
    lines = ["## Recipe search (1×, seed 0, validation FD at the best NFE)", "",
             "| method | recipe | best FD (valid) | at NFE | sampler | chosen |",
             "|---|---|---:|---:|---|---|"]
    tuning = result["tuning"]
    order = {m: i for i, m in enumerate(PRESETS)}
    for (m, recipe), group in sorted(_groups(tuning, ("method", "recipe")).items(),
                                     key=lambda kv: (order[kv[0][0]], kv[0][1])):
        best = min(group, key=lambda r: r["fd"])
        mark = "✓" if result["chosen"].get(m) == recipe else ""
        lines.append(f"| {m} | {recipe} | {best['fd']:.1f} | {best['nfe']} | {best['sampler']} "
                     f"| {mark} |")
    done = {(r["method"], r["recipe"]) for r in tuning}
    missing = [f"{m} {recipe}" for m in body_methods(a) if m not in a.recipe
               for recipe in TRIALS[m] if (m, recipe) not in done]
    if missing:
        total = sum(len(t) for t in TRIALS.values())
        lines += ["", f"Trials not scored yet ({len(missing)} of {total}): {', '.join(missing)}."]
    return lines + [""]


def report(a, result: dict, out: Path) -> None:
    """The markdown table and the figures of ``result``."""
    rows = result["rows"]
    how = f"on the recipes chosen on {a.recipes_from}" if a.recipes_from else "tuned at 1×"
    lines = [f"# {a.data}: every method {how}, trained on a ladder of budgets", "",
             (f"Body: {', '.join(BODIES[a.body])}. "
              f"Budget unit: {a.unit / 1e12:.1f} TFLOP (make demo's training). Samples per row: "
             f"{a.samples}; reference images: {a.ref_images}. Machine: {result['machine']}; "
             f"torch {torch.__version__}; infusion {result['version']}."
              + (f" Settings for every run: {', '.join(a.set)}." if a.set else "")), ""]
    if a.recipes_from:
        chosen = ", ".join(f"{m} {r}" for m, r in result["chosen"].items() if r)
        lines += [(f"Recipes: those chosen on {a.recipes_from}'s trials ({chosen}); no search "
                  f"on {a.data}."), ""]
    else:
        lines += recipe_lines(a, result)
    if a.recipe:
        given = ", ".join(f"{m} {r}" for m, r in a.recipe.items())
        lines += [f"Recipes given with --recipe, not searched: {given}.", ""]
    lines += ["## Test rows (seed spread: ± half the range over seeds)", "",
              ("| method | recipe | budget | sampler | NFE | seeds | FD ↓ | precision | recall | "
              "reader sure (samples / real) | mean pixel (samples / real) | Parzen | s / 1,000 |"),
              "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (m, recipe, b, s, n), g in _groups(rows, ("method", "recipe", "budget", "sampler",
                                                   "nfe")).items():
        lines.append(
            f"| {m} | {recipe} | {b:g}× | {s} | {n} | {len(g)} | {spread([r['fd'] for r in g])} "
            f"| {spread([r['precision'] for r in g], 3)} | {spread([r['recall'] for r in g], 3)} | "
            f"{spread([100 * r['reader_confident'] for r in g])}% / "
            f"{100 * g[0]['reader_confident_real']:.1f}% | "
            f"{spread([r['mean_pixel'] for r in g], 3)} / {g[0]['mean_pixel_real']:.3f} | "
            f"{spread([r['parzen'] for r in g])} | "
            f"{spread([r['sample_seconds_per_1000'] for r in g])} |")
    lines += ["", "## Models: training cost and likelihood (nats, test images)", "",
              ("| method | recipe | budget | seed | Adam steps × batch | passes / example | "
              "training TFLOP | wall s | trained on | likelihood | second estimate |"),
              "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for x in result["models"]:
        lik = (f"{x['likelihood']:.1f} ± {x['likelihood_se']:.1f} ({x['likelihood_kind']}, "
               f"k = {x['likelihood_k']})" if "likelihood" in x else "—")
        second = (f"{x['likelihood_is']:.1f} ± {x['likelihood_is_se']:.1f} "
                  f"({x['likelihood_is_kind']})" if "likelihood_is" in x else "—")
        lines.append(f"| {x['method']} | {x['recipe']} | {x['budget']:g}× | {x['seed']} | "
                     f"{x['optimiser_steps']:,} × {x['batch']} | {x['passes_per_example']:.2f} | "
                     f"{x['train_flops'] / 1e12:.1f} | {x['wall_seconds']:.0f} | "
                     f"{x['trained_on']} | {lik} | "
                     f"{second} |")
    (out / "compare_budgets.md").write_text("\n".join(lines) + "\n")
    if rows:
        fd_figure(rows).savefig(out / "fd_vs_nfe.png", dpi=120)
        budget_figure(rows).savefig(out / "fd_vs_budget.png", dpi=120)


def _groups(rows: list[dict], keys: tuple[str, ...]) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def method_color(method: str) -> str:
    """One colour per method in every figure and panel (matplotlib's default cycle, in the
    order of :data:`PRESETS`)."""
    return f"C{list(PRESETS).index(method) % 10}" if method in PRESETS else "k"


def fd_figure(rows: list[dict]) -> Figure:
    """FD against NFE, a panel per budget, a line per method (its best sampler at each NFE;
    the mean over seeds), on shared axes."""
    budgets = sorted({r["budget"] for r in rows})
    fig = Figure(figsize=(4.2 * len(budgets), 3.6), layout="constrained")
    axes = fig.subplots(1, len(budgets), squeeze=False, sharex=True, sharey=True)[0]
    for ax, b in zip(axes, budgets):
        for m, g in _groups([r for r in rows if r["budget"] == b], ("method",)).items():
            best: dict[int, float] = {}
            for (_, n), h in _groups(g, ("sampler", "nfe")).items():
                best[n] = min(best.get(n, math.inf), float(np.mean([r["fd"] for r in h])))
            xs = sorted(best)
            ax.plot(xs, [best[x] for x in xs], marker="o", ms=3, label=m[0],
                    color=method_color(m[0]))
        ax.set(xscale="log", yscale="log", xlabel="network evaluations per sample",
               ylabel="classifier FD ↓ (test)", title=f"{b:g}× the demo's compute")
        ax.grid(alpha=0.3)
    handles = {h.get_label(): h for ax in axes for h in ax.get_lines()}  # every method once
    axes[0].legend([handles[k] for k in sorted(handles)], sorted(handles), fontsize=7)
    return fig


def budget_figure(rows: list[dict]) -> Figure:
    """Each method's best FD (any sampler and NFE; mean over seeds) against the budget."""
    fig = Figure(figsize=(4.6, 3.6), layout="constrained")
    ax = fig.subplots()
    for m, g in _groups(rows, ("method",)).items():
        pts = []
        for (b,), h in sorted(_groups(g, ("budget",)).items()):
            pts.append((b, min(float(np.mean([r["fd"] for r in k]))
                               for k in _groups(h, ("sampler", "nfe")).values())))
        ax.plot(*zip(*pts), marker="o", label=m[0], color=method_color(m[0]))
    ax.set(xscale="log", yscale="log", xlabel="training compute (× make demo)",
           ylabel="best classifier FD ↓ (test)")
    budgets = sorted({r["budget"] for r in rows})
    ax.set_xticks(budgets, [f"{b:g}×" for b in budgets])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def samples_figure(a, result: dict, out: Path) -> None:
    """Ten samples of each method's chosen recipe at its highest finished budget, seed 0, at
    1, 5 and 15 NFE (the nearest NFE it can run, each once; its best sampler there)."""
    runs, shown = runs_dir(a), []
    for m in PRESETS:
        mine = [x for x in result["models"] if x["method"] == m and x["seed"] == 0]
        if not mine:
            continue
        top = max(mine, key=lambda x: x["budget"])
        run_dir = runs / f"{m}-{top['recipe']}-x{top['budget']:g}-s0"
        model, _cfg = load_model(run_dir, a.device, log=lambda s: None)
        mrows = [r for r in result["rows"] if r["method"] == m and r["budget"] == top["budget"]
                 and r["seed"] == 0]
        nearest = [min(mrows, key=lambda r, w=w: (abs(r["nfe"] - w), r["fd"])) for w in (1, 5, 15)]
        for near in {(r["sampler"], r["nfe"]): r for r in nearest}.values():  # each row once
            x = sample_chain(model, 10, near["steps"], seed=0, sampler=near["sampler"])
            shown.append((f"{m} {top['budget']:g}×\n{near['sampler']} {near['nfe']} NFE",
                          x.means.clamp(0, 1).reshape(10, 28, 28).cpu()))
    if not shown:
        return
    fig = Figure(figsize=(7.5, 0.8 * len(shown)), layout="constrained")
    for ax, (label, means) in zip(fig.subplots(len(shown), 1, squeeze=False)[:, 0], shown):
        ax.imshow(torch.cat(list(means), dim=1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.savefig(out / "samples.png", dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default="all", choices=("tune", "ladder", "report", "all"))
    p.add_argument("--work", required=True, help="runs and their scores (outside the checkout)")
    p.add_argument("--out", default="", help="where --stage report/all writes (default: --work)")
    p.add_argument("--data", default="mnist", choices=("mnist", "fashion"))
    p.add_argument("--methods", default=",".join(PRESETS))
    p.add_argument("--body", default="mlp", choices=tuple(BODIES),
                   help="the shared network body (unet: a GPU's work; the VAE sits it out)")
    p.add_argument("--recipes-from", default="", choices=("", "mnist", "fashion"),
                   help="train each method's recipe chosen on this data set's trials (same "
                        "--work) instead of tuning on --data")
    p.add_argument("--recipe", action="append", default=[], metavar="METHOD=TRIAL",
                   help="train this trial of METHOD without its search (e.g. infusion=base: "
                        "one cell of the ladder from scratch); repeatable")
    p.add_argument("--budgets", default="1,4", help="multiples of make demo's training FLOPs")
    p.add_argument("--seeds", default="0,1", help="seeds at the lowest budget (seed 0 above)")
    p.add_argument("--nfe", default=",".join(map(str, NFES)))
    p.add_argument("--samples", type=int, default=2000, help="samples per row")
    p.add_argument("--ref-images", type=int, default=10000,
                   help="validation / test images scored against")
    p.add_argument("--lik-examples", type=int, default=1000)
    p.add_argument("--lik-k", type=int, default=100, help="draws of the bound / ELBO per image")
    p.add_argument("--unit", type=float, default=0.0,
                   help="FLOPs of one budget unit (default: make demo's training, measured)")
    p.add_argument("--set", action="append", default=[],
                   help="extra KEY=VALUE settings for every run (e.g. a smaller body for a test)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: all)")
    p.add_argument("--minutes", type=float, default=0.0, help="stop cleanly after this (0: never)")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    methods = a.methods.split(",")
    if a.body != "mlp" and "vae" in methods:
        methods.remove("vae")  # its encoder and decoder are MLPs (method.vae)
    bad = [m for m in methods if m not in PRESETS]
    if bad:
        p.error(f"unknown method {bad[0]!r}; available: {', '.join(PRESETS)}")
    if any("=" not in r for r in a.recipe):
        p.error(f"--recipe {next(r for r in a.recipe if '=' not in r)}: expected METHOD=TRIAL")
    a.recipe = dict(r.partition("=")[::2] for r in a.recipe)
    for m, r in a.recipe.items():
        if r not in TRIALS.get(m, {}):
            p.error(f"--recipe {m}={r}: no such trial; {m if m in TRIALS else 'methods'}: "
                    f"{', '.join(TRIALS.get(m, PRESETS))}")
    try:
        a.budgets = sorted(float(b) for b in a.budgets.split(","))
        a.seeds = [int(s) for s in a.seeds.split(",")]
        a.nfe = tuple(int(n) for n in a.nfe.split(","))
    except ValueError as e:
        p.error(f"--budgets / --seeds / --nfe: {e}")
    if (min(a.budgets) <= 0 or min(a.nfe) < 1 or a.samples < 2 or a.ref_images < 2
            or a.minutes < 0 or a.unit < 0 or a.seeds[0] != 0):
        p.error("expected budgets > 0, NFE >= 1, at least two samples and images, minutes and "
                "unit >= 0, and seed 0 first")
    if a.threads:
        torch.set_num_threads(a.threads)
    a.unit = a.unit or demo_unit()
    deadline = time.time() + 60 * a.minutes if a.minutes else math.inf
    Path(a.work).mkdir(parents=True, exist_ok=True)
    try:
        if a.stage in ("tune", "all") and not a.recipes_from:
            tune(a, [m for m in methods if m not in a.recipe], deadline)
        if a.stage in ("ladder", "all"):
            ladder(a, methods, deadline)
    except OutOfTime:
        print(f"--minutes {a.minutes:g} ran out; run the same command again to go on", flush=True)
        return
    if a.stage in ("report", "all"):
        out = Path(a.out or a.work)
        out.mkdir(parents=True, exist_ok=True)
        result = {"settings": {k: v for k, v in vars(a).items() if k not in ("work", "out")},
                  "machine": machine(a),
                  "torch": torch.__version__, "version": version(), **gather(a)}
        (out / "compare_budgets.json").write_text(json.dumps(result, indent=1))
        report(a, result, out)
        samples_figure(a, result, out)
        print(f"wrote {out / 'compare_budgets.md'}", flush=True)


if __name__ == "__main__":
    main()
