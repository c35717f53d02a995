"""The model card of an export: ``README.md`` beside ``config.json`` and ``model.safetensors``,
saying what the model is, on which data, how it was trained (the commands and environment a
run directory recorded) and how it scored (an evaluation report's table), and which library
version wrote it."""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..config import Config, describe
from ..figures import read_metric_rows
from .report import markdown


def run_directory(checkpoint: str | Path) -> Path | None:
    """The run directory a checkpoint file or run directory belongs to (None for an export)."""
    p = Path(checkpoint)
    if (p / "config.json").is_file() and (p / "checkpoints").is_dir():
        return p
    if p.is_file() and p.parent.name == "checkpoints":
        return p.parent.parent
    return None


def model_card(path: str | Path, cfg: Config, shape, *, run_dir: Path | None = None,
               report: dict | None = None) -> str:
    """The card's markdown for the export at ``path`` (its commands use that path; its title is
    the folder's name). ``run_dir``: where the training commands, epochs and environment are
    read from; ``report``: an ``infusion evaluate`` report whose table is included."""
    name = Path(path).name
    m, mc, tc = cfg.method, cfg.model, cfg.train
    body = f"{mc.net} body {'×'.join(str(h) for h in mc.hidden)}"
    about = ""
    if cfg.preset:
        try:
            about = f" Preset `{cfg.preset}`: {describe(cfg.preset)}."
        except Exception:  # noqa: BLE001 — a preset of another version
            about = f" Preset `{cfg.preset}`."
    lines = [f"# {name}", "",
             (f"A Markov chain trained with method `{m.name}` (T = {m.T}, {body}) on data "
              f"`{cfg.data.name}`, states of "
              f"shape {tuple(int(s) for s in shape)}, written by infusion {__version__}; its "
              f"per-step batch-norm statistics are included.{about}"), "",
             "```bash", f"infusion sample --checkpoint {path} --n 64 --out samples.npz",
             f"infusion evaluate --checkpoint {path}", "```", "",
             "```python", "import infusion", "",
             f'model, cfg = infusion.load_model("{path}")',
             "samples = infusion.sample_chain(model, 16, seed=0).means", "```", "",
             "## Training", ""]
    lines += _training(cfg, run_dir)
    lines += ["", "## Evaluation", ""]
    if report is not None:
        table = markdown(report).splitlines()
        lines += table[2:]  # without its title
    else:
        lines += [f"Not evaluated when exported: `infusion evaluate --checkpoint {path}`."]
    if tc.init_from:
        lines += ["", f"Fine-tuned from `{Path(tc.init_from).name}` (`train.init_from`)."]
    return "\n".join(lines).rstrip() + "\n"


def _training(cfg: Config, run_dir: Path | None) -> list[str]:
    tc = cfg.train
    out = [f"Adam, rate {tc.lr:g} ({tc.lr_schedule}), batch {tc.batch_size}, at most "
           f"{tc.epochs} epochs" + (f", EMA {tc.ema:g}" if tc.ema else "")
           + (f", early stopping after {tc.patience} epochs without improvement"
              if tc.patience else "") + "."]
    if run_dir is None:
        return out
    env = run_dir / "environment.json"
    try:
        entries = json.loads(env.read_text()) if env.is_file() else []
    except (OSError, ValueError):
        entries = []
    if entries:
        out += ["", "Commands (each start or resume of the run):", "", "```bash"]
        out += [" ".join(e.get("command") or ["?"]) for e in entries]
        out += ["```", ""]
        e = entries[-1]
        out.append(f"Environment: infusion {e.get('infusion')}"
                   + (f" ({e['git_commit']})" if e.get("git_commit") else "")
                   + f", torch {e.get('torch')}, {e.get('cuda_device') or e.get('device')}, "
                   f"{e.get('threads')} threads, {e.get('platform')}.")
    rows_file = run_dir / "metrics.jsonl"
    if rows_file.is_file():
        rows = read_metric_rows(rows_file)  # older runs' bound keys say their mode
        best = [r for r in rows if "valid_bound_population" in r]
        if best:
            b = max(best, key=lambda r: r["valid_bound_population"])
            out += ["", (f"{len(rows)} epochs trained; the weights are those of the best "
                         f"validation bound (population statistics, {tc.valid_examples:,} "
                         f"examples, k = 1), {b['valid_bound_population']:.1f} nats at epoch "
                         f"{b['epoch']}.")]
    return out
