"""How fast does a training run go beside other work, with one torch thread or several?

For each number of other busy processes in ``--busy`` (each a one-thread fp32 matmul loop,
standing in for another single-thread job), the preset's real training step
(:func:`infusion.training.bench.probe`'s step: synthetic pixels, the method's loss, backward,
Adam) is timed with each thread count in ``--threads``; every cell is the median of
``--repeats`` timings of ``--seconds`` each. Prints and writes a Markdown table and JSON.

    python benchmarks/thread_grid.py --preset mnist-demo --busy 0,1,2 --threads 1,2 \\
        --out benchmarks/results/thread-grid

Run it on an otherwise quiet machine: the busy processes are the only other load it means to
measure (``--busy 0`` says what quiet gives here).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from infusion import config
from infusion.device import resolve_device
from infusion.training.bench import _timed, _training_step


def busy_loop(stop) -> None:
    """One other single-thread job: 512² fp32 matmuls until told to stop."""
    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def measure(cfg, device, threads: int, seconds: float, repeats: int) -> float:
    """Median example-steps per second of the training step with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    step, *_ = _training_step(cfg, device, cfg.train.batch_size)
    per = [cfg.train.batch_size * cfg.method.T / _timed(step, device, seconds, 2)
           for _ in range(repeats)]
    return statistics.median(per)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mnist-demo")
    p.add_argument("--busy", default="0,1,2", help="numbers of other busy processes")
    p.add_argument("--threads", default="1,2", help="torch thread counts of the training")
    p.add_argument("--seconds", type=float, default=3.0, help="each timing")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="", help="write OUT.md and OUT.json")
    a = p.parse_args(argv)
    cfg, device = config.preset(a.preset), resolve_device("cpu")
    busy, threads = ([int(v) for v in s.split(",")] for s in (a.busy, a.threads))
    grid = {}
    ctx = mp.get_context("spawn")
    for n in busy:
        stop = ctx.Event()
        procs = [ctx.Process(target=busy_loop, args=(stop,), daemon=True) for _ in range(n)]
        for q in procs:
            q.start()
        time.sleep(2.0 if n else 0.0)  # let them start
        try:
            for t in threads:
                grid[f"{n},{t}"] = measure(cfg, device, t, a.seconds, a.repeats)
                print(f"busy {n}, threads {t}: {grid[f'{n},{t}']:,.0f} example-steps/s",
                      flush=True)
        finally:
            stop.set()
            for q in procs:
                q.join(10)
    res = {"preset": a.preset, "cores": os.cpu_count(), "machine": platform.processor()
           or platform.machine(), "torch": torch.__version__, "seconds": a.seconds,
           "repeats": a.repeats, "example_steps_per_s": grid}
    rows = ["| other busy processes | " + " | ".join(f"{t} thread(s)" for t in threads)
            + " | best |", "|---:|" + "---:|" * (len(threads) + 1)]
    for n in busy:
        cells = [grid[f"{n},{t}"] for t in threads]
        rows.append(f"| {n} | " + " | ".join(f"{c:,.0f}" for c in cells)
                    + f" | {threads[cells.index(max(cells))]} |")
    table = "\n".join(rows) + (f"\n\nExample-steps/s of the `{a.preset}` training step, "
                               f"median of {a.repeats} × {a.seconds:g} s; {res['cores']} cores, "
                               f"{res['machine']}, torch {res['torch']}.\n")
    print(table)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
        out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
