"""One typed configuration: frozen dataclasses, named presets, typed ``--set`` overrides.

Presets are plain data in :data:`PRESETS`; a preset names only what differs from the defaults.
Every run directory and checkpoint stores the full config as a dict (:func:`to_dict`), and
:func:`from_dict` rebuilds it, so a checkpoint alone says how it was made.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any


class ConfigError(ValueError):
    """A configuration value, preset name or override that makes no sense; the message names it."""


@dataclass(frozen=True)
class DataConfig:
    """Which data set (SPEC §1). ``name`` is ``mnist`` or a 2-D toy (``spiral``, ``circle``,
    ``gaussians``). ``n_train`` > 0 keeps only the first n training examples (quick runs)."""

    name: str = "mnist"
    n_train: int = 0
    toy_size: int = 20000  # points per split for 2-D toys
    seed: int = 0  # seed of the toy generator


@dataclass(frozen=True)
class ModelConfig:
    """The transition operator and prior (SPEC §2)."""

    net: str = "mlp"
    hidden: tuple[int, ...] = (1200, 1200)
    batch_norm: bool = True  # per-step batch norm, paper footnote 5
    beta: float = 0.1  # σ² = β·sigmoid(a_σ) + ε
    eps: float = 1e-4
    prior_var_floor: float = 1e-5  # authors' code adds 1e-5 to the prior variance


@dataclass(frozen=True)
class MethodConfig:
    """How training chains are built (SPEC §3–5)."""

    name: str = "infusion"
    T: int = 15  # training steps
    alpha0: float = 0.0  # infusion rate of q(0)
    omega: float = 0.01  # α(t) = α(t-1) + ω, clipped to [0, 1]
    target_var: float = 1e-4  # variance of the narrow Gaussian at the target (footnote 1)
    loss: str = "denoising"  # "denoising" (SPEC §4)
    step_weight: str = "linear"  # "linear": t/T (footnote 3); "uniform": 1


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (SPEC §4: Adam, lr 1e-3, batch 512) and run bookkeeping."""

    epochs: int = 200
    batch_size: int = 512
    lr: float = 1e-3
    seed: int = 0
    patience: int = 10  # early stopping: epochs without validation improvement; 0 = off
    max_minutes: float = 0.0  # stop after this wall time (0 = no limit); the run stays resumable
    valid_examples: int = 10000  # validation examples scored each epoch
    checkpoint_every: int = 1  # epochs


@dataclass(frozen=True)
class SampleConfig:
    """What the trainer draws at the end of a run (SPEC §2)."""

    steps: int = 0  # T' (0 = the training T)
    n: int = 100  # samples in the grid
    chains: int = 8  # chains in the sampling-chain figure
    seed: int = 0


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    preset: str = ""

    def validate(self) -> Config:
        """Raise :class:`ConfigError` naming the first nonsensical setting."""
        m, t, mo = self.method, self.train, self.model
        checks = [
            (self.data.name in DATA_NAMES, f"data.name={self.data.name!r}: expected one of {DATA_NAMES}"),
            (self.data.n_train >= 0, f"data.n_train={self.data.n_train}: expected >= 0"),
            (self.data.toy_size > 0, f"data.toy_size={self.data.toy_size}: expected > 0"),
            (mo.net in NET_NAMES, f"model.net={mo.net!r}: expected one of {NET_NAMES}"),
            (len(mo.hidden) > 0 and all(h > 0 for h in mo.hidden),
             f"model.hidden={mo.hidden}: expected positive layer widths"),
            (mo.beta > 0, f"model.beta={mo.beta}: expected > 0"),
            (mo.eps > 0, f"model.eps={mo.eps}: expected > 0"),
            (mo.prior_var_floor >= 0, f"model.prior_var_floor={mo.prior_var_floor}: expected >= 0"),
            (m.name in METHOD_NAMES, f"method.name={m.name!r}: expected one of {METHOD_NAMES}"),
            (m.T >= 1, f"method.T={m.T}: expected >= 1"),
            (0.0 <= m.alpha0 <= 1.0, f"method.alpha0={m.alpha0}: an infusion rate must lie in [0, 1]"),
            (-1.0 <= m.omega <= 1.0, f"method.omega={m.omega}: expected in [-1, 1]"),
            (m.target_var > 0, f"method.target_var={m.target_var}: expected > 0"),
            (m.loss in ("denoising",), f"method.loss={m.loss!r}: expected 'denoising'"),
            (m.step_weight in ("linear", "uniform"),
             f"method.step_weight={m.step_weight!r}: expected 'linear' or 'uniform'"),
            (t.epochs >= 0, f"train.epochs={t.epochs}: expected >= 0"),
            (t.batch_size >= 2, f"train.batch_size={t.batch_size}: batch norm needs >= 2"),
            (t.lr > 0, f"train.lr={t.lr}: expected > 0"),
            (t.patience >= 0, f"train.patience={t.patience}: expected >= 0"),
            (t.max_minutes >= 0, f"train.max_minutes={t.max_minutes}: expected >= 0"),
            (t.valid_examples >= 0, f"train.valid_examples={t.valid_examples}: expected >= 0"),
            (t.checkpoint_every >= 1, f"train.checkpoint_every={t.checkpoint_every}: expected >= 1"),
            (self.sample.steps >= 0, f"sample.steps={self.sample.steps}: expected >= 0"),
            (self.sample.steps == 0 or self.sample.steps >= m.T,
             f"sample.steps={self.sample.steps}: sampling needs T' >= T={m.T} (SPEC §2)"),
            (self.sample.n >= 1, f"sample.n={self.sample.n}: expected >= 1"),
            (self.sample.chains >= 1, f"sample.chains={self.sample.chains}: expected >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        return self


DATA_NAMES = ("mnist", "spiral", "circle", "gaussians")
NET_NAMES = ("mlp",)
METHOD_NAMES = ("infusion",)

# Presets: only what differs from the defaults above.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The paper (SPEC §2–4, §10): 2×1200 MLP, T = 15, α(0) = 0, ω = 0.01, Adam 1e-3, batch 512,
    # early stopping on the validation score.
    "mnist": {},
    # Finishes within 10 minutes on 2 CPU cores and gives recognisable digits.
    "mnist-demo": {
        "model": {"hidden": (1024, 1024)},
        "method": {"T": 10, "alpha0": 0.02, "omega": 0.02},
        "train": {"epochs": 8, "batch_size": 256, "patience": 0, "max_minutes": 8.0,
                  "valid_examples": 2000},
        "sample": {"steps": 20},
    },
    # 2-D spiral: trains in seconds.
    "spiral": {
        "data": {"name": "spiral", "toy_size": 8000},
        "model": {"hidden": (128, 128)},
        "method": {"T": 20, "omega": 0.05},
        "train": {"epochs": 40, "batch_size": 256, "lr": 3e-3, "patience": 0,
                  "valid_examples": 2000},
        "sample": {"n": 2000},
    },
}


def preset(name: str) -> Config:
    """The named preset as a validated :class:`Config`."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    cfg = from_dict({**PRESETS[name], "preset": name})
    return cfg.validate()


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a :class:`Config` from :func:`to_dict` output (or a partial dict of sections)."""
    sections = {}
    for f in fields(Config):
        if f.name == "preset":
            continue
        cls = _section_class(f.name)
        raw = d.get(f.name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"config section {f.name!r} must be a mapping, got {raw!r}")
        known = {g.name: g for g in fields(cls)}
        for key in raw:
            if key not in known:
                raise ConfigError(f"unknown setting {f.name}.{key}; known: {', '.join(known)}")
        sections[f.name] = cls(**{k: _coerce(v, _hint(cls, k), f"{f.name}.{k}") for k, v in raw.items()})
    return Config(**sections, preset=str(d.get("preset", "")))


def override(cfg: Config, assignments: list[str]) -> Config:
    """Apply ``section.key=value`` strings, typed by the dataclass field, then validate."""
    for item in assignments:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=3")
        path, text = item.split("=", 1)
        section, key = path.split(".", 1)
        if section not in _SECTIONS:
            raise ConfigError(f"--set {item!r}: unknown section {section!r}; known: {', '.join(_SECTIONS)}")
        cls = _SECTIONS[section]
        if key not in {g.name for g in fields(cls)}:
            known = ", ".join(g.name for g in fields(cls))
            raise ConfigError(f"--set {item!r}: unknown setting {section}.{key}; known: {known}")
        value = _parse(text, _hint(cls, key), path)
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{key: value})})
    return cfg.validate()


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "method": MethodConfig,
             "train": TrainConfig, "sample": SampleConfig}


def _section_class(name: str) -> type:
    return _SECTIONS[name]


def _hint(cls: type, key: str) -> Any:
    return typing.get_type_hints(cls)[key]


def _parse(text: str, hint: Any, path: str) -> Any:
    """Parse a command-line string into the field's type."""
    if typing.get_origin(hint) is tuple:
        parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
        return _coerce(parts, hint, path)
    return _coerce(text, hint, path)


def _coerce(value: Any, hint: Any, path: str) -> Any:
    try:
        if typing.get_origin(hint) is tuple:
            (elem, _) = typing.get_args(hint)
            return tuple(_coerce(v, elem, path) for v in value)
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{path}={value!r}: expected {name}") from None
