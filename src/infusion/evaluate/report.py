"""The evaluation report: written atomically as JSON, a markdown table and per-example arrays
after every metric and repetition, so an interrupted evaluation leaves a valid partial report."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io import atomic_write, read_json, save_npz
from .protocol import BN_STATS, PAPER_MNIST


@dataclass(frozen=True)
class Metric:
    """One number of an evaluation: its value, standard error (None where the metric has
    none) and the examples or samples it rests on; ``details``: the report's whole entry."""

    name: str
    value: float
    stderr: float | None = None
    n: int | None = None
    details: dict = field(default_factory=dict, repr=False)


# the number a report entry without a "mean" or "value" stands for
_HEADLINES = {"precision": "precision", "recall": "recall", "coverage": "entropy",
              "reversibility": "ratio"}


def report_metrics(report: dict) -> dict[str, Metric]:
    """Each metric of a report as a :class:`Metric` (precision and recall as two)."""
    out = {}
    for name, e in report.get("metrics", {}).items():
        n = e.get("n", e.get("n_samples"))
        if "mean" in e:
            out[name] = Metric(name, e["mean"], e.get("stderr"), n, e)
        elif "value" in e:
            out[name] = Metric(name, e["value"], None, n, e)
        elif name == "precision":  # precision and recall: two numbers of one entry
            for key in ("precision", "recall"):
                out[key] = Metric(key, e[key], None, e.get("n_samples"), e)
        elif name == "memorisation":
            out[name] = Metric(name, e["sample_to_train"]["median"], None, n, e)
        elif name in _HEADLINES:
            out[name] = Metric(name, e[_HEADLINES[name]], None, n, e)
    return out


class ReportWriter:
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


def machine() -> dict:
    """Where the evaluation ran (for the report)."""
    info = {"platform": platform.platform(), "python": sys.version.split()[0],
            "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "processor": platform.processor()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _bn_line(report: dict) -> str:
    bn = report.get("bn_stats") or {"mode": "stored", "meaning": BN_STATS["stored"]}
    return f"batch norm: {bn['mode']} — {bn['meaning']}"


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
              "is-iso-train": "IS, isotropic output, train (nats)",
              "lb-train-batch": "lower bound, train, minibatch statistics (nats)",
              "is-train-batch": "IS estimate, train, minibatch statistics (nats)"}
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
        if e.get("stats_pass_spread"):
            sp = e["stats_pass_spread"]
            how.append(f"statistics pass re-run {sp['passes']}× with other noise: the bound "
                       f"(k = 1) moves by ± {sp['std']:.1f} (s.d.)")
        text, vs = e.get("label", label), num(paper.get(name), "{:g}")
        if e.get("conditional"):  # log p(x | y): not the paper's log p(x)
            text, vs = text.replace(" (nats)", " of log p(x | y) (nats)"), ""
        rows.append((text, num(e["mean"]), num(e["stderr"]), num(e.get("spread")),
                     "; ".join(h for h in how if h), vs))
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
    if "kid" in m:
        k = m["kid"]
        how = f"{k['subsets']} subsets; {k['n_samples']} samples vs {k['n_reference']} test"
        rows.append(("kernel distance, KID ×10³ (classifier features)",
                     num(1e3 * k["value"], "{:.3f}"), "", num(1e3 * k["std"], "{:.3f}"), how, ""))
    if "precision" in m:
        p = m["precision"]
        rows.append(("precision / recall (classifier features)",
                     f"{p['precision']:.3f} / {p['recall']:.3f}", "", "",
                     f"k = {p['k']} nearest neighbours (Kynkäänniemi et al. 2019)", ""))
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
              "", proto_line, "", _bn_line(report), "",
              "| metric | value | ± s.e. | spread | how | paper |",
              "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    extra = [f"- skipped {name}: {why}" for name, why in report.get("skipped", {}).items()]
    extra += [f"- note: {note}" for note in report.get("notes", [])]
    if extra:
        lines += [""] + extra
    return "\n".join(lines) + "\n"


def read_report(path: str | Path, what: str = "report") -> dict:
    """An ``infusion evaluate`` report read back from the JSON file ``path``, checked: a
    regular file of JSON (:func:`infusion.io.read_json`) holding an object with ``settings``
    and ``metrics`` objects, each metric an object with its number (a real number) and every
    field its table row (:func:`markdown`) shows. Anything else is an :class:`InputError`
    naming ``what``, the file and, where one is at fault, the metric."""

    report, where = read_json(path, what), f"{what} {str(path)!r}"
    if not isinstance(report, dict):
        raise InputError(f"{where}: expected a JSON object (an infusion evaluate report), "
                         f"not a JSON {type(report).__name__}")
    for key in ("settings", "metrics"):
        if not isinstance(report.get(key), dict):
            raise InputError(f"{where}: no {key!r} object; not an infusion evaluate report")

    def check(metrics: dict, name: str) -> None:
        one = {**report, "metrics": metrics}
        try:
            markdown(one)
            values = report_metrics(one)
        except (LookupError, TypeError, ValueError, AttributeError) as e:
            raise InputError(f"{where}: {name} is not as infusion evaluate writes it "
                             f"({type(e).__name__}: {e})") from None
        bad = [k for k, m in values.items() if isinstance(m.value, bool)
               or not isinstance(m.value, (int, float))]
        if bad:
            raise InputError(f"{where}: metric {bad[0]!r} has no number ({values[bad[0]].value!r})")

    check({}, "its summary (settings, timings, machine)")
    for name, entry in report["metrics"].items():
        if not isinstance(entry, dict):
            raise InputError(f"{where}: metric {name!r} is not a JSON object")
        check({name: entry}, f"metric {name!r}")
    return report
