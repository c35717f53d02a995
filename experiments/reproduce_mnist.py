"""Reproduce the paper's MNIST numbers (algorithms.md §10): train a preset, then evaluate it in full.

    python experiments/reproduce_mnist.py --run-dir runs/reproduce-mnist        # the paper's protocol
    python experiments/reproduce_mnist.py --run-dir runs/x --eval-only --k 100 --repeats 1
    python experiments/reproduce_mnist.py --preset mnist-demo --set train.max_minutes=8 \
        --protocol default

Trains the preset into the run directory (resuming an unfinished run; a finished one is only
evaluated), then runs ``infusion evaluate --protocol paper`` (Tables 1 and 2 as algorithms.md
§7–8 describe them; ``--k``, ``--repeats`` and ``--examples`` reduce it, and every row says
how) or ``--protocol default`` (the CLI's cheap defaults, all metrics), and writes
``results.json`` and ``results.md`` into the run directory: every number next to the paper's
with its protocol note, the exact commands, the machine and the training time, ready for the
README's results table. The full paper protocol takes weeks on a CPU (about 37 minutes on an H100;
``infusion.evaluate.PAPER_COST``); the evaluation report (RUN_DIR/eval/report.md) is rewritten
after every metric and repetition, so it can be read while the evaluation runs.
"""

from __future__ import annotations

import argparse
import json
import logging
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
    p.add_argument("--protocol", choices=("paper", "default"), default="paper",
                   help="paper: Tables 1-2 as algorithms.md §7-8 (weeks on a CPU at full size); "
                   "default: the CLI's cheap defaults")
    p.add_argument("--metrics", default=None,
                   help="default: the paper protocol's metrics, or all under --protocol default")
    p.add_argument("--k", type=int, default=None, help="IS draws per example (paper: 20,000)")
    p.add_argument("--examples", type=int, default=None, help="test examples (paper: 1,000)")
    p.add_argument("--repeats", type=int, default=None, help="likelihood repetitions (paper: 10)")
    p.add_argument("--n-samples", type=int, default=None, help="Parzen samples (paper: 10,000)")
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
    given = {"n_samples": args.n_samples} if args.n_samples is not None else {}
    if args.protocol == "paper":
        settings = EvalSettings.paper(k=args.k, repeats=args.repeats, examples=args.examples,
                                      **given)
    else:
        reduced = {"is_k": args.k, "repeats": args.repeats, "is_examples": args.examples}
        settings = EvalSettings(**given, **{k: v for k, v in reduced.items() if v is not None})
    metrics = args.metrics or ("paper" if args.protocol == "paper" else "all")
    report = evaluate(final, metrics, run_dir / "eval" / "report.json", settings,
                      device=args.device, progress=not args.quiet).report
    m = report["metrics"]
    rows = []
    if "parzen" in m:
        e, f = m["parzen"], m["parzen"]["fixed_sigma"]
        rows.append({"metric": f"Parzen window, σ = {f['sigma']:g} (Table 1)", "ours": f["mean"],
                     "stderr": f["stderr"], "spread": None, "paper": PAPER_MNIST["parzen"],
                     "how": e["protocol_note"]})
        rows.append({"metric": f"Parzen window, σ = {e['sigma']:.3g} chosen on validation",
                     "ours": e["mean"], "stderr": e["stderr"], "spread": None, "paper": None,
                     "how": e["protocol_note"]})
    for key, label in (("lb", "lower bound (Table 2)"), ("is", "IS estimate (Table 2)"),
                       ("is-iso", "isotropic IS (Table 2)"), ("lb-train", "lower bound, train"),
                       ("is-train", "IS estimate, train"), ("is-iso-train", "isotropic IS, train")):
        if key in m:
            how = m[key]["protocol_note"]
            if m[key].get("isotropic"):
                how += f"; final variance {m[key]['final_var']:.3g} chosen on validation"
            rows.append({"metric": label, "ours": m[key]["mean"], "stderr": m[key]["stderr"],
                         "spread": m[key]["spread"], "paper": PAPER_MNIST[key], "how": how})
    for key, label in (("fid", "Fréchet distance (MNIST-CNN features)"),
                       ("score", "classifier score")):
        if key in m:
            rows.append({"metric": label, "ours": m[key]["value"], "paper": None})
    flags = [f"--{flag} {v}" for flag, v in (("k", args.k), ("examples", args.examples),
                                              ("repeats", args.repeats),
                                              ("n-samples", args.n_samples)) if v is not None]
    cfg_json = json.loads((run_dir / "config.json").read_text())
    results = {
        "preset": cfg_json.get("preset") or args.preset, "config": cfg_json, "rows": rows, "report": str(run_dir / "eval"),
        "protocol": report["protocol"],
        "training_seconds": training_seconds(run_dir), "this_invocation_train_seconds": wall_train,
        "eval_seconds": report["seconds"].get("total"),
        "commands": {"reproduce": command,
                     "train": f"infusion train --preset {args.preset} --run-dir {run_dir} " +
                     " ".join(f"--set {s}" for s in args.set),
                     "evaluate": " ".join([f"infusion evaluate --checkpoint {final}",
                                          f"--protocol {args.protocol} --metrics {metrics}",
                                          *flags])},
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
    proto = r["protocol"]
    if proto["name"] == "paper":
        how = ("the paper's protocol (algorithms.md §7–8), reduced: " + "; ".join(proto["reductions"])
               if proto["reductions"] else "the paper's protocol (algorithms.md §7–8), in full")
    else:
        how = "the default protocol (cheaper than the paper's; each row says how)"
    lines = [f"## MNIST, preset `{r['preset']}`", "", f"Evaluated with {how}.", "",
             "| metric | ours | ± s.e. | spread | paper | how |", "|---|---|---|---|---|---|"]
    lines += [f"| {row['metric']} | {f(row['ours'])} | {f(row.get('stderr'))} | "
              f"{f(row.get('spread'))} | {f(row['paper'])} | {row.get('how', '')} |"
              for row in r["rows"]]
    train_s, eval_s = r["training_seconds"], r["eval_seconds"] or 0
    lines += ["", (f"- training: {train_s / 60:.1f} min ({train_s:.0f} s, {where}); "
                   f"evaluation {eval_s / 60:.1f} min ({eval_s:.0f} s)"),
              f"- train: `{r['commands']['train'].strip()}`",
              f"- evaluate: `{r['commands']['evaluate']}`",
              f"- reproduce both: `{r['commands']['reproduce']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library's messages
    sys.exit(main())
