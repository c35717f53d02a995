"""Reproduce the paper's MNIST numbers (algorithms.md §10): train a preset, then evaluate it in full.

    python experiments/reproduce_mnist.py --run-dir runs/reproduce-mnist
    python experiments/reproduce_mnist.py --preset mnist-demo --set train.max_minutes=8
    python experiments/reproduce_mnist.py --run-dir runs/x --eval-only   # evaluate a finished run

Trains the preset into the run directory (resuming an unfinished run; a finished one is only
evaluated), then runs ``infusion evaluate`` with the given settings (defaults: those of the
CLI, plus the isotropic IS of Table 2) and writes ``results.json`` and ``results.md`` into the
run directory: every number next to the paper's, the exact commands, the machine and the
training time, ready for the README's results table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from infusion import config as config_mod
from infusion import train
from infusion.evaluate import PAPER_MNIST, EvalSettings, evaluate, machine
from infusion.io import atomic_write


def training_seconds(run_dir: Path) -> float:
    """Training time of a run: the sum of its epochs' ``epoch_seconds`` (metrics.jsonl)."""
    f = run_dir / "metrics.jsonl"
    if not f.exists():
        return 0.0
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return float(sum(r.get("epoch_seconds", 0.0) for r in rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mnist")
    p.add_argument("--run-dir", default=None, help="default: runs/reproduce-PRESET")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override, e.g. --set train.max_minutes=60 (repeatable)")
    p.add_argument("--device", default="auto")
    p.add_argument("--eval-only", action="store_true", help="evaluate the run's final checkpoint")
    p.add_argument("--metrics", default="all")
    p.add_argument("--k", type=int, default=100, help="IS draws per example")
    p.add_argument("--is-examples", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=1, help="likelihood repetitions (paper: 10)")
    p.add_argument("--n-samples", type=int, default=10000)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    run_dir = Path(args.run_dir or f"runs/reproduce-{args.preset}")
    final = run_dir / "checkpoints" / "final.pt"
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    t0 = time.time()
    if not args.eval_only and not final.exists():
        resume = any((run_dir / "checkpoints").glob("epoch-*.pt"))
        cfg = None if resume else config_mod.override(config_mod.preset(args.preset), args.set)
        train(cfg, run_dir, resume=resume, device=args.device, overrides=args.set if resume else (),
              progress=not args.quiet)
    if not final.exists():
        print(f"error: {final} does not exist (train the run first)", file=sys.stderr)
        return 2
    wall_train = time.time() - t0
    settings = EvalSettings(is_k=args.k, is_examples=args.is_examples, repeats=args.repeats,
                            n_samples=args.n_samples)
    report = evaluate(final, args.metrics, run_dir / "eval" / "report.json", settings,
                      device=args.device, progress=not args.quiet)
    m = report["metrics"]
    rows = []
    for key, label in (("parzen", "Parzen window (Table 1)"), ("lb", "lower bound (Table 2)"),
                       ("is", "IS estimate (Table 2)"), ("is-iso", "isotropic IS (Table 2)")):
        if key in m:
            rows.append({"metric": label, "ours": m[key]["mean"], "stderr": m[key]["stderr"],
                         "spread": m[key]["spread"], "paper": PAPER_MNIST[key]})
    for key, label in (("fid", "Fréchet distance (MNIST-CNN features)"),
                       ("score", "classifier score")):
        if key in m:
            rows.append({"metric": label, "ours": m[key]["value"], "paper": None})
    cfg_json = json.loads((run_dir / "config.json").read_text())
    results = {
        "preset": args.preset, "config": cfg_json, "rows": rows, "report": str(run_dir / "eval"),
        "training_seconds": training_seconds(run_dir), "this_invocation_train_seconds": wall_train,
        "eval_seconds": report["seconds"].get("total"),
        "commands": {"reproduce": command,
                     "train": f"infusion train --preset {args.preset} --run-dir {run_dir} " +
                     " ".join(f"--set {s}" for s in args.set),
                     "evaluate": f"infusion evaluate --checkpoint {final} --metrics {args.metrics} "
                     f"--k {args.k} --is-examples {args.is_examples} --repeats {args.repeats} "
                     f"--n-samples {args.n_samples}"},
        "machine": machine(),
    }
    atomic_write(run_dir / "results.json", lambda t: t.write_text(json.dumps(results, indent=2)))
    atomic_write(run_dir / "results.md", lambda t: t.write_text(_markdown(results)))
    print(_markdown(results))
    return 0


def _markdown(r: dict) -> str:
    def f(v):
        return "" if v is None else f"{v:.2f}"

    mach = r["machine"]
    where = mach.get("cuda_device") or f"CPU, {mach['cpu_count']} cores"
    lines = [f"## MNIST, preset `{r['preset']}`", "",
             "| metric | ours | ± s.e. | spread | paper |", "|---|---|---|---|---|"]
    lines += [f"| {row['metric']} | {f(row['ours'])} | {f(row.get('stderr'))} | "
              f"{f(row.get('spread'))} | {f(row['paper'])} |" for row in r["rows"]]
    train_s, eval_s = r["training_seconds"], r["eval_seconds"] or 0
    lines += ["", (f"- training: {train_s / 60:.1f} min ({train_s:.0f} s, {where}); "
                   f"evaluation {eval_s / 60:.1f} min ({eval_s:.0f} s)"),
              f"- train: `{r['commands']['train'].strip()}`",
              f"- evaluate: `{r['commands']['evaluate']}`",
              f"- reproduce both: `{r['commands']['reproduce']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
