"""Inpainting on MNIST read by an independent classifier (algorithms.md §9, paper §4.3 / Fig. 5).

For each mask (top, bottom, left, right half observed) completes the first ``--n`` test
digits with ``--chains`` clamped chains each (``infusion.generate.inpaint``) and scores them with the
project's MNIST CNN (``infusion.evaluate.metrics``, trained separately from the generative model):
the fraction of completions read as the true digit, against the full digits (ceiling) and the
observed half alone with the free pixels black (floor), and how many distinct classes an
image's chains produce. Writes ``inpaint_mnist.md``, ``inpaint_mnist.json`` and one Fig. 5
figure per mask (``<mask>/inpaint.png``) into ``--out``.

    python experiments/inpaint_mnist.py --checkpoint runs/mnist --out runs/inpaint-mnist
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from infusion.evaluate.metrics import get_extractor
from infusion.generate.inpaint import (
    HALVES,
    classifier_consistency,
    inpaint,
    load_images,
    parse_mask,
    save_inpainting,
)
from infusion.models import load_ready_model


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run directory (MNIST)")
    p.add_argument("--out", default="runs/inpaint-mnist")
    p.add_argument("--n", type=int, default=1000, help="test digits")
    p.add_argument("--chains", type=int, default=5)
    p.add_argument("--steps", type=int, default=0, help="sampling steps (0: the preset's)")
    p.add_argument("--masks", default=",".join(HALVES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    model, cfg = load_ready_model(a.checkpoint, a.device)
    if cfg.data.name != "mnist":
        p.error(f"{a.checkpoint} was trained on {cfg.data.name!r}; this check needs MNIST")
    steps = a.steps or cfg.sample.steps or cfg.method.T
    images, labels = load_images(cfg.data, "test", a.n)
    classifier = get_extractor("mnist-cnn")
    out = Path(a.out)
    rows, t0 = [], time.time()
    for name in a.masks.split(","):
        mask = parse_mask(name, model.shape)
        res = inpaint(model, images.to(model.prior.mean.device), mask, a.chains, steps, a.seed)
        save_inpainting(out / name, res.head(10), labels[:10])
        rows.append({"mask": name, **classifier_consistency(res, labels, classifier)})
        print(json.dumps(rows[-1]), flush=True)
    seconds = time.time() - t0
    settings = {"checkpoint": str(a.checkpoint), "n": a.n, "chains": a.chains, "steps": steps,
                "seed": a.seed}
    (out / "inpaint_mnist.json").write_text(json.dumps({"settings": settings, "rows": rows,
                                                        "seconds": seconds}, indent=1))
    lines = [("| observed half | completions read as the true digit | full digits | observed "
              "half alone | chains agree | classes per image |"), "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['mask']} | {r['completions']:.1%} | {r['originals']:.1%} | {r['masked']:.1%} "
              f"| {r['chains_agree']:.1%} | {r['classes_per_image']:.2f} |" for r in rows]
    (out / "inpaint_mnist.md").write_text(
        "# MNIST inpainting read by the project's MNIST CNN\n\n"
        f"Settings: {json.dumps(settings)}; {seconds:.0f} s. Figures: `<mask>/inpaint.png` "
        "(first 10 digits; original, masked start, completions).\n\n" + "\n".join(lines) + "\n")
    print(f"wrote {out / 'inpaint_mnist.md'} ({seconds:.0f} s)")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library's messages
    main()
