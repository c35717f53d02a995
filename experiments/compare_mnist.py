"""Infusion versus diffusion on MNIST — the comparison the infusion paper makes (algorithms.md §10, §13):
sample quality against the number of sampling steps, with walkback and GSN as further rows.

Every method is trained by the shared trainer on the same network (``--hidden``), the same
data and the same budget (``--epochs`` and ``--minutes`` per method, no early stopping), from
its preset (``mnist``, ``mnist-diffusion``, ``mnist-walkback``, ``mnist-gsn``). Then each is
sampled by the shared sampler at several step counts — diffusion respaced to 5, 10, 15, 30,
100 and 1000 steps, infusion at T and 2T (the paper's 15 and 30), walkback at its cooling
steps plus extra temperature-1 steps, GSN with a long chain — and scored on the final means by

* the Fréchet distance of the project's MNIST classifier features against test images
  (``infusion.metrics``, extractor ``mnist-cnn``; lower is better), and
* the Parzen-window test log-likelihood, σ chosen on validation data (algorithms.md §8;
  ``infusion.likelihood``; nats, higher is better).

Writes ``compare_mnist.md``, ``compare_mnist.json`` and ``compare_mnist.png`` (quality against
steps) into ``--out``. The paper's budget:

    python experiments/compare_mnist.py --out runs/compare_mnist            # GPU: hours

A reduced budget that runs on a 2-core CPU (numbers not comparable with the paper's):

    OMP_NUM_THREADS=1 python experiments/compare_mnist.py --reduced --out runs/compare_mnist_cpu
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from infusion import config, train
from infusion.checkpoint import load_model
from infusion.data import load_mnist, to_unit
from infusion.parzen import parzen_estimate
from infusion.runtime import resolve_device
from infusion.sampler import sample_chain

PRESETS = {"infusion": "mnist", "diffusion": "mnist-diffusion", "walkback": "mnist-walkback",
           "gsn": "mnist-gsn"}
DIFFUSION_STEPS = (5, 10, 15, 30, 100, 1000)
# The CPU budget: 8 minutes of training per method on all 50,000 digits, a 2 × 512 MLP.
REDUCED = {"hidden": "512,512", "epochs": 200, "minutes": 8.0, "n_train": 0, "samples": 1000,
           "test": 1000, "valid": 1000, "diffusion_T": 1000}

# No validation pass during training (the last epoch's weights are used): the budget is the
# same wall time for every method, and diffusion's bound, walking all T = 1000 steps, would
# otherwise take more of it than its training epochs (measured: 60% of 8 minutes).
LOGGED_VALID = 0


def step_counts(method: str, cfg: config.Config, requested: tuple[int, ...]) -> list[int]:
    """Sampling step counts of one method's rows."""
    T = cfg.method.T
    if method == "diffusion":
        return [s for s in requested if s <= T]
    if method == "infusion":
        return sorted({T, 2 * T} | {s for s in requested if T <= s <= 2 * T})
    if method == "walkback":
        return [T + cfg.method.walkback.extra]
    return [cfg.sample.steps or T]  # gsn: one long chain


def sample_model(model, method: str, steps: int, n: int, seed: int) -> tuple[torch.Tensor, float]:
    """Final means (n, 1, 28, 28) of ``steps`` sampling steps, and the seconds it took."""
    if method == "diffusion":
        model = model.respaced(steps)
    t0 = time.time()
    out = sample_chain(model, n, steps, seed=seed, batch_size=500)
    return out.means.clamp(0, 1), time.time() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/compare_mnist")
    p.add_argument("--methods", default=",".join(PRESETS))
    p.add_argument("--reduced", action="store_true", help=f"CPU budget: {REDUCED}")
    p.add_argument("--hidden", default="1200,1200", help="the shared MLP's hidden widths")
    p.add_argument("--epochs", type=int, default=200, help="epochs per method (same for all)")
    p.add_argument("--minutes", type=float, default=0.0, help="wall-time cap per method (0: none)")
    p.add_argument("--n-train", type=int, default=0, help="training examples (0: all 50,000)")
    p.add_argument("--samples", type=int, default=10000, help="samples per row (Parzen: 10,000)")
    p.add_argument("--test", type=int, default=10000, help="test images scored")
    p.add_argument("--valid", type=int, default=10000, help="validation images for Parzen σ")
    p.add_argument("--diffusion-T", type=int, default=1000, help="diffusion training steps")
    p.add_argument("--steps", default=",".join(map(str, DIFFUSION_STEPS)))
    p.add_argument("--no-fid", action="store_true", help="skip the classifier Fréchet distance")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.reduced:
        for k, v in REDUCED.items():
            setattr(a, k, v)
    methods = a.methods.split(",")
    for m in methods:
        if m not in PRESETS:
            p.error(f"unknown method {m!r}; available: {', '.join(PRESETS)}")
    requested = tuple(int(s) for s in a.steps.split(","))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(a.device)

    test = load_mnist("test").images[: a.test]
    valid = load_mnist("valid").images[: a.valid]
    test_unit = to_unit(torch.from_numpy(test))
    extractor = None
    if not a.no_fid:
        from infusion.metrics import get_extractor, sample_quality

        extractor = get_extractor("mnist-cnn")

    rows, t_all = [], time.time()
    for m in methods:
        cfg = config.preset(PRESETS[m])
        sets = [f"model.hidden={a.hidden}", f"train.epochs={a.epochs}",
                f"train.max_minutes={a.minutes}", f"data.n_train={a.n_train}",
                "train.patience=0", f"train.seed={a.seed}", f"sample.n={min(100, a.samples)}",
                # bookkeeping off or small, so the budget goes to training
                "train.train_bound_examples=0", "train.record_chains_at=",
                f"train.valid_examples={LOGGED_VALID}"]
        if m == "diffusion":
            sets.append(f"method.T={a.diffusion_T}")
        cfg = config.override(cfg, sets)
        run_dir = out / "runs" / m
        final = run_dir / "checkpoints" / "final.pt"
        timing = run_dir / "train_seconds.txt"
        if not (final.exists() and timing.exists()):  # else reuse the finished run
            t0 = time.time()
            train(cfg, run_dir, device=str(device), progress=False, log=lambda s: None)
            timing.write_text(f"{time.time() - t0:.3f}\n")
        train_s = float(timing.read_text())
        curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        model, cfg = load_model(final, device)
        for steps in step_counts(m, cfg, requested):
            means, sample_s = sample_model(model, m, steps, a.samples, a.seed)
            parzen = parzen_estimate(means.reshape(len(means), -1), valid, test)
            row = {"method": m, "steps": steps, "parzen": parzen.mean, "parzen_se": parzen.stderr,
                   "parzen_sigma": parzen.extra["sigma"], "sample_seconds": sample_s,
                   "train_seconds": train_s, "epochs": curve[-1]["epoch"],
                   "optimiser_steps": curve[-1]["step"], "samples": len(means)}
            if extractor is not None:
                q = sample_quality(extractor, means, test_unit, metrics=("fid",))
                row["fid"] = q["fid"]["value"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    settings = {k: v for k, v in vars(a).items()}
    total = time.time() - t_all
    (out / "compare_mnist.json").write_text(json.dumps({"settings": settings, "rows": rows,
                                                        "seconds": total}, indent=2))
    write_table(out / "compare_mnist.md", rows, settings, total, str(device))
    save_figure(out / "compare_mnist.png", rows)
    print(f"wrote {out / 'compare_mnist.md'} ({total:.0f} s)")


def write_table(path: Path, rows, settings: dict, seconds: float, device: str) -> None:
    head = ("| method | sampling steps | classifier FD ↓ | Parzen (nats) ↑ | σ | sample s | "
            "training: s / epochs / Adam steps |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        fid = f"{r['fid']:.2f}" if "fid" in r else "—"
        lines.append(f"| {r['method']} | {r['steps']} | {fid} | {r['parzen']:.1f} ± "
                     f"{r['parzen_se']:.1f} | {r['parzen_sigma']:.3f} | {r['sample_seconds']:.1f} | "
                     f"{r['train_seconds']:.0f} / {r['epochs']} / {r['optimiser_steps']} |")
    budget = ", ".join(f"{k}={settings[k]}" for k in ("hidden", "epochs", "minutes", "n_train",
                                                         "samples", "test", "diffusion_T"))
    path.write_text("# MNIST: sample quality against sampling steps\n\n"
                    f"Same network and budget for every method ({budget}); device {device}; "
                    f"total {seconds:.0f} s. FD: Fréchet distance of the project's MNIST "
                    "classifier features against test images; Parzen: algorithms.md §8 on the final "
                    "means, σ chosen on validation images.\n\n" + "\n".join(lines) + "\n")


def save_figure(path: Path, rows) -> None:
    """Sample quality against the number of sampling steps, a line (or point) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from infusion.figures import _save_fig

    keys = [("parzen", "Parzen (nats) ↑")] + ([("fid", "classifier FD ↓")] if "fid" in rows[0] else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys):
        for m in dict.fromkeys(r["method"] for r in rows):
            pts = [(r["steps"], r[key]) for r in rows if r["method"] == m]
            ax.plot(*zip(*pts), marker="o", label=m)
        ax.set(xscale="log", xlabel="sampling steps", ylabel=label)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_fig(fig, path)


if __name__ == "__main__":
    main()
