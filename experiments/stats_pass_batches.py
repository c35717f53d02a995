"""How many training batches the per-epoch statistics pass of validation needs (algorithms.md §6).

For a trained model, the validation bound (k = 1, the same draws every time) with per-step
batch-norm statistics from a pass over n random training batches, against the full pass over
the training set, for several n and pass seeds; with the seconds each pass takes and, beside
them, the bound with each minibatch's own statistics (the paper's mode during training).

    python experiments/stats_pass_batches.py --model models/mnist --valid 2000 --out runs/stats_pass
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from infusion.data import load_data
from infusion.evaluate.report import machine
from infusion.methods import build_method
from infusion.methods.statistics import compute_step_statistics
from infusion.models import load_model
from infusion.training.validation import _mean_score


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/mnist")
    ap.add_argument("--valid", type=int, default=2000, help="validation examples scored")
    ap.add_argument("--batches", default="1,2,5,10,20,40", help="short-pass sizes")
    ap.add_argument("--seeds", type=int, default=3, help="pass seeds per size")
    ap.add_argument("--out", default="runs/stats_pass")
    args = ap.parse_args(argv)
    model, cfg = load_model(args.model, torch.device("cpu"))
    data, method = load_data(cfg, "cpu"), build_method(cfg.method)
    bs = cfg.train.batch_size

    def bound() -> float:
        return _mean_score(model, method.log_weight, data, cfg, "valid", args.valid, 1)

    rows = []
    with torch.no_grad():
        model.train()
        rows.append({"stats": "minibatch", "bound": bound()})
        t0 = time.time()
        compute_step_statistics(model, method, data, bs, seed=5)
        full_s = time.time() - t0
        model.eval()
        full = bound()
        rows.append({"stats": "full pass", "batches": 0, "bound": full, "seconds": full_s})
        print(rows)
        for n in [int(v) for v in args.batches.split(",")]:
            for s in range(args.seeds):
                t0 = time.time()
                compute_step_statistics(model, method, data, bs, seed=100 + s, max_batches=n)
                sec = time.time() - t0
                model.eval()
                b = bound()
                rows.append({"stats": "short pass", "batches": n, "seed": 100 + s, "bound": b,
                             "minus_full": b - full, "seconds": sec})
                print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stats_pass.json").write_text(json.dumps(
        {"model": args.model, "valid_examples": args.valid, "batch_size": bs, "rows": rows,
         "machine": machine(), "threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
