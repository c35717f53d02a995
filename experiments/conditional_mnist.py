"""Class-conditional infusion on MNIST or Fashion-MNIST (algorithms.md §15): are the samples
of the class asked for, how do they compare with unconditional samples of the same budget, and how many nats of
log-likelihood does the class carry?

    infusion train --preset mnist-cond --run-dir RUNS/mnist-cond     # 3 epochs, minutes on a CPU
    infusion train --preset mnist-demo --run-dir RUNS/mnist-demo     # unconditional, same budget
    python experiments/conditional_mnist.py --cond RUNS/mnist-cond --uncond RUNS/mnist-demo \\
        --out RUNS/conditional_mnist
    python experiments/conditional_mnist.py --cond RUNS/fashion-cond --uncond RUNS/fashion-demo \
        --out RUNS/conditional_fashion        # the data set is the runs' own (data.name)

Samples: ``--per-class`` for each digit (seeds 0 … n-1 in every class: only the class differs
between rows), the means after each model's own T' steps; the unconditional model draws
10 × ``--per-class`` samples from seeds 0, 1, …. Readings:

* the project's classifier of the data set (``infusion.evaluate.metrics`` extractor ``mnist-cnn``
  or ``fashion-cnn``): the fraction
  of each class's samples it reads as that class, and the classifier Fréchet distance of
  conditional and of unconditional samples against the first 10,000 test images;
* an independent reader written here, not part of the library: a 3-nearest-neighbour vote in
  pixel space over the 50,000 training images (its own test accuracy is reported).

Likelihoods on the first ``--examples`` test images, ``--k`` draws each (algorithms.md §7;
one generator seed for every class, so all classes score the same draws of the same
dequantised images): the conditional model's IS estimate of log p(x | y) for every class y,
hence log p(x | y_true), the model's own marginal log p(x) = log Σ_y p(y)·p̂(x | y) with p(y)
the training classes' frequencies, and the generative classifier argmax_y p̂(x | y)p(y); and
the unconditional model's IS estimate of log p(x). Since
E[log p(x | y) − log p(x)] = I(X; Y) ≤ H(Y) = log 10 ≈ 2.30 nats for a consistent model, the
conditional model's own gap estimates the label information; the gap to the unconditional
model mixes that with the difference between two models.

Writes ``conditional_mnist.json`` and ``.md``, and ``samples_by_class.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from infusion.chain.sampler import sample_chain
from infusion.data import load_split, to_unit
from infusion.evaluate.likelihood import estimate_likelihood
from infusion.evaluate.metrics import default_extractor, frechet_distance, get_extractor
from infusion.figures import save_grid
from infusion.methods import build_method
from infusion.models import load_model

CLASSES = 10


def knn_reader(train_x: torch.Tensor, train_y: torch.Tensor, k: int = 3):
    """An independent digit reader: majority vote of the k nearest training images (L2 in
    pixel space, ties to the nearest); ``read(images)`` takes (N, 1, 28, 28) in [0, 1]."""
    ref = train_x.reshape(len(train_x), -1).float()
    ref_sq = ref.square().sum(1)

    def read(images: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in images.reshape(len(images), -1).float().split(1000):
            d = ref_sq[None] - 2 * chunk @ ref.T  # + |q|², the same for every reference
            idx = d.topk(k, largest=False).indices  # (n, k), nearest first
            votes = torch.nn.functional.one_hot(train_y[idx], CLASSES).sum(1).float()
            votes[torch.arange(len(idx)), train_y[idx[:, 0]]] += 0.5  # ties: the nearest
            out.append(votes.argmax(1))
        return torch.cat(out)

    return read


def per_class(pred: torch.Tensor, asked: torch.Tensor) -> list[float]:
    return [float((pred[asked == c] == c).float().mean()) for c in range(CLASSES)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cond", required=True, help="the mnist-cond run (or export)")
    p.add_argument("--uncond", required=True, help="an unconditional run of the same budget")
    p.add_argument("--out", required=True)
    p.add_argument("--per-class", type=int, default=500, help="samples per class")
    p.add_argument("--examples", type=int, default=200,
                   help="test images for likelihoods (0: skip them)")
    p.add_argument("--sweep", default="", help="also read conditional samples and score both "
                   "models' at these sampling steps, e.g. 10,15,25,40,80")
    p.add_argument("--k", type=int, default=100, help="IS draws per image and class")
    p.add_argument("--cond-steps", type=int, default=0,
                   help="sampling steps of the conditional model (default: its run's)")
    p.add_argument("--uncond-steps", type=int, default=0,
                   help="sampling steps of the unconditional model (default: its run's)")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    cond, ccfg = load_model(a.cond)
    unc, ucfg = load_model(a.uncond)
    if not cond.classes or unc.classes:
        p.error("--cond must be class-conditional and --uncond unconditional")
    res = {"cond": str(a.cond), "uncond": str(a.uncond), "machine": platform.processor() or
           platform.machine(), "threads": torch.get_num_threads(), "per_class": a.per_class,
           "examples": a.examples, "k": a.k}

    # ---- samples: the same seeds in every class row
    n = a.per_class
    t0 = time.time()
    asked = torch.arange(CLASSES).repeat_interleave(n)
    res["steps"] = {"cond": a.cond_steps or cond.sample_steps or cond.T,
                    "uncond": a.uncond_steps or unc.sample_steps or unc.T}
    cs = sample_chain(cond, CLASSES * n, res["steps"]["cond"],
                      seeds=[i for _ in range(CLASSES) for i in range(n)],
                      labels=asked).means.clamp(0, 1)
    us = sample_chain(unc, CLASSES * n, res["steps"]["uncond"], seed=0).means.clamp(0, 1)
    res["sample_seconds"] = time.time() - t0
    save_grid(out / "samples_by_class.png", cs.reshape(CLASSES, n, 1, 28, 28)[:, :10]
              .reshape(-1, 1, 28, 28), 10)

    # ---- readings: the project's classifier and an independent 3-NN reader
    if ccfg.data.name != ucfg.data.name:
        raise SystemExit(f"the runs are of different data sets: {ccfg.data.name}, "
                         f"{ucfg.data.name}")
    train, test = (load_split(ccfg.data, s) for s in ("train", "test"))
    test_x = to_unit(torch.from_numpy(test.images))
    test_y = torch.from_numpy(test.labels)
    reader = default_extractor(ccfg.data.name)
    cnn = get_extractor(reader)
    knn = knn_reader(to_unit(torch.from_numpy(train.images)), torch.from_numpy(train.labels))
    res["knn_test_accuracy"] = float((knn(test_x) == test_y).float().mean())
    readings = {reader: cnn.logits(cs).argmax(1), "3-nn": knn(cs)}
    res["reader"] = reader
    res["read_as_asked"] = {name: {"per_class": per_class(pred, asked),
                                   "all": float((pred == asked).float().mean()),
                                   "classes_present": len(pred.unique())}
                            for name, pred in readings.items()}
    ft = cnn.features(test_x)
    res["frechet"] = {"conditional": frechet_distance(cnn.features(cs), ft),
                      "unconditional": frechet_distance(cnn.features(us), ft),
                      "reference": "classifier features of the 10,000 test images"}
    unc_read = cnn.logits(us).argmax(1)
    res["unconditional_class_fractions"] = [float((unc_read == c).float().mean())
                                            for c in range(CLASSES)]

    # ---- the project's readings against the number of sampling steps
    res["sweep"] = {}
    for steps in [int(s) for s in a.sweep.split(",") if s]:
        c = sample_chain(cond, CLASSES * n, steps, seeds=[i for _ in range(CLASSES)
                                                          for i in range(n)], labels=asked)
        u = sample_chain(unc, CLASSES * n, steps, seed=0)
        cm, um = c.means.clamp(0, 1), u.means.clamp(0, 1)
        res["sweep"][steps] = {
            "read_as_asked": float((cnn.logits(cm).argmax(1) == asked).float().mean()),
            "frechet_conditional": frechet_distance(cnn.features(cm), ft),
            "frechet_unconditional": frechet_distance(cnn.features(um), ft)}
    if a.examples:
        likelihoods(res, a, cond, ccfg, unc, ucfg, train, test, test_y)
    res["seconds"] = time.time() - t_all
    (out / "conditional_mnist.json").write_text(json.dumps(res, indent=2))
    (out / "conditional_mnist.md").write_text(table(res))
    print(table(res))


def likelihoods(res, a, cond, ccfg, unc, ucfg, train, test, test_y) -> None:
    """log p(x | y) for every y, the model's marginal over y, the unconditional IS."""
    t0 = time.time()
    x, y = torch.from_numpy(test.images[: a.examples]), test_y[: a.examples]
    method = build_method(ccfg.method)
    by_class = np.stack([
        estimate_likelihood(cond, method, x, a.k, seed=0, labels=torch.full_like(y, c))["is"]
        .per_example[0] for c in range(CLASSES)], 1)  # (E, 10)
    counts = np.bincount(train.labels, minlength=CLASSES)
    log_prior = np.log(counts / counts.sum())
    joint = by_class + log_prior
    marginal = np.logaddexp.reduce(joint, 1)
    true = by_class[np.arange(len(y)), y.numpy()]
    unc_is = estimate_likelihood(unc, build_method(ucfg.method), x, a.k, seed=0)["is"].per_example[0]
    res["likelihood_seconds"] = time.time() - t0
    se = lambda v: float(np.std(v, ddof=1) / math.sqrt(len(v)))
    res["likelihood"] = {
        "log p(x|y), IS, conditional": {"mean": float(true.mean()), "stderr": se(true)},
        "log p(x), its marginal over y": {"mean": float(marginal.mean()), "stderr": se(marginal)},
        "log p(x), IS, unconditional": {"mean": float(unc_is.mean()), "stderr": se(unc_is)},
        "gap within the conditional model (label information, <= 2.30)":
            {"mean": float((true - marginal).mean()), "stderr": se(true - marginal)},
        "gap to the unconditional model": {"mean": float((true - unc_is).mean()),
                                           "stderr": se(true - unc_is)},
        "generative classifier accuracy": float((joint.argmax(1) == y.numpy()).mean()),
    }


def table(r: dict) -> str:
    rows = ["| reading | " + " | ".join(str(c) for c in range(CLASSES)) + " | all | classes |",
            "|---" * (CLASSES + 3) + "|"]
    for name, v in r["read_as_asked"].items():
        rows.append(f"| {name} | " + " | ".join(f"{100 * f:.1f}" for f in v["per_class"])
                    + f" | **{100 * v['all']:.1f}** | {v['classes_present']} |")
    lines = [(f"Samples read as the class asked for, % ({r['per_class']} per class; the 3-NN "
             f"reader's test accuracy {100 * r['knn_test_accuracy']:.2f}%):"), "", *rows, "",
             (f"Classifier Fréchet distance: conditional {r['frechet']['conditional']:.2f} "
              f"({r['steps']['cond']} steps), unconditional "
              f"{r['frechet']['unconditional']:.2f} ({r['steps']['uncond']} steps; the same "
              "training budget)."), "",
             ]
    if r["sweep"]:
        lines += [(f"| steps | read as asked ({r.get('reader', 'mnist-cnn')}) | Fréchet, "
                   "conditional | Fréchet, "
                  "unconditional |"), "|---|---|---|---|"]
        lines += [f"| {s} | {100 * v['read_as_asked']:.1f}% | {v['frechet_conditional']:.1f} | "
                  f"{v['frechet_unconditional']:.1f} |" for s, v in r["sweep"].items()] + [""]
    if "likelihood" in r:
        lines += [f"Likelihoods, {r['examples']} test images, k = {r['k']} (nats):", "",
                  "| estimate | mean | ± |", "|---|---|---|"]
        lines += [f"| {name} | {v['mean']:.2f} | {v['stderr']:.2f} |"
                  for name, v in r["likelihood"].items() if isinstance(v, dict)]
        lines += ["", (f"Generative classifier (argmax_y p(x|y)p(y)) accuracy: "
                       f"{100 * r['likelihood']['generative classifier accuracy']:.1f}%")]
    lines += [(f"Seconds: {r['seconds']:.0f} (sampling {r['sample_seconds']:.0f}); "
              f"{r['threads']} threads."), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
