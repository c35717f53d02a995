"""Command line: ``infusion train | demo | sample | inpaint | figures | evaluate | data | bench | presets``.

Every user error (bad config, unknown preset, missing checkpoint, corrupt data, an output
that exists) is printed as one ``error: …`` line and exits with status 2, without a
traceback; an internal error keeps its traceback and says it is a bug (status 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from . import __version__
from . import config as config_mod
from .errors import InputError, UserError


def say(message: str) -> None:
    """Print a line; if stdout has gone (piped into ``head``), keep working silently."""
    try:
        print(message, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 — stays open for the process


def _free(paths: list[Path], overwrite: bool) -> None:
    """Refuse to replace a user's files unless ``--overwrite``; refuse directories always."""
    for p in paths:
        if p.is_dir():
            raise InputError(f"output {str(p)!r} is a directory; expected a file name")
        if p.exists() and not overwrite:
            raise InputError(f"output {str(p)!r} exists; pass --overwrite to replace it")


def cmd_train(args: argparse.Namespace) -> None:
    from .trainer import train

    if args.resume:
        if not args.run_dir:
            raise InputError("--resume needs --run-dir")
        if args.preset or args.config or args.data:
            raise InputError("--resume continues the run stored in --run-dir with its own "
                             "config and data; drop --preset/--config/--data (change train.* "
                             "with --set)")
        final = train(None, args.run_dir, resume=True, device=args.device, overrides=args.set,
                      progress=not args.quiet, log=say)
    elif args.data:  # the user's own data: infusion.fit builds the config around them
        from .fitting import fit

        if args.preset and args.config:
            raise InputError("--data takes at most one of --preset NAME or --config FILE")
        base = config_mod.load_file(args.config) if args.config else args.preset
        final = fit(args.data, preset=base, run_dir=args.run_dir, overrides=args.set,
                    overwrite=args.overwrite, device=args.device, progress=not args.quiet,
                    log=say).checkpoint
    else:
        cfg = _config_from(args)
        run_dir = args.run_dir or f"runs/{args.preset or Path(args.config).stem}"
        final = train(cfg, run_dir, overwrite=args.overwrite, device=args.device,
                      progress=not args.quiet, log=say)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        say(f"final checkpoint: {final}")


def _config_from(args: argparse.Namespace) -> config_mod.Config:
    """--preset NAME or --config FILE (JSON or TOML, as a run directory's config.json), then --set."""
    if bool(args.preset) == bool(args.config):
        raise InputError("train needs exactly one of --preset NAME (see `infusion presets`) or "
                         "--config FILE, or your own data as --data PATH")
    if args.preset:
        cfg = config_mod.preset(args.preset)
    else:
        cfg = config_mod.load_file(args.config)
    return config_mod.override(cfg, args.set)


def cmd_demo(args: argparse.Namespace) -> None:
    """Train the ``mnist-demo`` preset (resuming an unfinished run) and say where everything is."""
    from .trainer import train

    run_dir = Path(args.run_dir)
    final = run_dir / "checkpoints" / "final.pt"
    if final.exists():
        say(f"{run_dir} already holds a finished demo run (delete it to train again)")
    else:
        resume = any((run_dir / "checkpoints").glob("epoch-*.pt"))
        cfg = config_mod.override(config_mod.preset("mnist-demo"), args.set)
        train(None if resume else cfg, run_dir, resume=resume, device=args.device,
              overrides=args.set if resume else (), progress=not args.quiet, log=say)
    say(f"\nrun directory: {run_dir}")
    for name in ("samples.npz", "samples.png", "chains.png", "curve.png", "metrics.jsonl"):
        say(f"  {run_dir / name}")
    say(f"  {final}")


def cmd_sample(args: argparse.Namespace) -> None:
    from .sample import sample_to_file

    out = Path(args.out)
    _free([out, out.with_suffix(".png")], args.overwrite)
    if args.png_dir:
        _free([Path(args.png_dir) / f"seed-{s:06d}.png" for s in args.seeds or ()], args.overwrite)
    model, _ = load_for_sampling(args.checkpoint, args.device)
    seeds = args.seeds or list(range(args.seed, args.seed + args.n))
    steps = args.steps or model.sample_steps
    sample_to_file(model, out, n=len(seeds), steps=steps, seeds=seeds,
                   batch_size=args.batch_size, png_dir=args.png_dir)
    say(f"wrote {len(seeds)} samples ({steps} steps) to {out} and a grid to "
        f"{out.with_suffix('.png')}" + (f"; one PNG per seed in {args.png_dir}" if args.png_dir
                                         else ""))


def cmd_export(args: argparse.Namespace) -> None:
    """A run's model (with its batch-norm statistics) as config.json + model.safetensors."""
    from .checkpoint import save_pretrained

    out = Path(args.out)
    _free([out / "config.json", out / "model.safetensors"], args.overwrite)
    model, cfg = load_for_sampling(args.checkpoint, "cpu")
    save_pretrained(model, cfg, out)
    say(f"exported {args.checkpoint} to {out} (load with infusion.load_model({str(out)!r}))")


def load_for_sampling(checkpoint: str, device: str = "auto"):
    """:func:`infusion.runtime.load_ready_model`, telling stderr when statistics are computed."""
    from .runtime import load_ready_model

    return load_ready_model(checkpoint, device, log=lambda s: print(s, file=sys.stderr))


def cmd_inpaint(args: argparse.Namespace) -> None:
    """Complete test images whose observed part is clamped (algorithms.md §9, paper Fig. 5)."""
    from .inpaint import inpaint, load_images, parse_mask, save_inpainting

    if args.classify:
        from .metrics import extractor_names

        if args.classify not in extractor_names():
            raise InputError(f"--classify {args.classify!r}: expected one of "
                             f"{', '.join(extractor_names())}")
    out = Path(args.out)
    _free([out / "inpaint.png", out / "inpaint.npz", out / "inpaint_scores.json"], args.overwrite)
    model, cfg = load_for_sampling(args.checkpoint, args.device)
    mask = parse_mask(args.mask, model.shape)
    images, labels = load_images(cfg.data, args.split, args.n)
    if args.classify and labels is None:
        raise InputError(f"--classify needs labelled images; {cfg.data.name} has none")
    steps = args.steps or model.sample_steps
    res = inpaint(model, images.to(model.prior.mean.device), mask, args.chains, steps, args.seed)
    png, npz = save_inpainting(args.out, res, labels)
    say(f"inpainted {len(images)} {args.split} images x {args.chains} chains ({steps} steps, mask "
          f"{args.mask}): figure {png}, arrays {npz}")
    if args.classify:
        from .inpaint import classifier_consistency
        from .io import atomic_write
        from .metrics import get_extractor

        scores = classifier_consistency(res, labels, get_extractor(args.classify))
        scores.update(mask=args.mask, steps=steps, classifier=args.classify)
        path = Path(args.out) / "inpaint_scores.json"
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(scores, indent=1)))
        say(f"classifier {args.classify}: {scores['completions']:.1%} of completions read as "
              f"the true digit (full images {scores['originals']:.1%}, observed part alone "
              f"{scores['masked']:.1%}); {scores['classes_per_image']:.2f} classes per image "
              f"across chains -> {path}")


def cmd_figures(args: argparse.Namespace) -> None:
    """The paper's figures from a run directory."""
    from .paper_figures import make_figures

    out = Path(args.out) if args.out else Path(args.run_dir) / "figures"
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise InputError(f"figures directory {str(out)!r} is not empty; pass --overwrite to "
                         "replace its figures")
    done = make_figures(args.run_dir, args.out, device=args.device, n=args.n, seed=args.seed,
                        log=lambda s: None)
    for name, what in done.items():
        say(f"{name}: {what}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Likelihood bounds, Parzen window and sample-quality metrics of a checkpoint (issue 3),
    under the default protocol or the paper's (``--protocol paper``, reduced by --k, --repeats,
    --examples; algorithms.md §7–8)."""
    from .evaluate import EvalSettings, evaluate

    common = {"n_samples": args.n_samples, "steps": args.steps,
              "parzen_valid": args.parzen_valid, "parzen_test": args.parzen_test,
              "memo_samples": args.memo_samples, "extractor": args.extractor,
              "extractor_path": args.extractor_path or "", "batch_size": args.batch_size,
              "seed": args.seed}
    common = {k: v for k, v in common.items() if v is not None}
    if args.train_examples is not None:
        common["train_examples"] = args.train_examples
    if args.protocol == "paper":
        given = [f for f, v in (("--lb-examples", args.lb_examples), ("--lb-k", args.lb_k))
                 if v is not None]
        if given:
            raise InputError(f"{' and '.join(given)}: the paper protocol takes the bound from "
                             "the IS draws; reduce it with --k and --examples")
        s = EvalSettings.paper(k=args.k, repeats=args.repeats, examples=args.examples, **common)
    else:
        for name, value in (("lb_examples", args.lb_examples), ("lb_k", args.lb_k),
                            ("is_k", args.k), ("repeats", args.repeats),
                            ("is_examples", args.examples)):
            if value is not None:
                common[name] = value
        s = EvalSettings(**common)
    evaluate(args.checkpoint, args.metrics, args.out, s, device=args.device,
             progress=not args.quiet, overwrite=args.overwrite, log=say)


def cmd_data(args: argparse.Namespace) -> None:
    from .data import ensure, ensure_mnist

    if args.name != "mnist":
        path = ensure(args.name, path=args.path, image_size=args.image_size)
        say(f"{args.name} ready: {path}")
        return
    path = ensure_mnist(idx_dir=args.idx_dir)
    say(f"MNIST ready: {path}")


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import bench, format_report
    from .runtime import resolve_device

    if args.json:
        _free([Path(args.json)], args.overwrite)
    cfg = config_mod.override(config_mod.preset(args.preset), args.set)
    result = bench(cfg, resolve_device(args.device), steps=args.steps, batch_size=args.batch_size,
                   matmul_n=args.matmul_size or None)
    say(format_report(result))
    if args.json:
        from .io import atomic_write

        atomic_write(Path(args.json), lambda t: t.write_text(json.dumps(result, indent=2) + "\n"))


def cmd_presets(args: argparse.Namespace) -> None:
    """The presets with their descriptions; with a NAME, that preset's whole config."""
    if args.name:
        say(f"# {args.name}: {config_mod.describe(args.name)}")
        say(json.dumps(config_mod.to_dict(config_mod.preset(args.name)), indent=2))
        return
    width = max(map(len, config_mod.PRESETS))
    for name in sorted(config_mod.PRESETS):
        say(f"{name:<{width}}  {config_mod.describe(name)}")
        if args.verbose:
            say(json.dumps(config_mod.to_dict(config_mod.preset(name)), indent=2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infusion", description=(
        "Generative models learned as the transition operator of a Markov chain: "
        "infusion training and its baselines."))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, run_dir_default=None):
        sp.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=3 or "
                             "--set method.infusion.omega=0.02 (repeatable)")
        sp.add_argument("--run-dir", default=run_dir_default,
                        help="the run directory" + (f" (default {run_dir_default})"
                                                    if run_dir_default else
                                                    " (default runs/PRESET)"))
        sp.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 …")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    t = sub.add_parser("train", help="train a preset, a config file or your own data into a "
                       "run directory")
    t.add_argument("--preset", help=f"one of: {', '.join(sorted(config_mod.PRESETS))}")
    t.add_argument("--data", metavar="PATH",
                   help="your own data: a .npy/.npz file (an .npz with train, valid, test or x) "
                   "or a folder of images; the network is --preset's or --config's, else an "
                   "MLP sized by the data (default run dir: runs/<file or folder name>)")
    t.add_argument("--config", metavar="FILE",
                   help="a JSON or TOML config (as a run directory's config.json) instead of a preset")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir (SIGINT/SIGTERM save a resumable state)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --run-dir (its own files only)")
    common(t)
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("demo", help="train the mnist-demo preset on the CPU and write figures")
    common(d, "runs/mnist-demo")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("sample", help="draw samples from a checkpoint, run directory or export")
    s.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    s.add_argument("--n", type=_positive, default=64, help="number of samples (default 64)")
    s.add_argument("--seeds", type=parse_seeds_arg, help="seed list, e.g. 0-63 or 1,5,9 "
                   "(instead of --n/--seed); each sample depends on its seed only")
    s.add_argument("--steps", type=_non_negative, default=0,
                   help="sampling steps T' (default: the run's sample.steps)")
    s.add_argument("--seed", type=_non_negative, default=0, help="sample i uses seed SEED+i")
    s.add_argument("--out", required=True, help="output .npz (a .png grid is written beside it)")
    s.add_argument("--png-dir", help="also write one PNG per seed (seed-NNNNNN.png) here")
    s.add_argument("--batch-size", type=_positive, default=500, help="samples per batch")
    s.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, …")
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    s.set_defaults(func=cmd_sample)

    x = sub.add_parser("export", help="write a model as config.json + model.safetensors "
                       "(loadable by infusion.load_model and every --checkpoint)")
    x.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    x.add_argument("--out", required=True, help="output directory")
    x.add_argument("--overwrite", action="store_true", help="replace an existing export")
    x.set_defaults(func=cmd_export)

    ip = sub.add_parser("inpaint", help="complete test images with the observed part clamped "
                        "(paper Fig. 5)")
    ip.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    ip.add_argument("--mask", required=True,
                    help="observed part: top, bottom, left, right, or a .png/.npy H×W mask file "
                         "(nonzero = observed)")
    ip.add_argument("--chains", type=_positive, default=5, help="completions per image")
    ip.add_argument("--n", type=_positive, default=8, help="images (the first N of --split)")
    ip.add_argument("--split", default="test", choices=("train", "valid", "test"))
    ip.add_argument("--steps", type=_non_negative, default=0,
                    help="sampling steps T' (default: the run's sample.steps)")
    ip.add_argument("--seed", type=_non_negative, default=0, help="chain k of image i uses SEED+i*K+k")
    ip.add_argument("--out", default="inpaint", help="output directory (inpaint.png, inpaint.npz)")
    ip.add_argument("--classify", metavar="EXTRACTOR",
                    help="score the completions with an independent classifier (e.g. mnist-cnn; "
                         "writes inpaint_scores.json)")
    ip.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, …")
    ip.add_argument("--overwrite", action="store_true", help="replace existing output files")
    ip.set_defaults(func=cmd_inpaint)

    fg = sub.add_parser("figures", help="the paper's figures (1, 2, 3, 4, 7), likelihood against k "
                        "and walkback reversibility, from a run directory")
    fg.add_argument("--run-dir", required=True, help="a run directory made by infusion train")
    fg.add_argument("--out", help="output directory (default RUN_DIR/figures)")
    fg.add_argument("--n", type=_positive, default=8, help="chains / targets per figure")
    fg.add_argument("--seed", type=_non_negative, default=0, help="seed of the figures' chains")
    fg.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, …")
    fg.add_argument("--overwrite", action="store_true", help="replace existing figures")
    fg.set_defaults(func=cmd_figures)

    e = sub.add_parser("evaluate", help="lower bound, IS, Parzen and sample-quality metrics "
                       "of a checkpoint, as report.json + report.md")
    e.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    e.add_argument("--protocol", choices=("default", "paper"), default="default", help=(
        "default: cheap (minutes on a CPU for MNIST): the bound with k=1 on the whole test set, "
        "IS with k=100 on 1000 test examples, 1 repeat. paper: Tables 1 and 2 as algorithms.md "
        "§7-8 describe them: k=20,000 draws on the first 1,000 test examples (bound and IS from "
        "the same draws), 10 repeats, the train rows (100 examples), the isotropic IS with one "
        "variance chosen on validation, Parzen on 10,000 means after the training T at σ=0.17 "
        "and at σ chosen on validation. Cost of the full paper protocol for the mnist model "
        "(2x1200 MLP, T=15): 4.4e8 proposal draws, measured at 235 draws/s on one core of "
        "this project's CPU: about 22 days on one core, about 11 on two (estimated); an H100 "
        "about an hour (estimated, not measured). --k, --repeats and --examples reduce it "
        "(--k 100 --repeats 1: about 20 minutes on one core), and the report states every "
        "reduction"))
    e.add_argument("--metrics", default=None,
                   help="comma list of lb,is,is-iso,lb-train,is-train,is-iso-train,parzen,fid,"
                   "score,coverage,memorisation,reversibility (walkback); 'default' = lb,is,parzen "
                   "and the sample metrics, 'paper' = the likelihood rows and parzen, 'all' "
                   "(default: the protocol's)")
    e.add_argument("--out", help="report .json (default: RUN_DIR/eval/report.json); rewritten "
                   "after every metric and repetition")
    e.add_argument("--k", type=_positive, default=None,
                   help="IS draws per example (default 100; paper 20,000)")
    e.add_argument("--repeats", type=_positive, default=None,
                   help="repeated likelihood evaluations (default 1; paper 10)")
    e.add_argument("--examples", "--is-examples", dest="examples", type=_non_negative,
                   default=None, help="test examples for the likelihood: IS, and the bound in "
                   "the paper protocol (default 1000 = paper; 0 = all)")
    e.add_argument("--train-examples", type=_non_negative, default=None,
                   help="training examples of the train rows (default 100 = paper; 0 = all)")
    e.add_argument("--lb-examples", type=_non_negative, default=None,
                   help="default protocol: test examples for the bound (default 0 = all)")
    e.add_argument("--lb-k", type=_positive, default=None,
                   help="default protocol: proposal draws per example for the bound (default 1)")
    e.add_argument("--n-samples", type=_positive, default=None,
                   help="samples for Parzen and classifier (default 10000 = paper)")
    e.add_argument("--steps", type=_non_negative, default=None,
                   help="sampling steps T' of the sample metrics (0 = config's); Parzen uses "
                   "the training T in the paper protocol")
    e.add_argument("--parzen-valid", type=_non_negative, default=None,
                   help="validation examples for σ (0 = all)")
    e.add_argument("--parzen-test", type=_non_negative, default=None,
                   help="test examples for Parzen (0 = all)")
    e.add_argument("--memo-samples", type=_non_negative, default=None,
                   help="samples in the memorisation check (default 1000)")
    e.add_argument("--extractor", default=None, help="feature extractor: mnist-cnn (default), "
                   "torchscript or inception (the last two need --extractor-path)")
    e.add_argument("--extractor-path", help="TorchScript feature model file")
    e.add_argument("--batch-size", type=_positive, default=None,
                   help="rows per forward pass (default 1000); memory does not grow with k")
    e.add_argument("--seed", type=_non_negative, default=None, help="seed of every random draw")
    e.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, …")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.add_argument("--overwrite", action="store_true", help="replace an existing report")
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
    b.add_argument("--preset", required=True, help="the preset whose model and batch are timed")
    b.add_argument("--steps", type=_positive, default=20, help="timed training steps (at least)")
    b.add_argument("--batch-size", type=_non_negative, default=0, help="default: the preset's")
    b.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, …")
    b.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override, e.g. --set train.precision=bf16 (repeatable)")
    b.add_argument("--json", help="also write the figures to this JSON file")
    b.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    b.add_argument("--matmul-size", type=int, default=0,
                   help="side of the peak-measuring matrices (default 2048 CPU, 8192 GPU)")
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser("presets", help="list presets with their descriptions, or show one")
    r.add_argument("name", nargs="?", help="a preset to show in full")
    r.add_argument("--verbose", "-v", action="store_true", help="print each preset's full config")
    r.set_defaults(func=cmd_presets)
    return p


CHECKPOINT_HELP = ("a checkpoint file, a run directory (its latest checkpoint) or an exported "
                   "model folder (config.json + model.safetensors)")


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def parse_seeds_arg(text: str) -> list[int]:
    from .sample import parse_seeds

    try:
        return parse_seeds(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user error is one ``error:`` line (exit 2), a stop by SIGINT/SIGTERM
    one ``stopped:`` line (exit 130); anything else is a bug and keeps its traceback (exit 1)."""
    args = build_parser().parse_args(argv)
    from .trainer import Interrupted

    try:
        args.func(args)
    except Interrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): nothing to report
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except (UserError, OSError) as e:  # OSError: a path, permission or full disk, named
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 — anything else is a bug: keep its traceback
        traceback.print_exc()
        print("This is a bug in infusion, not a problem with your input: please report it "
              "with the traceback above.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
