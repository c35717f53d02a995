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

``infusion.evaluate`` is this package and, called, its function :func:`~.api.evaluate`
(``infusion.evaluate("runs/spiral")`` and ``from infusion.evaluate import evaluate`` are the
same call). Works on any method's checkpoint: metrics that need ``method.log_weight`` are skipped with a
note when the method has none; classifier metrics are skipped for data the extractor does not
take (e.g. 2-D toys, whose test split is ``toy(name, max(2, toy_size // 5), seed + 2)``).
"""

from __future__ import annotations

import sys
import types

from .api import EvaluationResult, Metric, evaluate, report_files  # noqa: F401
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


class _CallablePackage(types.ModuleType):
    """``infusion.evaluate(...)`` calls :func:`evaluate`: the package and its function share
    one name, as a user expects of ``infusion.train``, while ``infusion.evaluate.metrics`` and
    the other modules stay where they are."""

    def __call__(self, *args, **kwargs) -> EvaluationResult:
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
