"""Command line: ``infusion train | demo | sample | export | inpaint | figures | evaluate | data |
bench | presets``: the parser and :func:`main`; the commands themselves are in
:mod:`infusion.cli.commands`.

Every user error (bad config, unknown preset, missing checkpoint, corrupt data, an output
that exists) is printed as one ``error: …`` line and exits with status 2, without a
traceback; an internal error keeps its traceback and says it is a bug (status 1).
The library's messages are printed as plain lines; ``infusion --quiet COMMAND`` keeps only
warnings and hides progress bars (a command's own ``--quiet`` hides the bars alone),
``infusion -v COMMAND`` adds debug messages.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable

from .. import __version__
from ..config.presets import PRESETS
from ..errors import InputError, UserError
from ..limits import (
    BATCH_MAX,
    CHAINS_MAX,
    CLASSES_MAX,
    DRAWS_MAX,
    EXAMPLES_MAX,
    IMAGE_SIDE_MAX,
    MATMUL_MAX,
    REPEATS_MAX,
    SAMPLES_MAX,
    SEED_MAX,
    STEPS_MAX,
)
from . import commands as c

CHECKPOINT_HELP = ("a checkpoint file, a run directory (its latest checkpoint) or an exported "
                   "model folder (config.json + model.safetensors)")


def _whole(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``lo`` to ``hi`` (the bounds of infusion.limits)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {lo} and <= {hi:,}, "
                                             f"got {text!r}")
        return value

    return parse


def _fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1 (DDIM's η)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def parse_seeds_arg(text: str) -> list[int]:
    from ..generate.files import parse_seeds  # here: `infusion --help` does not load torch

    try:
        return parse_seeds(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_classes_arg(text: str) -> list[int]:
    from ..generate.files import parse_seeds  # here: `infusion --help` does not load torch

    try:
        return parse_seeds(text, "--classes", CLASSES_MAX - 1)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infusion", description=(
        "Generative models learned as the transition operator of a Markov chain: "
        "infusion training and its baselines."))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("--quiet", dest="global_quiet", action="store_true",
                      help="print warnings only: no progress messages, no progress bars")
    loud.add_argument("-v", "--verbose", dest="debug", action="store_true",
                      help="print debug messages too")
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
        sp.add_argument("--quiet", action="store_true",
                        help="no progress bars (infusion --quiet COMMAND: warnings only too)")

    t = sub.add_parser("train", help="train a preset, a config file or your own data into a "
                       "run directory")
    t.add_argument("--preset", help=f"one of: {', '.join(sorted(PRESETS))}")
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
    t.set_defaults(func=c.cmd_train)

    d = sub.add_parser("demo", help="train the mnist-demo preset on the CPU and write figures")
    common(d, "runs/mnist-demo")
    d.set_defaults(func=c.cmd_demo)

    s = sub.add_parser("sample", help="draw samples from a checkpoint, run directory or export")
    s.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    s.add_argument("--n", type=_whole(1, SAMPLES_MAX), default=None,
                   help="number of samples (default 64)")
    s.add_argument("--seeds", type=parse_seeds_arg, help="seed list, e.g. 0-63 or 1,5,9 "
                   "(instead of --n/--seed); each sample depends on its seed only")
    s.add_argument("--steps", type=_whole(0, STEPS_MAX), default=0,
                   help="sampling steps T' (default: the run's sample.steps)")
    s.add_argument("--seed", type=_whole(0, SEED_MAX), default=None,
                   help="sample i uses seed SEED+i (default 0)")
    s.add_argument("--out", required=True, help="output .npz (a .png grid is written beside it)")
    s.add_argument("--png-dir", help="also write one PNG per seed (seed-NNNNNN.png) here")
    cls = s.add_mutually_exclusive_group()
    cls.add_argument("--class", dest="class_", type=_whole(0, CLASSES_MAX - 1),
                     help="class-conditional model: draw every sample of this class")
    cls.add_argument("--classes", type=parse_classes_arg,
                     help="class-conditional model: the same seeds for each of these classes, "
                          "e.g. 0-9 (one grid row per class)")
    s.add_argument("--sampler", help="default: the run's sample.sampler; ancestral (every "
                   "method), ddim and dpm++2m for diffusion models, euler and heun for flow models")
    s.add_argument("--eta", type=_fraction, help="DDIM's stochasticity (0 deterministic, 1 ancestral)")
    s.add_argument("--batch-size", type=_whole(1, BATCH_MAX), default=500, help="samples per batch")
    s.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, …")
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    s.set_defaults(func=c.cmd_sample)

    x = sub.add_parser("export", help="write a model as config.json + model.safetensors "
                       "(loadable by infusion.load_model and every --checkpoint)")
    x.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    x.add_argument("--out", required=True, help="output directory")
    x.add_argument("--report", help="an `infusion evaluate` report.json whose table the model "
                   "card (README.md) shows (default: the run's eval/report.json, if any)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing export")
    x.set_defaults(func=c.cmd_export)

    ip = sub.add_parser("inpaint", help="complete test images with the observed part clamped "
                        "(paper Fig. 5)")
    ip.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    ip.add_argument("--mask", required=True,
                    help="observed part: top, bottom, left, right, or a .png/.npy H×W mask file "
                         "(nonzero = observed)")
    ip.add_argument("--chains", type=_whole(1, CHAINS_MAX), default=5, help="completions per image")
    ip.add_argument("--n", type=_whole(1, SAMPLES_MAX), default=8, help="images (the first N of --split)")
    ip.add_argument("--split", default="test", choices=("train", "valid", "test"))
    ip.add_argument("--steps", type=_whole(0, STEPS_MAX), default=0,
                    help="sampling steps T' (default: the run's sample.steps)")
    ip.add_argument("--seed", type=_whole(0, SEED_MAX), default=0, help="chain k of image i uses SEED+i*K+k")
    ip.add_argument("--out", default="inpaint", help="output directory (inpaint.png, inpaint.npz)")
    ip.add_argument("--classify", metavar="EXTRACTOR",
                    help="score the completions with an independent classifier (e.g. mnist-cnn; "
                         "writes inpaint_scores.json)")
    ip.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, …")
    ip.add_argument("--overwrite", action="store_true", help="replace existing output files")
    ip.set_defaults(func=c.cmd_inpaint)

    fg = sub.add_parser("figures", help="the paper's figures (1, 2, 3, 4, 7), likelihood against k "
                        "and walkback reversibility, from a run directory")
    fg.add_argument("--run-dir", required=True, help="a run directory made by infusion train")
    fg.add_argument("--out", help="output directory (default RUN_DIR/figures)")
    fg.add_argument("--n", type=_whole(1, CHAINS_MAX), default=8, help="chains / targets per figure")
    fg.add_argument("--seed", type=_whole(0, SEED_MAX), default=0, help="seed of the figures' chains")
    fg.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, …")
    fg.add_argument("--overwrite", action="store_true", help="replace existing figures")
    fg.set_defaults(func=c.cmd_figures)

    e = sub.add_parser("evaluate", help="lower bound, IS, Parzen and sample-quality metrics "
                       "of a checkpoint, as report.json + report.md")
    e.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    e.add_argument("--protocol", choices=("default", "paper"), default="default", help=(
        "default: cheap (minutes on a CPU for MNIST): the bound with k=1 on the whole test set, "
        "IS with k=100 on 1000 test examples, 1 repeat. paper: Tables 1 and 2 as algorithms.md "
        "§7-8 describe them: k=20,000 draws on the first 1,000 test examples (bound and IS from "
        "the same draws), 10 repeats, the train rows (100 examples), the isotropic IS with one "
        "variance chosen on validation, Parzen on 10,000 means after the training T at σ=0.17 "
        "and at σ chosen on validation. The full paper protocol makes 4.4e8 proposal draws for "
        "the mnist model (2x1200 MLP, T=15): days on a CPU, minutes on a data-centre GPU "
        "(docs/results.md); --k, --repeats and --examples reduce it, and the report states "
        "every reduction"))
    e.add_argument("--bn-stats", choices=("stored", "ema", "batch"), default=None, help=(
        "per-step batch-norm statistics of the evaluation (docs/algorithms.md §6): stored "
        "(default; the pass over the training set, exact averages: a fixed model), ema (the "
        "authors' moving average, recomputed: a fixed model) or batch (TRANSDUCTIVE: every "
        "example normalised with its evaluation batch, not the density of a fixed model; the "
        "paper's mode for its train row)"))
    e.add_argument("--stats-spread", type=_whole(0, REPEATS_MAX), default=None, help=(
        "re-run the statistics pass with this many other seeds and report how far the bound "
        "(k = 1) moves (default 0; paper protocol 3)"))
    e.add_argument("--metrics", default=None,
                   help="comma list of lb,is,is-iso,lb-train,is-train,is-iso-train,"
                   "lb-train-batch,is-train-batch,parzen,fid,"
                   "kid,precision,score,coverage,memorisation,reversibility (walkback); "
                   "'default' = lb,is,parzen and the sample metrics, 'paper' = the likelihood "
                   "rows and parzen, 'all' (default: the protocol's)")
    e.add_argument("--out", help="report .json (default: RUN_DIR/eval/report.json); rewritten "
                   "after every metric and repetition")
    e.add_argument("--k", type=_whole(1, DRAWS_MAX), default=None,
                   help="IS draws per example (default 100; paper 20,000)")
    e.add_argument("--repeats", type=_whole(1, REPEATS_MAX), default=None,
                   help="repeated likelihood evaluations (default 1; paper 10)")
    e.add_argument("--examples", "--is-examples", dest="examples", type=_whole(0, EXAMPLES_MAX),
                   default=None, help="test examples for the likelihood: IS, and the bound in "
                   "the paper protocol (default 1000 = paper; 0 = all)")
    e.add_argument("--train-examples", type=_whole(0, EXAMPLES_MAX), default=None,
                   help="training examples of the train rows (default 100 = paper; 0 = all)")
    e.add_argument("--lb-examples", type=_whole(0, EXAMPLES_MAX), default=None,
                   help="default protocol: test examples for the bound (default 0 = all)")
    e.add_argument("--lb-k", type=_whole(1, DRAWS_MAX), default=None,
                   help="default protocol: proposal draws per example for the bound (default 1)")
    e.add_argument("--n-samples", type=_whole(1, SAMPLES_MAX), default=None,
                   help="samples for Parzen and classifier (default 10000 = paper)")
    e.add_argument("--steps", type=_whole(0, STEPS_MAX), default=None,
                   help="sampling steps T' of the sample metrics (0 = config's); Parzen uses "
                   "the training T in the paper protocol")
    e.add_argument("--sampler", help="the sample metrics' sampler (default: the run's "
                   "sample.sampler; the model's method names those it runs)")
    e.add_argument("--eta", type=_fraction, help="DDIM's stochasticity (default: the run's)")
    e.add_argument("--parzen-valid", type=_whole(0, EXAMPLES_MAX), default=None,
                   help="validation examples for σ (0 = all)")
    e.add_argument("--parzen-test", type=_whole(0, EXAMPLES_MAX), default=None,
                   help="test examples for Parzen (0 = all)")
    e.add_argument("--memo-samples", type=_whole(0, SAMPLES_MAX), default=None,
                   help="samples in the memorisation check (default 1000)")
    e.add_argument("--extractor", default=None, help="feature extractor: the data set's own "
                   "classifier (default: mnist-cnn, fashion-cnn for Fashion-MNIST), torchscript "
                   "(needs --extractor-path) or inception (torch-fidelity's "
                   "Inception-v3, pip install 'infusion-training[inception]', or a TorchScript "
                   "one)")
    e.add_argument("--extractor-path", help="TorchScript feature model file, or torch-fidelity's "
                   "Inception weights file (then nothing is downloaded)")
    e.add_argument("--batch-size", type=_whole(1, BATCH_MAX), default=None,
                   help="rows per forward pass (default 1000 on a CPU, 20000 on CUDA); memory "
                   "does not grow with k")
    e.add_argument("--seed", type=_whole(0, SEED_MAX), default=None, help="seed of every random draw")
    e.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, …")
    e.add_argument("--quiet", action="store_true",
                   help="no progress bars (infusion --quiet COMMAND: warnings only too)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing report")
    e.set_defaults(func=c.cmd_evaluate)

    g = sub.add_parser("data", help="fetch and verify a data set into the cache ($INFUSION_CACHE)")
    g.add_argument("--idx-dir", help="directory holding the four official IDX files of "
                   "MNIST or Fashion-MNIST")
    g.add_argument("--name", default="mnist",
                   help="mnist, fashion (Fashion-MNIST; on Debian/Ubuntu `apt-get install "
                   "dataset-fashion-mnist`, else downloaded), cifar10, svhn, celeba, tfd or "
                   "folder (default: mnist)")
    g.add_argument("--path", default="", help="user-supplied source: CelebA zip or folder, "
                   "TFD_48x48.mat, a folder of images, or a local copy of the official file")
    g.add_argument("--image-size", type=_whole(0, IMAGE_SIDE_MAX), default=0, help="folder: side of the crops (64)")
    g.set_defaults(func=c.cmd_data)

    b = sub.add_parser("bench", help="training/sampling speed of a preset next to the "
                       "device's matrix-multiply peak")
    b.add_argument("--preset", required=True, help="the preset whose model and batch are timed")
    b.add_argument("--steps", type=_whole(1, STEPS_MAX), default=20, help="timed training steps (at least)")
    b.add_argument("--batch-size", type=_whole(0, BATCH_MAX), default=0, help="default: the preset's")
    b.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, …")
    b.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override, e.g. --set train.precision=bf16 (repeatable)")
    b.add_argument("--json", help="also write the figures to this JSON file")
    b.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    b.add_argument("--matmul-size", type=_whole(0, MATMUL_MAX), default=0,
                   help="side of the peak-measuring matrices (default 2048 CPU, 8192 GPU)")
    b.set_defaults(func=c.cmd_bench)

    r = sub.add_parser("presets", help="list presets with their descriptions, or show one")
    r.add_argument("name", nargs="?", help="a preset to show in full")
    r.add_argument("--verbose", "-v", action="store_true", help="print each preset's full config")
    r.set_defaults(func=c.cmd_presets)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user error is one ``error:`` line (exit 2), a stop by SIGINT/SIGTERM
    one ``stopped:`` line (exit 130); anything else is a bug and keeps its traceback (exit 1)."""
    args = build_parser().parse_args(argv)
    args.quiet = args.global_quiet or getattr(args, "quiet", False)  # no progress bars
    level = logging.WARNING if args.global_quiet else logging.DEBUG if args.debug else logging.INFO
    from ..training.loop import Interrupted  # here: `infusion --help` does not load torch

    try:
        with c.messages(level):
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
