"""The README's figures of the shipped model: its training curve and its samples.

    python experiments/mnist_model_figures.py --model models/mnist --metrics \
        experiments/results/mnist_h100/metrics.jsonl experiments/results/mnist_h100_ft/metrics.jsonl

Writes ``docs/mnist-curve.png`` (the validation and train bounds of the runs' ``metrics.jsonl``
against epochs and against training wall time; several files are consecutive phases of one
model, e.g. a warm-started fine-tune, drawn end to end with a line where each phase starts) and ``docs/mnist-samples.png`` (100 samples,
seeds 0…99, the means after the preset's sampling steps, as the paper shows them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from infusion import load_model, sample_chain
from infusion.figures import new_figure, save_grid


def curve(phases: list[Path], out: Path) -> Path:
    rows, starts = [], []
    for path in phases:  # each phase continues the previous one's epochs and wall time
        last = rows[-1] if rows else {"epoch": 0, "seconds": 0.0}
        starts.append(last)
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows.append({**r, "epoch": r["epoch"] + last["epoch"],
                             "seconds": r["seconds"] + last["seconds"]})
    fig = new_figure(figsize=(10, 3.5))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, x, label in ((axes[0], "epoch", "epoch"),
                         (axes[1], "seconds", "training wall time (min)")):
        scale = 60 if x == "seconds" else 1
        xs = [r[x] / scale for r in rows]
        for key in ("valid_bound", "train_bound"):
            ax.plot(xs, [r[key] for r in rows], label=key.replace("_", " "))
        ax.axhline(1350.6, color="0.5", ls="--", lw=1, label="paper's test bound")
        for start in starts[1:]:
            ax.axvline(start[x] / scale, color="0.3", ls=":", lw=1)
        ax.set(xlabel=label)
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="nats / example (k = 1)")
    if len(starts) > 1:
        axes[0].text(starts[1]["epoch"], min(r["valid_bound"] for r in rows), " fine-tune",
                     fontsize=8, color="0.3")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--metrics", type=Path, nargs="+", required=True,
                   help="the run's metrics.jsonl; several: consecutive phases, in order")
    p.add_argument("--model", default="models/mnist")
    p.add_argument("--out-dir", type=Path, default=Path("docs"))
    args = p.parse_args()
    print(curve(args.metrics, args.out_dir / "mnist-curve.png"))
    model, _cfg = load_model(args.model, "cpu")
    means = sample_chain(model, 100, seed=0).means
    print(save_grid(args.out_dir / "mnist-samples.png", means, nrow=10))


if __name__ == "__main__":
    main()
