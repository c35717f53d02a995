"""Evaluation of a trained model: likelihood estimates (algorithms.md §7), Parzen window (algorithms.md §8),
sample quality from a classifier and the memorisation check, written as a JSON report and a
markdown table.

Two protocols: ``EvalSettings()`` (the default, minutes on a CPU) and ``EvalSettings.paper()``,
the paper's Table 1 and Table 2 exactly as algorithms.md §7–8 describe them (weeks on a CPU,
about an hour on a GPU: see :meth:`EvalSettings.paper`), which ``k``, ``repeats`` and ``examples`` may reduce. Every
likelihood and Parzen row of the report states how it differs from the paper's protocol. The
report (json and md) is rewritten atomically after every metric and every likelihood
repetition, so an interrupted evaluation leaves a valid report of what is done and missing.

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
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import likelihood as lik
from .errors import InputError
from .io import atomic_write, save_npz

METRICS = ("lb", "is", "is-iso", "lb-train", "is-train", "is-iso-train", "parzen", "fid",
           "score", "coverage", "memorisation", "reversibility")
DEFAULT_METRICS = ("lb", "is", "parzen", "fid", "score", "coverage", "memorisation")
# Table 2 (test and train columns) and Table 1.
PAPER_METRICS = ("lb", "is", "is-iso", "lb-train", "is-train", "is-iso-train", "parzen")
_LIKELIHOOD = {"lb", "is", "is-iso", "lb-train", "is-train", "is-iso-train"}
_SAMPLES = {"parzen", "fid", "score", "coverage", "memorisation"}
_CLASSIFIER = {"fid", "score", "coverage"}
# algorithms.md §10 (MNIST, nats): Table 1 Parzen; Table 2 IS, lower bound, isotropic IS.
PAPER_MNIST = {"parzen": 312.0, "lb": 1350.598, "is": 1836.27, "is-iso": 413.297,
               "lb-train": 1230.305, "is-train": 1837.560, "is-iso-train": 450.695}
# The paper's protocol (algorithms.md §7–8): k draws per example, repetitions, test and
# training examples of Table 2; samples and kernel width of Table 1.
PAPER_PROTOCOL = {"k": 20000, "repeats": 10, "examples": 1000, "train_examples": 100,
                  "n_samples": 10000, "parzen_sigma": 0.17}
PROTOCOLS = ("default", "paper")
# The cost of EvalSettings.paper() in full, measured with the mnist preset's model (2×1200 MLP,
# T = 15, d = 784; random weights: speed only) through likelihood.stream_estimate in batches of
# 1000 rows, float32, one thread on one core of this project's 2-core AMD EPYC machine.
PAPER_COST = ("4.4e8 proposal draws of T = 15 steps ((1,000 test + 100 train examples) × "
              "20,000 draws × 10 repeats, plain and isotropic; choosing the isotropic "
              "variance: 6.6e4 more); measured 235 draws/s on one CPU core: about 22 days on "
              "one core, about 11 on two (estimated); on an H100 about an hour (estimated "
              "from the 5.7e16 FLOP, not measured)")


@dataclass(frozen=True)
class EvalSettings:
    """What ``infusion evaluate`` computes. The defaults are the cheap ``default`` protocol
    (2 CPU cores, within 10 minutes for the MNIST model); :meth:`paper` gives the paper's.
    ``0`` for a number of examples means the whole split."""

    protocol: str = "default"  # "default" or "paper" (as set by EvalSettings.paper)
    lb_examples: int = 0  # lower bound: the whole test set …
    lb_k: int = 1  # … one proposal draw per example
    is_examples: int = 1000  # IS: the first 1000 test examples …
    is_k: int = 100  # … k = 100 draws each (IS at k = 1, 10 from the same draws too)
    repeats: int = 1  # repeated likelihood evaluations (paper: 10) for the spread
    train_examples: int = 100  # training examples of the train rows (lb-train, is-train, …)
    iso_valid_examples: int = 100  # validation examples choosing the isotropic variance …
    iso_valid_k: int = 10  # … with k draws each, over likelihood.ISO_VAR_GRID
    n_samples: int = 10000  # chain samples (final means) for Parzen and the classifier
    steps: int = 0  # sampling steps T' (0: the config's sample.steps, else the training T)
    parzen_at_T: bool = False  # Parzen on means after the training T steps, not after `steps`
    parzen_valid: int = 0  # validation examples for choosing σ
    parzen_test: int = 0  # test examples scored
    parzen_sigma: float = 0.17  # the fixed σ reported beside the validation-chosen one
    fid_reference: int = 0  # test images the Fréchet distance compares with
    memo_samples: int = 1000  # samples (and test images) in the memorisation check
    extractor: str = "mnist-cnn"  # feature-extractor plug-in (infusion.metrics)
    extractor_path: str = ""  # its file, for torchscript / inception
    batch_size: int = 1000  # rows per forward pass
    seed: int = 0

    @classmethod
    def paper(cls, k: int | None = None, repeats: int | None = None,
              examples: int | None = None, **other) -> EvalSettings:
        """The paper's evaluation protocol, algorithms.md §7–8 (Tables 1 and 2).

        Likelihood: k = 20,000 proposal draws per example on the first 1,000 test examples,
        the bound and IS from the same draws, the whole evaluation repeated 10 times (mean,
        standard error over examples, spread over repetitions); the same on 100 training
        examples; the isotropic IS with one final variance chosen on validation examples
        (min(100, examples) of them, k = min(20, k), over ``likelihood.ISO_VAR_GRID``: 100
        examples pin the best s² far closer than the grid's step).
        Parzen: 10,000 samples' means after the training T steps, σ = 0.17 and σ chosen on
        validation over logspace(−1, 0, 10) ∪ {0.17}. ``k``, ``repeats`` and ``examples``
        (test examples; 0 = all) reduce it, and the report states each reduction; ``other``
        sets any other field (``batch_size``, ``seed``, ``n_samples``, …).

        Cost (the mnist preset's model, 2×1200 MLP, T = 15): the full protocol makes 4.4e8
        proposal draws of T steps ((1,000 test + 100 train examples) × 20,000 × 10 repeats,
        plain and isotropic). Measured on this project's CPU (AMD EPYC, one core, batches of
        1000 rows): 235 draws/s, so about 22 days on one core, about 11 on two (estimated);
        an H100 should take about an hour (estimated from the 5.7e16 FLOP, not measured).
        Memory stays at ``batch_size`` rows whatever k is. ``k=100, repeats=1`` makes 2.9e5
        draws (about 20 minutes on one core).
        """
        P = PAPER_PROTOCOL
        k = P["k"] if k is None else k
        n = P["examples"] if examples is None else examples
        base = {"protocol": "paper", "lb_examples": n, "lb_k": k, "is_examples": n, "is_k": k,
                "repeats": P["repeats"] if repeats is None else repeats,
                "train_examples": P["train_examples"],
                "iso_valid_examples": min(100, n) if n > 0 else 100,
                "iso_valid_k": max(1, min(20, k)), "n_samples": P["n_samples"],
                "parzen_at_T": True, "parzen_sigma": P["parzen_sigma"]}
        return cls(**{**base, **other})

    def validate(self) -> EvalSettings:
        if self.protocol not in PROTOCOLS:
            raise InputError(f"evaluation protocol {self.protocol!r}: expected one of "
                             f"{', '.join(PROTOCOLS)}")
        for name, value in asdict(self).items():
            if isinstance(value, (int, float)) and value < 0:
                raise InputError(f"evaluation setting {name}={value}: expected >= 0")
        for name in ("lb_k", "is_k", "repeats", "batch_size", "n_samples", "iso_valid_k"):
            if getattr(self, name) < 1:
                raise InputError(f"evaluation setting {name}={getattr(self, name)}: expected >= 1")
        if not self.parzen_sigma > 0:
            raise InputError(f"evaluation setting parzen_sigma={self.parzen_sigma}: expected > 0")
        return self

    def reductions(self) -> list[str]:
        """How these settings' likelihood and Parzen numbers differ from the paper's protocol
        (empty: the paper's protocol in full)."""
        P, out = PAPER_PROTOCOL, []
        if self.is_k != P["k"]:
            out.append(f"k = {self.is_k:,}{_vs(self.is_k, P['k'])}")
        if self.repeats != P["repeats"]:
            out.append(f"{_plural(self.repeats, 'repeat')} of {P['repeats']}")
        if self.is_examples != P["examples"]:
            out.append(f"{_count(self.is_examples)} test examples"
                       f"{_vs(self.is_examples, P['examples'])}")
        if (self.lb_examples, self.lb_k) != (self.is_examples, self.is_k):
            out.append(f"the bound from separate draws: k = {self.lb_k:,} on "
                       f"{_count(self.lb_examples)} test examples")
        if self.train_examples != P["train_examples"]:
            out.append(f"{_count(self.train_examples)} train examples"
                       f"{_vs(self.train_examples, P['train_examples'])}")
        if self.n_samples != P["n_samples"]:
            out.append(f"{self.n_samples:,} Parzen samples{_vs(self.n_samples, P['n_samples'])}")
        if not self.parzen_at_T:
            out.append("Parzen samples after the sampling steps, not the training T")
        return out


def _vs(n: int, paper: int) -> str:
    """"" when ``n`` is the paper's number, else " of the paper's 1,000" or " (paper: 1,000)"."""
    if n == paper:
        return ""
    return f" of the paper's {paper:,}" if 0 < n < paper else f" (paper: {paper:,})"


def _count(n: int) -> str:
    return "all" if n <= 0 else f"{n:,}"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def parse_metrics(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"lb,is,parzen"`` (or ``"all"``, ``"default"``, ``"paper"``) -> metric names, checked."""
    if text is None or text == "default":
        return DEFAULT_METRICS
    if text == "all":
        return METRICS
    if text == "paper":
        return PAPER_METRICS
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise InputError(f"--metrics {text!r}: unknown {bad}; available: {', '.join(METRICS)} "
                         "(or all, default, paper)")
    return tuple(dict.fromkeys(names))


def evaluate(source, metrics: Sequence[str] | str | None = None, out: str | Path | None = None,
             settings: EvalSettings = EvalSettings(), *, cfg=None, device: str = "auto",
             progress: bool = True, log: Callable[[str], object] = print,
             overwrite: bool = True) -> dict:
    """Evaluate a checkpoint file / run directory, or a ``(model, cfg=...)``; return the report.

    ``metrics`` default to the protocol's (``settings.protocol``: DEFAULT_METRICS or
    PAPER_METRICS). Writes ``out`` (report.json; default ``<run dir>/eval/report.json``),
    ``report.md`` beside it, ``samples.npz`` (the samples' means; ``parzen_samples.npz`` when
    Parzen's differ), ``per_example.npz`` and the memorisation figures. The report is
    rewritten after every metric and likelihood repetition; its ``status`` says what is done,
    running and missing (``"complete"`` at the end, ``"interrupted"`` if an error or a signal
    stopped it). ``overwrite=False`` refuses to replace an existing report.
    """
    from .methods import build_method
    from .runtime import resolve_device

    s = settings.validate()
    metrics = parse_metrics(metrics if metrics is not None else s.protocol)
    t_start = time.time()
    model, cfg, ckpt_path, notes = _load(source, cfg, resolve_device(device), progress)
    out = Path(out) if out is not None else _default_out(ckpt_path)
    if out.is_dir() or (out.exists() and not overwrite):
        raise InputError(f"report {str(out)!r} exists" + ("" if out.is_file() else " as a directory")
                         + "; pass --overwrite (or another --out) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    method = build_method(cfg.method)
    splits = _splits(cfg, progress)
    report = {"checkpoint": ckpt_path, "preset": cfg.preset, "data": cfg.data.name,
              "method": cfg.method.name, "training_T": cfg.method.T,
              "protocol": {"name": s.protocol, "paper": PAPER_PROTOCOL,
                           "reductions": s.reductions(), "full_paper_cost": PAPER_COST},
              "status": {"state": "running", "done": [], "running": None,
                         "missing": list(metrics)},
              "metrics": {}, "skipped": {}, "notes": notes, "settings": asdict(s),
              "seconds": {}, "machine": machine()}
    run = _Run(out, report, log, t_start)
    run.save()
    try:
        _likelihoods(run, model, method, cfg, splits, metrics, s, progress)
        _sample_metrics(run, model, cfg, splits, metrics, s, progress)
        if "reversibility" in metrics:
            if not method.has_reversibility:
                run.skip(["reversibility"], f"method {cfg.method.name!r}: the appendix H measure "
                         "is for walkback's temperature-1 operator")
            else:
                from .methods.walkback import reversibility

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


class _Run:
    """The report being written: each step marks its metrics running, then done, and the
    report (json, md, per-example arrays) is rewritten atomically after every change."""

    def __init__(self, out: Path, report: dict, log, t_start: float) -> None:
        self.out, self.report, self.log, self.t_start = out, report, log, t_start
        self.per_example: dict[str, np.ndarray] = {}
        self.status = report["status"]

    def save(self) -> None:
        self.report["seconds"]["total"] = time.time() - self.t_start
        _write(self.out, self.report, self.per_example)

    def skip(self, names: Sequence[str], why: str) -> None:
        for n in names:
            self.report["skipped"][n] = why
            if n in self.status["missing"]:
                self.status["missing"].remove(n)

    @contextmanager
    def step(self, names: Sequence[str], what: str, timer: str | None = None):
        """Time a step (under ``timer``, default its first metric), then mark ``names`` done,
        log one line per metric and rewrite the report."""
        self.status["running"] = what
        self.log(what)
        self.save()
        t0 = time.time()
        yield
        seconds = time.time() - t0
        key = timer or (names[0] if names else "other")
        self.report["seconds"][key] = self.report["seconds"].get(key, 0.0) + seconds
        for n in names:
            if n in self.status["missing"]:
                self.status["missing"].remove(n)
            self.status["done"].append(n)
            self.log(f"done {n}: {_headline(self.report['metrics'].get(n))} [{seconds:.0f} s]")
        self.status["running"] = None
        self.save()


def _headline(e: dict | None) -> str:
    """One metric's number for the log, with its protocol note."""
    if not e:
        return "-"
    if "mean" in e:
        text = f"{e['mean']:.2f} ± {e['stderr']:.2f}"
        if e.get("spread") is not None:
            text += f" (spread {e['spread']:.2f})"
        if "fixed_sigma" in e:
            f = e["fixed_sigma"]
            text = (f"σ = {f['sigma']:.3g}: {f['mean']:.2f} ± {f['stderr']:.2f}; σ = "
                    f"{e['sigma']:.3g} (validation): {text}")
        return text + (f" ({e['protocol_note']})" if e.get("protocol_note") else "")
    if "value" in e:
        return f"{e['value']:.4g}"
    return ", ".join(f"{k} {v:.4g}" for k, v in e.items() if isinstance(v, float))


@dataclass(frozen=True)
class _Job:
    """One likelihood estimate: ``fill`` maps its "lb" / "is" results to report metrics."""

    split: str
    n: int
    k: int
    isotropic: bool
    seed: int
    fill: dict


def _likelihood_jobs(wanted: Sequence[str], s: EvalSettings) -> list[_Job]:
    """The estimates that serve the wanted likelihood metrics: a bound and an IS estimate with
    the same examples and k come from the same draws (the paper's protocol)."""
    shared = (s.lb_examples, s.lb_k) == (s.is_examples, s.is_k)
    jobs = []

    def add(split, n, k, iso, seed, **fill):
        fill = {kind: name for kind, name in fill.items() if name in wanted}
        if fill:
            jobs.append(_Job(split, n, k, iso, seed, fill))

    if not shared:
        add("test", s.lb_examples, s.lb_k, False, s.seed, lb="lb")
    add("test", s.is_examples, s.is_k, False, s.seed + 1000, **{"is": "is", "lb": "lb" if shared
                                                               else ""})
    add("test", s.is_examples, s.is_k, True, s.seed + 1000, **{"is": "is-iso"})
    add("train", s.train_examples, s.is_k, False, s.seed + 3000,
        **{"is": "is-train", "lb": "lb-train"})
    add("train", s.train_examples, s.is_k, True, s.seed + 3000, **{"is": "is-iso-train"})
    return jobs


def _likelihoods(run: _Run, model, method, cfg, splits, metrics, s: EvalSettings,
                 progress: bool) -> None:
    """The likelihood rows of Table 2 (algorithms.md §7), each repetition written as it ends."""
    wanted = [m for m in metrics if m in _LIKELIHOOD]
    if wanted and not method.has_likelihood:
        run.skip(wanted, f"method {cfg.method.name!r} has no likelihood estimate")
        return
    report, final_var = run.report, None
    for job in _likelihood_jobs(wanted, s):
        if job.isotropic and final_var is None:
            final_var = _isotropic_variance(run, model, method, splits, s, progress)
        data = _head(splits[job.split], job.n)
        names = list(job.fill.values())
        ks = [c for c in (1, 10, 100, 1000, 10000) if c < job.k]
        what = (f"{' + '.join(names)}: {len(data):,} {job.split} examples, k = {job.k:,}, "
                f"{_plural(s.repeats, 'repeat')}" + (f", final variance {final_var:.3g}"
                                                     if job.isotropic else ""))

        def publish(r: int, res: dict, job=job, ks=ks, what=what) -> None:
            for kind, name in job.fill.items():
                e = res[kind].summary()
                e.update(split=job.split, isotropic=job.isotropic, repeats_planned=s.repeats,
                         complete=r == s.repeats,
                         protocol_note=_likelihood_note(job.split, e["n"], job.k, r, s.repeats))
                if kind == "is":
                    e["lb_same_draws"] = res["lb"].summary()
                    e["by_k"] = ({str(c): res[f"is@{c}"].mean for c in ks}
                                 | {str(job.k): e["mean"]})
                elif "is" in job.fill:
                    e["same_draws_as"] = job.fill["is"]
                if job.isotropic:
                    e["final_var_selection"] = report["isotropic_variance"]
                report["metrics"][name] = e
                run.per_example[name] = res[kind].per_example
            run.status["running"] = f"{what} ({r} of {s.repeats} done)"
            run.save()

        with run.step(names, what):
            lik.estimate_likelihood(model, method, data, job.k, seed=job.seed, repeats=s.repeats,
                                    batch_size=s.batch_size,
                                    final_var=final_var if job.isotropic else None, ks=ks,
                                    progress=progress, on_repeat=publish,
                                    desc=f"{' + '.join(names)} (k={job.k:,})")


def _isotropic_variance(run: _Run, model, method, splits, s: EvalSettings,
                        progress: bool) -> float:
    """The isotropic variant's one final variance, chosen on validation data (algorithms.md §7)."""
    valid = _head(splits["valid"], s.iso_valid_examples)
    grid = lik.ISO_VAR_GRID
    with run.step([], f"isotropic final variance: {len(grid)} values of logspace(-4, 0, 33) "
                  f"on {len(valid):,} validation examples, k = {s.iso_valid_k}",
                  timer="is-iso-variance"):
        best, table = lik.select_final_var(model, method, valid, grid, s.iso_valid_k,
                                           seed=s.seed + 5000, batch_size=s.batch_size,
                                           progress=progress)
        run.report["isotropic_variance"] = {
            "final_var": best, "grid": "logspace(-4, 0, 33)", "n_valid": len(valid),
            "k": s.iso_valid_k, "criterion": "the highest mean validation IS estimate",
            "valid_is_by_var": {str(v): m for v, m in table.items()}}
    edge = " (at the edge of the grid)" if best in (min(grid), max(grid)) else ""
    run.log(f"isotropic final variance s² = {best:.4g}{edge}")
    return best


def _likelihood_note(split: str, n: int, k: int, done: int, planned: int) -> str:
    """A likelihood row's departures from the paper's protocol, e.g. "k = 100 of the paper's
    20,000; 1 repeat of 10; 1,000 test examples"."""
    P = PAPER_PROTOCOL
    paper_n = P["examples"] if split == "test" else P["train_examples"]
    parts = [f"k = {k:,}{_vs(k, P['k'])}",
             _plural(planned, "repeat") + ("" if planned == P["repeats"] else f" of {P['repeats']}"),
             f"{n:,} {split} examples{_vs(n, paper_n)}"]
    if (k, planned, n) == (P["k"], P["repeats"], paper_n):
        parts.append("the paper's protocol")
    if done < planned:
        parts.append(f"partial: {done} of {planned} repeats done")
    return "; ".join(parts)


def _sample_metrics(run: _Run, model, cfg, splits, metrics, s: EvalSettings,
                    progress: bool) -> None:
    """Parzen (algorithms.md §8), classifier metrics and memorisation, on drawn samples."""
    wanted = [m for m in metrics if m in _SAMPLES]
    if not wanted:
        return
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
                                          "file": str(path)})
        return drawn[steps]

    if others:
        means_at(main_steps, "samples.npz")
    if "parzen" in wanted:
        means = means_at(parzen_steps, "samples.npz" if not drawn else "parzen_samples.npz")
        grid = lik.SIGMA_GRID if means[0].numel() > 10 else lik.LOW_DIM_SIGMA_GRID
        valid, tst = _head(splits["valid"], s.parzen_valid), _head(test, s.parzen_test)
        with run.step(["parzen"], f"Parzen window: {len(means):,} samples after {parzen_steps} "
                      f"steps, σ = {s.parzen_sigma:g} and σ chosen on {len(valid):,} validation "
                      f"examples, {len(tst):,} test examples"):
            est = lik.parzen_estimates(means, valid, tst, grid, s.parzen_sigma, progress=progress)
            e = est["valid"].summary()
            e.update(steps=parzen_steps, training_T=cfg.method.T,
                     fixed_sigma=est["fixed"].summary(),
                     protocol_note=_parzen_note(len(means), parzen_steps, cfg.method.T,
                                                len(tst), len(test)))
            report["metrics"]["parzen"] = e
            run.per_example["parzen"] = est["valid"].per_example
            run.per_example["parzen_fixed"] = est["fixed"].per_example
    if not others:
        return
    means = drawn[main_steps]
    wanted_clf = [m for m in others if m in _CLASSIFIER]
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
    return "; ".join([f"{n_samples:,} samples{_vs(n_samples, PAPER_PROTOCOL['n_samples'])}",
                      f"means after {steps} steps" + ("" if steps == T else
                                                      f", not the training T = {T}"),
                      f"{n_test:,} test examples" + ("" if n_test == test_size else
                                                     f" of {test_size:,}")])


def _load(source, cfg, dev, progress):
    """(model on dev with algorithms.md §6 statistics, cfg, checkpoint path or None, notes)."""
    from .checkpoint import is_export, load_model, resolve
    from .runtime import ensure_step_statistics

    notes = []
    if isinstance(source, (str, Path)):  # a checkpoint, a run directory or an exported folder
        path = str(source if is_export(source) else resolve(source))
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
    from .checkpoint import is_export

    if ckpt_path is None:
        return Path("eval") / "report.json"
    if is_export(ckpt_path):
        return Path(ckpt_path) / "eval" / "report.json"
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


def _steps(cfg, s: EvalSettings) -> int:
    return s.steps or cfg.sample.steps or cfg.method.T


def _draw(model, s: EvalSettings, steps: int, path: Path, progress: bool) -> torch.Tensor:
    """Draw ``n_samples`` chain samples of ``steps`` steps (sample i from seed ``seed + i``);
    return their final means (N, *shape) and save them to ``path``."""
    from .sampler import sample_chain

    chunk = max(1, min(s.batch_size, s.n_samples))
    parts = []
    with lik._bar(s.n_samples, f"sampling ({steps} steps)", progress, unit="sample") as bar:
        for lo in range(0, s.n_samples, chunk):
            n = min(chunk, s.n_samples - lo)
            parts.append(sample_chain(model, n, steps, seeds=range(s.seed + lo, s.seed + lo + n),
                                      batch_size=chunk).means)
            bar.update(n)
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
    """The report as a markdown table (nats per example; paper values for MNIST, algorithms.md §10),
    each likelihood and Parzen row stating how it departs from the paper's protocol."""
    m, s = report["metrics"], report["settings"]
    paper = PAPER_MNIST if report.get("data") == "mnist" else {}
    rows = []

    def num(v, fmt="{:.2f}"):
        return "" if v is None else fmt.format(v)

    labels = {"lb": "lower bound (nats)", "is": "IS estimate (nats)",
              "is-iso": "IS, isotropic output (nats)", "lb-train": "lower bound, train (nats)",
              "is-train": "IS estimate, train (nats)",
              "is-iso-train": "IS, isotropic output, train (nats)"}
    for name, label in labels.items():
        if name not in m:
            continue
        e = m[name]
        how = [e.get("protocol_note", "")]
        if "by_k" in e:
            how.append(", ".join(f"k={k}: {v:.1f}" for k, v in e["by_k"].items()))
            how.append(f"bound on the same draws {e['lb_same_draws']['mean']:.1f}")
        if e.get("same_draws_as"):
            how.append(f"the draws of {e['same_draws_as']}")
        if e.get("isotropic"):
            how.append(f"final variance {e['final_var']:.3g} (chosen on validation)")
        rows.append((label, num(e["mean"]), num(e["stderr"]), num(e.get("spread")),
                     "; ".join(h for h in how if h), num(paper.get(name), "{:g}")))
    if "parzen" in m:
        e = m["parzen"]
        f = e["fixed_sigma"]
        rows.append((f"Parzen window, σ = {f['sigma']:.3g} fixed (nats)", num(f["mean"]),
                     num(f["stderr"]), "", e["protocol_note"], num(paper.get("parzen"), "{:g}")))
        rows.append(("Parzen window, σ chosen on validation (nats)", num(e["mean"]),
                     num(e["stderr"]), "", (f"σ = {e['sigma']:.3g} on {e['n_valid']:,} "
                                            f"validation examples; {e['protocol_note']}"), ""))
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
    proto = report.get("protocol", {})
    reduced = proto.get("reductions", [])
    if proto.get("name") == "paper":
        proto_line = ("protocol: the paper's (algorithms.md §7–8), reduced: " + "; ".join(reduced)
                      if reduced else "protocol: the paper's (algorithms.md §7–8), in full")
    else:
        proto_line = ("protocol: default, cheaper than the paper's (`--protocol paper`); each "
                      "row says how")
    lines = [f"# Evaluation of {report.get('checkpoint') or 'a model'}", ""]
    st = report.get("status", {})
    if st.get("state") not in (None, "complete"):
        lines += [f"**{'Interrupted' if st['state'] == 'interrupted' else 'Partial'} report** — "
                  f"done: {', '.join(st['done']) or 'nothing'}; running: {st['running'] or '-'}; "
                  f"missing: {', '.join(st['missing']) or 'nothing'}"
                  + (f"; error: {st['error']}" if st.get("error") else ""), ""]
    lines += [(f"data {report.get('data')}, method {report.get('method')}, preset "
               f"{report.get('preset') or '-'}; seed {s['seed']}; "
               f"{report['seconds'].get('total', 0):.0f} s on {report['machine']['cpu_count']} CPUs"
               f"{', ' + report['machine']['cuda_device'] if 'cuda_device' in report['machine'] else ''}"),
              "", proto_line, "", "| metric | value | ± s.e. | spread | how | paper |",
              "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    extra = [f"- skipped {name}: {why}" for name, why in report.get("skipped", {}).items()]
    extra += [f"- note: {note}" for note in report.get("notes", [])]
    if extra:
        lines += [""] + extra
    return "\n".join(lines) + "\n"
