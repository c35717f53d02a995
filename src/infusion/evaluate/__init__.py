"""Evaluation of a trained model: likelihood estimates (algorithms.md §7), Parzen window (algorithms.md §8),
sample quality from a classifier and the memorisation check, written as a JSON report and a
markdown table.

Two protocols: ``EvalSettings()`` (the default, minutes on a CPU) and ``EvalSettings.paper()``,
the paper's Table 1 and Table 2 exactly as algorithms.md §7–8 describe them (days on a CPU,
minutes on a data-centre GPU: :meth:`EvalSettings.paper`), which ``k``, ``repeats`` and
``examples`` may reduce. Every
likelihood and Parzen row of the report states how it differs from the paper's protocol. The
report (json and md) is rewritten atomically after every metric and every likelihood
repetition, so an interrupted evaluation leaves a valid report of what is done and missing.

Works on any method's checkpoint: metrics that need ``method.log_weight`` are skipped with a
note when the method has none; classifier metrics are skipped for data the extractor does not
take (e.g. 2-D toys, whose test split is ``toy(name, max(2, toy_size // 5), seed + 2)``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io import MANIFEST, clean_stale_temps, not_written_here, start_manifest
from .likelihood_rows import likelihood_rows
from .protocol import (  # noqa: F401  (the public names of infusion.evaluate)
    BN_STATS,
    DEFAULT_METRICS,
    METRICS,
    PAPER_COST,
    PAPER_METRICS,
    PAPER_MNIST,
    PAPER_PROTOCOL,
    PROTOCOLS,
    EvalSettings,
    parse_metrics,
)
from .report import ReportWriter, machine, markdown  # noqa: F401
from .sample_rows import sample_rows


def evaluate(source, metrics: Sequence[str] | str | None = None, out: str | Path | None = None,
             settings: EvalSettings | None = None, *, cfg=None, device: str = "auto",
             progress: bool = True, log: Callable[[str], object] = print,
             overwrite: bool = True) -> dict:
    """Evaluate a checkpoint file / run directory, or a ``(model, cfg=...)``; return the report.

    ``metrics`` default to the protocol's (``settings.protocol``: DEFAULT_METRICS or
    PAPER_METRICS). Writes ``out`` (report.json; default ``<run dir>/eval/report.json``),
    ``report.md`` beside it, ``samples.npz`` (the samples' means; ``parzen_samples.npz`` when
    Parzen's differ), ``per_example.npz`` and the memorisation figures. The report is
    rewritten after every metric and likelihood repetition; its ``status`` says what is done,
    running and missing (``"complete"`` at the end, ``"interrupted"`` if an error or a signal
    stopped it). ``overwrite=False`` refuses to replace an existing report or any of the
    files written beside it.
    """
    from ..device import resolve_device
    from ..methods import build_method

    s = (settings or EvalSettings()).validate()
    metrics = parse_metrics(metrics if metrics is not None else s.protocol)
    t_start = time.time()
    dev = resolve_device(device)
    if s.batch_size == 0:  # large batches keep a GPU busy
        s = replace(s, batch_size=20000 if dev.type == "cuda" else 1000)
    model, cfg, ckpt_path, notes = _load(source, cfg, dev, progress)
    if s.bn_stats == "ema":
        _moving_average_statistics(model, cfg, dev, progress)
        notes.append("batch-norm statistics recomputed as the authors' moving average (rate "
                      "0.1) over one pass of the training set; every row uses them")
    out = Path(out) if out is not None else _default_out(ckpt_path)
    if out.is_dir() or (out.exists() and not overwrite):
        raise InputError(f"report {str(out)!r} exists" + ("" if out.is_file() else " as a directory")
                         + "; pass --overwrite (or another --out) to replace it")
    taken = [p for p in report_files(out)[1:] if os.path.lexists(p)]
    if taken and not overwrite:  # the files written beside the report are replaced too
        raise InputError(f"{str(taken[0])!r} exists beside the report {str(out)!r} (the "
                         "evaluation writes it); pass --overwrite, or an --out in another folder")
    _claim_folder(out, [out, *taken] if os.path.lexists(out) else taken)
    clean_stale_temps(out.parent)  # what a killed evaluation's writes left there
    method = build_method(cfg.method)
    splits, labels = _splits(cfg, progress)
    s, cut = s.clamped({name: len(x) for name, x in splits.items()})
    for note in cut:
        log(note)
    notes += cut
    if labels:
        notes.append("class-conditional model (algorithms.md §15): the likelihood rows estimate "
                     "log p(x | y) with each example's own class; samples cycle through the "
                     "classes (sample i: class i mod model.classes)")
    report = {"checkpoint": ckpt_path, "preset": cfg.preset, "data": cfg.data.name,
              "method": cfg.method.name, "training_T": cfg.method.T,
              "protocol": {"name": s.protocol, "paper": PAPER_PROTOCOL,
                           "reductions": s.reductions(), "full_paper_cost": PAPER_COST},
              "status": {"state": "running", "done": [], "running": None,
                         "missing": list(metrics)},
              "bn_stats": {"mode": s.bn_stats, "meaning": BN_STATS[s.bn_stats]},
              "metrics": {}, "skipped": {}, "notes": notes, "settings": asdict(s),
              "seconds": {}, "machine": machine()}
    run = ReportWriter(out, report, log, t_start)
    run.save()
    with _terminate_interrupts():  # SIGTERM too leaves the report "interrupted"
        try:
            likelihood_rows(run, model, method, cfg, splits, metrics, s, progress, labels)
            sample_rows(run, model, cfg, splits, metrics, s, progress)
            if "reversibility" in metrics:
                if not method.has_reversibility:
                    run.skip(["reversibility"], f"method {cfg.method.name!r}: the appendix H "
                             "measure is for walkback's temperature-1 operator")
                else:
                    from ..methods.walkback import reversibility

                    with run.step(["reversibility"], "reversibility (VW appendix H): 100 chains, "
                                  "50 burn-in + 1000 steps"):
                        report["metrics"]["reversibility"] = reversibility(model, seed=s.seed)
        except BaseException as e:
            report["status"].update(state="interrupted", error=f"{type(e).__name__}: {e}")
            run.save()
            raise
    report["status"].update(state="complete", running=None)
    run.save()
    log(f"report: {out}\ntable: {out.with_suffix('.md')}")
    return report


@contextlib.contextmanager
def _terminate_interrupts():
    """SIGTERM raises KeyboardInterrupt, as SIGINT does, so that the report says
    "interrupted" (in the main thread; elsewhere signals stay as they are)."""
    def interrupt(num, _frame):
        raise KeyboardInterrupt(signal.Signals(num).name)

    try:
        old = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def report_files(out: Path) -> list[Path]:
    """The files an evaluation writes: the report ``out``, its markdown, and beside them the
    per-example arrays, the samples and the memorisation figures."""
    return [out, out.with_suffix(".md"), *(out.with_name(n) for n in (
        "per_example.npz", "samples.npz", "parzen_samples.npz", "nearest_neighbours.png",
        "distances.png"))]


def _claim_folder(out: Path, replaced: list[Path]) -> None:
    """Make the report's folder ready: a folder with a manifest (:func:`infusion.io.read_manifest`,
    one an evaluation or a run started) gives up only what the library wrote there, so a
    user's file of an evaluation's name is refused even with ``overwrite``; a folder the
    evaluation creates (or finds empty) starts one."""
    folder = out.parent
    foreign = not_written_here(folder, replaced)
    if foreign:
        raise InputError(f"{str(foreign[0])!r} was not written by infusion (it is not named in "
                         f"{str(folder / MANIFEST)!r}); --overwrite replaces only the "
                         "evaluation's own files: move it away, or use an --out in another folder")
    fresh = not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))
    folder.mkdir(parents=True, exist_ok=True)
    if fresh:
        start_manifest(folder)


def _load(source, cfg, dev, progress):
    """(model on dev with algorithms.md §6 statistics, cfg, checkpoint path or None, notes)."""
    from ..methods.statistics import ensure_step_statistics
    from ..training.checkpoint import is_export, load_model, resolve

    notes = []
    if isinstance(source, (str, Path)):  # a checkpoint, a run directory or an exported folder
        path = str(source if is_export(source) else resolve(source))
        model, cfg = load_model(path, dev, statistics=False)
    else:
        if cfg is None:
            raise InputError("evaluate(model, ...) needs cfg= (the model's Config)")
        model, path = source.to(dev), None
    if ensure_step_statistics(model, cfg, dev, progress):
        notes.append("the checkpoint had no per-step batch-norm statistics; they were computed "
                     "here with the algorithms.md §6 pass")
    return model.eval(), cfg, path, notes


def _moving_average_statistics(model, cfg, dev, progress: bool) -> None:
    """``bn_stats="ema"``: the per-step statistics as the authors' code keeps them
    (algorithms.md §6), from one pass over the training set, in place of the stored ones."""
    from ..data import load_data
    from ..methods import build_method
    from ..methods.statistics import compute_step_statistics

    compute_step_statistics(model, build_method(cfg.method), load_data(cfg, dev, progress=progress),
                            cfg.train.batch_size, cfg.train.seed + 5, progress, average="moving")
    model.eval()


def _default_out(ckpt_path: str | None) -> Path:
    from ..training.checkpoint import is_export

    if ckpt_path is None:
        return Path("eval") / "report.json"
    if is_export(ckpt_path):
        return Path(ckpt_path) / "eval" / "report.json"
    p = Path(ckpt_path).parent
    run = p.parent if p.name == "checkpoints" else p
    return run / "eval" / "report.json"


def _splits(cfg, progress: bool = True
            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Raw train / valid / test data of the model's data set (uint8 pixels or 2-D points),
    and for a class-conditional model their classes (else an empty dict)."""
    from ..data import SPLITS, class_labels, load_split

    raw = {s: load_split(cfg.data, s, progress=progress) for s in SPLITS}
    splits = {s: torch.from_numpy(np.ascontiguousarray(r.images)) for s, r in raw.items()}
    labels = ({s: class_labels(r, cfg, s) for s, r in raw.items()} if cfg.model.classes else {})
    return splits, labels
