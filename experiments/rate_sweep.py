"""Infusion-rate sweeps: paper Table 4 / thesis Table A.1 and Fig. 6 / Fig. A.1 (algorithms.md §10).

Trains one model per grid point (number of steps T and infusion rate: α(0) for T = 1, ω with
α(0) = 0 for the increasing schedule, a constant α(t) = α(0) with ω = 0), records the
validation lower bound per epoch, restores the best epoch, computes the algorithms.md §6 statistics and
the test lower bound (algorithms.md §7, one proposal draw per test example), and writes:

* ``table4.md`` / ``table4.png``: the paper's layout, one sub-table per (schedule, T), a row per
  rate with our test bound, the paper's value and a strip of sample means;
* ``fig6_curves.png``: validation bound per epoch, one panel per (schedule, T);
* ``results.json``: every number; ``runs/<name>/``: each ordinary run directory.

Finished grid points are reused when the script is run again with the same settings.

    python experiments/rate_sweep.py --reduced --out runs/rate-sweep-reduced
    python experiments/rate_sweep.py --reduced --n-train 0 --hidden 512 --batch-size 100 \
        --epochs 15 --out runs/rate-sweep-longer        # 83 min on one CPU core: the finding
    python experiments/rate_sweep.py --out runs/rate-sweep --device cuda     # the paper's grid
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from infusion import config as C
from infusion import figures
from infusion.methods import build_method
from infusion.models import load_model

# The paper's grids (thesis Table A.1 / Fig. A.1) and its test lower bounds (nats).
PAPER_GRID: dict[tuple[str, int], tuple[float, ...]] = {
    ("increasing", 1): (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9),
    ("increasing", 5): (0.0, 0.01, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2),
    ("increasing", 10): (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07),
    ("increasing", 15): (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06),
    # Fig. A.1e/f: constant rates; the paper names only the optima (0.08 for T=10, 0.06 for T=15).
    ("constant", 10): (0.02, 0.04, 0.06, 0.08, 0.1, 0.15),
    ("constant", 15): (0.02, 0.04, 0.06, 0.08, 0.1, 0.15),
}
PAPER_VALUES: dict[tuple[str, int], dict[float, float]] = {
    ("increasing", 1): {0.0: 824.34, 0.05: 885.35, 0.1: 967.25, 0.15: 1063.27, 0.2: 1115.15,
                        0.25: 1158.81, 0.3: 1209.39, 0.4: 1209.16, 0.5: 1132.05, 0.6: 1008.60,
                        0.7: 854.40, 0.9: -161.37},
    ("increasing", 5): {0.0: 823.81, 0.01: 910.19, 0.03: 1142.43, 0.05: 1303.19, 0.08: 1406.38,
                        0.1: 1448.66, 0.15: 1397.41, 0.2: 1262.57},
    # The thesis prints the 7th row's rate as 0.05 twice (OCR); by the grid it is 0.06.
    ("increasing", 10): {0.0: 824.42, 0.01: 1254.07, 0.02: 1389.12, 0.03: 1366.68, 0.04: 1223.47,
                         0.05: 1057.43, 0.06: 846.73, 0.07: 658.66},
    ("increasing", 15): {0.0: 824.50, 0.01: 1351.03, 0.02: 1066.60, 0.03: 609.10, 0.04: 876.93,
                         0.05: -479.69, 0.06: -941.78},
}
PAPER_CONSTANT_OPTIMA = {10: 0.08, 15: 0.06}

# The reduction that runs on 2 CPU cores in about a quarter of an hour (stated in the output).
REDUCED_GRID: dict[tuple[str, int], tuple[float, ...]] = {
    ("increasing", 1): (0.0, 0.1, 0.3, 0.6),
    ("increasing", 5): (0.0, 0.03, 0.1, 0.2),
    ("increasing", 10): (0.0, 0.01, 0.02, 0.05),
}
REDUCED = {"n_train": 5000, "hidden": (256,), "epochs": 10, "batch_size": 32,
           "valid_examples": 1000, "test_examples": 1000}
FULL = {"n_train": 0, "hidden": (1200, 1200), "epochs": 100, "batch_size": 512,
        "valid_examples": 10000, "test_examples": 10000}


@dataclass(frozen=True)
class Point:
    schedule: str  # "increasing" or "constant"
    T: int
    rate: float  # α(0) when T = 1 or constant, else ω (with α(0) = 0)

    @property
    def name(self) -> str:
        return f"{self.schedule}-T{self.T}-rate{self.rate:g}"

    def method(self) -> dict:
        if self.schedule == "constant" or self.T == 1:
            return {"T": self.T, "alpha0": self.rate, "omega": 0.0}
        return {"T": self.T, "alpha0": 0.0, "omega": self.rate}


def config_for(p: Point, s: dict, seed: int) -> C.Config:
    """The run's config: the paper's model and optimiser, with the sweep's size settings."""
    return C.from_dict({
        "data": {"name": "mnist", "n_train": s["n_train"]},
        "model": {"hidden": tuple(s["hidden"])},
        "method": p.method(),
        "train": {"epochs": s["epochs"], "batch_size": s["batch_size"], "patience": s.get("patience", 10),
                  "valid_examples": s["valid_examples"], "seed": seed},
        "sample": {"n": 20, "chains": 4},
    }).validate()


def test_bound(run: Path, n: int, seed: int = 0) -> float:
    """Mean test lower bound (algorithms.md §7, one draw per example) with the stored statistics."""
    from infusion.data import load_mnist
    from infusion.evaluate.likelihood import estimate_likelihood

    model, cfg = load_model(run)
    method = build_method(cfg.method)
    images = torch.from_numpy(np.ascontiguousarray(load_mnist("test").images[:n]))
    return estimate_likelihood(model, method, images, k=1, seed=seed)["lb"].mean


def run_point(p: Point, s: dict, out: Path, seed: int, device: str, log) -> dict:
    """Train (or reuse) one grid point and return its results row."""
    from infusion import train

    run = out / "runs" / p.name
    result_file = run / "result.json"
    cfg = config_for(p, s, seed)
    if result_file.exists():
        row = json.loads(result_file.read_text())
        # from_dict fills fields added since the row was written with their defaults
        if "config" in row and C.to_dict(C.from_dict(row["config"])) == C.to_dict(cfg):
            log(f"{p.name}: reusing {result_file}")
            return row
        raise SystemExit(f"{run} holds a run with other settings; remove it or use another --out")
    if run.exists():  # an unfinished earlier attempt
        import shutil

        shutil.rmtree(run)
    t0 = time.time()
    train(cfg, run, device=device, progress=False, log=lambda m: None)
    curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = max(curve, key=lambda r: r.get("valid_bound", -np.inf))
    row = {"schedule": p.schedule, "T": p.T, "rate": p.rate, "name": p.name,
           "valid_curve": [r.get("valid_bound") for r in curve], "best_epoch": best["epoch"],
           "best_valid_bound": best.get("valid_bound"),
           "test_bound": test_bound(run, s["test_examples"], seed),
           "paper_test_bound": PAPER_VALUES.get((p.schedule, p.T), {}).get(p.rate),
           "seconds": time.time() - t0, "config": C.to_dict(cfg)}
    result_file.write_text(json.dumps(row, indent=1))
    log(f"{p.name}: test bound {row['test_bound']:.1f} (best epoch {row['best_epoch']}, "
        f"{row['seconds']:.0f} s)")
    return row


def findings(rows: list[dict]) -> dict:
    """The paper's qualitative findings, checked on our rows.

    Per (schedule, T): the best rate, the rate-0 bound and whether the best rate beats it. The
    paper: the best rate falls as T grows (0.3 at T = 1 as α(0); ω = 0.1, 0.02, 0.01 at
    T = 5, 10, 15), and rate 0 learns nothing useful (about 824 nats whatever T, the bound of a
    chain that never sees its target; beaten by the best rate everywhere).
    """
    best, best_nonzero, zero, beaten = {}, {}, {}, {}
    for key in _groups(rows):
        group = [r for r in rows if (r["schedule"], r["T"]) == key]
        label = f"{key[0]} T={key[1]}"
        top = max(group, key=lambda r: r["test_bound"])
        best[label] = top["rate"]
        nonzero = [r for r in group if r["rate"] > 0]
        if nonzero:
            best_nonzero[label] = max(nonzero, key=lambda r: r["test_bound"])["rate"]
        z = [r["test_bound"] for r in group if r["rate"] == 0.0]
        if z:
            zero[label] = round(z[0], 2)
            beaten[label] = top["rate"] != 0.0 and top["test_bound"] > z[0]
    inc = sorted(T for s, T in _groups(rows) if s == "increasing")

    def falls(table: dict) -> bool:
        rates = [table[f"increasing T={T}"] for T in inc if f"increasing T={T}" in table]
        return all(a >= b for a, b in itertools.pairwise(rates))

    return {"best_rate": best, "best_rate_falls_with_T": falls(best),
            "best_nonzero_rate": best_nonzero, "best_nonzero_rate_falls_with_T": falls(best_nonzero),
            "rate0_bound": zero, "best_rate_beats_rate0": beaten}


def write_table(rows: list[dict], out: Path, settings: dict, reduced: bool) -> None:
    """``table4.md`` and ``table4.png`` (the paper's layout with a sample strip per row)."""
    lines = [f"# Infusion rate sweep ({'reduced' if reduced else 'full'} grid)", "",
             "Settings: " + json.dumps(settings), "",
             ("Test lower bound (nats, algorithms.md §7, one draw per test example); the paper's value from "
              "thesis Table A.1 (algorithms.md §10). Rate = α(0) for T = 1 and constant schedules, ω (α(0) = 0) "
              "otherwise. Strip: sample means of the best-epoch model (runs/NAME/samples.png)."), ""]
    for key in _groups(rows):
        lines += [f"## {key[0]} schedule, T = {key[1]}", "",
                  "| rate | test lower bound (ours) | paper | best epoch | samples |",
                  "|---:|---:|---:|---:|---|"]
        for r in sorted((r for r in rows if (r["schedule"], r["T"]) == key), key=lambda r: r["rate"]):
            paper = "" if r["paper_test_bound"] is None else f"{r['paper_test_bound']:.2f}"
            lines.append(f"| {r['rate']:g} | {r['test_bound']:.2f} | {paper} | {r['best_epoch']} | "
                         f"![](runs/{r['name']}/strip.png) |")
        opt = PAPER_CONSTANT_OPTIMA.get(key[1]) if key[0] == "constant" else None
        if opt is not None:
            lines.append(f"\nPaper (thesis A.1 text): best constant rate for T = {key[1]} is {opt}.")
        lines.append("")
    f = findings(rows)
    lines += ["## Findings", "", "```", json.dumps(f, indent=1), "```", ""]
    (out / "table4.md").write_text("\n".join(lines))
    _table_png(rows, out / "table4.png")


def _strip(run: Path, n: int = 10) -> np.ndarray:
    from infusion.figures import make_grid, save_png

    with np.load(run / "samples.npz") as z:
        means = z["means"][:n]
    grid = make_grid(means, nrow=n)
    save_png(run / "strip.png", grid, scale=1)
    return grid


def _table_png(rows: list[dict], path: Path) -> None:
    keys = _groups(rows)
    ordered = [(k, sorted((r for r in rows if (r["schedule"], r["T"]) == k), key=lambda r: r["rate"]))
               for k in keys]
    height = sum(len(g) + 1 for _, g in ordered)
    fig = figures.new_figure(figsize=(9, 0.42 * height + 0.3))
    y = 1.0
    step = 1.0 / height
    for key, group in ordered:
        fig.text(0.01, y - step * 0.6, f"{key[0]}, T = {key[1]}:   rate   ours   (paper)",
                 fontsize=9, weight="bold")
        y -= step
        for r in group:
            paper = "" if r["paper_test_bound"] is None else f"({r['paper_test_bound']:.0f})"
            fig.text(0.03, y - step * 0.6, f"{r['rate']:<6g} {r['test_bound']:8.1f} {paper}",
                     fontsize=8, family="monospace")
            ax = fig.add_axes((0.3, y - step * 0.95, 0.68, step * 0.9))
            ax.imshow(_strip(path.parent / "runs" / r["name"])[..., 0], cmap="gray")
            ax.axis("off")
            y -= step
    figures.save_figure(fig, path)


def _groups(rows: list[dict]) -> list[tuple[str, int]]:
    return sorted({(r["schedule"], r["T"]) for r in rows}, key=lambda k: (k[0] != "increasing", k[1]))


def fig6_curves(rows: list[dict], path: Path) -> None:
    """Fig. 6 / A.1: validation lower bound per epoch, one panel per (schedule, T)."""
    keys = _groups(rows)
    fig = figures.new_figure(figsize=(4 * len(keys), 3.4))
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for r in sorted((r for r in rows if (r["schedule"], r["T"]) == key), key=lambda r: r["rate"]):
            ys = r["valid_curve"]
            ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=3, label=f"{r['rate']:g}")
        ax.set(title=f"{key[0]}, T = {key[1]}", xlabel="epoch", ylabel="valid lower bound (nats)")
        # Show every run's best epoch; early epochs of high rates can lie far below.
        lo = min(r["best_valid_bound"] for r in rows if (r["schedule"], r["T"]) == key)
        ax.set_ylim(bottom=lo - 100)
        ax.legend(title="rate", fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    figures.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/rate-sweep")
    ap.add_argument("--reduced", action="store_true",
                    help=f"grid {_grid_text(REDUCED_GRID)}; settings {REDUCED}")
    ap.add_argument("--only", help="restrict to schedule:T pairs, e.g. increasing:5,constant:10")
    ap.add_argument("--epochs", type=int, help="override the number of epochs")
    ap.add_argument("--n-train", type=int, help="override the number of training examples (0 = all)")
    ap.add_argument("--hidden", type=int, nargs="+", help="override the hidden layer widths")
    ap.add_argument("--batch-size", type=int, help="override the minibatch size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = REDUCED_GRID if args.reduced else PAPER_GRID
    settings = dict(REDUCED if args.reduced else FULL)
    for key in ("epochs", "n_train", "batch_size"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.hidden:
        settings["hidden"] = tuple(args.hidden)
    if args.only:
        wanted = {(k.split(":")[0], int(k.split(":")[1])) for k in args.only.split(",")}
        unknown = wanted - set(grid)
        if unknown:
            ap.error(f"--only {sorted(unknown)}: not in the grid {sorted(grid)}")
        grid = {k: v for k, v in grid.items() if k in wanted}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    points = [Point(s, T, r) for (s, T), rates in grid.items() for r in rates]
    print(f"{len(points)} grid points -> {out}; settings {settings}", flush=True)
    t0 = time.time()
    rows = [run_point(p, settings, out, args.seed, args.device, lambda m: print(m, flush=True))
            for p in points]
    (out / "results.json").write_text(json.dumps({"settings": settings, "reduced": args.reduced,
                                                  "rows": rows, "findings": findings(rows),
                                                  "seconds": time.time() - t0,
                                                  "run_seconds": sum(r["seconds"] for r in rows)},
                                                 indent=1))
    write_table(rows, out, settings, args.reduced)
    fig6_curves(rows, out / "fig6_curves.png")
    print(json.dumps(findings(rows), indent=1))
    print(f"wrote {out / 'table4.md'}, {out / 'table4.png'}, {out / 'fig6_curves.png'}, "
          f"{out / 'results.json'} ({time.time() - t0:.0f} s)")
    return 0


def _grid_text(grid) -> str:
    return "; ".join(f"{s} T={T}: {', '.join(f'{r:g}' for r in rates)}" for (s, T), rates in grid.items())


if __name__ == "__main__":
    sys.exit(main())
