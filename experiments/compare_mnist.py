"""Infusion against diffusion, flow matching, walkback and GSN on MNIST or Fashion-MNIST
(``--data fashion``), at equal training
compute (algorithms.md §10, §13, §14): sample quality against the number of sampling steps, and
the likelihood each method can estimate.

**Budget.** Every method trains the same network body (``--net`` and ``--hidden``: the paper's
2×1200 MLP by default, or ``--net unet``, the small U-Net of algorithms.md §14) from its preset (``mnist``, ``mnist-diffusion``, ``mnist-flow``, ``mnist-walkback``,
``mnist-gsn``) for the same number of *training FLOPs* (``--budget``: matmuls and convolutions,
forward and backward, as ``infusion bench`` counts them). A method's FLOPs and network passes
per example and Adam step are counted on a throwaway model (infusion: T = 15 passes, one per
chain step; diffusion and the flow: 1; walkback and GSN: their chain lengths), and its run stops
at ``train.max_steps`` = budget / (batch × FLOPs per example). The measure does not depend on
the machine or its load; the wall time is reported beside it. No validation pass, no early
stopping: the last weights are scored.

**Rows.** Each model is sampled by the shared sampler at the step counts ``--steps`` it can run:
infusion, walkback and GSN from their training T up (longer chains reuse the last step),
diffusion with its ancestral chain (respaced), DDIM (η = 0) and DPM-Solver++ (2M), the
flow with Euler and Heun. Each row is scored on the final means against test images by the
project's classifier of the data set (Fréchet distance, precision / recall: ``infusion.evaluate.metrics``) and by
the Parzen-window log-likelihood with σ chosen on validation images (algorithms.md §8). NFE:
network evaluations per sample.

**Likelihoods** (per model, ``--lik-examples`` test digits): infusion's and walkback's lower
bound and IS estimate from the same k draws (algorithms.md §7), diffusion's bound (k = 1), the
flow's probability-flow ODE estimate (algorithms.md §14); GSN has none.

**Reference** (``--reference``): diffusers' own ``UNet2DModel`` + ``DDPMScheduler``, trained for
the same training FLOPs (``experiments/diffusers_mnist.py``), sampled with its
DPM-Solver++ scheduler.

Writes ``compare_DATA.md``, ``compare_DATA.json``, ``compare_DATA.png`` (quality against
steps) and ``compare_DATA_samples.png`` (ten samples of every sampler at ``--figure-steps``)
into ``--out`` (DATA: ``mnist`` or ``fashion``; the presets' networks and schedules, with
``data.name`` set, and the data set's own classifier); finished runs in ``--out/runs`` are reused, and ``--figure-only`` draws the
samples figure alone from them. The full budget (GPU):

    python experiments/compare_mnist.py --reference --out runs/compare_mnist

A reduced budget for a 2-core CPU (numbers not comparable with the paper's):

    python experiments/compare_mnist.py --reduced --reference --out runs/compare_mnist_cpu
    python experiments/compare_mnist.py --data fashion --reduced --out runs/compare_fashion_cpu

On the U-Net body instead of the MLP, add ``--net unet`` (README: the reduced CPU run of
every method, as ``--methods infusion,diffusion,flow`` and then ``--methods walkback`` and
``--methods gsn``, each with its own ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # diffusers_mnist beside this file

from infusion import config, figures, train
from infusion.chain.sampler import sample_chain
from infusion.config import DataConfig
from infusion.data import load_split, to_unit
from infusion.device import resolve_device
from infusion.evaluate.likelihood import estimate_likelihood
from infusion.evaluate.metrics import default_extractor, get_extractor, sample_quality
from infusion.evaluate.parzen import parzen_estimate
from infusion.methods import build_method
from infusion.models import load_model

PRESETS = {"infusion": "mnist", "diffusion": "mnist-diffusion", "flow": "mnist-flow",
           "walkback": "mnist-walkback", "gsn": "mnist-gsn"}
TITLES = {"mnist": "MNIST", "fashion": "Fashion-MNIST"}
SAMPLERS = {"diffusion": ("ancestral", "ddim", "dpm++2m"), "flow": ("euler", "heun")}
STEPS = (1, 2, 5, 10, 15, 30, 100, 1000)
# the shared body's widths unless --hidden: the paper's MLP; a U-Net at 28, 14 and 7 pixels
# (2.7 times the MLP's FLOPs per pass)
NET_WIDTHS = {"mlp": "1200,1200", "unet": "16,32,32"}
# One infusion epoch of the 2×1200 network: 50,000 digits × 15 passes × 23.7 MFLOP (measured).
INFUSION_EPOCH = 50_000 * 15 * 23.69e6
# The full budget: 200 infusion epochs (about 3,000 of diffusion or the flow).
FULL_BUDGET = 200 * INFUSION_EPOCH
# A 2-core CPU: two infusion epochs, about 12 minutes a method at 50 GFLOP/s; chains and
# solvers up to 100 steps (diffusion's ancestral chain up to its T = 1000), the diffusers
# UNet (1.1 GFLOP an example, 47 times the MLP) up to 30.
REDUCED = {"budget": 2 * INFUSION_EPOCH, "samples": 500, "test": 1000, "valid": 1000,
           "lik_examples": 200, "lik_k": 100, "chain_max": 100, "reference_max": 30}


def training_cost(cfg: config.Config, draws: int = 16, n: int = 32) -> tuple[float, float]:
    """Network passes and FLOPs per training example of one Adam step of ``cfg``'s method: a
    forward hook on a throwaway model's network counts the rows of ``draws`` losses and
    :class:`~torch.utils.flop_counter.FlopCounterMode` their FLOPs, forward and backward
    (matmuls and convolutions). Walkback draws its chain length per minibatch and runs its
    heating chain without gradients: the mean over draws."""
    from torch.utils.flop_counter import FlopCounterMode

    method = build_method(cfg.method)
    model = method.build_model((1, 28, 28), cfg.model).train()
    rows = 0

    def count(module, args, out) -> None:
        nonlocal rows
        rows += args[0].shape[0]

    hook = model.net.register_forward_hook(count)
    g, counter = torch.Generator().manual_seed(0), FlopCounterMode(display=False)
    try:
        with counter:
            for _ in range(draws):
                method.loss(model, torch.rand(n, 784, generator=g), g).mean().backward()
    finally:
        hook.remove()
    return rows / (draws * n), counter.get_total_flops() / (draws * n)


def step_rows(method: str, cfg: config.Config, steps: tuple[int, ...], solver_max: int,
              chain_max: int):
    """(sampler, steps) pairs a method is scored at."""
    T = cfg.method.T
    if method in SAMPLERS:
        return [(s, n) for s in SAMPLERS[method] for n in steps
                if n <= (T if s == "ancestral" else solver_max)]
    # infusion, walkback, GSN: from the training T up (longer chains reuse the last step)
    return [("ancestral", n) for n in sorted({T} | {n for n in steps if T < n <= chain_max})]


def figure_steps(method: str, cfg: config.Config, wanted: int) -> int:
    """The samples figure's step count: ``wanted``, or the training T of a chain that needs more."""
    return wanted if method in SAMPLERS else max(wanted, cfg.method.T)


def nfe(sampler: str, steps: int) -> int:
    """Network evaluations per sample: Heun's last step is an Euler step."""
    return 2 * steps - 1 if sampler == "heun" else steps


def score(means: torch.Tensor, valid, test, test_unit, extractor) -> dict:
    """Classifier FD and precision / recall against the test images; Parzen, σ on validation."""
    parzen = parzen_estimate(means.reshape(len(means), -1), valid, test)
    out = {"parzen": parzen.mean, "parzen_se": parzen.stderr, "parzen_sigma": parzen.extra["sigma"]}
    if extractor is not None:
        q = sample_quality(extractor, means, test_unit, metrics=("fid", "precision"))
        out.update(fid=q["fid"]["value"], precision=q["precision"]["precision"],
                   recall=q["precision"]["recall"])
    return out


def train_method(m: str, a, out: Path, device, reuse_only: bool = False) -> dict:
    """Train (or reuse) one method's run under the budget; its model and bookkeeping."""
    cfg = config.preset(PRESETS[m])
    sets = [f"model.net={a.net}", f"model.hidden={a.hidden}", "train.epochs=100000",
            "data.n_train=0",
            "train.patience=0", f"train.seed={a.seed}", "sample.n=100", f"data.name={a.data}",
            # bookkeeping off, so the budget goes to training
            "train.train_bound_examples=0", "train.record_chains_at=", "train.valid_examples=0"]
    if m == "diffusion":
        sets.append(f"method.T={a.diffusion_T}")
    cfg = config.override(cfg, sets)
    per_example, flops = training_cost(cfg)
    max_steps = math.ceil(a.budget / (cfg.train.batch_size * flops))
    cfg = config.override(cfg, [f"train.max_steps={max_steps}"])
    run_dir = out / "runs" / m
    final, timing = run_dir / "checkpoints" / "final.pt", run_dir / "train_seconds.txt"
    if not (final.exists() and timing.exists()):
        if reuse_only:
            raise SystemExit(f"{run_dir}: no finished run to draw samples from")
        t0 = time.time()
        train(cfg, run_dir, device=str(device), progress=False, overwrite=True, log=lambda s: None)
        timing.write_text(f"{time.time() - t0:.3f}\n")
    model, cfg = load_model(final, device)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"model": model, "cfg": cfg, "method": m, "passes_per_example": per_example,
            "flops_per_example": flops, "train_flops": max_steps * cfg.train.batch_size * flops,
            "optimiser_steps": max_steps, "batch": cfg.train.batch_size,
            "passes": max_steps * cfg.train.batch_size * per_example,
            "train_seconds": sum(r["epoch_seconds"] for r in rows),  # Adam steps only
            "run_seconds": float(timing.read_text())}  # with data, prior, §6 statistics, figures


def likelihood(run: dict, test, a) -> dict:
    """The likelihood the method can estimate, on ``--lik-examples`` test digits."""
    cfg = run["cfg"]
    method = build_method(cfg.method)
    if not method.has_likelihood or a.lik_examples == 0:
        return {}
    k = a.lik_k if cfg.method.name in ("infusion", "walkback") else 1
    t0 = time.time()
    est = estimate_likelihood(run["model"], method, test[: a.lik_examples], k, seed=a.seed)
    out = {"lik_kind": ("ODE estimate" if method.likelihood == "estimate" else "lower bound"),
           "lik": est["lb"].mean, "lik_se": est["lb"].stderr, "lik_k": k,
           "lik_seconds": time.time() - t0}
    if k > 1:
        out.update({"is": est["is"].mean, "is_se": est["is"].stderr})
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/compare_mnist")
    p.add_argument("--data", default="mnist", choices=tuple(TITLES),
                   help="the data set (each method's MNIST preset with data.name set)")
    p.add_argument("--methods", default=",".join(PRESETS))
    p.add_argument("--reduced", action="store_true",
                   help=f"CPU budget: {REDUCED} (each overridden by its own option)")
    p.add_argument("--net", default="mlp", choices=tuple(NET_WIDTHS),
                   help="the shared body: the paper's MLP or a small U-Net")
    p.add_argument("--hidden", default="",
                   help=f"the body's widths (MLP) or channels per level (U-Net); default {NET_WIDTHS}")
    p.add_argument("--budget", type=float, default=FULL_BUDGET,
                   help="training FLOPs per method (forward + backward)")
    p.add_argument("--samples", type=int, default=10000, help="samples per row")
    p.add_argument("--test", type=int, default=10000, help="test images scored")
    p.add_argument("--valid", type=int, default=10000, help="validation images for Parzen σ")
    p.add_argument("--steps", default=",".join(map(str, STEPS)))
    p.add_argument("--diffusion-T", type=int, default=1000, help="diffusion's training steps")
    p.add_argument("--no-fid", action="store_true",
                   help="skip the classifier's FD and precision / recall (Parzen only)")
    p.add_argument("--solver-max", type=int, default=100,
                   help="most steps for DDIM, DPM-Solver++, Euler and Heun")
    p.add_argument("--chain-max", type=int, default=1000,
                   help="most steps for infusion, walkback and GSN")
    p.add_argument("--lik-examples", type=int, default=1000, help="test digits (0: no likelihood)")
    p.add_argument("--lik-k", type=int, default=1000, help="draws of infusion's / walkback's bound")
    p.add_argument("--reference", action="store_true",
                   help="also diffusers' UNet2DModel under the same training FLOPs")
    p.add_argument("--reference-max", type=int, default=100, help="most steps for the UNet")
    p.add_argument("--figure-steps", type=int, default=15,
                   help="sampling steps of the samples figure (T where a chain needs more)")
    p.add_argument("--figure-only", action="store_true",
                   help="only the samples figure, from finished runs (no training, no scores)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.reduced:  # the CPU budget's values, where the command line gives none
        p.set_defaults(**REDUCED)
        a = p.parse_args(argv)
    a.hidden = a.hidden or NET_WIDTHS[a.net]
    methods = a.methods.split(",")
    for m in methods:
        if m not in PRESETS:
            p.error(f"unknown method {m!r}; available: {', '.join(PRESETS)}")
    steps = tuple(int(s) for s in a.steps.split(","))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(a.device)
    test, valid = (load_split(DataConfig(name=a.data), name).images[:n]
                   for name, n in (("test", a.test), ("valid", a.valid)))
    test_unit = to_unit(torch.from_numpy(test))
    extractor = None if a.no_fid else get_extractor(default_extractor(a.data))
    stem = f"compare_{a.data}"

    if a.figure_only:
        shown = {}
        for m in methods:
            run = train_method(m, a, out, device, reuse_only=True)
            for sampler in SAMPLERS.get(m, ("ancestral",)):
                n = figure_steps(m, run["cfg"], a.figure_steps)
                shown[(m, sampler, n)] = sample_chain(run["model"], 10, n, seed=a.seed,
                                                      sampler=sampler).means.clamp(0, 1)
        save_samples(out / f"{stem}_samples.png", shown)
        return
    rows, models, shown, t_all = [], [], {}, time.time()
    for m in methods:
        run = train_method(m, a, out, device)
        info = {k: v for k, v in run.items() if k not in ("model", "cfg")}
        info.update(likelihood(run, torch.from_numpy(test), a))
        models.append(info)
        print(json.dumps(info), flush=True)
        for sampler, n in step_rows(m, run["cfg"], steps, a.solver_max, a.chain_max):
            t0 = time.time()
            means = sample_chain(run["model"], a.samples, n, seed=a.seed, sampler=sampler,
                                 batch_size=500).means.clamp(0, 1)
            row = {"method": m, "sampler": sampler, "steps": n, "nfe": nfe(sampler, n),
                   "sample_seconds": time.time() - t0, **score(means, valid, test, test_unit,
                                                               extractor)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if n == figure_steps(m, run["cfg"], a.figure_steps):
                shown[(m, sampler, n)] = means[:10]
    if a.reference:
        ref_models, ref_rows = reference(a, steps, (valid, test, test_unit, extractor), shown)
        models += ref_models
        rows += ref_rows
    total = time.time() - t_all
    (out / f"{stem}.json").write_text(json.dumps(
        {"settings": vars(a), "device": str(device), "models": models, "rows": rows,
         "seconds": total}, indent=2))
    write_table(out / f"{stem}.md", rows, models, vars(a), total, str(device))
    save_figure(out / f"{stem}.png", rows)
    save_samples(out / f"{stem}_samples.png", shown)
    print(f"wrote {out / f'{stem}.md'} ({total:.0f} s)")


def reference(a, steps, scoring, shown: dict) -> tuple[list[dict], list[dict]]:
    """diffusers' UNet2DModel trained for the same FLOPs (``--budget``) as the project's
    methods, sampled with its DPM-Solver++ scheduler."""
    import diffusers_mnist as ref

    train_x = torch.from_numpy(load_split(DataConfig(name=a.data), "train").images)
    batch = 128
    per_step = ref.flops_per_step(train_x, batch)
    n_steps = max(1, round(a.budget / per_step))
    t0 = time.time()
    unet = ref.train_unet(train_x, n_steps, batch, seed=a.seed)
    info = {"method": "diffusers-unet", "optimiser_steps": n_steps, "batch": batch,
            "train_flops": n_steps * per_step,
            "train_seconds": time.time() - t0,
            "parameters": sum(p.numel() for p in unet.parameters())}
    print(json.dumps(info), flush=True)
    rows = []
    for n in (s for s in steps if s <= a.reference_max):
        t0 = time.time()
        means = ref.sample_unet(unet, a.samples, n, seed=a.seed)
        row = {"method": "diffusers-unet", "sampler": "dpm++2m", "steps": n, "nfe": n,
               "sample_seconds": time.time() - t0, **score(means, *scoring)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if n == a.figure_steps:
            shown[("diffusers-unet", "dpm++2m", n)] = means[:10]
    return [info], rows


def write_table(path: Path, rows, models, settings: dict, seconds: float, device: str) -> None:
    lines = [("| method | sampler | steps | NFE | classifier FD ↓ | precision ↑ | recall ↑ | "
             "Parzen (nats) ↑ | σ | sample s |"), "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        fid, pr = ((f"{r['fid']:.1f}", f"{r['precision']:.3f} | {r['recall']:.3f}") if "fid" in r
                   else ("—", "— | —"))
        lines.append(f"| {r['method']} | {r['sampler']} | {r['steps']} | {r['nfe']} | "
                     f"{fid} | {pr} | "
                     f"{r['parzen']:.1f} ± {r['parzen_se']:.1f} | {r['parzen_sigma']:.3f} | "
                     f"{r['sample_seconds']:.1f} |")
    mlines = [("| method | passes / example | Adam steps × batch | training TFLOP | example passes "
               "| training s | likelihood (nats) | IS (nats) |"),
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in models:
        lik = (f"{m['lik']:.1f} ± {m['lik_se']:.1f} ({m['lik_kind']}, k = {m['lik_k']})"
               if "lik" in m else "—")
        is_ = f"{m['is']:.1f} ± {m['is_se']:.1f}" if "is" in m else "—"
        passes = f"{m['passes']:,.0f}" if "passes" in m else "—"
        per = f"{m['passes_per_example']:.2f}" if "passes_per_example" in m else "—"
        mlines.append(f"| {m['method']} | {per} | {m['optimiser_steps']:,} × {m['batch']} | "
                      f"{m['train_flops'] / 1e12:.1f} | {passes} | {m['train_seconds']:.0f} | "
                      f"{lik} | {is_} |")
    budget = ", ".join(f"{k}={settings[k]:g}" if isinstance(settings[k], float) else
                       f"{k}={settings[k]}" for k in ("net", "hidden", "budget", "diffusion_T",
                                                      "samples", "test", "valid", "lik_examples",
                                                      "lik_k", "chain_max"))
    title = TITLES[settings.get("data", "mnist")]
    path.write_text(
        f"# {title} at equal training compute: quality against sampling steps\n\n"
        f"Settings: {budget}; device {device}; total {seconds:.0f} s. Budget: training FLOPs "
        "(forward + backward, matmuls and convolutions) per method. FD: "
        f"Fréchet distance of the project's {title} classifier features against test images; "
        "precision / recall on the same features (k = 3); Parzen: algorithms.md §8 on the final "
        "means, σ chosen on validation images.\n\n## Training\n\n" + "\n".join(mlines)
        + "\n\n## Samples\n\n" + "\n".join(lines) + "\n")


def save_figure(path: Path, rows) -> None:
    """Quality against sampling steps, a line per method and sampler."""
    keys = [("fid", "classifier FD ↓"), ("parzen", "Parzen (nats) ↑"), ("recall", "recall ↑")]
    keys = [k for k in keys if k[0] in rows[0]]
    fig = figures.new_figure(figsize=(4.6 * len(keys), 3.6))
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys):
        for m, s in dict.fromkeys((r["method"], r["sampler"]) for r in rows):
            pts = [(r["steps"], r[key]) for r in rows if (r["method"], r["sampler"]) == (m, s)]
            ax.plot(*zip(*pts), marker="o", ms=3, label=m if s == "ancestral" else f"{m} {s}")
        ax.set(xscale="log", xlabel="sampling steps", ylabel=label)
        if key == "fid":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    figures.save_figure(fig, path)


def save_samples(path: Path, shown: dict) -> None:
    """Ten samples (final means) of every (method, sampler, steps), a row each."""
    if not shown:  # no row at --figure-steps
        return
    fig = figures.new_figure(figsize=(7.5, 0.85 * len(shown)))
    axes = fig.subplots(len(shown), 1, squeeze=False)
    for ax, ((m, sampler, n), means) in zip(axes[:, 0], shown.items()):
        strip = torch.cat(list(means[:, 0]), dim=1)  # (28, 280)
        ax.imshow(strip.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        label = m if sampler == "ancestral" else f"{m}\n{sampler}"
        ax.set_ylabel(f"{label}\n{n} steps", rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    figures.save_figure(fig, path)


if __name__ == "__main__":
    main()
