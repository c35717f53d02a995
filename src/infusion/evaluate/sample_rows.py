"""The sample rows: Parzen window (algorithms.md §8) on drawn chain means, classifier metrics
and the memorisation check."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..chain.sampler import sample_chain
from ..data import affine_log_det, parzen_space
from ..io import save_npz
from . import likelihood as lik
from . import metrics as mt
from . import parzen as pz
from .protocol import CLASSIFIER_METRICS, PAPER_PROTOCOL, SAMPLE_METRICS, EvalSettings, vs_paper
from .report import ReportWriter


def sample_rows(run: ReportWriter, model, cfg, splits, metrics, s: EvalSettings,
                progress: bool) -> None:
    """Parzen (algorithms.md §8), classifier metrics and memorisation, on drawn samples."""
    wanted = [m for m in metrics if m in SAMPLE_METRICS]
    if not wanted:
        return
    if not s.extractor:
        s = replace(s, extractor=mt.default_extractor(cfg.data.name))
    report, out_dir, test = run.report, run.out.parent, splits["test"]
    main_steps = _steps(cfg, s)
    parzen_steps = cfg.method.T if s.parzen_at_T else main_steps
    others = [m for m in wanted if m != "parzen"]
    drawn: dict[int, torch.Tensor] = {}

    def means_at(steps: int, name: str) -> torch.Tensor:
        if steps not in drawn:
            path = out_dir / name
            with run.step([], f"sampling {s.n_samples:,} chains of {steps} steps",
                          timer="sampling"):
                drawn[steps] = _draw(model, s, steps, path, progress)
            report.setdefault("samples", {"n": s.n_samples, "steps": steps, "seed": s.seed,
                                          "sampler": s.sampler or model.sampler,
                                          "file": str(path)})
        return drawn[steps]

    if others:
        means_at(main_steps, "samples.npz")
    if "parzen" in wanted:
        means = means_at(parzen_steps, "samples.npz" if not drawn else "parzen_samples.npz")
        grid = pz.SIGMA_GRID if means[0].numel() > 10 else pz.LOW_DIM_SIGMA_GRID
        valid, tst = head(splits["valid"], s.parzen_valid), head(test, s.parzen_test)
        with run.step(["parzen"], f"Parzen window: {len(means):,} samples after {parzen_steps} "
                      f"steps, σ = {s.parzen_sigma:g} and σ chosen on {len(valid):,} validation "
                      f"examples, {len(tst):,} test examples"):
            est = pz.parzen_estimates(means, valid, tst, grid, s.parzen_sigma, progress=progress)
            e = est["valid"].summary()
            e.update(steps=parzen_steps, training_T=cfg.method.T,
                     fixed_sigma=est["fixed"].summary(),
                     protocol_note=_parzen_note(len(means), parzen_steps, cfg.method.T,
                                                len(tst), len(test)))
            add_data_units(e, cfg, means[0].numel())
            report["metrics"]["parzen"] = e
            run.per_example["parzen"] = est["valid"].per_example
            run.per_example["parzen_fixed"] = est["fixed"].per_example
    if not others:
        return
    means = drawn[main_steps]
    wanted_clf = [m for m in others if m in CLASSIFIER_METRICS]
    if wanted_clf:
        reason = _classifier_unsupported(s, means)
        if reason:
            run.skip(wanted_clf, reason)
        else:
            with run.step(wanted_clf, f"classifier metrics: {', '.join(wanted_clf)}",
                          timer="classifier"):
                report["metrics"].update(_classifier_metrics(s, means, test, wanted_clf, report,
                                                             progress, run.log))
    if "memorisation" in others:
        with run.step(["memorisation"], f"memorisation: "
                      f"{min(s.memo_samples or len(means), len(means)):,} samples against "
                      f"{len(splits['train']):,} training images"):
            report["metrics"]["memorisation"] = _memorisation(means, splits, s, out_dir, progress)


def _parzen_note(n_samples: int, steps: int, T: int, n_test: int, test_size: int) -> str:
    """The Parzen rows' departures from the paper's protocol (algorithms.md §8)."""
    return "; ".join([f"{n_samples:,} samples{vs_paper(n_samples, PAPER_PROTOCOL['n_samples'])}",
                      f"means after {steps} steps" + ("" if steps == T else
                                                      f", not the training T = {T}"),
                      f"{n_test:,} test examples" + ("" if n_test == test_size else
                                                     f" of {test_size:,}")])


def add_data_units(e: dict, cfg, d: int) -> None:
    """For data mapped into model space by ``data.scale``/``data.offset`` (:func:`infusion.fit`
    on floats), the row's density in the data's own units beside the model-space one."""
    log_det = affine_log_det(cfg.data.scale, d)
    if log_det:
        e["data_units"] = {"mean": e["mean"] + log_det, "log_det": log_det}
        e["protocol_note"] = (f"{e['protocol_note']}; in the data's own units "
                              f"{e['mean'] + log_det:.2f} (+ {log_det:.2f}, log|det| of data.scale)")


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Raw data as classifier metrics and the memorisation check see them: pixels k/256
    without noise, as for Parzen (algorithms.md §8); toy points as they are; shape kept."""
    return parzen_space(x).reshape(x.shape)


def head(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if n <= 0 else x[:n]


def _steps(cfg, s: EvalSettings) -> int:
    return s.steps or cfg.sample.steps or cfg.method.T


def _draw(model, s: EvalSettings, steps: int, path: Path, progress: bool) -> torch.Tensor:
    """Draw ``n_samples`` chain samples of ``steps`` steps (sample i from seed ``seed + i``);
    return their final means (N, *shape) and save them to ``path``."""
    chunk = max(1, min(s.batch_size, s.n_samples))
    parts = []
    with lik.progress_bar(s.n_samples, f"sampling ({steps} steps)", progress, unit="sample") as bar:
        for lo in range(0, s.n_samples, chunk):
            n = min(chunk, s.n_samples - lo)
            parts.append(sample_chain(model, n, steps, seeds=range(s.seed + lo, s.seed + lo + n),
                                      batch_size=chunk, sampler=s.sampler or None,
                                      eta=s.eta).means)
            bar.update(n)
    means = torch.cat(parts)
    save_npz(path, means=means.numpy().astype(np.float32))
    return means


def _classifier_unsupported(s: EvalSettings, means: torch.Tensor) -> str | None:
    if means.ndim != 4:
        return f"samples of shape {tuple(means.shape[1:])} are not images; classifier metrics skipped"
    if s.extractor in mt.OWN_EXTRACTORS.values() and tuple(means.shape[1:]) != (1, 28, 28):
        return (f"the {s.extractor} extractor takes (1, 28, 28) images, not "
                f"{tuple(means.shape[1:])}; "
                "pass another extractor (--extractor inception, or torchscript with --extractor-path FILE)")
    return None


def _classifier_metrics(s, means, test, wanted, report, progress, log) -> dict:
    kw = {"progress": progress} if s.extractor in mt.OWN_EXTRACTORS.values() else {}
    if s.extractor_path:
        kw["path"] = s.extractor_path
    ext = mt.get_extractor(s.extractor, **kw)
    report["extractor"] = {"name": ext.name, **getattr(ext, "info", {})}
    log(f"classifier metrics ({ext.name}): {', '.join(wanted)}")
    reference = _unit(head(test, s.fid_reference))
    return mt.sample_quality(ext, means, reference, wanted)


def _memorisation(means, splits, s: EvalSettings, out_dir: Path, progress: bool) -> dict:
    n = s.memo_samples or len(means)
    return mt.memorisation(means[:n], _unit(splits["train"]), _unit(head(splits["test"], n)),
                           out_dir if means.ndim == 4 else None, progress=progress)
