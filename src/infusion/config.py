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
    """Which data set (SPEC §1). ``name`` is ``mnist``, a 2-D toy (``spiral``, ``circle``,
    ``gaussians``) or an image set of :mod:`infusion.datasets` (``cifar10``, ``svhn``,
    ``celeba``, ``tfd``, ``folder``). ``n_train`` > 0 keeps only the first n training examples
    (quick runs)."""

    name: str = "mnist"
    n_train: int = 0
    toy_size: int = 20000  # points per split for 2-D toys
    seed: int = 0  # seed of the toy generator
    path: str = ""  # user-supplied source: celeba zip/folder, TFD .mat, folder of images
    image_size: int = 0  # folder: side of the square centre crops (0 = 64)


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
    loss: str = "denoising"  # "denoising" (SPEC §4) or "bound" (lower-bound-based, SPEC §5)
    step_weight: str = "linear"  # "linear": t/T (footnote 3); "uniform": 1
    # Variational walkback (SPEC §11; method.T = heated steps L, temperatures base^0..base^(L-1))
    vw_alpha: float = 0.5  # a in μ = (1-a)·s + a·F_μ(s)
    vw_schedule: str = "double"  # temperature ×2 per heated step; "sqrt2": ×√2 (appendix F)
    vw_n1: int = 5  # N1: n ~ U{0..N1} initial temperature-1 steps of a heating trajectory
    vw_extra: int = 5  # extra temperature-1 sampling steps (= the n of the eq. 10 estimate)
    vw_sigma_offset: float = 0.0  # σ = T·softplus(F_σ(s) + offset)
    vw_sigma_max: float = 0.5  # σ_max: noise std of the hottest step (caps σ at σ_max/T_max)
    vw_prior_momentum: float = 0.99  # p* moments: moving average over the hottest states s_K
    # GSN / denoising-autoencoder walkback (SPEC §12; method.T = walkback steps k)
    gsn_noise: str = "gaussian"  # corruption: "gaussian" or "salt_pepper"
    gsn_noise_level: float = 0.2  # Gaussian std, or salt-and-pepper probability per dimension
    # Diffusion (SPEC §13; method.T = diffusion steps)
    diff_schedule: str = "linear"  # betas: "linear" (Ho et al., scaled by 1000/T) or "cosine"
    diff_loss: str = "noise"  # "noise": ε-prediction (+ 1e-3 × bound for σ); "bound": the bound
    diff_data_scale: float = 2.0  # diffusion space y = (x - 0.5)·scale; 2 maps [0, 1] to [-1, 1]
    diff_predict: str = "eps"  # the mean head predicts the noise "eps", the clean "x0", or "v"


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
    # Paper figures: infusion chains for fixed validation targets recorded after these epochs
    # (0 = before training; Fig. 2), and a train-set lower bound beside the valid one (Fig. 3).
    record_chains_at: tuple[int, ...] = ()
    record_chains_n: int = 8  # targets in each recorded chain
    train_bound_examples: int = 0  # training examples scored each epoch (0 = off)
    # Speed (issue 6): bf16 autocast ("auto": on CUDA only), torch.compile of the operator
    # network, and an exponential moving average of the weights used for sampling (0 = off).
    precision: str = "auto"  # "auto", "fp32" or "bf16"
    compile: bool = False
    ema: float = 0.0  # EMA decay per optimiser step, e.g. 0.999
    # torch CPU threads for the process when training on the CPU (0 = torch's default, one per
    # core). Tiny models (the 2-D toys) train fastest on one: their steps are all overhead.
    cpu_threads: int = 0


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
            (m.loss in ("denoising", "bound"),
             f"method.loss={m.loss!r}: expected 'denoising' or 'bound'"),
            (m.step_weight in ("linear", "uniform"),
             f"method.step_weight={m.step_weight!r}: expected 'linear' or 'uniform'"),
            (0.0 < m.vw_alpha <= 1.0, f"method.vw_alpha={m.vw_alpha}: expected in (0, 1]"),
            (m.vw_schedule in ("double", "sqrt2"),
             f"method.vw_schedule={m.vw_schedule!r}: expected 'double' or 'sqrt2'"),
            (m.vw_n1 >= 0, f"method.vw_n1={m.vw_n1}: expected >= 0"),
            (m.vw_sigma_max > 0, f"method.vw_sigma_max={m.vw_sigma_max}: expected > 0"),
            (m.vw_extra >= 0, f"method.vw_extra={m.vw_extra}: expected >= 0"),
            (0.0 <= m.vw_prior_momentum < 1.0,
             f"method.vw_prior_momentum={m.vw_prior_momentum}: expected in [0, 1)"),
            (m.gsn_noise in ("gaussian", "salt_pepper"),
             f"method.gsn_noise={m.gsn_noise!r}: expected 'gaussian' or 'salt_pepper'"),
            (m.gsn_noise_level > 0 and (m.gsn_noise != "salt_pepper" or m.gsn_noise_level <= 1),
             f"method.gsn_noise_level={m.gsn_noise_level}: expected > 0 (<= 1 for salt_pepper)"),
            (m.diff_schedule in ("linear", "cosine"),
             f"method.diff_schedule={m.diff_schedule!r}: expected 'linear' or 'cosine'"),
            (m.diff_loss in ("noise", "bound"),
             f"method.diff_loss={m.diff_loss!r}: expected 'noise' or 'bound'"),
            (m.diff_predict in ("eps", "x0", "v"),
             f"method.diff_predict={m.diff_predict!r}: expected 'eps', 'x0' or 'v'"),
            (m.diff_data_scale > 0,
             f"method.diff_data_scale={m.diff_data_scale}: expected > 0"),
            (t.epochs >= 0, f"train.epochs={t.epochs}: expected >= 0"),
            (t.batch_size >= 2, f"train.batch_size={t.batch_size}: batch norm needs >= 2"),
            (t.lr > 0, f"train.lr={t.lr}: expected > 0"),
            (t.patience >= 0, f"train.patience={t.patience}: expected >= 0"),
            (t.max_minutes >= 0, f"train.max_minutes={t.max_minutes}: expected >= 0"),
            (t.valid_examples >= 0, f"train.valid_examples={t.valid_examples}: expected >= 0"),
            (t.checkpoint_every >= 1, f"train.checkpoint_every={t.checkpoint_every}: expected >= 1"),
            (all(e >= 0 for e in t.record_chains_at),
             f"train.record_chains_at={t.record_chains_at}: expected epochs >= 0"),
            (t.record_chains_n >= 1, f"train.record_chains_n={t.record_chains_n}: expected >= 1"),
            (t.precision in ("auto", "fp32", "bf16"),
             f"train.precision={t.precision!r}: expected 'auto', 'fp32' or 'bf16'"),
            (0.0 <= t.ema < 1.0, f"train.ema={t.ema}: expected a decay in [0, 1) (0 = off)"),
            (t.cpu_threads >= 0, f"train.cpu_threads={t.cpu_threads}: expected >= 0 (0 = default)"),
            (self.data.image_size >= 0, f"data.image_size={self.data.image_size}: expected >= 0"),
            (t.train_bound_examples >= 0,
             f"train.train_bound_examples={t.train_bound_examples}: expected >= 0"),
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


DATA_NAMES = ("mnist", "spiral", "circle", "gaussians", "cifar10", "svhn", "celeba", "tfd",
              "folder")
NET_NAMES = ("mlp", "conv")
METHOD_NAMES = ("infusion", "walkback", "gsn", "diffusion")

# Presets: only what differs from the defaults above.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The paper (SPEC §2–4, §10): 2×1200 MLP, T = 15, α(0) = 0, ω = 0.01, Adam 1e-3, batch 512,
    # early stopping on the validation score. Records what Figs. 2 and 3 draw (paper_figures).
    # Samples are drawn with 30 steps, as the paper does for MNIST (§4.2). Trains until the
    # validation bound has not improved for 20 epochs; the 1,500-epoch cap is the authors' code's.
    "mnist": {"train": {"epochs": 1500, "patience": 20,
                        "record_chains_at": (0, 1, 2, 3, 4, 5, 10, 20, 50, 100, 200, 500),
                        "train_bound_examples": 10000},
              "sample": {"steps": 30}},
    # Finishes within 10 minutes on 2 CPU cores and gives recognisable digits.
    "mnist-demo": {
        "model": {"hidden": (1024, 1024)},
        "method": {"T": 10, "alpha0": 0.02, "omega": 0.02},
        "train": {"epochs": 8, "batch_size": 256, "patience": 0, "max_minutes": 8.0,
                  "valid_examples": 2000, "record_chains_at": (0, 1, 2, 4, 8),
                  "train_bound_examples": 2000},
        # T' = 2.5T: on 5,000 samples (README) 25 steps gave 90% confident digits with every
        # class >= 6.3%; 20 steps 88% / 6.4%, 30 steps 92% / 5.7% (more steps sharpen digits
        # but drift towards the common classes).
        "sample": {"steps": 25},
    },
    # CIFAR-10 (paper §4): Salimans et al.'s generator (fc, 3 transposed convs), T = 20, ω = 0.02.
    "cifar10": {
        "data": {"name": "cifar10"},
        "model": {"net": "conv", "hidden": (512, 256, 128)},
        "method": {"T": 20, "omega": 0.02},
        "train": {"valid_examples": 5000},
    },
    # CelebA 64×64 (paper §4): one more transposed convolution, T = 15, ω = 0.01.
    "celeba": {
        "data": {"name": "celeba"},
        "model": {"net": "conv", "hidden": (512, 256, 128, 64)},
        "train": {"valid_examples": 5000},
    },
    # SVHN (used by Variational Walkback): the CIFAR-10 network and schedule.
    "svhn": {
        "data": {"name": "svhn"},
        "model": {"net": "conv", "hidden": (512, 256, 128)},
        "method": {"T": 20, "omega": 0.02},
        "train": {"valid_examples": 5000},
    },
    # 2-D spiral: trains in under a minute on one CPU core.
    "spiral": {
        "data": {"name": "spiral", "toy_size": 8000},
        "model": {"hidden": (128, 128)},
        "method": {"T": 20, "omega": 0.05},
        "train": {"epochs": 40, "batch_size": 256, "lr": 3e-3, "patience": 0,
                  "valid_examples": 2000, "cpu_threads": 1},
        "sample": {"n": 2000},
    },
    # Baselines on the same network, data and trainer (SPEC §11–13). MNIST: the paper's
    # 2×1200 MLP and Adam 1e-3, batch 512.
    "mnist-walkback": {  # 8 doubling levels, n ~ U{0..5}, sampled with 5 extra T=1 steps
        "method": {"name": "walkback", "T": 8, "vw_n1": 5, "vw_extra": 5},
        "sample": {"steps": 13},
    },
    "mnist-gsn": {  # walkback k = 4 with salt-and-pepper corruption; a 100-step chain
        "method": {"name": "gsn", "T": 4, "gsn_noise": "salt_pepper", "gsn_noise_level": 0.4},
        "sample": {"steps": 100},
    },
    # T = 1000 linear betas, the simple loss on the v head (an MLP narrower than 784 cannot
    # carry ε at high noise or x_0 at low noise: methods/diffusion.py); the bound walks 1000
    # steps, so fewer validation examples
    "mnist-diffusion": {
        "method": {"name": "diffusion", "T": 1000, "diff_predict": "v"},
        "train": {"valid_examples": 500},
    },
    # 2-D spiral baselines: each trains in well under a minute on one CPU core.
    "spiral-walkback": {
        "data": {"name": "spiral", "toy_size": 8000},
        "model": {"hidden": (128, 128)},
        "method": {"name": "walkback", "T": 6, "vw_n1": 5, "vw_extra": 5},
        "train": {"epochs": 20, "batch_size": 256, "lr": 3e-3, "patience": 0,
                  "valid_examples": 2000, "cpu_threads": 1},
        "sample": {"n": 2000, "steps": 11},
    },
    "spiral-gsn": {
        "data": {"name": "spiral", "toy_size": 8000},
        "model": {"hidden": (128, 128)},
        # corruption std 0.03 (0.1: samples too diffuse, 0.01: the chain no longer mixes)
        "method": {"name": "gsn", "T": 4, "gsn_noise_level": 0.03},
        "train": {"epochs": 100, "batch_size": 256, "lr": 3e-3, "patience": 0,
                  "valid_examples": 2000, "cpu_threads": 1},
        "sample": {"n": 2000, "steps": 50},
    },
    "spiral-diffusion": {
        "data": {"name": "spiral", "toy_size": 8000},
        "model": {"hidden": (128, 128)},
        # The toys' spread in [0.05, 0.95] is ~0.2: scale 4 makes it ~0.8 against the unit
        # noise; the cosine betas keep more of the T = 100 steps at low noise.
        "method": {"name": "diffusion", "T": 100, "diff_schedule": "cosine",
                   "diff_data_scale": 4.0},
        # one step per example: more epochs; the bound walks all 100 steps, so fewer
        # validation examples
        "train": {"epochs": 300, "batch_size": 256, "lr": 3e-3, "patience": 0,
                  "valid_examples": 500, "cpu_threads": 1},
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
