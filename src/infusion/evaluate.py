"""Evaluation of a trained model: likelihood estimates (algorithms.md §7), Parzen window (algorithms.md §8),
sample quality from a classifier and the memorisation check, written as a JSON report and a
markdown table.

Works on any method's checkpoint: metrics that need ``method.log_weight`` are skipped with a
note when the method has none; classifier metrics are skipped for data the extractor does not
take (e.g. 2-D toys, whose test split is ``toy(name, max(2, toy_size // 5), seed + 2)``).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import likelihood as lik
from .errors import InputError
from .io import atomic_write, save_npz

METRICS = ("lb", "is", "is-iso", "parzen", "fid", "score", "coverage", "memorisation",
           "reversibility")
DEFAULT_METRICS = ("lb", "is", "parzen", "fid", "score", "coverage", "memorisation")
_LIKELIHOOD = {"lb", "is", "is-iso"}
_SAMPLES = {"parzen", "fid", "score", "coverage", "memorisation"}
_CLASSIFIER = {"fid", "score", "coverage"}
# algorithms.md §10 (MNIST, nats): Table 1 Parzen; Table 2 IS, lower bound, isotropic IS.
PAPER_MNIST = {"parzen": 312.0, "lb": 1350.598, "is": 1836.27, "is-iso": 413.297}


@dataclass(frozen=True)
class EvalSettings:
    """What ``infusion evaluate`` computes by default (2 CPU cores, within 10 minutes for the
    MNIST model). ``0`` for a number of examples means the whole split."""

    lb_examples: int = 0  # lower bound: the whole test set …
    lb_k: int = 1  # … one proposal draw per example
    is_examples: int = 1000  # IS: the first 1000 test examples …
    is_k: int = 100  # … k = 100 draws each (IS at k = 1, 10 from the same draws too)
    repeats: int = 1  # repeated likelihood evaluations (paper: 10) for the spread
    n_samples: int = 10000  # chain samples (final means) for Parzen and the classifier
    steps: int = 0  # sampling steps T' (0: the config's sample.steps, else the training T)
    parzen_valid: int = 0  # validation examples for choosing σ
    parzen_test: int = 0  # test examples scored
    fid_reference: int = 0  # test images the Fréchet distance compares with
    memo_samples: int = 1000  # samples (and test images) in the memorisation check
    extractor: str = "mnist-cnn"  # feature-extractor plug-in (infusion.metrics)
    extractor_path: str = ""  # its file, for torchscript / inception
    batch_size: int = 1000  # rows per forward pass
    seed: int = 0

    def validate(self) -> EvalSettings:
        for name, value in asdict(self).items():
            if isinstance(value, int) and value < 0:
                raise InputError(f"evaluation setting {name}={value}: expected >= 0")
        for name in ("lb_k", "is_k", "repeats", "batch_size", "n_samples"):
            if getattr(self, name) < 1:
                raise InputError(f"evaluation setting {name}={getattr(self, name)}: expected >= 1")
        return self


def parse_metrics(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"lb,is,parzen"`` (or ``"all"``, ``"default"``) -> metric names, checked."""
    if text is None or text == "default":
        return DEFAULT_METRICS
    if text == "all":
        return METRICS
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise InputError(f"--metrics {text!r}: unknown {bad}; available: {', '.join(METRICS)} "
                         "(or all, default)")
    return tuple(dict.fromkeys(names))


def evaluate(source, metrics: Sequence[str] | str | None = None, out: str | Path | None = None,
             settings: EvalSettings = EvalSettings(), *, cfg=None, device: str = "auto",
             progress: bool = True, log: Callable[[str], object] = print,
             overwrite: bool = True) -> dict:
    """Evaluate a checkpoint file / run directory, or a ``(model, cfg=...)``; return the report.

    Writes ``out`` (report.json; default ``<run dir>/eval/report.json``), ``report.md`` beside
    it, ``samples.npz`` (the samples' means), ``per_example.npz`` and the memorisation figures.
    ``overwrite=False`` refuses to replace an existing report.
    """
    from .methods import build_method
    from .runtime import resolve_device

    metrics = parse_metrics(metrics)
    settings.validate()
    t_start = time.time()
    model, cfg, ckpt_path, notes = _load(source, cfg, resolve_device(device), progress)
    out = Path(out) if out is not None else _default_out(ckpt_path)
    if out.is_dir() or (out.exists() and not overwrite):
        raise InputError(f"report {str(out)!r} exists" + ("" if out.is_file() else " as a directory")
                         + "; pass --overwrite (or another --out) to replace it")
    out_dir = out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    method = build_method(cfg.method)
    splits = _splits(cfg, progress)
    report = {"checkpoint": ckpt_path, "preset": cfg.preset, "data": cfg.data.name,
              "method": cfg.method.name, "metrics": {}, "skipped": {}, "notes": notes,
              "settings": asdict(settings), "seconds": {}, "machine": machine()}
    per_example: dict[str, np.ndarray] = {}
    timer = _Timer(report["seconds"])

    wanted_lik = [m for m in metrics if m in _LIKELIHOOD]
    if wanted_lik and not method.has_likelihood:
        for m in wanted_lik:
            report["skipped"][m] = f"method {cfg.method.name!r} has no likelihood estimate"
        wanted_lik = []
    test = splits["test"]
    s = settings
    if "lb" in wanted_lik:
        with timer("lb"):
            log(f"lower bound: {_n(s.lb_examples, test)} test examples, k={s.lb_k}")
            est = lik.estimate_likelihood(model, method, _head(test, s.lb_examples), s.lb_k,
                                          seed=s.seed, repeats=s.repeats, batch_size=s.batch_size,
                                          progress=progress)["lb"]
            report["metrics"]["lb"] = est.summary()
            per_example["lb"] = est.per_example
    for name, iso in (("is", False), ("is-iso", True)):
        if name not in wanted_lik:
            continue
        with timer(name):
            log(f"importance sampling{' (isotropic)' if iso else ''}: "
                f"{_n(s.is_examples, test)} test examples, k={s.is_k}")
            ks = [c for c in (1, 10, 100, 1000, 10000) if c < s.is_k]
            res = lik.estimate_likelihood(model, method, _head(test, s.is_examples), s.is_k,
                                          seed=s.seed + 1000, repeats=s.repeats,
                                          batch_size=s.batch_size, isotropic=iso, ks=ks,
                                          progress=progress)
            entry = res["is"].summary()
            entry["lb_same_draws"] = res["lb"].summary()
            entry["by_k"] = {str(c): res[f"is@{c}"].mean for c in ks} | {str(s.is_k): entry["mean"]}
            report["metrics"][name] = entry
            per_example[name] = res["is"].per_example

    wanted_samples = [m for m in metrics if m in _SAMPLES]
    means = None
    if wanted_samples:
        with timer("sampling"):
            means = _draw(model, cfg, s, out_dir / "samples.npz", progress, log)
        report["samples"] = {"n": s.n_samples, "steps": _steps(cfg, s), "seed": s.seed,
                             "file": str(out_dir / "samples.npz")}
    if "parzen" in wanted_samples:
        with timer("parzen"):
            log(f"Parzen window: {len(means)} samples, σ chosen on "
                f"{_n(s.parzen_valid, splits['valid'])} validation examples")
            grid = lik.SIGMA_GRID if means[0].numel() > 10 else lik.LOW_DIM_SIGMA_GRID
            est = lik.parzen_estimate(means, _head(splits["valid"], s.parzen_valid),
                                      _head(test, s.parzen_test), grid, progress=progress)
            report["metrics"]["parzen"] = est.summary()
            per_example["parzen"] = est.per_example
    wanted_clf = [m for m in wanted_samples if m in _CLASSIFIER]
    if wanted_clf:
        reason = _classifier_unsupported(s, means)
        if reason:
            for m in wanted_clf:
                report["skipped"][m] = reason
        else:
            with timer("classifier"):
                report["metrics"].update(_classifier_metrics(s, means, test, wanted_clf, report,
                                                             progress, log))
    if "memorisation" in wanted_samples:
        with timer("memorisation"):
            log(f"memorisation: {min(s.memo_samples or len(means), len(means))} samples "
                f"against {len(splits['train'])} training images")
            report["metrics"]["memorisation"] = _memorisation(means, splits, s, out_dir, progress)

    if "reversibility" in metrics:
        if not method.has_reversibility:
            report["skipped"]["reversibility"] = (f"method {cfg.method.name!r}: the appendix H "
                                                  "measure is for walkback's temperature-1 operator")
        else:
            from .methods.walkback import reversibility

            with timer("reversibility"):
                log("reversibility (VW appendix H): 100 chains, 50 burn-in + 1000 steps")
                report["metrics"]["reversibility"] = reversibility(model, seed=s.seed)

    report["seconds"]["total"] = time.time() - t_start
    _write(out, report, per_example)
    log(f"report: {out}\ntable: {out.with_suffix('.md')}")
    return report


def _load(source, cfg, dev, progress):
    """(model on dev with algorithms.md §6 statistics, cfg, checkpoint path or None, notes)."""
    from .checkpoint import load_model, resolve
    from .runtime import ensure_step_statistics

    notes = []
    if isinstance(source, (str, Path)):
        path = str(resolve(source))
        model, cfg = load_model(path, dev)
    else:
        if cfg is None:
            raise InputError("evaluate(model, ...) needs cfg= (the model's Config)")
        model, path = source.to(dev), None
    if ensure_step_statistics(model, cfg, dev, progress):
        notes.append("the checkpoint had no per-step batch-norm statistics; they were computed "
                     "here with the algorithms.md §6 pass")
    return model.eval(), cfg, path, notes


def _default_out(ckpt_path: str | None) -> Path:
    if ckpt_path is None:
        return Path("eval") / "report.json"
    p = Path(ckpt_path).parent
    run = p.parent if p.name == "checkpoints" else p
    return run / "eval" / "report.json"


def _splits(cfg, progress: bool = True) -> dict[str, torch.Tensor]:
    """Raw train / valid / test data of the model's data set (uint8 pixels or 2-D points)."""
    from .data import SPLITS, load_split

    return {s: torch.from_numpy(np.ascontiguousarray(load_split(cfg.data, s, progress=progress)
                                                     .images)) for s in SPLITS}


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Raw data as classifier metrics and the memorisation check see them: pixels k/256
    without noise, as for Parzen (algorithms.md §8); toy points as they are; shape kept."""
    from .data import parzen_space

    return parzen_space(x).reshape(x.shape)


def _head(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if n <= 0 else x[:n]


def _n(n: int, x) -> int:
    return len(x) if n <= 0 else min(n, len(x))


def _steps(cfg, s: EvalSettings) -> int:
    return s.steps or cfg.sample.steps or cfg.method.T


def _draw(model, cfg, s: EvalSettings, path: Path, progress: bool, log) -> torch.Tensor:
    """Draw ``n_samples`` chain samples (sample i from seed ``seed + i``); return their final
    means (N, *shape) and save them to ``path``."""
    from .sampler import sample_chain

    steps = _steps(cfg, s)
    log(f"sampling {s.n_samples} chains of {steps} steps")
    chunk = max(1, min(s.batch_size, s.n_samples))
    bar = lik._tqdm(-(-s.n_samples // chunk), "sampling", progress)
    parts = []
    for lo in range(0, s.n_samples, chunk):
        n = min(chunk, s.n_samples - lo)
        parts.append(sample_chain(model, n, steps, seeds=range(s.seed + lo, s.seed + lo + n),
                                  batch_size=chunk).means)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    means = torch.cat(parts)
    save_npz(path, means=means.numpy().astype(np.float32))
    return means


def _classifier_unsupported(s: EvalSettings, means: torch.Tensor) -> str | None:
    if means.ndim != 4:
        return f"samples of shape {tuple(means.shape[1:])} are not images; classifier metrics skipped"
    if s.extractor == "mnist-cnn" and tuple(means.shape[1:]) != (1, 28, 28):
        return (f"the mnist-cnn extractor takes (1, 28, 28) images, not {tuple(means.shape[1:])}; "
                "pass another extractor (--extractor torchscript --extractor-path FILE)")
    return None


def _classifier_metrics(s, means, test, wanted, report, progress, log) -> dict:
    from . import metrics as mt

    kw = {"progress": progress, "log": log} if s.extractor == "mnist-cnn" else {}
    if s.extractor_path:
        kw["path"] = s.extractor_path
    ext = mt.get_extractor(s.extractor, **kw)
    report["extractor"] = {"name": ext.name, **getattr(ext, "info", {})}
    log(f"classifier metrics ({ext.name}): {', '.join(wanted)}")
    reference = _unit(_head(test, s.fid_reference))
    return mt.sample_quality(ext, means, reference, wanted)


def _memorisation(means, splits, s: EvalSettings, out_dir: Path, progress: bool) -> dict:
    from .metrics import memorisation

    n = s.memo_samples or len(means)
    return memorisation(means[:n], _unit(splits["train"]), _unit(_head(splits["test"], n)),
                        out_dir if means.ndim == 4 else None, progress=progress)


class _Timer:
    def __init__(self, into: dict) -> None:
        self.into = into

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.time()

            def __exit__(self, *exc):
                timer.into[name] = timer.into.get(name, 0.0) + time.time() - self.t0

        return _Ctx()


def machine() -> dict:
    """Where the evaluation ran (for the report)."""
    info = {"platform": platform.platform(), "python": sys.version.split()[0],
            "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "processor": platform.processor()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _write(out: Path, report: dict, per_example: dict[str, np.ndarray]) -> None:
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    atomic_write(out.with_suffix(".md"), lambda tmp: tmp.write_text(markdown(report)))
    if per_example:
        save_npz(out.with_name("per_example.npz"),
                 **{k.replace("-", "_"): v for k, v in per_example.items()})


def markdown(report: dict) -> str:
    """The report as a markdown table (nats per example; paper values for MNIST, algorithms.md §10)."""
    m, s = report["metrics"], report["settings"]
    paper = PAPER_MNIST if report.get("data") == "mnist" else {}
    rows = []

    def num(v, fmt="{:.2f}"):
        return "" if v is None else fmt.format(v)

    def lik_row(name, label, how):
        e = m[name]
        rows.append((label, num(e["mean"]), num(e["stderr"]), num(e.get("spread")), how,
                     num(paper.get(name), "{:g}")))

    if "lb" in m:
        lik_row("lb", "lower bound (nats)", f"{m['lb']['n']} test ex., k={m['lb']['k']}, "
                f"{m['lb']['repeats']} rep.")
    for name, label in (("is", "IS estimate (nats)"), ("is-iso", "IS, isotropic output (nats)")):
        if name in m:
            e = m[name]
            by_k = ", ".join(f"k={k}: {v:.1f}" for k, v in e["by_k"].items())
            lik_row(name, label, f"{e['n']} test ex., k={e['k']}, {e['repeats']} rep.; {by_k}; "
                    f"bound on the same draws {e['lb_same_draws']['mean']:.1f}")
    if "parzen" in m:
        e = m["parzen"]
        lik_row("parzen", "Parzen window (nats)", f"σ={e['sigma']:.3g} (valid), "
                f"{e['n_samples']} samples, {e['n']} test ex.")
    if "fid" in m:
        rows.append(("Fréchet distance (classifier features)", num(m["fid"]["value"], "{:.3f}"),
                     "", "", f"{m['fid']['n_samples']} samples vs {m['fid']['n_reference']} test",
                     ""))
    if "score" in m:
        rows.append(("classifier score", num(m["score"]["value"], "{:.3f}"),
                     "", num(m["score"]["std"], "{:.3f}"), f"{m['score']['splits']} splits", ""))
    if "coverage" in m:
        c = m["coverage"]
        rows.append(("class-histogram entropy (nats)", f"{c['entropy']:.3f}", "", "",
                     f"max {c['max_entropy']:.3f}; counts {c['histogram']}", ""))
        rows.append(("fraction classified with p ≥ 0.9", f"{c['confident_fraction']:.3f}",
                     "", "", "", ""))
    if "memorisation" in m:
        c = m["memorisation"]
        rows.append(("median L2 distance sample → nearest train",
                     f"{c['sample_to_train']['median']:.3f}", "", "",
                     (f"test → train median {c['test_to_train']['median']:.3f}; samples below "
                     f"the test 1st percentile: {c['fraction_below_test_1st_percentile']:.3f}"), ""))
    if "reversibility" in m:
        c = m["reversibility"]
        rows.append(("reversibility KL / entropy (VW app. H)", f"{c['ratio']:.4f}", "", "",
                     (f"KL {c['kl']:.3f} ± {c['kl_se']:.3f} nats/step, entropy {c['entropy']:.1f}; "
                      "VW paper 0.036 (a ratio only for entropy > 0)"), ""))
    lines = [f"# Evaluation of {report.get('checkpoint') or 'a model'}", "",
             (f"data {report.get('data')}, method {report.get('method')}, preset "
             f"{report.get('preset') or '-'}; seed {s['seed']}; "
             f"{report['seconds'].get('total', 0):.0f} s on {report['machine']['cpu_count']} CPUs"
             f"{', ' + report['machine']['cuda_device'] if 'cuda_device' in report['machine'] else ''}"),
             "", "| metric | value | ± s.e. | spread | how | paper |",
             "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    extra = [f"- skipped {name}: {why}" for name, why in report.get("skipped", {}).items()]
    extra += [f"- note: {note}" for note in report.get("notes", [])]
    if extra:
        lines += [""] + extra
    return "\n".join(lines) + "\n"
