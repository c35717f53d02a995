"""Does batch norm in the body rescue diffusion and the flow on the 2×1024 MLP?
(algorithms.md §6, §13–§14; the remedy that ``denoiser_error.py`` and ``denoiser_one_level.py``
point to.)

Diffusion and the flow build the shared MLP without batch norm, since a training batch mixes
noise levels while a sampling batch shares one. Batch norm can still work: train with the
statistics of the mixed batch, sample with their average over a pass of such batches (the
stored statistics of algorithms.md §6, which every loaded model gets). This probe registers
each method as a variant whose body has batch norm (one slot shared by all levels), trains it
on the ladder's run config — the recipe chosen on MNIST, the same Adam steps, seed and
thread count — and scores it as the ladder scores its runs: classifier FD of 2,000 samples
against the test digits at each NFE of the method's best sampler (diffusion: DPM-Solver++(2M);
the flow: Heun), and the denoising error of ``denoiser_error.py``, beside the ladder's run
without batch norm. Resumable like the driver (``--minutes``)::

    python experiments/batch_norm_probe.py --work ~/infusion-runs/compare-budgets --threads 1 \\
        --out experiments/results/compare_budgets_mnist

Writes ``batch_norm_probe.json`` and ``batch_norm_probe.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # sibling scripts

import compare_budgets as cb
from denoiser_error import error_rows

from infusion import config
from infusion.chain.nets import STEP_EMBED, build_net
from infusion.chain.sampler import sample_chain
from infusion.config import DataConfig
from infusion.data import load_split, to_unit
from infusion.evaluate.metrics import default_extractor, get_extractor, sample_quality
from infusion.methods import register_method
from infusion.methods.diffusion import Diffusion, DiffusionModel, DiffusionSettings, Schedule
from infusion.methods.flow import Flow, FlowModel, FlowSettings
from infusion.models import load_model


def bn_body(shape, cfg):
    """The shared MLP with the step embedding, and batch norm (one slot for every level)."""
    return build_net(cfg.net, shape, tuple(cfg.hidden), 1, batch_norm=True, embed=STEP_EMBED)


@dataclass(frozen=True)
class DiffusionBnSettings(DiffusionSettings):
    """``method.diffusion_bn.*``: diffusion's settings."""


@dataclass(frozen=True)
class FlowBnSettings(FlowSettings):
    """``method.flow_bn.*``: the flow's settings."""


class DiffusionBn(Diffusion):
    """Diffusion (algorithms.md §13) with batch norm in its body."""

    name = "diffusion_bn"
    Settings = DiffusionBnSettings

    def build_model(self, shape, cfg):
        return DiffusionModel(shape, Schedule.from_betas(self.betas), net=bn_body(shape, cfg),
                              scale=self.settings.data_scale, target=self.settings.predict)


class FlowBn(Flow):
    """The flow (algorithms.md §14) with batch norm in its body."""

    name = "flow_bn"
    Settings = FlowBnSettings

    def build_model(self, shape, cfg):
        return FlowModel(shape, self.T, net=bn_body(shape, cfg), scale=self.settings.data_scale)


VARIANTS = {"diffusion": DiffusionBn, "flow": FlowBn}
BEST_SAMPLER = {"diffusion": "dpm++2m", "flow": "heun"}


def variant_config(cfg: config.Config, m: str) -> config.Config:
    """``cfg`` of method ``m`` as a config of its batch-norm variant (same settings)."""
    d = config.to_dict(cfg)
    name = VARIANTS[m].name
    d["method"][name] = d["method"].pop(m)
    d["method"]["name"] = name
    return config.from_dict(d)


def train_variant(cfg: config.Config, run_dir: Path, steps: int, deadline: float) -> bool:
    """Train, resume or reuse the run; whether it has all its ``steps``."""
    if cb.steps_done(run_dir) < steps:
        try:
            cb.train_or_resume(cfg, run_dir, deadline, "cpu")
        except cb.OutOfTime:
            return False
    return cb.steps_done(run_dir) >= steps


def scoring_on_test(images: int) -> cb.Scoring:
    """The ladder's test images and classifier (FD only: no reader, no Parzen)."""
    ref = load_split(DataConfig(name="mnist"), "test").images[:images]
    return cb.Scoring(ref, to_unit(torch.from_numpy(ref)), None,
                      get_extractor(default_extractor("mnist")), None, math.nan)


def fd_rows(model, m: str, scoring: cb.Scoring, nfes, samples: int) -> list[dict]:
    """FD (and mean pixel) of ``samples`` final means at each NFE of the best sampler."""
    sampler, rows = BEST_SAMPLER[m], []
    for n in nfes:
        steps = (n + 1) // 2 if sampler == "heun" else n
        means = sample_chain(model, samples, steps, seed=0, sampler=sampler,
                             batch_size=500).means.clamp(0, 1).reshape(-1, 1, 28, 28)
        fd = sample_quality(scoring.extractor, means, scoring.ref_unit, metrics=("fid",))
        rows.append({"sampler": sampler, "steps": steps, "nfe": cb.nfe(sampler, steps),
                     "fd": fd["fid"]["value"], "mean_pixel": float(means.mean())})
    return rows


def report(results: list[dict]) -> str:
    """A markdown row per method and body: best FD, FD at each NFE, denoising error."""
    lines = [("| method | body | best FD (NFE) | FD at each NFE | mean pixel | denoising error "
             "at log₁₀ SNR −2 / 0 / 2 (Wiener filter) |"), "|---|---|---|---|---:|---|"]
    for r in results:
        for body in ("without", "with"):
            rows, den = r[f"fd_{body}"], r[f"denoiser_{body}"]
            best = min(rows, key=lambda x: x["fd"])
            at = [min(den, key=lambda x, k=k: abs(x["log10_snr"] - k)) for k in (-2, 0, 2)]
            err = " / ".join(f"{x['model']:.2f} ({x['wiener']:.2f})" for x in at)
            lines.append(f"| {r['method']} ({r['recipe']}) | {body} batch norm | "
                         f"{best['fd']:.1f} ({best['nfe']}) | "
                         + ", ".join(f"{x['nfe']}: {x['fd']:.1f}" for x in rows)
                         + f" | {best['mean_pixel']:.3f} | {err} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="the driver's --work (its MNIST tuning and 1× runs)")
    p.add_argument("--out", required=True, help="where the JSON and markdown go")
    p.add_argument("--methods", default="diffusion,flow")
    p.add_argument("--budget", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nfe", default="5,10,15,25,50,100")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all)")
    p.add_argument("--minutes", type=float, default=0.0, help="stop cleanly after this (0: never)")
    a = p.parse_args(argv)
    methods = a.methods.split(",")
    if any(m not in VARIANTS for m in methods):
        p.error(f"--methods: expected some of {', '.join(VARIANTS)}")
    if a.threads:
        torch.set_num_threads(a.threads)
    deadline = time.time() + 60 * a.minutes if a.minutes else math.inf
    ns = argparse.Namespace(work=a.work, data="mnist", body="mlp", recipes_from="", recipe={},
                            set=[], threads=a.threads, unit=cb.demo_unit(), device="cpu",
                            ref_images=10_000)
    nfes = tuple(int(n) for n in a.nfe.split(","))
    scoring, results = None, []
    for m in methods:
        register_method(VARIANTS[m])
        recipe = cb.chosen_recipe(ns, m)
        if recipe is None:
            raise SystemExit(f"{m}: its trials are not all scored in {a.work}")
        cfg, cost = cb.run_config(m, recipe, a.budget, a.seed, ns)
        base = cb.runs_dir(ns) / f"{m}-{recipe}-x{a.budget:g}-s{a.seed}"
        run_dir = Path(a.work, "mnist", "probes", f"{VARIANTS[m].name}-{recipe}-x{a.budget:g}-s{a.seed}")
        print(f"{run_dir.name}: {cost['optimiser_steps']:,} steps", flush=True)
        if not train_variant(variant_config(cfg, m), run_dir, cost["optimiser_steps"], deadline):
            print("--minutes ran out; run the same command again to go on", flush=True)
            return
        scoring = scoring or scoring_on_test(ns.ref_images)
        entry = {"method": m, "recipe": recipe, "budget": a.budget, "seed": a.seed,
                 "optimiser_steps": cost["optimiser_steps"]}
        for body, where in (("without", base), ("with", run_dir)):
            model, run_cfg = load_model(where, "cpu", log=lambda s: None)
            entry[f"fd_{body}"] = fd_rows(model, m, scoring, nfes, a.samples)
            entry[f"denoiser_{body}"] = error_rows(model, run_cfg)
        results.append(entry)
        print(report([entry]), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "batch_norm_probe.json").write_text(json.dumps(
        {"machine": f"{cb.cpu_name()}, {a.threads or torch.get_num_threads()} torch thread(s)",
         "torch": torch.__version__, "version": cb.version(), "samples": a.samples,
         "results": results}, indent=1))
    (out / "batch_norm_probe.md").write_text(report(results))
    print(f"wrote {out / 'batch_norm_probe.md'}", flush=True)


if __name__ == "__main__":
    main()
