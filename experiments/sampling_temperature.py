"""Can the sampler alone make a trained model's samples more confident? A temperature on the
chain's noise, and a few noiseless steps at its end, read by classifiers.

    infusion train --preset mnist-demo --run-dir RUNS/mnist-demo
    python experiments/sampling_temperature.py --checkpoint RUNS/mnist-demo --out RUNS/temp

The sampling chain of docs/algorithms.md §2 draws z(t) = μ_t + σ_t·ε_t. Here, after ``H``
ordinary steps (``--hot``), ``C`` more steps (``--cooled``) draw z(t) = μ_t + τ·σ_t·ε_t
(``--temperatures``; τ = 0: the chain of means). ``--cooled 0`` cools the whole chain
(the temperature of Glow's and many VAEs' samplers). z(0) is always the prior's draw. The
noise is the library's per-sample noise (sample i from seed i), scaled on its way into the
chain; the model is untouched. For each (H, C, τ), 1,000 samples (the means after H + C
steps) are read by the project's CNN (``mnist-cnn``: p ≥ 0.9, each class's share, the
Fréchet distance of its features against the 10,000 test digits) and by the independent MLP
of ``experiments/demo_recipes.py`` (p ≥ 0.9, class shares). Writes ``temperature.json`` and
``temperature.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from demo_recipes import mlp_reader

from infusion.chain.sampler import PerSampleNoise, run_chain
from infusion.data import load_split, to_unit
from infusion.evaluate.metrics import class_coverage, frechet_distance, get_extractor
from infusion.models import load_model


class CooledNoise:
    """The chain's noise with every block after the first ``1 + hot`` (z(0) and the ordinary
    steps) multiplied by ``tau``: a model without internal draws takes one block per step."""

    def __init__(self, noise: PerSampleNoise, hot: int, tau: float) -> None:
        self.noise, self.hot, self.tau, self.calls = noise, hot, tau, 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        x = self.noise()
        return x if self.calls <= 1 + self.hot else self.tau * x


def numbers(text: str, kind=int) -> list:
    return [kind(v) for v in text.split(",")]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="an MNIST run directory or export")
    p.add_argument("--out", required=True)
    p.add_argument("--hot", default="25", help="ordinary steps H, comma-separated")
    p.add_argument("--cooled", default="0", help="cooled steps C after them (0: cool all H)")
    p.add_argument("--temperatures", default="1,0.9,0.8,0.7,0.5", help="τ, comma-separated")
    p.add_argument("--n", type=int, default=1000)
    a = p.parse_args(argv)
    hots, cooled, taus = numbers(a.hot), numbers(a.cooled), numbers(a.temperatures, float)
    if a.n < 1 or min(hots) < 1 or min(cooled) < 0 or min(taus) < 0:
        p.error("expected n >= 1, hot steps >= 1, cooled steps >= 0 and temperatures >= 0")
    t0 = time.time()
    model, cfg = load_model(a.checkpoint)
    if cfg.data.name != "mnist" or model.aux_noise or model.classes:
        p.error(f"{a.checkpoint}: expected an unconditional MNIST model drawing one noise block "
                "per step")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = (load_split(cfg.data, s) for s in ("train", "test"))
    train_x, test_x = (to_unit(torch.from_numpy(s.images)) for s in (train, test))
    mlp, mlp_acc = mlp_reader(train_x, torch.from_numpy(train.labels), test_x,
                              torch.from_numpy(test.labels))
    cnn = get_extractor("mnist-cnn")
    test_feats = cnn.features(test_x)
    model.eval()
    rows = []
    for hot in hots:
        for c in cooled:
            for tau in taus:
                steps = hot + c
                noise = CooledNoise(PerSampleNoise(range(a.n), model.d), 0 if c == 0 else hot,
                                    tau)
                _, means = run_chain(model.respaced(steps), noise, steps)
                means = means.clamp(0, 1).reshape(a.n, 1, 28, 28)
                row = {"hot": hot, "cooled": c, "tau": tau,
                       "frechet": frechet_distance(cnn.features(means), test_feats)}
                for name, logits in (("cnn", cnn.logits(means)), ("mlp", mlp(means))):
                    cov = class_coverage(logits)
                    row[name] = {"confident": cov["confident_fraction"],
                                 "shares": [k / a.n for k in cov["histogram"]]}
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("hot", "cooled", "tau", "frechet")}
                                 | {r: row[r]["confident"] for r in ("cnn", "mlp")}), flush=True)
    res = {"checkpoint": str(a.checkpoint), "n": a.n, "mlp_test_accuracy": mlp_acc,
           "rows": rows, "machine": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "seconds": time.time() - t0}
    (out / "temperature.json").write_text(json.dumps(res, indent=1))
    (out / "temperature.md").write_text(table(res))
    print(table(res))


def table(r: dict) -> str:
    def spread(shares: list[float]) -> str:
        return f"{100 * min(shares):.1f}% / {100 * max(shares):.1f}%"

    lines = [(f"{r['n']:,} samples of `{r['checkpoint']}` (the means after H + C steps; the last "
             f"C, or all H when C = 0, at temperature τ); MLP test accuracy "
             f"{100 * r['mlp_test_accuracy']:.2f}%:"), "",
             "| H | C | τ | FD | p ≥ 0.9, CNN / MLP | rarest / commonest digit, CNN | MLP |",
             "|---:|---:|---:|---:|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['hot']} | {x['cooled']} | {x['tau']:g} | {x['frechet']:.1f} | "
                     f"{100 * x['cnn']['confident']:.1f}% / {100 * x['mlp']['confident']:.1f}% | "
                     f"{spread(x['cnn']['shares'])} | {spread(x['mlp']['shares'])} |")
    lines += ["", (f"Machine: {r['machine']}, {r['threads']} thread(s), torch {r['torch']}; "
              f"{r['seconds']:.0f} s in all."), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
