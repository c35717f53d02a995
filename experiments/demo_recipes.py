"""Which recipe should `make demo` train? Recipes of the ``mnist-demo`` preset, trained for a
fixed amount of work with two seeds each, judged by what a user sees in the samples.

    python experiments/demo_recipes.py --out RUNS/demo-recipes --recipes t10,t5 --seeds 0,1
    python experiments/demo_recipes.py --out RUNS/demo-recipes --recipes t5 --seeds 0 \\
        --threads 1          # beside other work: one torch thread

Each recipe × seed is trained and scored in turn, in an ordinary run directory ``OUT/RECIPE-sSEED`` (``infusion train
--preset mnist-demo --set train.seed=SEED``, the cosine rate of ``BASE`` and the recipe's
settings; an interrupted one is
resumed, a finished one reused). Then, for each sampling length in ``--steps`` (multiples of
the recipe's T), 1,000 samples (seeds 0 … 999, the means after T′ steps) are read by

* the project's MNIST CNN (``mnist-cnn``): the fraction read with p ≥ 0.9, each class's share,
  the classifier Fréchet distance against the 10,000 test images and precision / recall;
* an independent reader trained here, not part of the library: a one-hidden-layer MLP
  (784-512-10, 3 epochs of Adam on the 50,000 training digits, its test accuracy reported)
  — the same two readings (p ≥ 0.9, class shares);
* the nearest training digit (L2): copies would sit closer than test digits do;

and the run's likelihoods come from ``infusion evaluate --metrics lb,is,parzen`` (the
default protocol: the bound at k = 1 on the test set, IS at k = 100 on 1,000 test digits,
Parzen at the run's sampling length). Writes ``demo_recipes.json`` and ``demo_recipes.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from infusion.chain.sampler import sample_chain
from infusion.data import load_mnist, to_unit
from infusion.evaluate.metrics import (
    class_coverage,
    frechet_distance,
    get_extractor,
    nearest_neighbours,
    precision_recall,
)
from infusion.figures import read_metric_rows
from infusion.models import load_model

# The recipes' base: the mnist-demo preset (T = 5, α(0) = 0, ω = 0.1, 8 epochs, EMA 0.999)
# with the cosine rate it had when they were measured (the preset now trains at the constant
# rate of `const`), and the --set assignments each recipe makes on top of it.
BASE = ["train.lr_schedule=cosine"]
CONST = ["train.lr_schedule=constant"]
T10 = ["method.T=10", "method.infusion.alpha0=0.02", "method.infusion.omega=0.02",
       "sample.steps=30"]
RECIPES: dict[str, list[str]] = {
    "t5": [],  # the preset
    "t10": T10,  # the preset of version 0.2.0: twice the work per epoch
    # … at about the work of t10 (16 epochs × 5 steps = 8 × 10)
    "t5-16": ["train.epochs=16"],
    # levers on the likelihood (algorithms.md §5, §6), each at the preset's work:
    # the mixed loss (1 − w)·denoising + w·bound for all 8 epochs
    "mixed": ["method.infusion.loss=mixed", "method.infusion.bound_weight=0.25"],
    # … with a fifth of that weight on the bound
    "mixed05": ["method.infusion.loss=mixed", "method.infusion.bound_weight=0.05"],
    # the authors' constant rate (no decay), EMA kept
    "const": CONST,  # the preset since then; one change each to it:
    "const-lr2e3": CONST + ["train.lr=2e-3"],  # twice the rate
    "const-bs128": CONST + ["train.batch_size=128"],  # twice the steps, half the batch
    "const-ema9995": CONST + ["train.ema=0.9995"],  # a longer average of the weights
    # the authors' batch-norm ε (scored with stored and with moving-average statistics)
    "bn": ["model.bn_eps=1e-4"],
    # 6 denoising epochs (cosine), then 2 epochs of the bound loss from those weights
    "t5-6": ["train.epochs=6"],
    "boundft": ["method.infusion.loss=bound", "train.lr=1e-4", "train.lr_schedule=constant",
                "train.epochs=2"],
}
# recipes that start from another recipe's trained weights (train.init_from, same seed)
INIT_FROM = {"boundft": "t5-6"}
# recipes also scored with the authors' moving-average batch-norm statistics
EMA_SCORED = {"t5", "bn"}


def train(out: Path, recipe: str, seed: int, threads: int) -> Path:
    run = out / f"{recipe}-s{seed}"
    if (run / "checkpoints" / "final.pt").exists():
        return run
    cmd = [sys.executable, "-m", "infusion", "train", "--run-dir", str(run)]
    if (run / "config.json").exists():  # interrupted: resumed with its own config
        cmd.append("--resume")
    else:
        cmd += ["--preset", "mnist-demo", "--set", f"train.seed={seed}", "--set",
                f"train.cpu_threads={threads}"]
        if recipe in INIT_FROM:
            base = train(out, INIT_FROM[recipe], seed, threads)
            cmd += ["--set", f"train.init_from={base}"]
        for s in BASE + RECIPES[recipe]:
            cmd += ["--set", s]
    subprocess.run(cmd, check=True)
    return run


def mlp_reader(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
               test_y: torch.Tensor):
    """The independent reader: 784-512-10 MLP, 3 epochs of Adam (1e-3, batch 128), seed 0.
    Returns (logits function, its test accuracy)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 512), torch.nn.ReLU(),
                              torch.nn.Linear(512, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(3):
        for idx in torch.randperm(len(train_x), generator=g).split(128):
            loss = torch.nn.functional.cross_entropy(net(train_x[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()

    @torch.no_grad()
    def logits(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(c) for c in x.split(1000)])

    return logits, float((logits(test_x).argmax(1) == test_y).float().mean())


def read(run: Path, steps: int, readers: dict, n: int) -> dict:
    model, _ = load_model(run)
    means = sample_chain(model, n, steps, seed=0).means.clamp(0, 1).reshape(n, 1, 28, 28)
    cnn, mlp, train_x, test_feats = (readers[k] for k in ("cnn", "mlp", "train_x", "test_feats"))
    feats = cnn.features(means)
    dist, _ = nearest_neighbours(means, train_x)
    out = {"steps": steps, "frechet": frechet_distance(feats, test_feats),
           **precision_recall(test_feats[:n * 5], feats),
           "nearest_train_min": float(dist.min()), "nearest_train_median": float(dist.median())}
    for name, logits in (("cnn", cnn.logits(means)), ("mlp", mlp(means))):
        cov = class_coverage(logits)
        out[name] = {"confident": cov["confident_fraction"],
                     "shares": [c / n for c in cov["histogram"]]}
    return out


def _likelihoods(run: Path, name: str, extra: list[str]) -> dict:
    report = run / "eval" / name / "report.json"  # a folder each: its arrays beside it
    if not report.exists():
        subprocess.run([sys.executable, "-m", "infusion", "evaluate", "--checkpoint", str(run),
                        "--out", str(report), "--quiet", *extra], check=True)
    r = json.loads(report.read_text())["metrics"]
    return {k: {"mean": v.get("mean"), "stderr": v.get("stderr")} for k, v in r.items()
            if isinstance(v, dict) and "mean" in v}


def evaluate(run: Path, ema: bool) -> dict:
    rows = read_metric_rows(run / "metrics.jsonl")
    out = {"valid_bound_population": rows[-1].get("valid_bound_population"),
           "train_seconds": sum(r_.get("epoch_seconds", 0.0) for r_ in rows),
           "epochs": len(rows),
           **_likelihoods(run, "recipes", ["--metrics", "lb,is,parzen"])}
    if ema:  # the authors' moving average of the batch-norm statistics (algorithms.md §6)
        out["ema"] = _likelihoods(run, "recipes-ema", ["--metrics", "lb,is", "--bn-stats", "ema"])
    return out


def table(res: dict) -> str:
    header = ("| run | epochs | train s | valid bound | test bound | IS | Parzen | T′ | FD | "
              "precision / recall | p ≥ 0.9 CNN / MLP | rarest / commonest (CNN) | "
              "nearest train (min) |")
    lines = [f"Independent MLP reader: test accuracy {100 * res['mlp_test_accuracy']:.2f}%.", "",
             header, "|---" * 13 + "|"]

    def get(e: dict, k: str) -> str:
        v = e.get(k)
        return f"{v['mean']:.1f}" if isinstance(v, dict) and v.get("mean") is not None else "—"

    for name, r in res["runs"].items():
        e = r["eval"]
        for s in r["reads"]:
            sh = s["cnn"]["shares"]
            lines.append(
                f"| {name} | {e['epochs']} | {e['train_seconds']:.0f} | "
                f"{e['valid_bound_population'] or float('nan'):.1f} | {get(e, 'lb')} | "
                f"{get(e, 'is')} | "
                f"{get(e, 'parzen')} | {s['steps']} | {s['frechet']:.1f} | "
                f"{s['precision']:.3f} / {s['recall']:.3f} | "
                f"{100 * s['cnn']['confident']:.1f}% / {100 * s['mlp']['confident']:.1f}% | "
                f"{100 * min(sh):.1f}% ({sh.index(min(sh))}) / {100 * max(sh):.1f}% "
                f"({sh.index(max(sh))}) | {s['nearest_train_min']:.2f} |")
    lines += ["", (f"Machine: {res['machine']}, {res['threads']} thread(s), torch "
                   f"{res['torch']}; {res['seconds']:.0f} s in all."), ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--recipes", default="t10,t5", help=f"comma list of {', '.join(RECIPES)}")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", default="1,2,3,5",
                   help="sampling lengths as multiples of each recipe's T")
    p.add_argument("--n", type=int, default=1000, help="samples read per sampling length")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    recipes = a.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        p.error(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    names = [(r, int(s)) for r in recipes for s in a.seeds.split(",")]
    train_set, test = load_mnist("train"), load_mnist("test")
    train_x, test_x = (to_unit(torch.from_numpy(d.images)) for d in (train_set, test))
    mlp, acc = mlp_reader(train_x, torch.from_numpy(train_set.labels), test_x,
                          torch.from_numpy(test.labels))
    cnn = get_extractor("mnist-cnn")
    readers = {"cnn": cnn, "mlp": mlp, "test_x": test_x, "train_x": train_x,
               "test_feats": cnn.features(test_x)}
    res = {"machine": platform.processor() or platform.machine(), "threads": a.threads,
           "torch": torch.__version__, "mlp_test_accuracy": acc, "n": a.n, "runs": {}}
    for recipe, seed in names:  # each run's reading is kept beside it: runs may be
        name = f"{recipe}-s{seed}"  # scored by several invocations at once
        run = train(out, recipe, seed, a.threads)
        scored = run / "eval" / "demo_recipes.json"
        if not scored.exists():
            _, cfg = load_model(run)
            r = {"recipe": RECIPES[recipe], "init_from": INIT_FROM.get(recipe),
                 "eval": evaluate(run, recipe in EMA_SCORED),
                 "reads": [read(run, int(m) * cfg.method.T, readers, a.n)
                           for m in a.steps.split(",")]}
            scored.write_text(json.dumps(r, indent=2))
        res["runs"][name] = json.loads(scored.read_text())
        res["seconds"] = time.time() - t0
        (out / "demo_recipes.json").write_text(json.dumps(res, indent=2))
        (out / "demo_recipes.md").write_text(table(res))
    print(table(res))


if __name__ == "__main__":
    main()
