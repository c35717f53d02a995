"""Read a trained model's samples with classifiers that are not part of the library: what
would someone outside the project say the samples are?

    infusion train --preset fashion-demo --run-dir RUNS/fashion-demo
    python experiments/read_samples.py --checkpoint RUNS/fashion-demo --out RUNS/fashion-read

1,000 samples (``--n``; seeds 0 … n-1, the means after the run's own T′ steps, or ``--steps``)
of an MNIST or Fashion-MNIST model (the run's ``data.name``) are read by

* an MLP trained here (784-512-10, 3 epochs of Adam on the 50,000 training images; the reader
  of ``experiments/demo_recipes.py``): the fraction read with p ≥ 0.9 and each class's share;
* a 3-nearest-neighbour vote in pixel space over the training images (the reader of
  ``experiments/conditional_mnist.py``): each class's share;
* for comparison, the project's classifier of the data set (``mnist-cnn`` / ``fashion-cnn``).

Each reader's accuracy on the 10,000 test images is reported beside its reading, and so are
the test images' own class shares read the same way (what a perfect model would get). The
MLP's training, and so its reading, moves by about 0.1 points between one and two torch
threads (the results were read on one, ``OMP_NUM_THREADS=1``). Writes
``read_samples.json``, ``read_samples.md`` and ``samples.png`` (the first 100) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from conditional_mnist import knn_reader
from demo_recipes import mlp_reader

from infusion.chain.sampler import sample_chain
from infusion.data import load_split, to_unit
from infusion.data.fashion import CLASSES as FASHION_CLASSES
from infusion.evaluate.metrics import class_coverage, default_extractor, get_extractor
from infusion.figures import save_grid
from infusion.models import load_model

NAMES = {"mnist": tuple(str(d) for d in range(10)), "fashion": FASHION_CLASSES}


def shares(pred: torch.Tensor) -> list[float]:
    """Each class's share of the predicted labels (N,)."""
    return (torch.bincount(pred, minlength=10).double() / len(pred)).tolist()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a run directory or export")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=1000, help="samples to read")
    p.add_argument("--steps", type=int, default=0, help="sampling steps (default: the run's)")
    a = p.parse_args(argv)
    if a.n < 1 or a.steps < 0:
        p.error(f"--n {a.n} / --steps {a.steps}: expected at least one sample and steps >= 0")
    t_all = time.time()
    model, cfg = load_model(a.checkpoint)
    if cfg.data.name not in NAMES:
        p.error(f"{a.checkpoint} is a {cfg.data.name!r} model; this script reads MNIST or "
                "Fashion-MNIST samples")
    if model.classes:
        p.error(f"{a.checkpoint} is class-conditional: use experiments/conditional_mnist.py")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = a.steps or model.sample_steps or model.T
    means = sample_chain(model, a.n, steps, seed=0).means.clamp(0, 1).reshape(a.n, 1, 28, 28)
    save_grid(out / "samples.png", means[:100], 10)

    train, test = (load_split(cfg.data, s) for s in ("train", "test"))
    train_x, train_y = to_unit(torch.from_numpy(train.images)), torch.from_numpy(train.labels)
    test_x, test_y = to_unit(torch.from_numpy(test.images)), torch.from_numpy(test.labels)
    mlp, _ = mlp_reader(train_x, train_y, test_x, test_y)
    knn = knn_reader(train_x, train_y)
    cnn = get_extractor(default_extractor(cfg.data.name))
    res = {"checkpoint": str(a.checkpoint), "data": cfg.data.name, "n": a.n, "steps": steps,
           "classes": list(NAMES[cfg.data.name]), "test_shares": shares(test_y), "readers": {}}
    for name, logits in (("mlp", mlp), ("3-nn", None), ("cnn", cnn.logits)):
        r = {}
        if logits is None:  # the 3-NN vote gives labels, no probabilities
            test_pred, pred = knn(test_x), knn(means)
        else:  # each reader run once on the test images and once on the samples
            test_logits, sample_logits = logits(test_x), logits(means)
            test_pred, pred = test_logits.argmax(1), sample_logits.argmax(1)
            r["confident"] = class_coverage(sample_logits)["confident_fraction"]
            r["test_confident"] = class_coverage(test_logits)["confident_fraction"]
        r.update(test_accuracy=float((test_pred == test_y).float().mean()), shares=shares(pred))
        res["readers"][name] = r
    res.update(machine=platform.processor() or platform.machine(),
               threads=torch.get_num_threads(), torch=torch.__version__,
               seconds=time.time() - t_all)
    (out / "read_samples.json").write_text(json.dumps(res, indent=1))
    (out / "read_samples.md").write_text(table(res))
    print(table(res))


def table(r: dict) -> str:
    titles = {"mlp": "MLP (independent)", "3-nn": "3-NN (independent)",
              "cnn": "project classifier"}
    head = (f"{r['n']:,} samples of `{r['checkpoint']}` ({r['data']}, the means after "
            f"{r['steps']} steps), each class's share as read by each reader:")
    columns = "| reader | test accuracy | p ≥ 0.9 (samples / test images) | "
    lines = [head, "", columns + " | ".join(r["classes"]) + " |", "|---" * 13 + "|"]
    for name, x in r["readers"].items():
        conf = (f"{100 * x['confident']:.1f}% / {100 * x['test_confident']:.1f}%"
                if "confident" in x else "—")
        lines.append(f"| {titles[name]} | {100 * x['test_accuracy']:.2f}% | {conf} | "
                     + " | ".join(f"{100 * s:.1f}%" for s in x["shares"]) + " |")
    lines.append("| test images (true labels) | | | "
                 + " | ".join(f"{100 * s:.1f}%" for s in r["test_shares"]) + " |")
    machine = (f"Machine: {r['machine']}, {r['threads']} thread(s), torch {r['torch']}; "
               f"{r['seconds']:.0f} s in all.")
    lines += ["", machine, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
