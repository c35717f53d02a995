"""Evaluation as a function: :func:`evaluate` scores a model (a checkpoint file, run directory,
export, or a model in memory) and returns an :class:`EvaluationResult`; the command line's
``infusion evaluate`` calls it too. Likelihood rows (algorithms.md §7), Parzen (§8), sample
quality from a classifier and the memorisation check, written as a JSON report and a markdown
table after every metric (an interrupted evaluation leaves a valid partial report).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..data import SPLITS, class_labels, load_split
from ..device import resolve_device
from ..errors import InputError
from ..io import claim_folder, clean_stale_temps
from ..methods import build_method
from ..methods.statistics import ensure_step_statistics, statistics_from_training_set
from ..methods.walkback import reversibility
from ..models import is_export, load_model, model_fingerprint, resolve
from .likelihood_rows import likelihood_rows, stats_spread_refusal
from .protocol import (
    BN_STATS,
    PAPER_COST,
    PAPER_PROTOCOL,
    PAPER_STATS_SPREAD,
    EvalSettings,
    parse_metrics,
)
from .report import Metric, ReportWriter, machine, markdown, report_metrics
from .sample_rows import sample_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate` returns: ``result["is"].value``, ``result.metrics`` (name ->
    :class:`Metric`), ``result.settings`` (the :class:`EvalSettings` used, as a dict),
    ``result.path`` (the JSON report written, or None), :meth:`to_dict` (the whole report, as
    written to JSON) and :meth:`to_markdown` (the report's table)."""

    report: dict = field(repr=False)
    path: Path | None = None

    @property
    def metrics(self) -> dict[str, Metric]:
        return report_metrics(self.report)

    @property
    def settings(self) -> dict:
        return dict(self.report["settings"])

    @property
    def skipped(self) -> dict[str, str]:
        """Metrics asked for but not computed, with the reason."""
        return dict(self.report.get("skipped", {}))

    def __getitem__(self, name: str) -> Metric:
        found = self.metrics
        if name not in found:
            raise KeyError(f"no metric {name!r} in this evaluation; it has "
                           f"{', '.join(found) or 'none'}")
        return found[name]

    def __contains__(self, name: str) -> bool:
        return name in self.metrics

    def to_dict(self) -> dict:
        """The report as its JSON file holds it (a fresh copy: JSON's keys and lists)."""
        return json.loads(json.dumps(self.report))

    def to_markdown(self) -> str:
        return markdown(self.report)

    def __repr__(self) -> str:
        shown = ", ".join(f"{m.name}={m.value:.4g}" for m in self.metrics.values())
        return f"EvaluationResult({shown})"


def evaluate(source, metrics: Sequence[str] | str | None = None, out: str | Path | None = None,
             settings: EvalSettings | None = None, *, cfg=None, device: str = "auto",
             progress: bool = True, log: Callable[[str], object] | None = None,
             overwrite: bool = True) -> EvaluationResult:
    """Evaluate a checkpoint file, run directory or export, or a model in memory (with its
    ``cfg=``); ``infusion.evaluate``. Returns an :class:`EvaluationResult`::

        result = infusion.evaluate("runs/spiral", metrics=["is", "parzen"])
        result["is"].value, result["is"].stderr, result.to_markdown()

    ``metrics`` default to the protocol's (``settings.protocol``: DEFAULT_METRICS or
    PAPER_METRICS). Writes ``out`` (report.json; default ``<run dir>/eval/report.json``; for
    a model in memory, nothing is kept unless ``out`` is given), ``report.md`` beside it,
    ``samples.npz`` (the samples' means; ``parzen_samples.npz`` when Parzen's differ),
    ``per_example.npz`` and the memorisation figures. The report is rewritten after every
    metric and likelihood repetition; its ``status`` says what is done, running and missing
    (``"complete"`` at the end, ``"interrupted"`` if an error or a signal stopped it). It
    records the evaluated model's fingerprint (``model_sha256``,
    :func:`~infusion.models.model_fingerprint`), which an export's card checks.
    A likelihood row that is not finite is an error, not a result.
    ``overwrite=False`` refuses to replace an existing report or any of the files written
    beside it. Messages go to the ``infusion.evaluate`` logger (``log``: a callable instead).
    """
    if out is None and not isinstance(source, (str, Path)):
        with tempfile.TemporaryDirectory(prefix="infusion-eval-") as tmp:
            result = evaluate(source, metrics, Path(tmp) / "report.json", settings, cfg=cfg,
                              device=device, progress=progress, log=log, overwrite=overwrite)
        return EvaluationResult(result.report, None)
    log = log or logger.info
    s = (settings or EvalSettings()).validate()
    metrics = parse_metrics(metrics if metrics is not None else s.protocol)
    t_start = time.time()
    dev = resolve_device(device)
    if s.batch_size == 0:  # large batches keep a GPU busy
        s = replace(s, batch_size=20000 if dev.type == "cuda" else 1000)
    model, cfg, ckpt_path, notes = _load(source, cfg, dev, progress)
    fingerprint = model_fingerprint(model)
    s = _spread_or_refuse(s, metrics, model, cfg, notes)
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
    report = {"checkpoint": ckpt_path, "model_sha256": fingerprint, "preset": cfg.preset,
              "data": cfg.data.name,
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
    return EvaluationResult(report, out)


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
    """Make the report's folder ready (:func:`infusion.io.claim_folder`): the evaluation
    replaces only files the library wrote there (named in the folder's manifest), so a user's
    file of an evaluation's name is refused even with ``overwrite`` — in a folder without a
    manifest, every one; a folder that is a link inside a run directory is refused; a folder
    the evaluation creates (or finds empty) starts a manifest."""
    claim_folder(out.parent, replaced, InputError, hint="use an --out in another folder")


def _load(source, cfg, dev, progress):
    """(model on dev with algorithms.md §6 statistics, cfg, checkpoint path or None, notes)."""
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


def _spread_or_refuse(s: EvalSettings, metrics, model, cfg, notes: list[str]) -> EvalSettings:
    """``s.stats_spread`` where it applies (:func:`~.likelihood_rows.stats_spread_refusal`);
    where it cannot, the paper protocol's own 3 re-runs are left out with a note, and any other
    request is refused (:class:`~infusion.errors.InputError`) before anything is computed."""
    why = s.stats_spread and stats_spread_refusal(s, metrics, model, build_method(cfg.method))
    if not why:
        return s
    if s.protocol == "paper" and s.stats_spread == PAPER_STATS_SPREAD:
        notes.append(f"the paper protocol's statistics-pass spread is left out: {why}")
        return replace(s, stats_spread=0)
    raise InputError(f"evaluation setting stats_spread={s.stats_spread} (--stats-spread) cannot "
                     f"be measured here: {why}")


def _moving_average_statistics(model, cfg, dev, progress: bool) -> None:
    """``bn_stats="ema"``: the per-step statistics as the authors' code keeps them
    (algorithms.md §6), from one pass over the training set, in place of the stored ones."""
    statistics_from_training_set(model, cfg, dev, progress, average="moving")
    model.eval()


def _default_out(ckpt_path: str | None) -> Path:
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
    raw = {s: load_split(cfg.data, s, progress=progress) for s in SPLITS}
    splits = {s: torch.from_numpy(np.ascontiguousarray(r.images)) for s, r in raw.items()}
    labels = ({s: class_labels(r, cfg, s) for s, r in raw.items()} if cfg.model.classes else {})
    return splits, labels
