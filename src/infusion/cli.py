"""Command line: ``infusion train | sample | demo | data | presets``.

Every user error (bad config, unknown preset, missing checkpoint, corrupt data) is printed as
one ``error: …`` line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import config as config_mod


def _user_errors() -> tuple[type[BaseException], ...]:
    from .checkpoint import CheckpointError
    from .data import DataError
    from .train import RunError

    return (config_mod.ConfigError, CheckpointError, DataError, RunError, ValueError, FileNotFoundError)


def cmd_train(args: argparse.Namespace) -> None:
    from .train import train

    if args.resume:
        if not args.run_dir:
            raise config_mod.ConfigError("--resume needs --run-dir")
        train(None, args.run_dir, resume=True, device=args.device, overrides=args.set,
              progress=not args.quiet)
        return
    if not args.preset:
        raise config_mod.ConfigError("train needs --preset NAME (see `infusion presets`)")
    cfg = config_mod.override(config_mod.preset(args.preset), args.set)
    run_dir = args.run_dir or f"runs/{args.preset}"
    final = train(cfg, run_dir, device=args.device, progress=not args.quiet)
    print(f"final checkpoint: {final}")


def cmd_demo(args: argparse.Namespace) -> None:
    """Train the ``mnist-demo`` preset (resuming an unfinished run) and say where everything is."""
    from .train import train

    run_dir = Path(args.run_dir)
    final = run_dir / "checkpoints" / "final.pt"
    if final.exists():
        print(f"{run_dir} already holds a finished demo run (delete it to train again)")
    else:
        resume = any((run_dir / "checkpoints").glob("epoch-*.pt"))
        cfg = config_mod.override(config_mod.preset("mnist-demo"), args.set)
        train(None if resume else cfg, run_dir, resume=resume, device=args.device,
              overrides=args.set if resume else (), progress=not args.quiet)
    print(f"\nrun directory: {run_dir}")
    for name in ("samples.npz", "samples.png", "chains.png", "curve.png", "metrics.jsonl"):
        print(f"  {run_dir / name}")
    print(f"  {final}")


def cmd_sample(args: argparse.Namespace) -> None:
    from .sample import sample_to_file

    model, cfg = load_for_sampling(args.checkpoint, args.device)
    steps = args.steps or cfg.sample.steps or cfg.method.T
    out = sample_to_file(model, args.out, n=args.n, steps=steps, seed=args.seed,
                         batch_size=args.batch_size)
    print(f"wrote {args.n} samples ({steps} steps) to {out} and a grid to {out.with_suffix('.png')}")


def load_for_sampling(checkpoint: str, device: str = "auto"):
    """Model from a checkpoint or run directory, with SPEC §6 statistics (computed if missing)."""
    from .checkpoint import load_model
    from .methods import build_method
    from .train import compute_step_statistics, load_data, resolve_device

    dev = resolve_device(device)
    model, cfg = load_model(checkpoint, dev)
    if not model.stats_ready:
        print("checkpoint has no per-step batch-norm statistics; computing them (SPEC §6)",
              file=sys.stderr)
        data = load_data(cfg, dev)
        compute_step_statistics(model, build_method(cfg.method), data, cfg.train.batch_size,
                                cfg.train.seed + 5)
    return model.eval(), cfg


def cmd_data(args: argparse.Namespace) -> None:
    from .data import ensure_mnist

    path = ensure_mnist(idx_dir=args.idx_dir)
    print(f"MNIST ready: {path}")


def cmd_presets(args: argparse.Namespace) -> None:
    for name in sorted(config_mod.PRESETS):
        if args.verbose:
            print(json.dumps({name: config_mod.to_dict(config_mod.preset(name))}, indent=2))
        else:
            print(name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infusion", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, run_dir_default=None):
        sp.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=3 (repeatable)")
        sp.add_argument("--run-dir", default=run_dir_default)
        sp.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 …")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    t = sub.add_parser("train", help="train a preset into a run directory")
    t.add_argument("--preset", help=f"one of: {', '.join(sorted(config_mod.PRESETS))}")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    common(t)
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("demo", help="train the mnist-demo preset on the CPU and write figures")
    common(d, "runs/mnist-demo")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("sample", help="draw samples from a checkpoint or run directory")
    s.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--steps", type=int, default=0, help="sampling steps T' (>= training T)")
    s.add_argument("--seed", type=int, default=0, help="sample i uses seed SEED+i")
    s.add_argument("--out", required=True, help="output .npz (a .png grid is written beside it)")
    s.add_argument("--batch-size", type=int, default=500)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_sample)

    g = sub.add_parser("data", help="fetch and verify MNIST into the cache ($INFUSION_CACHE)")
    g.add_argument("--idx-dir", help="directory holding the four official MNIST IDX files")
    g.set_defaults(func=cmd_data)

    r = sub.add_parser("presets", help="list presets")
    r.add_argument("--verbose", "-v", action="store_true", help="print each preset's full config")
    r.set_defaults(func=cmd_presets)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
