"""The likelihood rows of Table 2 (algorithms.md §7): the bound and IS estimate from the same
draws, the isotropic variant with one final variance chosen on validation, the train rows —
with stored statistics, and as the paper scored them, one minibatch-statistics batch
(algorithms.md §6) — and the spread of the statistics pass beside the bound's standard error."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..chain.nets import step_norms
from ..data import load_data
from ..errors import InputError
from ..methods.statistics import compute_step_statistics
from . import likelihood as lik
from .protocol import LIKELIHOOD_METRICS, PAPER_PROTOCOL, EvalSettings, plural, vs_paper
from .report import ReportWriter
from .sample_rows import add_data_units, head


@dataclass(frozen=True)
class _Job:
    """One likelihood estimate: ``fill`` maps its "lb" / "is" results to report metrics."""

    split: str
    n: int
    k: int
    isotropic: bool
    seed: int
    fill: dict
    bn: str = "stored"  # likelihood.BN_MODES


def _likelihood_jobs(wanted: Sequence[str], s: EvalSettings) -> list[_Job]:
    """The estimates that serve the wanted likelihood metrics: a bound and an IS estimate with
    the same examples and k come from the same draws (the paper's protocol)."""
    shared = (s.lb_examples, s.lb_k) == (s.is_examples, s.is_k)
    jobs = []

    bn = "batch" if s.bn_stats == "batch" else "stored"

    def add(split, n, k, iso, seed, mode=bn, **fill):
        fill = {kind: name for kind, name in fill.items() if name in wanted}
        if fill:
            jobs.append(_Job(split, n, k, iso, seed, fill, mode))

    if not shared:
        add("test", s.lb_examples, s.lb_k, False, s.seed, lb="lb")
    add("test", s.is_examples, s.is_k, False, s.seed + 1000, **{"is": "is", "lb": "lb" if shared
                                                               else ""})
    add("test", s.is_examples, s.is_k, True, s.seed + 1000, **{"is": "is-iso"})
    add("train", s.train_examples, s.is_k, False, s.seed + 3000,
        **{"is": "is-train", "lb": "lb-train"})
    add("train", s.train_examples, s.is_k, True, s.seed + 3000, **{"is": "is-iso-train"})
    add("train", s.train_examples, s.is_k, False, s.seed + 3000, "batch",
        **{"is": "is-train-batch", "lb": "lb-train-batch"})
    return jobs


def likelihood_rows(run: ReportWriter, model, method, cfg, splits, metrics, s: EvalSettings,
                    progress: bool, labels=None) -> None:
    """The likelihood rows of Table 2 (algorithms.md §7), each repetition written as it ends;
    with ``labels`` ({split: classes}, a class-conditional model) rows of log p(x | y)."""
    labels = labels or {}
    wanted = [m for m in metrics if m in LIKELIHOOD_METRICS]
    if wanted and not method.has_likelihood:
        run.skip(wanted, f"method {cfg.method.name!r} has no likelihood estimate")
        return
    estimate = method.likelihood == "estimate"  # the flow: an unbiased estimate, not a bound
    if estimate:
        no_is = [m for m in wanted if m.startswith("is")]
        if no_is:
            run.skip(no_is, f"method {cfg.method.name!r}: its likelihood is an unbiased "
                     "probability-flow ODE estimate, not a bound, so it has no IS estimate "
                     "(algorithms.md §14)")
        wanted = [m for m in wanted if m not in no_is]
    report, final_var = run.report, None
    for job in _likelihood_jobs(wanted, s):
        if job.isotropic and final_var is None:
            final_var = _isotropic_variance(run, model, method, splits, s, progress,
                                            labels.get("valid"))
        data = head(splits[job.split], job.n)
        names = list(job.fill.values())
        ks = [c for c in (1, 10, 100, 1000, 10000) if c < job.k]
        batch = min(len(data), s.batch_size)
        what = (f"{' + '.join(names)}: {len(data):,} {job.split} examples, k = {job.k:,}, "
                f"{plural(s.repeats, 'repeat')}" + (f", final variance {final_var:.3g}"
                                                     if job.isotropic else "")
                + (f", minibatch statistics (batches of {batch:,})" if job.bn == "batch" else ""))

        def publish(r: int, res: dict, job=job, ks=ks, what=what, batch=batch) -> None:
            _check_finite(res, job)
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
                if job.bn == "batch":
                    e["bn_batch"] = batch
                    e["protocol_note"] = (f"transductive: each example normalised with the "
                                          f"statistics of its batch of {batch:,} (not a fixed "
                                          f"model's density); " + e["protocol_note"])
                elif job.split == "train" and cfg.data.name == "mnist":
                    e["protocol_note"] += ("; the paper scored its train row with minibatch "
                                           "statistics: compare with the -batch row")
                if labels:
                    e["conditional"] = "log p(x | y), y the example's class (algorithms.md §15)"
                if estimate:
                    train_row = ", train" if job.split == "train" else ""
                    e["label"] = f"log-likelihood, ODE estimate{train_row} (nats)"
                    e["protocol_note"] = ("mean of Hutchinson estimates through the "
                                          "probability-flow ODE, not a bound; " + e["protocol_note"])
                add_data_units(e, cfg, model.d)
                report["metrics"][name] = e
                run.per_example[name] = res[kind].per_example
            run.status["running"] = f"{what} ({r} of {s.repeats} done)"
            run.save()

        with run.step(names, what):
            lik.estimate_likelihood(model, method, data, job.k, seed=job.seed, repeats=s.repeats,
                                    batch_size=s.batch_size,
                                    final_var=final_var if job.isotropic else None, ks=ks,
                                    progress=progress, on_repeat=publish,
                                    desc=f"{' + '.join(names)} (k={job.k:,})",
                                    labels=head(labels[job.split], job.n) if labels else None,
                                    bn_stats=job.bn)
    if s.stats_spread and "lb" in report["metrics"] and s.bn_stats != "batch":
        _stats_pass_spread(run, model, method, cfg, splits, s, progress, labels.get("test"))


def _check_finite(res: dict, job: _Job) -> None:
    """A likelihood row is a number or an error: a bound or IS estimate that is NaN or
    infinite (a model whose log-densities are not finite) is refused, never reported."""
    for kind, name in job.fill.items():
        value = res[kind].mean
        if not math.isfinite(value):
            raise InputError(f"{name}: the estimate on {job.split} examples is not finite "
                             f"({value}): the model gives NaN or infinite log-densities "
                             "(diverged or damaged weights, or a variance that is not "
                             "positive); no number is reported for it")


def stats_spread_refusal(s: EvalSettings, metrics: Sequence[str], model, method) -> str | None:
    """Why ``s.stats_spread`` cannot be measured for this evaluation, or None where it can.
    The spread is that of the lower bound ("lb" among the metrics, of a method with a bound)
    over re-runs of the statistics pass the rows are scored with, so it needs that pass: per-step
    batch norm in the model, and stored statistics (``bn_stats`` "stored" or "ema"), not each
    evaluation batch's own ("batch")."""
    if s.bn_stats == "batch":
        return ("with bn_stats=batch every example is normalised with its evaluation batch's "
                "statistics, so no statistics pass is used and none can be re-run")
    if "lb" not in metrics:
        return ("it is the spread of the lower bound; add lb to the metrics (--metrics "
                f"lb,...; asked for: {','.join(metrics)})")
    if not method.has_likelihood:
        return f"method {method.name!r} has no lower bound to measure it on"
    if not step_norms(model):
        return ("the model has no per-step batch norm (method "
                f"{method.name!r} or model.batch_norm=false), so it has no statistics pass "
                "to re-run")
    return None


def _stats_pass_spread(run: ReportWriter, model, method, cfg, splits, s: EvalSettings,
                       progress: bool, test_labels=None) -> None:
    """How far the bound moves when the statistics pass (algorithms.md §6) is re-run with other
    noise: the bound (k = 1, the same test examples and draws) with the model's statistics and
    after ``s.stats_spread`` passes of other seeds; the model's statistics are kept. The re-runs
    average the batch statistics as the evaluation's own did (``bn_stats="ema"``: the moving
    average; else the exact average), so the spread compares like with like."""
    norms = step_norms(model)
    if not norms:
        return
    average = "moving" if s.bn_stats == "ema" else "exact"
    e = run.report["metrics"]["lb"]
    data = head(splits["test"], e["n"])
    lab = None if test_labels is None else head(test_labels, e["n"])

    def bound() -> float:
        res = lik.estimate_likelihood(model, method, data, 1, seed=s.seed + 7000,
                                      batch_size=s.batch_size, labels=lab)
        return res["lb"].mean

    kept = [n.stats_snapshot() for n in norms]
    with run.step([], f"statistics-pass spread: {plural(s.stats_spread, 'pass')} over the training set "
                  f"with other seeds, the bound (k = 1) on {len(data):,} test examples each",
                  timer="stats-pass-spread"):
        train_data = load_data(cfg, lik.model_device(model), progress=progress)
        means = []
        try:
            base = bound()
            for i in range(s.stats_spread):
                compute_step_statistics(model, method, train_data, cfg.train.batch_size,
                                        seed=s.seed + 9000 + i, progress=progress,
                                        average=average)
                means.append(bound())
        finally:
            for n, snap in zip(norms, kept):
                n.stats_restore(snap)
    e["stats_pass_spread"] = {
        "passes": s.stats_spread, "k": 1, "n": len(data), "stored": base, "others": means,
        "statistics": average, "std": float(np.std(means + [base], ddof=1)),
        "what": f"the standard deviation of the mean bound (k = 1, same draws) over the "
                f"evaluation's statistics pass and others with other seeds, each the {average} "
                "average of the batch statistics (algorithms.md §6)"}
    run.save()


def _isotropic_variance(run: ReportWriter, model, method, splits, s: EvalSettings,
                        progress: bool, valid_labels=None) -> float:
    """The isotropic variant's one final variance, chosen on validation data (algorithms.md §7)."""
    valid = head(splits["valid"], s.iso_valid_examples)
    grid = lik.ISO_VAR_GRID
    with run.step([], f"isotropic final variance: {len(grid)} values of logspace(-4, 0, 33) "
                  f"on {len(valid):,} validation examples, k = {s.iso_valid_k}",
                  timer="is-iso-variance"):
        best, table = lik.select_final_var(model, method, valid, grid, s.iso_valid_k,
                                           seed=s.seed + 5000, batch_size=s.batch_size,
                                           progress=progress,
                                           labels=None if valid_labels is None
                                           else head(valid_labels, s.iso_valid_examples))
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
    parts = [f"k = {k:,}{vs_paper(k, P['k'])}",
             plural(planned, "repeat") + ("" if planned == P["repeats"] else f" of {P['repeats']}"),
             f"{n:,} {split} examples{vs_paper(n, paper_n)}"]
    if (k, planned, n) == (P["k"], P["repeats"], paper_n):
        parts.append("the paper's protocol")
    if done < planned:
        parts.append(f"partial: {done} of {planned} repeats done")
    return "; ".join(parts)
