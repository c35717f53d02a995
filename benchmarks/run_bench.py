"""Speed figures of presets (issue 6): writes ``<out>/bench-<tag>.json`` and ``.md``.

    python benchmarks/run_bench.py --presets mnist --device cpu --steps 5 --tag cpu
    python benchmarks/run_bench.py --presets mnist cifar10 --device cuda --tag h100

Each preset is measured by :func:`infusion.training.bench.bench` (training example-steps/s, sampling
images/s, peak memory, model FLOP/s as a fraction of the device's measured matmul peak, and
the estimated time of the preset's full run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from infusion import config
from infusion.device import resolve_device
from infusion.training.bench import bench, format_report

COLUMNS = [("preset", "preset", "{}"), ("device", "device", "{}"),
           ("precision", "precision", "{}"), ("batch_size", "batch", "{}"),
           ("train_example_steps_per_s", "train example-steps/s", "{:,.0f}"),
           ("sample_images_per_s", "sample images/s", "{:,.1f}"),
           ("peak_memory_mib", "peak memory (MiB)", "{:,.0f}"),
           ("achieved_tflops", "model TFLOP/s", "{:.3f}"),
           ("fraction_of_peak", "fraction of matmul peak", "{:.1%}"),
           ("full_run_estimate_min", "full run (min, est.)", "{:,.1f}")]


def markdown(rows: list[dict]) -> str:
    head = "| " + " | ".join(c[1] for c in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(fmt.format(r[k]) for k, _, fmt in COLUMNS) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["mnist"])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--tag", default="", help="name of the output files (default: the device)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    for name in args.presets:
        cfg = config.override(config.preset(name), args.set)
        r = bench(cfg, device, steps=args.steps)
        print(format_report(r), flush=True)
        rows.append(r)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or device.type
    (out / f"bench-{tag}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / f"bench-{tag}.md").write_text(markdown(rows))
    print(f"wrote {out / f'bench-{tag}.json'} and {out / f'bench-{tag}.md'}")


if __name__ == "__main__":
    main()
