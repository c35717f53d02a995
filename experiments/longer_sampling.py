"""Sampling longer than training (T' = 2T, algorithms.md §2; paper §4: 30 sampling steps for a model
trained with 15) and its effect on the classifier metrics of ``infusion.evaluate.metrics``.

For each T' the same seeds are used (sample i from seed + i), so the rows differ only in the
number of steps. Metrics on the final means against real test images: Fréchet distance on the
classifier's features, classifier score, confident fraction and class coverage. Writes
``longer_sampling.json``, ``longer_sampling.md`` and ``longer_sampling.png`` (the same seeds
at each T', one row per T').

    python experiments/longer_sampling.py --checkpoint runs/mnist-demo --n 5000
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from infusion.chain.sampler import sample_chain
from infusion.models import load_ready_model


def measure(checkpoint: str, steps: list[int] | None = None, n: int = 5000, n_reference: int = 10000,
            seed: int = 0, extractor: str = "mnist-cnn", device: str = "auto",
            log=print) -> dict:
    """Classifier metrics of ``n`` samples at each T' in ``steps`` (default T and 2T)."""
    from infusion.data import load_mnist, to_unit
    from infusion.evaluate.metrics import get_extractor, sample_quality

    model, cfg = load_ready_model(checkpoint, device, log=log)
    if cfg.data.name != "mnist":
        raise ValueError(f"classifier metrics need MNIST; the model was trained on {cfg.data.name!r}")
    T = cfg.method.T
    steps = steps or [T, 2 * T]
    ext = get_extractor(extractor)
    ref = to_unit(torch.from_numpy(np.ascontiguousarray(load_mnist("test").images[:n_reference])))
    rows, strips = [], []
    for s in steps:
        t0 = time.time()
        res = sample_chain(model, n, s, seed=seed)
        q = sample_quality(ext, res.means, ref)
        rows.append({"steps": s, "fid": q["fid"]["value"], "score": q["score"]["value"],
                     "score_std": q["score"]["std"],
                     "confident_fraction": q["coverage"]["confident_fraction"],
                     "classes_covered": q["coverage"]["classes_covered"],
                     "class_entropy": q["coverage"]["entropy"], "seconds": time.time() - t0})
        strips.append(res.means[:12])
        log(f"T'={s}: " + ", ".join(f"{k} {v:.4g}" for k, v in rows[-1].items() if k != "steps"))
    real = sample_quality(ext, ref[: min(n, len(ref))], ref)
    return {"checkpoint": checkpoint, "T": T, "n": n, "n_reference": len(ref), "seed": seed,
            "extractor": extractor, "rows": rows,
            "real_test_images": {"score": real["score"]["value"],
                                 "confident_fraction": real["coverage"]["confident_fraction"]},
            "_strips": strips}


def write(result: dict, out: Path) -> None:
    from infusion.figures import make_grid, save_png

    out.mkdir(parents=True, exist_ok=True)
    strips = result.pop("_strips")
    (out / "longer_sampling.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Sampling longer than training (checkpoint {result['checkpoint']}, T = {result['T']})",
             "", (f"{result['n']} samples (final means, seeds {result['seed']}…) against "
                  f"{result['n_reference']} test images, extractor {result['extractor']}."), "",
             "| T' | Fréchet distance ↓ | classifier score ↑ | confident fraction ↑ | classes |",
             "|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['steps']} | {r['fid']:.3f} | {r['score']:.3f} ± {r['score_std']:.3f} | "
                     f"{r['confident_fraction']:.3f} | {r['classes_covered']} |")
    real = result["real_test_images"]
    lines += ["", (f"Real test images: classifier score {real['score']:.3f}, confident "
                   f"fraction {real['confident_fraction']:.3f}."), ""]
    (out / "longer_sampling.md").write_text("\n".join(lines))
    save_png(out / "longer_sampling.png", make_grid(torch.cat(strips), nrow=len(strips[0])), 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    ap.add_argument("--steps", help="comma-separated T' values (default: T,2T)")
    ap.add_argument("--n", type=int, default=5000, help="samples per T'")
    ap.add_argument("--n-reference", type=int, default=10000, help="test images as reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extractor", default="mnist-cnn")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", help="output directory (default CHECKPOINT_RUN/longer_sampling)")
    args = ap.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")] if args.steps else None
    res = measure(args.checkpoint, steps, args.n, args.n_reference, args.seed, args.extractor,
                  args.device)
    ck = Path(args.checkpoint)
    out = Path(args.out) if args.out else (ck if ck.is_dir() else ck.parent.parent) / "longer_sampling"
    write(res, out)
    print((out / "longer_sampling.md").read_text())
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library's messages
    sys.exit(main())
