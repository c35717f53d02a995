"""Command line: ``infusion train | demo | sample | inpaint | figures | evaluate | data | bench | presets``.

Every user error (bad config, unknown preset, missing checkpoint, corrupt data) is printed as
one ``error: …`` line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
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
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
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
    """:func:`infusion.train.load_ready_model`, telling stderr when statistics are computed."""
    from .train import load_ready_model

    return load_ready_model(checkpoint, device, log=lambda s: print(s, file=sys.stderr))


def cmd_inpaint(args: argparse.Namespace) -> None:
    """Complete test images whose observed part is clamped (SPEC §9, paper Fig. 5)."""
    from .inpaint import inpaint, load_images, parse_mask, save_inpainting

    if args.classify:
        from .metrics import extractor_names

        if args.classify not in extractor_names():
            raise ValueError(f"--classify {args.classify!r}: expected one of "
                             f"{', '.join(extractor_names())}")
    model, cfg = load_for_sampling(args.checkpoint, args.device)
    mask = parse_mask(args.mask, model.shape)
    images, labels = load_images(cfg.data, args.split, args.n)
    if args.classify and labels is None:
        raise ValueError(f"--classify needs labelled images; {cfg.data.name} has none")
    steps = args.steps or cfg.sample.steps or cfg.method.T
    res = inpaint(model, images.to(model.prior.mean.device), mask, args.chains, steps, args.seed)
    png, npz = save_inpainting(args.out, res, labels)
    print(f"inpainted {args.n} {args.split} images x {args.chains} chains ({steps} steps, mask "
          f"{args.mask}): figure {png}, arrays {npz}")
    if args.classify:
        from .io import atomic_write
        from .inpaint import classifier_consistency
        from .metrics import get_extractor

        scores = classifier_consistency(res, labels, get_extractor(args.classify))
        scores.update(mask=args.mask, steps=steps, classifier=args.classify)
        path = Path(args.out) / "inpaint_scores.json"
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(scores, indent=1)))
        print(f"classifier {args.classify}: {scores['completions']:.1%} of completions read as "
              f"the true digit (full images {scores['originals']:.1%}, observed part alone "
              f"{scores['masked']:.1%}); {scores['classes_per_image']:.2f} classes per image "
              f"across chains -> {path}")


def cmd_figures(args: argparse.Namespace) -> None:
    """The paper's figures from a run directory."""
    from .paper_figures import make_figures

    done = make_figures(args.run_dir, args.out, device=args.device, n=args.n, seed=args.seed,
                        log=lambda s: None)
    for name, what in done.items():
        print(f"{name}: {what}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Likelihood bounds, Parzen window and sample-quality metrics of a checkpoint (issue 3)."""
    from .evaluate import EvalSettings, evaluate

    s = EvalSettings(lb_examples=args.lb_examples, lb_k=args.lb_k, is_examples=args.is_examples,
                     is_k=args.k, repeats=args.repeats, n_samples=args.n_samples, steps=args.steps,
                     parzen_valid=args.parzen_valid, parzen_test=args.parzen_test,
                     memo_samples=args.memo_samples, extractor=args.extractor,
                     extractor_path=args.extractor_path or "", batch_size=args.batch_size,
                     seed=args.seed)
    evaluate(args.checkpoint, args.metrics, args.out, s, device=args.device,
             progress=not args.quiet)


def cmd_data(args: argparse.Namespace) -> None:
    from .data import ensure, ensure_mnist

    if args.name != "mnist":
        path = ensure(args.name, path=args.path, image_size=args.image_size)
        print(f"{args.name} ready: {path}")
        return
    path = ensure_mnist(idx_dir=args.idx_dir)
    print(f"MNIST ready: {path}")


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import bench, format_report
    from .train import resolve_device

    cfg = config_mod.override(config_mod.preset(args.preset), args.set)
    result = bench(cfg, resolve_device(args.device), steps=args.steps, batch_size=args.batch_size,
                   matmul_n=args.matmul_size or None)
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def cmd_presets(args: argparse.Namespace) -> None:
    for name in sorted(config_mod.PRESETS):
        if args.verbose:
            print(json.dumps({name: config_mod.to_dict(config_mod.preset(name))}, indent=2))
        else:
            print(name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infusion", description=(
        "Generative models learned as the transition operator of a Markov chain: "
        "infusion training and its baselines."))
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

    ip = sub.add_parser("inpaint", help="complete test images with the observed part clamped "
                        "(paper Fig. 5)")
    ip.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    ip.add_argument("--mask", required=True,
                    help="observed part: top, bottom, left, right, or a .png/.npy H×W mask file "
                         "(nonzero = observed)")
    ip.add_argument("--chains", type=int, default=5, help="completions per image")
    ip.add_argument("--n", type=int, default=8, help="images (the first N of --split)")
    ip.add_argument("--split", default="test", choices=("train", "valid", "test"))
    ip.add_argument("--steps", type=int, default=0, help="sampling steps T' (>= training T)")
    ip.add_argument("--seed", type=int, default=0, help="chain k of image i uses SEED+i*K+k")
    ip.add_argument("--out", default="inpaint", help="output directory (inpaint.png, inpaint.npz)")
    ip.add_argument("--classify", metavar="EXTRACTOR",
                    help="score the completions with an independent classifier (e.g. mnist-cnn; "
                         "writes inpaint_scores.json)")
    ip.add_argument("--device", default="auto")
    ip.set_defaults(func=cmd_inpaint)

    fg = sub.add_parser("figures", help="the paper's figures (1, 2, 3, 4, 7), likelihood against k "
                        "and walkback reversibility, from a run directory")
    fg.add_argument("--run-dir", required=True)
    fg.add_argument("--out", help="output directory (default RUN_DIR/figures)")
    fg.add_argument("--n", type=int, default=8, help="chains / targets per figure")
    fg.add_argument("--seed", type=int, default=0)
    fg.add_argument("--device", default="auto")
    fg.set_defaults(func=cmd_figures)

    e = sub.add_parser("evaluate", help="lower bound, IS, Parzen and sample-quality metrics "
                       "of a checkpoint, as report.json + report.md")
    e.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    e.add_argument("--metrics", default="default",
                   help="comma list of lb,is,is-iso,parzen,fid,score,coverage,memorisation,"
                   "reversibility (walkback); 'default' = all but is-iso and reversibility, 'all'")
    e.add_argument("--out", help="report .json (default: RUN_DIR/eval/report.json)")
    e.add_argument("--k", type=int, default=100, help="IS draws per example")
    e.add_argument("--is-examples", type=int, default=1000, help="test examples for IS (0 = all)")
    e.add_argument("--lb-examples", type=int, default=0, help="test examples for the bound (0 = all)")
    e.add_argument("--lb-k", type=int, default=1, help="proposal draws per example for the bound")
    e.add_argument("--repeats", type=int, default=1, help="repeated likelihood evaluations (paper: 10)")
    e.add_argument("--n-samples", type=int, default=10000, help="samples for Parzen and classifier")
    e.add_argument("--steps", type=int, default=0, help="sampling steps T' (0 = config's)")
    e.add_argument("--parzen-valid", type=int, default=0, help="validation examples for σ (0 = all)")
    e.add_argument("--parzen-test", type=int, default=0, help="test examples for Parzen (0 = all)")
    e.add_argument("--memo-samples", type=int, default=1000, help="samples in the memorisation check")
    e.add_argument("--extractor", default="mnist-cnn", help="feature extractor: mnist-cnn, "
                   "torchscript or inception (the last two need --extractor-path)")
    e.add_argument("--extractor-path", help="TorchScript feature model file")
    e.add_argument("--batch-size", type=int, default=1000, help="rows per forward pass")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_evaluate)

    g = sub.add_parser("data", help="fetch and verify a data set into the cache ($INFUSION_CACHE)")
    g.add_argument("--idx-dir", help="directory holding the four official MNIST IDX files")
    g.add_argument("--name", default="mnist",
                   help="mnist, cifar10, svhn, celeba, tfd or folder (default: mnist)")
    g.add_argument("--path", default="", help="user-supplied source: CelebA zip or folder, "
                   "TFD_48x48.mat, a folder of images, or a local copy of the official file")
    g.add_argument("--image-size", type=int, default=0, help="folder: side of the crops (64)")
    g.set_defaults(func=cmd_data)

    b = sub.add_parser("bench", help="training/sampling speed of a preset next to the "
                       "device's matrix-multiply peak")
    b.add_argument("--preset", required=True)
    b.add_argument("--steps", type=int, default=20, help="timed training steps (at least)")
    b.add_argument("--batch-size", type=int, default=0, help="default: the preset's")
    b.add_argument("--device", default="auto")
    b.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    b.add_argument("--json", help="also write the figures to this JSON file")
    b.add_argument("--matmul-size", type=int, default=0,
                   help="side of the peak-measuring matrices (default 2048 CPU, 8192 GPU)")
    b.set_defaults(func=cmd_bench)

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
