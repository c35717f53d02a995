"""The model card of an export: ``README.md`` beside ``config.json`` and ``model.safetensors``,
saying what the model is, on which data, how it was trained (the commands and environment a
run directory recorded) and how it scored (an evaluation report's table), and which library
version wrote it. It opens with the YAML metadata that model hubs read (library, tags, data
set, and each evaluated metric with its value under ``model-index``)."""

from __future__ import annotations

import html
import json
import logging
import math
import re
import shlex
from pathlib import Path

from .. import __version__
from ..config import Config, describe
from ..errors import InputError
from ..figures import read_metric_rows
from ..io import read_json
from .report import markdown, report_metrics

logger = logging.getLogger(__name__)

# data sets under their Hugging Face Hub names, for the card's metadata
HUB_DATASETS = {"mnist": ("ylecun/mnist", "MNIST"),
                "fashion": ("zalando-datasets/fashion_mnist", "Fashion-MNIST"),
                "cifar10": ("uoft-cs/cifar10", "CIFAR-10"), "svhn": ("ufldl-stanford/svhn", "SVHN"),
                "celeba": ("tpremoli/CelebA-attrs", "CelebA")}
# the card's names of the report's metrics (nats per example for the likelihoods)
METRIC_NAMES = {"lb": "lower bound (nats)", "is": "IS estimate (nats)",
                "parzen": "Parzen window, σ chosen on validation (nats)",
                "fid": "Fréchet distance (classifier features)", "kid": "KID (classifier features)",
                "precision": "precision (classifier features)",
                "recall": "recall (classifier features)"}


# an absolute path of this machine (or ~/…), the last component kept as group 1
_MACHINE_PATH = re.compile(r"(?<![\w.~-])~?/(?:[^\s/'\"`|<>(),;]+/)*([^\s/'\"`|<>(),;]+)")


def _plain(text) -> str:
    """Text from a config, a run directory or a report as the card's markdown shows it: every
    absolute path of the machine it was made on cut to its last component, and HTML's special
    characters escaped, so the card carries no machine path and no raw HTML."""
    return html.escape(_MACHINE_PATH.sub(r"\1", str(text)), quote=False)


def _inline(text) -> str:
    """:func:`_plain`, with backticks as quotes (for text inside a code span or a sentence)."""
    return _plain(text).replace("`", "'")


def check_report(report: dict, fingerprint: str, where: str = "the report") -> None:
    """A card shows only its own model's evaluation: ``report`` must carry the fingerprint
    (``model_sha256``) of the exported model, ``fingerprint``
    (:func:`~infusion.models.model_fingerprint`); else
    :class:`~infusion.errors.InputError`, naming ``where`` (the report's file)."""
    found = report.get("model_sha256") if isinstance(report, dict) else None
    if not isinstance(found, str):
        raise InputError(f"{where} carries no model fingerprint (model_sha256, which "
                         "infusion evaluate records), so it cannot be checked to be this "
                         "model's evaluation: evaluate this model again (infusion evaluate "
                         "--checkpoint ... --overwrite), or pass --report with its report")
    if found != fingerprint:
        raise InputError(f"{where} is the evaluation of another model (fingerprint "
                         f"{found[:12]}…, this model's {fingerprint[:12]}…): evaluate this model "
                         "(infusion evaluate --checkpoint ... --overwrite), or pass --report "
                         "with its report")


def _q(value) -> str:
    """A YAML scalar: JSON's quoting is valid YAML and escapes every character that could
    break the header."""
    return json.dumps(value, ensure_ascii=False)


def metadata(name: str, cfg: Config, report: dict | None) -> list[str]:
    """The card's YAML header: library, tags, data set and, from ``report``, each metric with
    its value (``model-index``), between ``---`` lines."""
    data = HUB_DATASETS.get(cfg.data.name)
    tags = list(dict.fromkeys(["infusion", "markov-chain", "generative-model", cfg.method.name,
                               cfg.data.name]))  # the method may be "infusion" too
    lines = ["---", "library_name: infusion", "tags:"] + [f"- {_q(t)}" for t in tags]
    if data:
        lines += ["datasets:", f"- {_q(data[0])}", "pipeline_tag: unconditional-image-generation"]
    found = {k: m for k, m in report_metrics(report or {}).items()
             if k in METRIC_NAMES and math.isfinite(m.value)}
    if found:
        dataset = data or (cfg.data.name, cfg.data.name)
        lines += ["model-index:", f"- name: {_q(name)}", "  results:", "  - task:",
                  "      type: unconditional-image-generation"
                  if data else "      type: density-estimation",
                  "    dataset:", f"      type: {_q(dataset[0])}", f"      name: {_q(dataset[1])}",
                  "      split: test", "    metrics:"]
        for key, m in found.items():
            lines += [f"    - type: {_q(key)}", f"      name: {_q(METRIC_NAMES[key])}",
                      f"      value: {_q(float(m.value))}"]
    return lines + ["---", ""]


def run_directory(checkpoint: str | Path) -> Path | None:
    """The run directory a checkpoint file or run directory belongs to (None for an export)."""
    p = Path(checkpoint)
    if (p / "config.json").is_file() and (p / "checkpoints").is_dir():
        return p
    if p.is_file() and p.parent.name == "checkpoints":
        return p.parent.parent
    return None


def model_card(path: str | Path, cfg: Config, shape, *, run_dir: Path | None = None,
               report: dict | None = None, fingerprint: str | None = None,
               checkpoint: str | Path | None = None) -> str:
    """The card's markdown for the export at ``path`` (its title and commands name the
    folder, not its path). ``run_dir``: where the training commands, epochs and environment
    are read from; ``report``: an ``infusion evaluate`` report whose table is included, which
    with ``fingerprint`` (the exported model's) must be this model's (:func:`check_report`);
    ``checkpoint``: the file the weights come from (a training checkpoint is not called the
    best). The card holds no path of the machine and no raw HTML: every string it did not
    write itself goes through :func:`_plain`."""
    if report is not None and fingerprint is not None:
        check_report(report, fingerprint)
    name = Path(path).name
    here = _inline(shlex.quote(name))
    m, mc, tc = cfg.method, cfg.model, cfg.train
    body = f"{mc.net} body {'×'.join(str(h) for h in mc.hidden)}"
    about = ""
    if cfg.preset:
        try:
            about = f" Preset `{_inline(cfg.preset)}`: {_plain(describe(cfg.preset))}."
        except Exception:  # noqa: BLE001 — a preset of another version
            about = f" Preset `{_inline(cfg.preset)}`."
    lines = metadata(name, cfg, report) + [f"# {_inline(name)}", "",
             (f"A Markov chain trained with method `{m.name}` (T = {m.T}, {body}) on data "
              f"`{cfg.data.name}`, states of "
              f"shape {tuple(int(s) for s in shape)}, written by infusion {__version__}; its "
              f"per-step batch-norm statistics are included.{about}"), "",
             "```bash", f"infusion sample --checkpoint {here} --n 64 --out samples.npz",
             f"infusion evaluate --checkpoint {here}", "```", "",
             "```python", "import infusion", "",
             f"model, cfg = infusion.load_model({_inline(json.dumps(name))})",
             "samples = infusion.sample_chain(model, 16, seed=0).means", "```", "",
             "## Training", ""]
    lines += _training(cfg, run_dir, checkpoint)
    lines += ["", "## Evaluation", ""]
    if report is not None:
        table = markdown(report).splitlines()
        lines += [_plain(line) for line in table[2:]]  # without its title
    else:
        lines += [f"Not evaluated when exported: `infusion evaluate --checkpoint {here}`."]
    if tc.init_from:
        lines += ["", (f"Fine-tuned from `{_inline(Path(tc.init_from).name)}` "
                       "(`train.init_from`).")]
    return "\n".join(lines).rstrip() + "\n"


def _training(cfg: Config, run_dir: Path | None, checkpoint: str | Path | None = None
              ) -> list[str]:
    tc = cfg.train
    out = [f"Adam, rate {tc.lr:g} ({tc.lr_schedule}), batch {tc.batch_size}, at most "
           f"{tc.epochs} epochs" + (f", EMA {tc.ema:g}" if tc.ema else "")
           + (f", early stopping after {tc.patience} epochs without improvement"
              if tc.patience else "") + "."]
    if run_dir is None:
        return out
    entries = environment_entries(run_dir / "environment.json")
    if entries:
        out += ["", "Commands (each start or resume of the run):", "", "```bash"]
        out += [_plain(" ".join(e.get("command") or ["?"])) for e in entries]
        out += ["```", ""]
        e = entries[-1]
        out.append(_plain(f"Environment: infusion {e.get('infusion')}"
                          + (f" ({e['git_commit']})" if e.get("git_commit") else "")
                          + f", torch {e.get('torch')}, "
                          f"{e.get('cuda_device') or e.get('device')}, "
                          f"{e.get('threads')} threads, {e.get('platform')}."))
    rows_file = run_dir / "metrics.jsonl"
    if rows_file.is_file():
        rows = read_metric_rows(rows_file)  # older runs' bound keys say their mode
        best = [r for r in rows if r.get("valid_bound_population") is not None
                and math.isfinite(r["valid_bound_population"])]
        if best:
            b = max(best, key=lambda r: r["valid_bound_population"])
            bound = (f"validation bound (population statistics, {tc.valid_examples:,} "
                     f"examples, k = 1), {b['valid_bound_population']:.1f} nats at epoch "
                     f"{b['epoch']}")
            if checkpoint is None or Path(checkpoint).name == "final.pt":
                out += ["", (f"{len(rows)} epochs trained; the weights are those of the best "
                             f"{bound}.")]
            else:  # a training checkpoint: the weights of its epoch, not the best
                out += ["", (f"{len(rows)} epochs trained; the weights are those of the "
                             f"training checkpoint `{_inline(Path(checkpoint).name)}`, not of "
                             f"the run's best {bound}.")]
    return out


def environment_entries(path: Path) -> list[dict]:
    """The entries of a run's ``environment.json`` (one object per start or resume of the
    run), for the card: none where the file is absent. A file that cannot be read or is not
    a JSON list, an entry that is not an object and a command that is not a list of strings
    are left out, and a warning says so."""
    if not path.is_file():
        return []
    try:
        value = read_json(path, "environment file")
    except InputError as e:
        logger.warning(f"{e}; the model card shows no commands")
        return []
    if not isinstance(value, list):
        logger.warning(f"environment file {str(path)!r} does not hold a JSON list of "
                       "objects; the model card shows no commands")
        return []
    entries = [dict(e) for e in value if isinstance(e, dict)]
    for e in entries:
        command = e.get("command")
        if command is not None and not (isinstance(command, list)
                                        and all(isinstance(a, str) for a in command)):
            e["command"] = None
    skipped = len(value) - len(entries) + sum(e["command"] is None for e in entries
                                              if "command" in e)
    if skipped:
        logger.warning(f"environment file {str(path)!r}: left out {skipped} entr"
                       f"{'y' if skipped == 1 else 'ies'} or command(s) that are not what "
                       "infusion writes (an object; a list of strings)")
    return entries
