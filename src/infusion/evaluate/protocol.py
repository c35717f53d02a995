"""What an evaluation computes: the metric names, the paper's protocol and numbers
(algorithms.md §7–8, §10) and :class:`EvalSettings` (the default protocol or the paper's,
reduced honestly: every reduction is stated)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from ..errors import InputError
from ..limits import (
    BATCH_MAX,
    DRAWS_MAX,
    EXAMPLES_MAX,
    REPEATS_MAX,
    SAMPLES_MAX,
    SEED_MAX,
    STEPS_MAX,
    check_range,
)
from .metrics import OWN_EXTRACTORS

METRICS = ("lb", "is", "is-iso", "lb-train", "is-train", "is-iso-train", "lb-train-batch",
           "is-train-batch", "parzen", "fid", "kid", "precision", "score", "coverage",
           "memorisation", "reversibility")
DEFAULT_METRICS = ("lb", "is", "parzen", "fid", "kid", "precision", "score", "coverage",
                   "memorisation")
# Table 2 (test and train columns; the train rows both with stored statistics and as the paper
# scored them, one minibatch-statistics batch: algorithms.md §6) and Table 1.
PAPER_METRICS = ("lb", "is", "is-iso", "lb-train", "is-train", "is-iso-train", "lb-train-batch",
                 "is-train-batch", "parzen")
LIKELIHOOD_METRICS = {"lb", "is", "is-iso", "lb-train", "is-train", "is-iso-train",
                      "lb-train-batch", "is-train-batch"}
# How per-step batch norm is normalised in an evaluation (algorithms.md §6), and what each says.
BN_STATS = {
    "stored": "per-step batch-norm statistics stored by the pass over the training set (exact "
              "averages, algorithms.md §6): the density of a fixed model",
    "ema": "per-step statistics recomputed as the authors' code keeps them, a moving average "
           "(rate 0.1) of batch mean and inverse std over one pass over the training set: a "
           "fixed model",
    "batch": "TRANSDUCTIVE: every example normalised with the statistics of its evaluation "
             "batch (likelihood rows; the sample metrics use the stored statistics), so the "
             "numbers depend on which examples are scored together and are not the density of "
             "a fixed model (the paper's appendix A.1 mode for its train row)",
}
SAMPLE_METRICS = {"parzen", "fid", "kid", "precision", "score", "coverage", "memorisation"}
CLASSIFIER_METRICS = {"fid", "kid", "precision", "score", "coverage"}
# algorithms.md §10 (MNIST, nats): Table 1 Parzen; Table 2 IS, lower bound, isotropic IS.
# The paper's train row was scored with minibatch statistics (appendix A.1; algorithms.md §6):
# it is set beside both our train rows, and matches the -batch ones.
PAPER_MNIST = {"parzen": 312.0, "lb": 1350.598, "is": 1836.27, "is-iso": 413.297,
               "lb-train": 1230.305, "is-train": 1837.560, "is-iso-train": 450.695,
               "lb-train-batch": 1230.305, "is-train-batch": 1837.560}
# The paper's protocol (algorithms.md §7–8): k draws per example, repetitions, test and
# training examples of Table 2; samples and kernel width of Table 1.
PAPER_PROTOCOL = {"k": 20000, "repeats": 10, "examples": 1000, "train_examples": 100,
                  "n_samples": 10000, "parzen_sigma": 0.17}
PROTOCOLS = ("default", "paper")
# The statistics-pass re-runs of EvalSettings.paper() (not the paper's: our measure of how far
# the bound moves with the pass's noise, algorithms.md §6). As the protocol's default it is left
# out, with a note, where it cannot apply (likelihood_rows.stats_spread_refusal); asked for
# otherwise, that is an error.
PAPER_STATS_SPREAD = 3
# The settings that count examples of a split (0 = all of it), and that split.
EXAMPLE_SPLITS = {"lb_examples": "test", "is_examples": "test", "parzen_test": "test",
                  "fid_reference": "test", "train_examples": "train", "iso_valid_examples": "valid",
                  "parzen_valid": "valid"}
# The largest value of every other count: proposal draws, samples, steps, repeats, batches.
COUNT_MAX = {"lb_k": DRAWS_MAX, "is_k": DRAWS_MAX, "iso_valid_k": DRAWS_MAX,
             "n_samples": SAMPLES_MAX, "memo_samples": SAMPLES_MAX, "steps": STEPS_MAX,
             "repeats": REPEATS_MAX, "stats_spread": REPEATS_MAX, "batch_size": BATCH_MAX,
             "seed": SEED_MAX}
# The work of EvalSettings.paper() in full for the mnist preset's model (2×1200 MLP, T = 15);
# docs/results.md gives the measured speeds (days on a CPU, minutes on a data-centre GPU).
PAPER_COST = ("4.4e8 proposal draws of T = 15 steps ((1,000 test + 100 train examples) × "
              "20,000 draws × 10 repeats, plain and isotropic; choosing the isotropic "
              "variance: 6.6e4 more)")


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
    sampler: str = ""  # the sample metrics' sampler ("": the config's sample.sampler)
    eta: float | None = None  # DDIM's stochasticity (None: the config's sample.eta)
    parzen_at_T: bool = False  # Parzen on means after the training T steps, not after `steps`
    parzen_valid: int = 0  # validation examples for choosing σ
    parzen_test: int = 0  # test examples scored
    parzen_sigma: float = 0.17  # the fixed σ reported beside the validation-chosen one
    fid_reference: int = 0  # test images the Fréchet distance compares with
    memo_samples: int = 1000  # samples (and test images) in the memorisation check
    # feature-extractor plug-in (infusion.evaluate.metrics); "": the data set's own classifier
    # (mnist-cnn, fashion-cnn; metrics.default_extractor)
    extractor: str = ""
    extractor_path: str = ""  # its file, for torchscript / inception
    batch_size: int = 0  # rows per forward pass (0: 1,000 on a CPU, 20,000 on CUDA)
    seed: int = 0
    bn_stats: str = "stored"  # "stored", "ema" or "batch" (transductive): see BN_STATS
    # re-run the statistics pass with this many other seeds and report how far the bound
    # (k = 1, the bound's test examples) moves: the spread of the statistics pass (0 = off).
    # The re-runs average as the evaluation's statistics do (ema: the moving average); it needs
    # "lb" among the metrics, a model with per-step batch norm and bn_stats other than "batch"
    # (asked for where it cannot apply, the evaluation is refused)
    stats_spread: int = 0

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
        validation over logspace(−1, 0, 10) ∪ {0.17}. The bound's spread over 3 re-runs of the
        statistics pass (``stats_spread``) is added where it applies: left out, with a note in
        the report, for a model without per-step batch norm, without the bound among the
        metrics, or with ``bn_stats="batch"``. ``k``, ``repeats`` and ``examples``
        (test examples; 0 = all) reduce it, and the report states each reduction; ``other``
        sets any other field (``batch_size``, ``seed``, ``n_samples``, …).

        Work (the mnist preset's model, 2×1200 MLP, T = 15): the full protocol makes 4.4e8
        proposal draws of T steps ((1,000 test + 100 train examples) × 20,000 × 10 repeats,
        plain and isotropic); ``k=100, repeats=1`` makes 2.9e5. Memory stays at ``batch_size``
        rows whatever k is. Measured speeds: docs/results.md.
        """
        P = PAPER_PROTOCOL
        k = P["k"] if k is None else k
        n = P["examples"] if examples is None else examples
        base = {"protocol": "paper", "lb_examples": n, "lb_k": k, "is_examples": n, "is_k": k,
                "repeats": P["repeats"] if repeats is None else repeats,
                "train_examples": P["train_examples"],
                "iso_valid_examples": min(100, n) if n > 0 else 100,
                "iso_valid_k": max(1, min(20, k)), "n_samples": P["n_samples"],
                "parzen_at_T": True, "parzen_sigma": P["parzen_sigma"],
                "stats_spread": PAPER_STATS_SPREAD}
        return cls(**{**base, **other})

    def validate(self) -> EvalSettings:
        if self.protocol not in PROTOCOLS:
            raise InputError(f"evaluation protocol {self.protocol!r}: expected one of "
                             f"{', '.join(PROTOCOLS)}")
        for name, value in asdict(self).items():
            if isinstance(value, (int, float)) and value < 0:
                raise InputError(f"evaluation setting {name}={value}: expected >= 0")
        for name in ("lb_k", "is_k", "repeats", "n_samples", "iso_valid_k"):
            if getattr(self, name) < 1:
                raise InputError(f"evaluation setting {name}={getattr(self, name)}: expected >= 1")
        for name, top in COUNT_MAX.items():
            check_range(f"evaluation setting {name}", getattr(self, name), 0, top)
        for name in EXAMPLE_SPLITS:
            check_range(f"evaluation setting {name}", getattr(self, name), 0, EXAMPLES_MAX,
                        " (0 = all)")
        if self.eta is not None and not (math.isfinite(self.eta) and 0 <= self.eta <= 1):
            raise InputError(f"evaluation setting eta={self.eta}: expected 0 <= eta <= 1 "
                             "(0 deterministic, 1 ancestral)")
        if not (math.isfinite(self.parzen_sigma) and self.parzen_sigma > 0):
            raise InputError(f"evaluation setting parzen_sigma={self.parzen_sigma}: expected > 0")
        if self.bn_stats not in BN_STATS:
            raise InputError(f"evaluation setting bn_stats={self.bn_stats!r}: expected one of "
                             f"{', '.join(BN_STATS)}")
        if self.extractor_path and self.extractor in ("", *OWN_EXTRACTORS.values()):
            which = self.extractor or "data set's own"
            raise InputError(f"--extractor-path {self.extractor_path!r}: the {which} classifier "
                             "is trained and cached by infusion and reads no file; a file is for "
                             "--extractor torchscript or inception")
        return self

    def clamped(self, sizes: dict[str, int]) -> tuple[EvalSettings, list[str]]:
        """These settings with each number of examples larger than its split (``sizes``:
        examples per split) cut to the split's size, so that the report states what is used;
        and a note on each cut."""
        cut, notes = {}, []
        for name, split in EXAMPLE_SPLITS.items():
            n = getattr(self, name)
            if n > sizes[split]:
                cut[name] = sizes[split]
                notes.append(f"{name}={n:,}: the {split} split holds {sizes[split]:,} examples; "
                             "all of them are used")
        return replace(self, **cut), notes

    def reductions(self) -> list[str]:
        """How these settings' likelihood and Parzen numbers differ from the paper's protocol
        (empty: the paper's protocol in full)."""
        P, out = PAPER_PROTOCOL, []
        if self.is_k != P["k"]:
            out.append(f"k = {self.is_k:,}{vs_paper(self.is_k, P['k'])}")
        if self.repeats != P["repeats"]:
            out.append(f"{plural(self.repeats, 'repeat')} of {P['repeats']}")
        if self.is_examples != P["examples"]:
            out.append(f"{_count(self.is_examples)} test examples"
                       f"{vs_paper(self.is_examples, P['examples'])}")
        if (self.lb_examples, self.lb_k) != (self.is_examples, self.is_k):
            out.append(f"the bound from separate draws: k = {self.lb_k:,} on "
                       f"{_count(self.lb_examples)} test examples")
        if self.train_examples != P["train_examples"]:
            out.append(f"{_count(self.train_examples)} train examples"
                       f"{vs_paper(self.train_examples, P['train_examples'])}")
        if self.n_samples != P["n_samples"]:
            out.append(f"{self.n_samples:,} Parzen samples{vs_paper(self.n_samples, P['n_samples'])}")
        if not self.parzen_at_T:
            out.append("Parzen samples after the sampling steps, not the training T")
        if self.bn_stats != "stored":
            out.append(f"batch-norm statistics: {self.bn_stats} (the paper's test rows use "
                       "stored statistics)")
        return out


def vs_paper(n: int, paper: int) -> str:
    """"" when ``n`` is the paper's number, else " of the paper's 1,000" or " (paper: 1,000)"."""
    if n == paper:
        return ""
    return f" of the paper's {paper:,}" if 0 < n < paper else f" (paper: {paper:,})"


def _count(n: int) -> str:
    return "all" if n <= 0 else f"{n:,}"


def plural(n: int, word: str) -> str:
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
        given = text if isinstance(text, str) else ",".join(map(str, text))
        raise InputError(f"metrics {given!r}: {f'unknown {bad}' if bad else 'none given'}; available: "
                         f"{', '.join(METRICS)} (or all, default, paper)")
    return tuple(dict.fromkeys(names))
