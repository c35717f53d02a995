"""How often a call climbs back up the package's floors (docs/design.md) during
``infusion.train`` and ``infusion.evaluate`` on a tiny 2-D run: every distinct pair (caller's
module, callee's module) where a function of a lower floor calls one of a higher floor. No
module imports from above its floor (tests/test_layout.py); a climb is a call through an
object or a callback handed down (a model's ``forward`` run by the shared sampler, a
callback run by the trainer's loop). Fewer climbs: a walk that reads top-down.

    python benchmarks/floor_walk.py            # prints both walks' climbs
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path

import infusion
from infusion import config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_layout import FLOORS  # the one floor table

ROOT = Path(infusion.__file__).parent


def module_of(filename: str) -> str | None:
    path = Path(filename)
    if ROOT not in path.parents:
        return None
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def climbs(fn) -> Counter:
    """The distinct upward calls (caller module -> callee module) made while ``fn`` runs."""
    seen: Counter = Counter()

    def profile(frame, event, arg):
        if event != "call" or frame.f_back is None:
            return
        callee = module_of(frame.f_code.co_filename)
        caller = module_of(frame.f_back.f_code.co_filename)
        if (callee and caller and callee != caller
                and FLOORS[callee.split(".")[0]] > FLOORS[caller.split(".")[0]]):
            seen[f"{caller} -> {callee}"] += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    logging.getLogger("infusion").setLevel(logging.WARNING)
    cfg = config.override(config.preset("spiral"), ["data.toy_size=512", "model.hidden=16,16",
                                                    "train.epochs=1", "train.valid_examples=64",
                                                    "sample.n=8", "method.T=3"])
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        walks = {"train": climbs(lambda: infusion.train(cfg, run, progress=False)),
                 "evaluate": climbs(lambda: infusion.evaluate(
                     run, metrics=["lb", "parzen"], progress=False, out=Path(tmp) / "eval.json",
                     settings=infusion.EvalSettings(lb_examples=64, n_samples=64)))}
    for name, seen in walks.items():
        print(f"{name}: {len(seen)} distinct climbs back up")
        for edge, n in sorted(seen.items()):
            print(f"  {edge}  ({n:,} calls)")


if __name__ == "__main__":
    main()
