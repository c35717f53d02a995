"""2-D toy suite: infusion, variational walkback, GSN walkback, diffusion and flow matching
(algorithms.md §11–14).

Each method is trained with the shared trainer from its ``spiral-<method>`` preset (``spiral``
for infusion) on spiral, circle and the 8-Gaussian ring, then sampled with the shared sampler
and the preset's sampler (``diffusion-dpm10``: the diffusion runs sampled with 10
DPM-Solver++ steps instead of 100 ancestral ones).
Sample quality needs no classifier: against 2,000 held-out points (a fresh seed) we report

* MMD² (unbiased, RBF kernel, bandwidths 0.02 + 0.05 + 0.1 summed; lower is better), and
* the held-out log-likelihood under a fine Gaussian KDE of the samples (bandwidth 0.02;
  nats per point, higher is better),

with a reference row "data" (2,000 further real points in place of samples). Writes
``toy_suite.md`` (the table and the mean rank of each method), ``toy_ranking.png`` (the MMD²
bars), ``toy_samples.png``
(methods × data sets), ``toy_chains.png`` (sampling chains on the spiral, VW appendix C
style: the cloud of chains at several steps) and ``toy_suite.json``.

    OMP_NUM_THREADS=1 python experiments/toy_suite.py --out runs/toy_suite
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from infusion import config, figures, train
from infusion.chain.sampler import sample_chain
from infusion.data import toy
from infusion.models import load_model

METHODS = {"infusion": "spiral", "walkback": "spiral-walkback", "gsn": "spiral-gsn",
           "diffusion": "spiral-diffusion", "diffusion-dpm10": "spiral-diffusion",
           "flow": "spiral-flow"}
# A row that samples another row's trained model differently: (the run it reuses, sampler, steps)
SAMPLING = {"diffusion-dpm10": ("diffusion", "dpm++2m", 10)}
DATASETS = ("spiral", "circle", "gaussians")
HELD_OUT_SEED = 12345
BANDWIDTHS = (0.02, 0.05, 0.1)
KDE_BANDWIDTH = 0.02


def mmd2(a: torch.Tensor, b: torch.Tensor, bandwidths=BANDWIDTHS) -> float:
    """Unbiased MMD² between point sets a (n, d) and b (m, d), RBF kernels summed over widths."""
    a, b = a.double(), b.double()

    def k(x, y):
        d2 = torch.cdist(x, y).square()
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    n, m = len(a), len(b)
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    xx = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    yy = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(xx + yy - 2 * kab.mean())


def kde_log_likelihood(samples: torch.Tensor, points: torch.Tensor, h: float = KDE_BANDWIDTH) -> float:
    """Mean log-density of ``points`` under an isotropic Gaussian KDE of ``samples`` (nats)."""
    s, x = samples.double(), points.double()
    d = x.shape[1]
    d2 = torch.cdist(x, s).square()
    log_k = torch.logsumexp(-d2 / (2 * h * h), 1) - math.log(len(s))
    return float((log_k - 0.5 * d * math.log(2 * math.pi * h * h)).mean())


def run_one(method: str, dataset: str, out: Path, epoch_scale: float, n: int,
            extra: list[str]) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
    cfg = config.preset(METHODS[method])
    sets = [f"data.name={dataset}", f"sample.n={n}",
            f"train.epochs={max(1, round(cfg.train.epochs * epoch_scale))}", *extra]
    cfg = config.override(cfg, sets)
    reuse, sampler, steps = SAMPLING.get(method, (method, None, None))
    run_dir = out / "runs" / f"{reuse}-{dataset}"
    t0 = time.time()
    timing = run_dir / "train_seconds.txt"
    if (run_dir / "checkpoints" / "final.pt").exists() and timing.exists():  # reuse a run
        ckpt, seconds = run_dir / "checkpoints" / "final.pt", float(timing.read_text())
    else:
        ckpt = train(cfg, run_dir, progress=False, log=lambda s: None)
        seconds = time.time() - t0
        timing.write_text(f"{seconds:.3f}\n")
    model, cfg = load_model(ckpt)
    steps = steps or cfg.sample.steps or cfg.method.T
    res = sample_chain(model, n, steps, seed=1, return_trajectory=(dataset == "spiral"),
                       sampler=sampler)
    samples = res.samples.reshape(n, -1)
    held = torch.from_numpy(toy(dataset, n, HELD_OUT_SEED).images)
    finite = torch.isfinite(samples).all(1)
    row = {"method": method, "data": dataset, "train_seconds": seconds, "steps": steps,
           "mmd2": mmd2(samples[finite], held) if finite.sum() > 1 else float("nan"),
           "kde_ll": kde_log_likelihood(samples[finite], held) if finite.any() else float("nan"),
           "finite": int(finite.sum())}
    return row, samples, res.states


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/toy_suite")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--epoch-scale", type=float, default=1.0, help="multiply each preset's epochs")
    p.add_argument("--n", type=int, default=2000, help="samples and held-out points")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override applied to every run, e.g. data.toy_size=2000")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    methods, datasets = a.methods.split(","), a.datasets.split(",")
    for m in methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r}; available: {', '.join(METHODS)}")
    t_all = time.time()
    rows, samples, chains = [], {}, {}
    for d in datasets:
        for m in methods:
            row, s, states = run_one(m, d, out, a.epoch_scale, a.n, a.set)
            rows.append(row)
            samples[m, d] = s
            if states is not None:
                chains[m] = states
            print(f"{m:10s} {d:10s} mmd2 {row['mmd2']:.5f}  kde_ll {row['kde_ll']:.3f}  "
                  f"train {row['train_seconds']:.1f}s", flush=True)
    for d in datasets:  # reference: real points scored the same way
        ref = torch.from_numpy(toy(d, a.n, HELD_OUT_SEED + 1).images)
        held = torch.from_numpy(toy(d, a.n, HELD_OUT_SEED).images)
        rows.append({"method": "data", "data": d, "train_seconds": 0.0, "steps": 0,
                     "mmd2": mmd2(ref, held), "kde_ll": kde_log_likelihood(ref, held),
                     "finite": a.n})
        samples["data", d] = ref
    total = time.time() - t_all
    (out / "toy_suite.json").write_text(json.dumps({"rows": rows, "seconds": total}, indent=2))
    write_table(out / "toy_suite.md", rows, methods, datasets, total)
    save_samples_figure(out / "toy_samples.png", samples, methods + ["data"], datasets)
    save_ranking_figure(out / "toy_ranking.png", rows, methods, datasets)
    if chains:
        save_chain_figure(out / "toy_chains.png", chains)
    print(f"wrote {out / 'toy_suite.md'} ({total:.0f} s)")


def write_table(path: Path, rows, methods, datasets, seconds: float) -> None:
    by = {(r["method"], r["data"]): r for r in rows}
    ranks = {m: [] for m in methods}
    for d in datasets:
        order = sorted(methods, key=lambda m: (math.isnan(by[m, d]["mmd2"]), by[m, d]["mmd2"]))
        for i, m in enumerate(order):
            ranks[m].append(i + 1)
    lines = ["| method | " + " | ".join(f"{d} MMD² ×10³ | {d} KDE ll" for d in datasets)
             + " | mean MMD rank | train s (spiral) |",
             "|---" * (2 * len(datasets) + 3) + "|"]
    for m in methods + ["data"]:
        cells = [f"{1e3 * by[m, d]['mmd2']:.2f} | {by[m, d]['kde_ll']:.3f}" for d in datasets]
        rank = f"{np.mean(ranks[m]):.2f}" if m in ranks else "—"
        secs = f"{by[m, datasets[0]]['train_seconds']:.0f}" if m != "data" else "—"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {rank} | {secs} |")
    text = ("# 2-D toy suite\n\nMMD² (×10³, lower is better) and held-out log-likelihood under a "
            f"KDE of the samples (bandwidth {KDE_BANDWIDTH}, nats/point, higher is better); "
            f"{len(rows) // (len(methods) + 1)} data sets, held-out seed {HELD_OUT_SEED}. "
            "\"data\": real points in place of samples.\n\n" + "\n".join(lines)
            + f"\n\nTotal wall time {seconds:.0f} s.\n")
    path.write_text(text)


def save_samples_figure(path: Path, samples, rows, datasets) -> None:
    fig = figures.new_figure(figsize=(2.6 * len(datasets), 2.6 * len(rows)))
    axes = fig.subplots(len(rows), len(datasets), squeeze=False)
    for i, m in enumerate(rows):
        for j, d in enumerate(datasets):
            ax = axes[i][j]
            s = samples[m, d].numpy()
            ax.scatter(s[:, 0], s[:, 1], s=1, alpha=0.4)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(m)
            if i == 0:
                ax.set_title(d)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def save_chain_figure(path: Path, chains, columns: int = 6) -> None:
    """Rows: methods; columns: the cloud of sampling chains at evenly spaced steps (spiral)."""
    names = list(chains)
    fig = figures.new_figure(figsize=(2.2 * columns, 2.2 * len(names)))
    axes = fig.subplots(len(names), columns, squeeze=False)
    for i, m in enumerate(names):
        states = chains[m].reshape(chains[m].shape[0], chains[m].shape[1], -1).numpy()
        steps = np.unique(np.linspace(0, len(states) - 1, columns).round().astype(int))
        for j, t in enumerate(steps):
            ax = axes[i][j]
            ax.scatter(states[t, :, 0], states[t, :, 1], s=1, alpha=0.4)
            ax.set_xlim(-0.2, 1.2)
            ax.set_ylim(-0.2, 1.2)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{m} t={t}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def save_ranking_figure(path: Path, rows, methods, datasets) -> None:
    """MMD² of every method on every data set (grouped bars; lower is better)."""
    by = {(r["method"], r["data"]): r for r in rows}
    width = 0.8 / len(methods)
    fig = figures.new_figure(figsize=(1.2 + 1.6 * len(datasets), 3.2))
    ax = fig.subplots()
    for i, m in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(datasets))]
        ax.bar(xs, [1e3 * by[m, d]["mmd2"] for d in datasets], width, label=m)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("MMD² ×10³ (lower is better)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
