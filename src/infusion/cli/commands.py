"""The command-line commands (``infusion train``, ``sample``, …): each ``cmd_*`` takes the
parsed arguments of :mod:`infusion.cli` and calls the library. User errors are raised as
:class:`~infusion.errors.UserError`; :func:`infusion.cli.main` prints them as one line.
The library's messages (the ``infusion`` loggers) are printed as plain lines by
:class:`Terminal`, which :func:`infusion.cli.main` installs for the command's run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from .. import config as config_mod
from ..config.schema import CONFIG_FILE_MAX, parse_text
from ..errors import InputError
from ..io import all_or_nothing, atomic_write, check_outputs
from ..limits import SAMPLES_MAX

# Each command imports the library (torch, numpy, …) inside itself: `infusion --help` and the
# parser load this module, and with them only the config and the standard library.


def say(message: str) -> None:
    """Print a line; if stdout has gone (piped into ``head``) or cannot be written (a full
    disk, /dev/full), keep working silently: the work matters more than its log."""
    try:
        print(message, flush=True)
    except OSError as e:
        if not isinstance(e, BrokenPipeError):
            print(f"warning: cannot write to stdout ({e}); continuing without it",
                  file=sys.stderr)
        _drop_stdout()


class Terminal(logging.Handler):
    """The library's messages as the command line prints them: each message as it is, on
    stdout (stderr inside :meth:`to_stderr`), a warning after ``warning:``."""

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.stderr = False

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"warning: {text}"
        if self.stderr:
            print(text, file=sys.stderr, flush=True)
        else:
            say(text)

    @contextlib.contextmanager
    def to_stderr(self) -> Iterator[None]:
        """Messages to stderr inside the block (where stdout carries the command's result)."""
        saved, self.stderr = self.stderr, True
        try:
            yield
        finally:
            self.stderr = saved


TERMINAL = Terminal()


@contextlib.contextmanager
def messages(level: int = logging.INFO) -> Iterator[Terminal]:
    """Print the library's messages of ``level`` and above (:class:`Terminal`) inside the
    block; the ``infusion`` logger is as it was afterwards."""
    logger = logging.getLogger("infusion")
    saved = logger.level
    TERMINAL.setLevel(level)
    logger.addHandler(TERMINAL)
    logger.setLevel(level)
    try:
        yield TERMINAL
    finally:
        logger.removeHandler(TERMINAL)
        logger.setLevel(saved)


def _drop_stdout() -> None:
    """Send the rest of stdout (what is buffered too) to /dev/null."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):  # no file descriptor (captured output)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 — stays open for the process


def _free(paths: list[Path], overwrite: bool) -> None:
    """Refuse to replace a user's files unless ``--overwrite``; refuse directories always."""
    for p in paths:
        if p.is_dir():
            raise InputError(f"output {str(p)!r} is a directory; expected a file name")
        if os.path.lexists(p) and not overwrite:
            raise InputError(f"output {str(p)!r} exists; pass --overwrite to replace it")


def cmd_train(args: argparse.Namespace) -> None:
    # here: `infusion --help` does not load torch
    from ..training.loop import train

    if args.resume:
        if not args.run_dir:
            raise InputError("--resume needs --run-dir")
        if args.preset or args.config or args.data:
            raise InputError("--resume continues the run stored in --run-dir with its own "
                             "config and data; drop --preset/--config/--data (change train.* "
                             "with --set)")
        final = train(None, args.run_dir, resume=True, device=args.device, overrides=args.set,
                      progress=not args.quiet)
    elif args.data:  # the user's own data: infusion.fit builds the config around them
        # here: `infusion --help` does not load torch
        from ..training.fit import fit

        if args.preset and args.config:
            raise InputError("--data takes at most one of --preset NAME or --config FILE")
        base = config_mod.load_file(args.config) if args.config else args.preset
        final = fit(args.data, preset=base, run_dir=args.run_dir, overrides=args.set,
                    overwrite=args.overwrite, device=args.device,
                    progress=not args.quiet).checkpoint
    else:
        cfg = _config_from(args)
        run_dir = args.run_dir or f"runs/{args.preset or Path(args.config).stem}"
        final = train(cfg, run_dir, overwrite=args.overwrite, device=args.device,
                      progress=not args.quiet)
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
    """Train the ``mnist-demo`` preset (resuming an unfinished run) and say where everything is.

    The demo is a fixed amount of work (``train.epochs``, no time cap), so every machine ends
    with the same model; a few timed steps first say how long it will take here, and where a
    machine whose other work slows several threads below one, the run takes one thread.
    A run directory holding a run of another preset is refused, and so is ``--set`` for a
    finished demo (there is nothing left to change)."""
    # here: `infusion --help` does not load torch
    from ..device import resolve_device
    from ..training.bench import probe
    from ..training.loop import train

    run_dir = Path(args.run_dir)
    final = run_dir / "checkpoints" / "final.pt"
    _check_demo_dir(run_dir)
    if final.exists():
        if args.set:
            raise InputError(f"--set {args.set[0]!r}: {str(run_dir)!r} holds a finished demo "
                             "run, which --set cannot change (delete it, or use another "
                             "--run-dir, to train again)")
        say(f"{run_dir} already holds a finished demo run (delete it to train again)")
    else:
        resume = any((run_dir / "checkpoints").glob("epoch-*.pt"))
        cfg = config_mod.override(config_mod.preset("mnist-demo"), args.set)
        overrides = list(args.set)
        dev = resolve_device(args.device)
        if not resume and dev.type == "cpu" and not cfg.train.cpu_threads:
            p = probe(cfg, dev)
            say(f"mnist-demo: {cfg.train.epochs} epochs; {p['example_steps_per_s']:,.0f} "
                f"example-steps/s here on {p['threads']} thread(s)"
                + (f", {p['one_thread']:,.0f} on one" if p["one_thread"] else ""))
            if p["busy"]:
                say("  this machine is busy: its other work slows several torch threads below "
                    "one, so the demo trains on one thread (--set train.cpu_threads=N to "
                    "choose; the model is the same)")
                overrides.append("train.cpu_threads=1")
                cfg = config_mod.override(cfg, ["train.cpu_threads=1"])
            say(f"  about {p['run_s'] / 60:.0f} minutes ({p['epoch_s'] / 60:.1f} per epoch); "
                f"the model and its figures go to {run_dir}")
        train(None if resume else cfg, run_dir, resume=resume, device=args.device,
              overrides=overrides if resume else (), progress=not args.quiet)
    say(f"\nrun directory: {run_dir}")
    for name in ("samples.npz", "samples.png", "chains.png", "curve.png", "metrics.jsonl"):
        say(f"  {run_dir / name}")
    say(f"  {final}")


def _check_demo_dir(run_dir: Path) -> None:
    """``infusion demo`` trains, resumes or shows only a run of the ``mnist-demo`` preset: a
    run directory whose ``config.json`` names another preset (or none) is refused, before
    anything in it is read further or changed."""
    file = run_dir / "config.json"
    if not file.is_file():
        return
    with open(file, "rb") as f:
        saved = parse_text(f.read(CONFIG_FILE_MAX + 1), False, repr(str(file)))
    preset = saved.get("preset", "") if isinstance(saved, dict) else ""
    if preset != "mnist-demo":
        which = f"preset {preset!r}" if preset else "no preset (its config.json names none)"
        raise InputError(f"--run-dir {str(run_dir)!r} holds a run of {which}, not of the "
                         "demo's preset mnist-demo: use another --run-dir for the demo (infusion "
                         "train --resume --run-dir continues that run)")


def cmd_sample(args: argparse.Namespace) -> None:
    # here: `infusion --help` does not load torch
    from ..generate.files import sample_to_file

    out = Path(args.out)
    beside = [f for f, v in (("--n", args.n), ("--seed", args.seed)) if v is not None]
    if args.seeds and beside:  # --seeds names every sample: --n and --seed would be ignored
        raise InputError(f"{' and '.join(beside)} with --seeds: --seeds lists every sample's "
                         "seed (their number is the number of samples); pass --seeds alone, "
                         "or --n and --seed")
    n, seed = args.n or 64, args.seed or 0
    seeds = args.seeds or list(range(seed, seed + n))
    classes = args.classes if args.classes is not None else (
        None if args.class_ is None else [args.class_])
    if classes is not None and len(seeds) * len(classes) > SAMPLES_MAX:
        raise InputError(f"--classes: {len(classes):,} classes × {len(seeds):,} seeds are more "
                         f"than {SAMPLES_MAX:,} samples")
    labels = None if classes is None else [c for c in classes for _ in seeds]  # a row per class
    seeds = seeds if classes is None else seeds * len(classes)
    _free([out, out.with_suffix(".png")], args.overwrite)
    if args.png_dir and os.path.lexists(args.png_dir) and not Path(args.png_dir).is_dir():
        raise InputError(f"--png-dir {args.png_dir!r} exists and is not a folder")
    if args.png_dir:
        _free([Path(args.png_dir) / (f"seed-{s:06d}.png" if labels is None else
                                     f"class-{c}-seed-{s:06d}.png")
               for s, c in zip(seeds, labels or seeds)], args.overwrite)
    model, cfg = load_for_sampling(args.checkpoint, args.device)
    if labels is not None and not model.classes:
        raise InputError("--class/--classes: this model is unconditional (model.classes=0)")
    if args.sampler:
        model.sampler = args.sampler
    if args.eta is not None:
        model.eta = args.eta
    steps = args.steps or model.sample_steps
    per_class = len(seeds) // len(classes) if classes else None
    with all_or_nothing(overwrite=args.overwrite):  # created exclusively, unless --overwrite
        sample_to_file(model, out, n=len(seeds), steps=steps, seeds=seeds,
                       batch_size=args.batch_size, png_dir=args.png_dir, data=cfg.data,
                       labels=labels, nrow=per_class,
                       grid_max=len(seeds) if classes else 100, progress=not args.quiet)
    what = "" if classes is None else f" of classes {','.join(map(str, classes))}"
    say(f"wrote {len(seeds)} samples{what} ({steps} steps, {model.sampler}) to {out} and a grid "
        f"to {out.with_suffix('.png')}" + (f"; one PNG per sample in {args.png_dir}"
                                          if args.png_dir else ""))


def cmd_export(args: argparse.Namespace) -> None:
    """A run's model (with its batch-norm statistics) as config.json + model.safetensors, and
    its model card. The card shows only this model's evaluation: the report (``--report``, or
    the run's ``eval/report.json``) must carry this model's fingerprint, else the export is
    refused."""
    # here: `infusion --help` does not load torch
    from ..evaluate.card import check_report, model_card, run_directory
    from ..evaluate.report import read_report
    from ..models import (
        export_files,
        is_half_export,
        model_fingerprint,
        resolve,
        save_pretrained,
    )

    out = Path(args.out)
    half = is_half_export(out)  # a killed export's weights without config.json: replaced
    files = [*export_files(out), out / "README.md"]
    _free(files, args.overwrite)
    check_outputs(out, files, hint="export to another --out")  # only the library's own files
    run_dir = run_directory(args.checkpoint)
    report_file = Path(args.report) if args.report else (
        run_dir / "eval" / "report.json" if run_dir is not None else None)
    report = None
    if report_file is not None and (args.report or report_file.is_file()):
        report = read_report(report_file, "--report" if args.report else "the run's report")
    model, cfg = load_for_sampling(args.checkpoint, "cpu")
    if report is not None:  # a card shows only its own model's evaluation
        check_report(report, model_fingerprint(model), f"report {str(report_file)!r}")
    card = model_card(out, cfg, model.shape, run_dir=run_dir, report=report,
                      checkpoint=resolve(args.checkpoint) if run_dir is not None else None)
    with all_or_nothing(overwrite=args.overwrite or half):  # every file, created exclusively
        save_pretrained(model, cfg, out)
        atomic_write(out / "README.md", lambda tmp: tmp.write_text(card))
    say(f"exported {args.checkpoint} to {out} with its model card README.md (load with "
        f"infusion.load_model({str(out)!r}))")


def load_for_sampling(checkpoint: str, device: str = "auto"):
    """:func:`infusion.load_model`, telling stderr when statistics are computed."""
    # here: `infusion --help` does not load torch
    from ..models import load_model

    with TERMINAL.to_stderr():
        return load_model(checkpoint, device)


def cmd_inpaint(args: argparse.Namespace) -> None:
    """Complete test images whose observed part is clamped (algorithms.md §9, paper Fig. 5)."""
    # here: `infusion --help` does not load torch
    from ..generate.inpaint import inpaint, load_images, parse_mask, save_inpainting

    if args.classify:
        # here: only --classify loads infusion.evaluate (and `infusion --help` no torch)
        from ..evaluate.metrics import extractor_names

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
    with all_or_nothing(overwrite=args.overwrite):  # every file or none, created exclusively
        png, npz = save_inpainting(args.out, res, labels)
        if args.classify:
            # here: only --classify loads infusion.evaluate (and `infusion --help` no torch)
            from ..evaluate.metrics import get_extractor
            from ..generate.inpaint import classifier_consistency

            scores = classifier_consistency(res, labels, get_extractor(args.classify))
            scores.update(mask=args.mask, steps=steps, classifier=args.classify)
            path = Path(args.out) / "inpaint_scores.json"
            atomic_write(path, lambda tmp: tmp.write_text(json.dumps(scores, indent=1)))
    say(f"inpainted {len(images)} {args.split} images x {args.chains} chains ({steps} steps, mask "
          f"{args.mask}): figure {png}, arrays {npz}")
    if args.classify:
        say(f"classifier {args.classify}: {scores['completions']:.1%} of completions read as "
              f"the true digit (full images {scores['originals']:.1%}, observed part alone "
              f"{scores['masked']:.1%}); {scores['classes_per_image']:.2f} classes per image "
              f"across chains -> {path}")


def cmd_figures(args: argparse.Namespace) -> None:
    """The paper's figures from a run directory."""
    # here: `infusion --help` does not load torch
    from ..evaluate.paper_figures import make_figures

    out = Path(args.out) if args.out else Path(args.run_dir) / "figures"
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise InputError(f"figures directory {str(out)!r} is not empty; pass --overwrite to "
                         "replace its figures")
    done = make_figures(args.run_dir, args.out, device=args.device, n=args.n, seed=args.seed)
    for name, what in done.items():
        say(f"{name}: {what}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Likelihood bounds, Parzen window and sample-quality metrics of a checkpoint,
    under the default protocol or the paper's (``--protocol paper``, reduced by --k, --repeats,
    --examples; algorithms.md §7–8)."""
    # here: `infusion --help` does not load torch
    from ..evaluate import EvalSettings, evaluate

    common = {"n_samples": args.n_samples, "steps": args.steps,
              "parzen_valid": args.parzen_valid, "parzen_test": args.parzen_test,
              "memo_samples": args.memo_samples, "extractor": args.extractor,
              "extractor_path": args.extractor_path or "", "batch_size": args.batch_size,
              "seed": args.seed, "sampler": args.sampler, "eta": args.eta,
              "bn_stats": args.bn_stats, "stats_spread": args.stats_spread}
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
             progress=not args.quiet, overwrite=args.overwrite)


def cmd_data(args: argparse.Namespace) -> None:
    """Fill and verify a data set's cache. Each option is for the sets that read it, and
    refused for the others: --idx-dir for mnist and fashion, --path for the image sets,
    --image-size for folder."""
    # here: `infusion --help` does not load torch
    from ..data import ensure, ensure_fashion, ensure_mnist

    idx_sets = {"mnist": ("MNIST", ensure_mnist), "fashion": ("Fashion-MNIST", ensure_fashion)}
    image_set = args.name not in idx_sets
    for option, value, read, readers in (
            ("--idx-dir", args.idx_dir, not image_set, "mnist and fashion"),
            ("--path", args.path, image_set, "the image sets: cifar10, svhn, celeba, tfd, folder"),
            ("--image-size", args.image_size, args.name == "folder", "folder")):
        if value and not read:
            raise InputError(f"{option} {value!r}: --name {args.name} does not read it (it is "
                             f"for {readers})")
    if args.name not in idx_sets:
        path = ensure(args.name, path=args.path, image_size=args.image_size)
        say(f"{args.name} ready: {path}")
        return
    title, ensure_set = idx_sets[args.name]
    say(f"{title} ready: {ensure_set(idx_dir=args.idx_dir)}")


def cmd_bench(args: argparse.Namespace) -> None:
    # here: `infusion --help` does not load torch
    from ..device import resolve_device
    from ..training.bench import bench, format_report

    if args.json:
        _free([Path(args.json)], args.overwrite)
    cfg = config_mod.override(config_mod.preset(args.preset), args.set)
    result = bench(cfg, resolve_device(args.device), steps=args.steps, batch_size=args.batch_size,
                   matmul_n=args.matmul_size or None)
    say(format_report(result))
    if args.json:
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
