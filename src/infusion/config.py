"""One typed configuration: frozen dataclasses, named presets, typed ``--set`` overrides.

Presets are plain data in :data:`PRESETS`; a preset names only what differs from the defaults.
Every run directory and checkpoint stores the full config as a dict (:func:`to_dict`), and
:func:`from_dict` rebuilds it, so a checkpoint alone says how it was made.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import InputError


class ConfigError(InputError):
    """A configuration value, preset name or override that makes no sense; the message names it."""


def _require(checks: list[tuple[bool, str]]) -> None:
    """Raise :class:`ConfigError` with the message of the first failed check."""
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


@dataclass(frozen=True)
class DataConfig:
    """Which data set (algorithms.md §1). ``name`` is ``mnist``, a 2-D toy (``spiral``,
    ``circle``, ``gaussians``), an image set of :mod:`infusion.data` (``cifar10``, ``svhn``,
    ``celeba``, ``tfd``, ``folder``) or ``arrays``, a user's own data that :func:`infusion.fit`
    stored as a verified ``.npz`` (:mod:`infusion.data.arrays`). ``n_train`` > 0 keeps only the
    first n training examples (quick runs).

    ``path`` is stored absolute (``~`` expanded, made absolute against the working directory
    when the config is built), so a run made here is evaluated, sampled and drawn from any
    directory. For ``arrays``, ``sha256`` is the data file's checksum, verified on every load,
    and ``scale``/``offset`` the affine map of float data into model space, x = raw·scale +
    offset, one value or one per dimension (empty: the data are used as they are;
    :func:`infusion.data.to_data_space` maps outputs back)."""

    name: str = "mnist"
    n_train: int = 0
    toy_size: int = 20000  # points per split for 2-D toys
    seed: int = 0  # seed of the toy generator
    path: str = ""  # user's source: celeba zip/folder, TFD .mat, image folder, arrays .npz
    image_size: int = 0  # folder: side of the square centre crops (0 = 64)
    sha256: str = ""  # arrays: the data file's sha256
    scale: tuple[float, ...] = ()  # arrays: model space x = raw·scale + offset
    offset: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        import os.path

        if self.path:  # absolute, so that the run works from any working directory
            object.__setattr__(self, "path", os.path.abspath(os.path.expanduser(self.path)))

    def validate(self) -> None:
        _require([
            (self.name in DATA_NAMES, f"data.name={self.name!r}: expected one of {DATA_NAMES}"),
            (self.n_train >= 0, f"data.n_train={self.n_train}: expected >= 0"),
            (self.toy_size > 0, f"data.toy_size={self.toy_size}: expected > 0"),
            (self.image_size >= 0, f"data.image_size={self.image_size}: expected >= 0"),
            (self.name != "arrays" or bool(self.path),
             "data.name='arrays' needs data.path, the .npz file infusion.fit stores"),
            (self.name == "arrays" or not (self.scale or self.offset or self.sha256),
             f"data.scale/offset/sha256 belong to data.name='arrays', not {self.name!r}"),
            (len(self.scale) == len(self.offset),
             f"data.scale, data.offset: {len(self.scale)} and {len(self.offset)} values"),
            (all(_finite(s) and s > 0 for s in self.scale) and all(map(_finite, self.offset)),
             "data.scale: expected finite scales > 0 and finite offsets"),
        ])


@dataclass(frozen=True)
class ModelConfig:
    """The network body and the Gaussian heads (algorithms.md §2)."""

    net: str = "mlp"
    hidden: tuple[int, ...] = (1200, 1200)
    batch_norm: bool = True  # per-step batch norm, paper footnote 5
    beta: float = 0.1  # σ² = β·sigmoid(a_σ) + ε
    eps: float = 1e-4
    prior_var_floor: float = 1e-5  # authors' code adds 1e-5 to the prior variance

    def validate(self) -> None:
        _require([
            (self.net in NET_NAMES, f"model.net={self.net!r}: expected one of {NET_NAMES}"),
            (len(self.hidden) > 0 and all(h > 0 for h in self.hidden),
             f"model.hidden={self.hidden}: expected positive layer widths"),
            (_finite(self.beta) and self.beta > 0, f"model.beta={self.beta}: expected > 0"),
            (_finite(self.eps) and self.eps > 0, f"model.eps={self.eps}: expected > 0"),
            (_finite(self.prior_var_floor) and self.prior_var_floor >= 0,
             f"model.prior_var_floor={self.prior_var_floor}: expected >= 0"),
        ])


@dataclass(frozen=True)
class InfusionSettings:
    """Infusion training (algorithms.md §3–5): ``method.infusion.*``."""

    alpha0: float = 0.0  # infusion rate of q(0)
    omega: float = 0.01  # α(t) = α(t-1) + ω, clipped to [0, 1]
    target_var: float = 1e-4  # variance of the narrow Gaussian at the target (footnote 1)
    loss: str = "denoising"  # "denoising" (§4) or "bound" (lower-bound-based, §5)
    step_weight: str = "linear"  # "linear": t/T (footnote 3); "uniform": 1

    def validate(self) -> None:
        p = "method.infusion"
        _require([
            (0.0 <= self.alpha0 <= 1.0,
             f"{p}.alpha0={self.alpha0}: an infusion rate must lie in [0, 1]"),
            (-1.0 <= self.omega <= 1.0, f"{p}.omega={self.omega}: expected in [-1, 1]"),
            (_finite(self.target_var) and self.target_var > 0,
             f"{p}.target_var={self.target_var}: expected > 0"),
            (self.loss in ("denoising", "bound"),
             f"{p}.loss={self.loss!r}: expected 'denoising' or 'bound'"),
            (self.step_weight in ("linear", "uniform"),
             f"{p}.step_weight={self.step_weight!r}: expected 'linear' or 'uniform'"),
        ])


@dataclass(frozen=True)
class WalkbackSettings:
    """Variational walkback (algorithms.md §11): ``method.walkback.*``; ``method.T`` = the
    heated levels L, temperatures base^0 … base^(L-1)."""

    alpha: float = 0.5  # a in μ = (1-a)·s + a·F_μ(s)
    schedule: str = "double"  # temperature ×2 per heated step; "sqrt2": ×√2 (appendix F)
    # "variance": temperature T multiplies the variance (std √T·σ), as Algorithm 1, appendix F
    # and the authors' code; "std": it multiplies the std (checkpoints made before 0.2)
    temperature_scales: str = "variance"
    n1: int = 5  # N1: n ~ U{0..N1} initial temperature-1 steps of a heating trajectory
    extra: int = 5  # extra temperature-1 sampling steps (= the n of the eq. 10 estimate)
    sigma_offset: float = 0.0  # σ = softplus(F_σ(s) + offset)
    sigma_max: float = 0.5  # σ_max: noise std of the hottest step (caps σ at σ_max/√T_max)
    prior_momentum: float = 0.99  # p* moments: moving average over the hottest states s_K

    def validate(self) -> None:
        p = "method.walkback"
        _require([
            (0.0 < self.alpha <= 1.0, f"{p}.alpha={self.alpha}: expected in (0, 1]"),
            (self.schedule in ("double", "sqrt2"),
             f"{p}.schedule={self.schedule!r}: expected 'double' or 'sqrt2'"),
            (self.temperature_scales in ("variance", "std"),
             f"{p}.temperature_scales={self.temperature_scales!r}: expected 'variance' or 'std'"),
            (self.n1 >= 0, f"{p}.n1={self.n1}: expected >= 0"),
            (self.extra >= 0, f"{p}.extra={self.extra}: expected >= 0"),
            (_finite(self.sigma_offset), f"{p}.sigma_offset={self.sigma_offset}: expected finite"),
            (_finite(self.sigma_max) and self.sigma_max > 0,
             f"{p}.sigma_max={self.sigma_max}: expected > 0"),
            (0.0 <= self.prior_momentum < 1.0,
             f"{p}.prior_momentum={self.prior_momentum}: expected in [0, 1)"),
        ])


@dataclass(frozen=True)
class GSNSettings:
    """GSN / denoising-autoencoder walkback (algorithms.md §12): ``method.gsn.*``;
    ``method.T`` = the walkback steps k."""

    noise: str = "gaussian"  # corruption: "gaussian" or "salt_pepper"
    noise_level: float = 0.2  # Gaussian std, or salt-and-pepper probability per dimension

    def validate(self) -> None:
        p = "method.gsn"
        _require([
            (self.noise in ("gaussian", "salt_pepper"),
             f"{p}.noise={self.noise!r}: expected 'gaussian' or 'salt_pepper'"),
            (_finite(self.noise_level) and self.noise_level > 0
             and (self.noise != "salt_pepper" or self.noise_level <= 1),
             f"{p}.noise_level={self.noise_level}: expected > 0 (<= 1 for salt_pepper)"),
        ])


@dataclass(frozen=True)
class DiffusionSettings:
    """Gaussian diffusion (algorithms.md §13): ``method.diffusion.*``; ``method.T`` = the
    diffusion steps."""

    schedule: str = "linear"  # betas: "linear" (Ho et al., scaled by 1000/T) or "cosine"
    loss: str = "noise"  # "noise": the simple loss (+ 1e-3 × bound for σ); "bound": the bound
    data_scale: float = 2.0  # diffusion space y = (x - 0.5)·scale; 2 maps [0, 1] to [-1, 1]
    predict: str = "eps"  # the mean head predicts the noise "eps", the clean "x0", or "v"

    def validate(self) -> None:
        p = "method.diffusion"
        _require([
            (self.schedule in ("linear", "cosine"),
             f"{p}.schedule={self.schedule!r}: expected 'linear' or 'cosine'"),
            (self.loss in ("noise", "bound"), f"{p}.loss={self.loss!r}: expected 'noise' or 'bound'"),
            (self.predict in ("eps", "x0", "v"),
             f"{p}.predict={self.predict!r}: expected 'eps', 'x0' or 'v'"),
            (_finite(self.data_scale) and self.data_scale > 0,
             f"{p}.data_scale={self.data_scale}: expected > 0"),
        ])


# One settings class per method: ``method.<name>.*`` (adding a method adds a line here).
METHOD_SETTINGS: dict[str, type] = {"infusion": InfusionSettings, "walkback": WalkbackSettings,
                                    "gsn": GSNSettings, "diffusion": DiffusionSettings}


@dataclass(frozen=True)
class MethodConfig:
    """Which method and its steps; each method's own settings in its nested section."""

    name: str = "infusion"
    T: int = 15  # training steps (infusion), heated levels (walkback), walkback k (GSN), …
    infusion: InfusionSettings = field(default_factory=InfusionSettings)
    walkback: WalkbackSettings = field(default_factory=WalkbackSettings)
    gsn: GSNSettings = field(default_factory=GSNSettings)
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)

    @property
    def settings(self) -> Any:
        """The settings of the method named by ``name``."""
        return getattr(self, self.name)

    def validate(self) -> None:
        _require([
            (self.name in METHOD_NAMES, f"method.name={self.name!r}: expected one of {METHOD_NAMES}"),
            (self.T >= 1, f"method.T={self.T}: expected >= 1"),
        ])
        self.settings.validate()


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (algorithms.md §4: Adam, lr 1e-3, batch 512) and run bookkeeping."""

    epochs: int = 200
    batch_size: int = 512
    lr: float = 1e-3
    seed: int = 0
    patience: int = 10  # early stopping: epochs without validation improvement; 0 = off
    max_minutes: float = 0.0  # stop after this wall time (0 = no limit); the run stays resumable
    valid_examples: int = 10000  # validation examples scored each epoch
    checkpoint_every: int = 1  # epochs
    checkpoint_minutes: float = 15.0  # also save a resumable state inside an epoch (0 = off)
    # Paper figures: infusion chains for fixed validation targets recorded after these epochs
    # (0 = before training; Fig. 2), and a train-set lower bound beside the valid one (Fig. 3).
    record_chains_at: tuple[int, ...] = ()
    record_chains_n: int = 8  # targets in each recorded chain
    train_bound_examples: int = 0  # training examples scored each epoch (0 = off)
    # Speed: bf16 autocast ("auto": on CUDA only), torch.compile of the network body, and an
    # exponential moving average of the weights used for validation and sampling (0 = off).
    precision: str = "auto"  # "auto", "fp32" or "bf16"
    compile: bool = False
    ema: float = 0.0  # EMA decay per optimiser step, e.g. 0.999
    # torch CPU threads for the process when training on the CPU (0 = torch's default, one per
    # core). Tiny models (the 2-D toys) train fastest on one: their steps are all overhead.
    cpu_threads: int = 0

    def validate(self) -> None:
        _require([
            (self.epochs >= 0, f"train.epochs={self.epochs}: expected >= 0"),
            (self.batch_size >= 2, f"train.batch_size={self.batch_size}: batch norm needs >= 2"),
            (_finite(self.lr) and self.lr > 0, f"train.lr={self.lr}: expected a finite rate > 0"),
            (self.patience >= 0, f"train.patience={self.patience}: expected >= 0"),
            (_finite(self.max_minutes) and self.max_minutes >= 0,
             f"train.max_minutes={self.max_minutes}: expected >= 0"),
            (self.valid_examples >= 0, f"train.valid_examples={self.valid_examples}: expected >= 0"),
            (self.checkpoint_every >= 1,
             f"train.checkpoint_every={self.checkpoint_every}: expected >= 1"),
            (_finite(self.checkpoint_minutes) and self.checkpoint_minutes >= 0,
             f"train.checkpoint_minutes={self.checkpoint_minutes}: expected >= 0 (0 = off)"),
            (all(e >= 0 for e in self.record_chains_at),
             f"train.record_chains_at={self.record_chains_at}: expected epochs >= 0"),
            (self.record_chains_n >= 1, f"train.record_chains_n={self.record_chains_n}: expected >= 1"),
            (self.precision in ("auto", "fp32", "bf16"),
             f"train.precision={self.precision!r}: expected 'auto', 'fp32' or 'bf16'"),
            (0.0 <= self.ema < 1.0, f"train.ema={self.ema}: expected a decay in [0, 1) (0 = off)"),
            (self.cpu_threads >= 0, f"train.cpu_threads={self.cpu_threads}: expected >= 0 (0 = default)"),
            (self.train_bound_examples >= 0,
             f"train.train_bound_examples={self.train_bound_examples}: expected >= 0"),
        ])


@dataclass(frozen=True)
class SampleConfig:
    """What the trainer draws at the end of a run, and the default number of sampling steps
    everywhere (algorithms.md §2)."""

    steps: int = 0  # T' (0 = the training T)
    n: int = 100  # samples in the grid
    chains: int = 8  # chains in the sampling-chain figure
    seed: int = 0

    def validate(self) -> None:
        _require([
            (self.steps >= 0, f"sample.steps={self.steps}: expected >= 0"),
            (self.n >= 1, f"sample.n={self.n}: expected >= 1"),
            (self.chains >= 1, f"sample.chains={self.chains}: expected >= 1"),
        ])


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
        for section in (self.data, self.model, self.method, self.train, self.sample):
            section.validate()
        s = self.sample.steps
        _require([(s == 0 or s >= self.method.T or self.method.name == "diffusion",
                   f"sample.steps={s}: sampling needs T' >= T={self.method.T} (algorithms.md §2)")])
        return self

    @property
    def sample_steps(self) -> int:
        """The default number of sampling steps T' (``sample.steps``, or the training T)."""
        return self.sample.steps or self.method.T


def _finite(v: float) -> bool:
    return math.isfinite(v)


DATA_NAMES = ("mnist", "spiral", "circle", "gaussians", "cifar10", "svhn", "celeba", "tfd",
              "folder", "arrays")
NET_NAMES = ("mlp", "conv")
METHOD_NAMES = ("infusion", "walkback", "gsn", "diffusion")

# Presets: only what differs from the defaults above, with a one-line description.
PRESETS: dict[str, dict[str, Any]] = {
    # The paper (algorithms.md §2–4, §10): 2×1200 MLP, T = 15, α(0) = 0, ω = 0.01, Adam 1e-3,
    # batch 512, early stopping on the validation bound. Records what Figs. 2 and 3 draw.
    # Samples are drawn with 30 steps, as the paper does for its MNIST figures (§4.2).
    "mnist": {
        "about": "the paper's MNIST model: 2x1200 MLP, T=15, trained until the validation bound "
                 "stops improving (20 epochs' patience, 1,500-epoch cap as the authors' code)",
        "train": {"epochs": 1500, "patience": 20,
                  "record_chains_at": (0, 1, 2, 3, 4, 5, 10, 20, 50, 100, 200, 500),
                  "train_bound_examples": 10000},
        "sample": {"steps": 30}},
    "mnist-demo": {
        "about": "recognisable MNIST digits within 10 minutes on 2 CPU cores (2x1024, T=10)",
        "model": {"hidden": (1024, 1024)},
        "method": {"T": 10, "infusion": {"alpha0": 0.02, "omega": 0.02}},
        "train": {"epochs": 8, "batch_size": 256, "patience": 0, "max_minutes": 8.0,
                  "valid_examples": 2000, "record_chains_at": (0, 1, 2, 4, 8),
                  "train_bound_examples": 2000},
        # T' = 2.5T: on 5,000 samples (README) 25 steps gave 90% confident digits with every
        # class >= 6.3%; 20 steps 88% / 6.4%, 30 steps 92% / 5.7% (more steps sharpen digits
        # but drift towards the common classes).
        "sample": {"steps": 25},
    },
    "cifar10": {
        "about": "CIFAR-10 (paper §4): Salimans et al.'s generator (fc, 3 transposed convs), "
                 "T=20, omega=0.02",
        "data": {"name": "cifar10"},
        "model": {"net": "conv", "hidden": (512, 256, 128)},
        "method": {"T": 20, "infusion": {"omega": 0.02}},
        "train": {"valid_examples": 5000},
    },
    "celeba": {
        "about": "CelebA 64x64 (paper §4): one more transposed convolution, T=15, omega=0.01",
        "data": {"name": "celeba"},
        "model": {"net": "conv", "hidden": (512, 256, 128, 64)},
        "train": {"valid_examples": 5000},
    },
    "svhn": {
        "about": "SVHN (used by Variational Walkback): the CIFAR-10 network and schedule",
        "data": {"name": "svhn"},
        "model": {"net": "conv", "hidden": (512, 256, 128)},
        "method": {"T": 20, "infusion": {"omega": 0.02}},
        "train": {"valid_examples": 5000},
    },
    # Any folder of images (--data DIR, or --set data.path=DIR): 32×32 centre crops and the
    # CIFAR-10 network and schedule.
    "folder": {
        "about": "your folder of images (--data DIR or --set data.path=DIR): 32x32 centre crops, "
                 "the CIFAR-10 conv network, T=20, omega=0.02",
        "data": {"name": "folder", "image_size": 32},
        "model": {"net": "conv", "hidden": (512, 256, 128)},
        "method": {"T": 20, "infusion": {"omega": 0.02}},
        "train": {"valid_examples": 5000},
    },
    "spiral": {
        "about": "2-D spiral, infusion: trains in under a minute on one CPU core",
        "data": {"name": "spiral", "toy_size": 8000},
        "model": {"hidden": (128, 128)},
        "method": {"T": 20, "infusion": {"omega": 0.05}},
        "train": {"epochs": 40, "batch_size": 256, "lr": 3e-3, "patience": 0,
                  "valid_examples": 2000, "cpu_threads": 1},
        "sample": {"n": 2000},
    },
    # Baselines on the same network, data and trainer (algorithms.md §11–13). MNIST: the
    # paper's 2×1200 MLP and Adam 1e-3, batch 512.
    "mnist-walkback": {
        "about": "Variational Walkback on MNIST: 8 doubling temperatures, n ~ U{0..5}, "
                 "5 extra temperature-1 sampling steps",
        "method": {"name": "walkback", "T": 8, "walkback": {"n1": 5, "extra": 5}},
        "sample": {"steps": 13},
    },
    "mnist-gsn": {
        "about": "GSN walkback on MNIST: k=4, salt-and-pepper corruption 0.4, 100-step chain",
        "method": {"name": "gsn", "T": 4,
                   "gsn": {"noise": "salt_pepper", "noise_level": 0.4}},
        "sample": {"steps": 100},
    },
    # T = 1000 linear betas, the simple loss on the v head (an MLP narrower than 784 cannot
    # carry ε at high noise or x_0 at low noise: methods/diffusion.py); the bound walks 1000
    # steps, so fewer validation examples
    "mnist-diffusion": {
        "about": "Gaussian diffusion on MNIST: T=1000 linear betas, v-prediction, simple loss",
        "method": {"name": "diffusion", "T": 1000, "diffusion": {"predict": "v"}},
        "train": {"valid_examples": 500},
    },
    # 10 heated levels: the variance doubles per level, so the hottest is 2^9 = 512 times the
    # temperature-1 variance (Algorithm 1's K = log2 T_max); on the toys, MMD² x10³ with
    # L = 6 / 10 / 14 levels: 37.7 / 25.6 / 31.5 (spiral), 49.4 / 15.3 / 35.2 (circle),
    # 106.9 / 11.9 / 37.2 (8 Gaussians) (experiments/toy_suite.py, README)
    "spiral-walkback": {
        "about": "2-D spiral, Variational Walkback: 10 temperature levels, about a minute on "
                 "one CPU core",
        "data": {"name": "spiral", "toy_size": 8000},
        "model": {"hidden": (128, 128)},
        "method": {"name": "walkback", "T": 10, "walkback": {"n1": 5, "extra": 5}},
        "train": {"epochs": 20, "batch_size": 256, "lr": 3e-3, "patience": 0,
                  "valid_examples": 2000, "cpu_threads": 1},
        "sample": {"n": 2000, "steps": 15},
    },
    "spiral-gsn": {
        "about": "2-D spiral, GSN walkback with Gaussian corruption 0.03",
        "data": {"name": "spiral", "toy_size": 8000},
        "model": {"hidden": (128, 128)},
        # corruption std 0.03 (0.1: samples too diffuse, 0.01: the chain no longer mixes)
        "method": {"name": "gsn", "T": 4, "gsn": {"noise_level": 0.03}},
        "train": {"epochs": 100, "batch_size": 256, "lr": 3e-3, "patience": 0,
                  "valid_examples": 2000, "cpu_threads": 1},
        "sample": {"n": 2000, "steps": 50},
    },
    "spiral-diffusion": {
        "about": "2-D spiral, diffusion: T=100 cosine betas, data scale 4",
        "data": {"name": "spiral", "toy_size": 8000},
        "model": {"hidden": (128, 128)},
        # The toys' spread in [0.05, 0.95] is ~0.2: scale 4 makes it ~0.8 against the unit
        # noise; the cosine betas keep more of the T = 100 steps at low noise.
        "method": {"name": "diffusion", "T": 100,
                   "diffusion": {"schedule": "cosine", "data_scale": 4.0}},
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
    sections = {k: v for k, v in PRESETS[name].items() if k != "about"}
    return from_dict({**sections, "preset": name}).validate()


def describe(name: str) -> str:
    """The preset's one-line description."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]["about"]


def load_file(path: str) -> Config:
    """A config file: JSON or TOML (``.toml``), a full config as a run directory's
    ``config.json`` holds it, or a partial one (the rest at its defaults)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            text = f.read()
        d = tomllib.loads(text.decode()) if str(path).endswith(".toml") else json.loads(text)
    except OSError as e:
        raise ConfigError(f"--config {path!r}: cannot read it: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:
        kind = "TOML" if str(path).endswith(".toml") else "JSON"
        raise ConfigError(f"--config {path!r}: not valid {kind}: {e}") from None
    return from_dict(d).validate()


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a :class:`Config` from :func:`to_dict` output (or a partial dict of sections),
    migrating keys of older versions (:func:`migrate`)."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
    d = migrate(d)
    unknown = set(d) - set(_SECTIONS) - {"preset"}
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}; known: {', '.join(_SECTIONS)}")
    sections = {name: _build(cls, d.get(name, {}), name) for name, cls in _SECTIONS.items()}
    return Config(**sections, preset=str(d.get("preset", "")))


def _build(cls: type, raw: Any, path: str) -> Any:
    """A (possibly nested) settings dataclass from a dict, each value coerced to its type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {path!r} must be a mapping, got {raw!r}")
    known = {g.name: g for g in fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown setting {path}.{key}; known: {', '.join(known)}")
    values = {}
    for key, v in raw.items():
        hint = _hint(cls, key)
        values[key] = (_build(hint, v, f"{path}.{key}") if dataclasses.is_dataclass(hint)
                       else _coerce(v, hint, f"{path}.{key}"))
    return cls(**values)


# Version 0.1 kept every method's settings flat in ``method``: old key -> (section, new key).
# (Walkback configs of 0.1 scaled the std by the temperature: ``temperature_scales="std"``.)
_FLAT_METHOD_KEYS = {
    "alpha0": ("infusion", "alpha0"), "omega": ("infusion", "omega"),
    "target_var": ("infusion", "target_var"), "loss": ("infusion", "loss"),
    "step_weight": ("infusion", "step_weight"),
    "vw_alpha": ("walkback", "alpha"), "vw_schedule": ("walkback", "schedule"),
    "vw_n1": ("walkback", "n1"), "vw_extra": ("walkback", "extra"),
    "vw_sigma_offset": ("walkback", "sigma_offset"), "vw_sigma_max": ("walkback", "sigma_max"),
    "vw_prior_momentum": ("walkback", "prior_momentum"),
    "gsn_noise": ("gsn", "noise"), "gsn_noise_level": ("gsn", "noise_level"),
    "diff_schedule": ("diffusion", "schedule"), "diff_loss": ("diffusion", "loss"),
    "diff_data_scale": ("diffusion", "data_scale"), "diff_predict": ("diffusion", "predict"),
}


def migrate(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict of an older version in today's layout (a copy; today's dicts unchanged).

    0.1 -> 0.2: the flat method keys (``method.vw_alpha``, ``method.alpha0``, …) move into
    per-method sections (``method.walkback.alpha``, ``method.infusion.alpha0``, …), and such a
    walkback config keeps the temperature scaling it was trained with (std, not variance).
    """
    method = d.get("method")
    if not isinstance(method, dict) or not set(method) & set(_FLAT_METHOD_KEYS):
        return d
    new = {k: v for k, v in method.items() if k not in _FLAT_METHOD_KEYS}
    for old, (section, key) in _FLAT_METHOD_KEYS.items():
        if old in method:
            new.setdefault(section, {})
            if isinstance(new[section], dict):
                new[section] = {**new[section], key: method[old]}
    new["walkback"] = {"temperature_scales": "std", **new.get("walkback", {})}
    return {**d, "method": new}


def override(cfg: Config, assignments: list[str]) -> Config:
    """Apply ``section.key=value`` (or ``method.walkback.key=value``) strings, typed by the
    dataclass field, then validate. Old flat method keys (``method.alpha0``) are accepted."""
    for item in assignments:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=3")
        path, text = item.split("=", 1)
        parts = path.split(".")
        if parts[0] == "method" and len(parts) == 2 and parts[1] in _FLAT_METHOD_KEYS:
            parts = ["method", *_FLAT_METHOD_KEYS[parts[1]]]
        if parts[0] not in _SECTIONS:
            raise ConfigError(f"--set {item!r}: unknown section {parts[0]!r}; "
                              f"known: {', '.join(_SECTIONS)}")
        cfg = _assign(cfg, parts, text, item)
    return cfg.validate()


def _assign(obj: Any, parts: list[str], text: str, item: str, prefix: str = "") -> Any:
    """``obj`` with the field at ``parts`` set to ``text`` parsed by its type (frozen copies)."""
    key = parts[0]
    here = f"{prefix}{key}"
    known = {g.name for g in fields(obj)} - {"preset"}
    if key not in known:
        raise ConfigError(f"--set {item!r}: unknown setting {here}; known: "
                          f"{', '.join(sorted(known))}")
    hint = _hint(type(obj), key)
    if dataclasses.is_dataclass(hint):
        if len(parts) == 1:
            raise ConfigError(f"--set {item!r}: {here} is a section; name one of its settings")
        return replace(obj, **{key: _assign(getattr(obj, key), parts[1:], text, item, here + ".")})
    if len(parts) > 1:
        raise ConfigError(f"--set {item!r}: {here} is a setting, not a section")
    return replace(obj, **{key: _parse(text, hint, item.split("=", 1)[0])})


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "method": MethodConfig,
             "train": TrainConfig, "sample": SampleConfig}


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
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise TypeError(value)
            return tuple(_coerce(v, elem, path) for v in value)
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise InputError(value)
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, (bool, int)):
                raise TypeError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise InputError(value)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise TypeError(value)
            return float(value)
        if not isinstance(value, str):
            raise TypeError(value)
        return value
    except (TypeError, ValueError, OverflowError):
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{path}={value!r}: expected {name}") from None
