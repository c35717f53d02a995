"""One typed configuration: frozen dataclasses, typed ``--set`` overrides, key migration.

The sections are here; the ``method`` section is :mod:`infusion.config.method_settings`, each
method's own settings come from the registry its module registers in
(:mod:`infusion.config.registry`), and the named presets (plain data naming what differs from
the defaults) are in :mod:`infusion.config.presets`; :mod:`infusion.config` re-exports them.
Every run directory and checkpoint stores the full config as a dict (:func:`to_dict`), and
:func:`from_dict` rebuilds it, so a checkpoint alone says how it was made. The dict and
``--set`` machinery is :mod:`infusion.config.typed`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os.path
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, InputError, require
from ..io import nesting, regular_file
from ..limits import (
    BATCH_MAX,
    CHAINS_MAX,
    CLASSES_MAX,
    EPOCHS_MAX,
    EXAMPLES_MAX,
    IMAGE_SIDE_MAX,
    LAYERS_MAX,
    MINUTES_MAX,
    OPT_STEPS_MAX,
    SAMPLES_MAX,
    SEED_MAX,
    STEPS_MAX,
    THREADS_MAX,
    WIDTH_MAX,
    in_range,
)
from . import registry
from .method_settings import MethodConfig
from .typed import assign, build, coerce


@dataclass(frozen=True)
class DataConfig:
    """Which data set (algorithms.md §1). ``name`` is ``mnist``, a 2-D toy (``spiral``,
    ``circle``, ``gaussians``), an image set of :mod:`infusion.data` (``cifar10``, ``svhn``,
    ``celeba``, ``tfd``, ``folder``) or ``arrays``, a user's own data that :func:`infusion.fit`
    stored as a verified ``.npz`` (:mod:`infusion.data.arrays`). ``n_train`` > 0 keeps only the
    first n training examples (quick runs).

    ``path`` is stored absolute (``~`` expanded, made absolute against the working directory
    when the config is built), so a run made here is evaluated, sampled and drawn from any
    directory; it is refused for the data sets that read none (MNIST, Fashion-MNIST, the
    toys), where it would be ignored. For ``arrays``, ``sha256`` is the data file's checksum, verified on every load,
    and ``scale``/``offset`` the affine map of float data into model space, x = raw·scale +
    offset, one value or one per dimension (empty: the data are used as they are;
    :func:`infusion.data.to_data_space` maps outputs back). ``dtype`` is the stored data's
    dtype, ``uint8`` (pixels) or ``float32``, which an export records
    (:func:`infusion.models.save_pretrained`) because it carries no data file; empty, it is read
    from the file's header."""

    name: str = "mnist"
    n_train: int = 0
    toy_size: int = 20000  # points per split for 2-D toys
    seed: int = 0  # seed of the toy generator
    path: str = ""  # user's source: celeba zip/folder, TFD .mat, image folder, arrays .npz
    image_size: int = 0  # folder: side of the square centre crops (0 = 64)
    sha256: str = ""  # arrays: the data file's sha256
    scale: tuple[float, ...] = ()  # arrays: model space x = raw·scale + offset
    offset: tuple[float, ...] = ()
    dtype: str = ""  # arrays: "uint8" (pixels) or "float32"; empty = read from the file

    def __post_init__(self) -> None:
        if self.path:  # absolute, so that the run works from any working directory
            object.__setattr__(self, "path", os.path.abspath(os.path.expanduser(self.path)))

    def validate(self) -> None:
        require([
            (self.name in DATA_NAMES, f"data.name={self.name!r}: expected one of {DATA_NAMES}"),
            in_range("data.n_train", self.n_train, 0, EXAMPLES_MAX, " (0 = all)"),
            in_range("data.toy_size", self.toy_size, 1, SAMPLES_MAX),
            in_range("data.seed", self.seed, 0, SEED_MAX),
            in_range("data.image_size", self.image_size, 0, IMAGE_SIDE_MAX, " (0 = 64)"),
            (self.name != "arrays" or bool(self.path),
             "data.name='arrays' needs data.path, the .npz file infusion.fit stores"),
            (not self.path or self.name not in NO_PATH_DATA,
             f"data.path={self.path!r}: data.name={self.name!r} reads no path (MNIST and "
             "Fashion-MNIST come from their caches, filled by `infusion data --name NAME "
             "--idx-dir DIR`; the 2-D toys are generated); data.path is for "
             + ", ".join(n for n in DATA_NAMES if n not in NO_PATH_DATA)),
            (self.name == "arrays" or not (self.scale or self.offset or self.sha256
                                           or self.dtype),
             f"data.scale/offset/sha256/dtype belong to data.name='arrays', not {self.name!r}"),
            (self.dtype in ARRAY_DTYPES,
             f"data.dtype={self.dtype!r}: expected one of {ARRAY_DTYPES}"),
            (len(self.scale) == len(self.offset),
             f"data.scale, data.offset: {len(self.scale)} and {len(self.offset)} values"),
            (all(math.isfinite(s) and s > 0 for s in self.scale)
             and all(map(math.isfinite, self.offset)),
             "data.scale: expected finite scales > 0 and finite offsets"),
        ])


@dataclass(frozen=True)
class ModelConfig:
    """The network body and the Gaussian heads (algorithms.md §2)."""

    net: str = "mlp"
    hidden: tuple[int, ...] = (1200, 1200)
    batch_norm: bool = True  # per-step batch norm, paper footnote 5
    bn_eps: float = 1e-5  # added to the batch-norm variance (the authors' code: 1e-4; §6)
    beta: float = 0.1  # σ² = β·sigmoid(a_σ) + ε
    eps: float = 1e-4
    prior_var_floor: float = 1e-5  # authors' code adds 1e-5 to the prior variance
    # class-conditional operator p(t)(· | z, y) with this many classes (0 = unconditional;
    # algorithms.md §15): a learned class embedding added to every hidden layer
    classes: int = 0

    def validate(self) -> None:
        require([
            (self.net in NET_NAMES, f"model.net={self.net!r}: expected one of {NET_NAMES}"),
            (0 < len(self.hidden) <= LAYERS_MAX and all(0 < h <= WIDTH_MAX for h in self.hidden),
             (f"model.hidden={self.hidden}: expected 1 to {LAYERS_MAX} layer widths, each "
              f"1 to {WIDTH_MAX:,}")),
            (math.isfinite(self.beta) and self.beta > 0, f"model.beta={self.beta}: expected > 0"),
            (math.isfinite(self.eps) and self.eps > 0, f"model.eps={self.eps}: expected > 0"),
            (math.isfinite(self.bn_eps) and 0 < self.bn_eps <= 1,
             f"model.bn_eps={self.bn_eps}: expected a small positive number, at most 1"),
            (math.isfinite(self.prior_var_floor) and self.prior_var_floor >= 0,
             f"model.prior_var_floor={self.prior_var_floor}: expected >= 0"),
            in_range("model.classes", self.classes, 0, CLASSES_MAX, " (0 = unconditional)"),
        ])


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (algorithms.md §4: Adam, lr 1e-3, batch 512) and run bookkeeping."""

    epochs: int = 200
    batch_size: int = 512
    lr: float = 1e-3
    # "constant" (the paper), or "cosine": lr decays to lr_final over train.epochs' steps
    lr_schedule: str = "constant"
    lr_final: float = 0.0
    # start from the weights of an exported model, run directory or checkpoint (fine-tuning;
    # a fresh optimiser): recorded as an absolute path
    init_from: str = ""
    seed: int = 0
    patience: int = 10  # early stopping: epochs without validation improvement; 0 = off
    max_minutes: float = 0.0  # stop after this wall time (0 = no limit); the run stays resumable
    # stop after this many optimiser steps (0 = no limit), ending the epoch in progress there:
    # a training budget that does not depend on the machine's speed or load
    max_steps: int = 0
    valid_examples: int = 10000  # validation examples scored each epoch
    checkpoint_every: int = 1  # epochs
    checkpoint_minutes: float = 15.0  # also save a resumable state inside an epoch (0 = off)
    # Paper figures: infusion chains for fixed validation targets recorded after these epochs
    # (0 = before training; Fig. 2), and a train-set lower bound beside the valid one (Fig. 3).
    record_chains_at: tuple[int, ...] = ()
    record_chains_n: int = 8  # targets in each recorded chain
    train_bound_examples: int = 0  # training examples scored each epoch (0 = off)
    # Validation scores a fixed model (algorithms.md §6): before each epoch's validation, a short
    # statistics pass over this many training batches (0 = the whole training set) stores
    # per-step batch-norm statistics; selection, best.pt and patience use these scores. With
    # valid_batch_stats the bounds with each minibatch's own statistics (the paper's appendix
    # A.1 mode) are logged beside them as *_batch.
    valid_stats_batches: int = 20
    valid_batch_stats: bool = True
    # Watching (infusion.training.watch): a preview sample grid every N epochs (0 = off), TensorBoard.
    sample_every: int = 0
    tensorboard: bool = False
    # an experiment tracker beside metrics.jsonl: "" (none), "tensorboard" (= tensorboard=true)
    # or "wandb" (Weights & Biases; WANDB_MODE=offline keeps it on the machine)
    tracker: str = ""
    # Speed: bf16 autocast ("auto" = fp32: bf16 was no faster for mnist, docs/results.md),
    # torch.compile of the network body, and an exponential moving average of the weights used
    # for validation and sampling (0 = off).
    precision: str = "auto"  # "auto", "fp32" or "bf16"
    compile: bool = False
    # EMA decay per optimiser step, e.g. 0.999; warmed up as min(ema, (1 + n)/(10 + n))
    ema: float = 0.0
    # torch CPU threads for the process when training on the CPU (0 = auto: torch's default,
    # one per core, or fewer while other processes run: device.cpu_threads). Tiny models (the
    # 2-D toys) train fastest on one: their steps are all overhead.
    cpu_threads: int = 0

    def validate(self) -> None:
        require([
            in_range("train.epochs", self.epochs, 0, EPOCHS_MAX),
            (self.batch_size >= 2, f"train.batch_size={self.batch_size}: batch norm needs >= 2"),
            in_range("train.batch_size", self.batch_size, 2, BATCH_MAX),
            in_range("train.seed", self.seed, 0, SEED_MAX),
            (math.isfinite(self.lr) and self.lr > 0,
             f"train.lr={self.lr}: expected a finite rate > 0"),
            (self.lr_schedule in LR_SCHEDULES,
             f"train.lr_schedule={self.lr_schedule!r}: expected one of {LR_SCHEDULES}"),
            (math.isfinite(self.lr_final) and 0 <= self.lr_final <= self.lr,
             f"train.lr_final={self.lr_final}: expected 0 <= lr_final <= train.lr={self.lr}"),
            in_range("train.patience", self.patience, 0, EPOCHS_MAX, " (0 = off)"),
            in_range("train.sample_every", self.sample_every, 0, EPOCHS_MAX, " (0 = off)"),
            (self.tracker in TRACKERS,
             f"train.tracker={self.tracker!r}: expected one of {TRACKERS} ('' = none)"),
            (math.isfinite(self.max_minutes) and 0 <= self.max_minutes <= MINUTES_MAX,
             (f"train.max_minutes={self.max_minutes}: expected 0 <= max_minutes <= "
              f"{MINUTES_MAX:,} (0 = no limit)")),
            in_range("train.max_steps", self.max_steps, 0, OPT_STEPS_MAX, " (0 = no limit)"),
            in_range("train.valid_examples", self.valid_examples, 0, EXAMPLES_MAX),
            in_range("train.checkpoint_every", self.checkpoint_every, 1, EPOCHS_MAX),
            (math.isfinite(self.checkpoint_minutes) and 0 <= self.checkpoint_minutes <= MINUTES_MAX,
             (f"train.checkpoint_minutes={self.checkpoint_minutes}: expected 0 <= "
              f"checkpoint_minutes <= {MINUTES_MAX:,} (0 = off)")),
            (all(0 <= e <= EPOCHS_MAX for e in self.record_chains_at),
             (f"train.record_chains_at={self.record_chains_at}: expected epochs 0 to "
              f"{EPOCHS_MAX:,}")),
            in_range("train.record_chains_n", self.record_chains_n, 1, CHAINS_MAX),
            (self.precision in ("auto", "fp32", "bf16"),
             f"train.precision={self.precision!r}: expected 'auto', 'fp32' or 'bf16'"),
            (0.0 <= self.ema < 1.0, f"train.ema={self.ema}: expected a decay in [0, 1) (0 = off)"),
            in_range("train.cpu_threads", self.cpu_threads, 0, THREADS_MAX, " (0 = auto)"),
            in_range("train.train_bound_examples", self.train_bound_examples, 0, EXAMPLES_MAX,
                     " (0 = off)"),
            in_range("train.valid_stats_batches", self.valid_stats_batches, 0, STEPS_MAX,
                     " (0 = all)"),
        ])


@dataclass(frozen=True)
class SampleConfig:
    """What the trainer draws at the end of a run, and the default number of sampling steps
    everywhere (algorithms.md §2)."""

    steps: int = 0  # T' (0 = the training T)
    n: int = 100  # samples in the grid
    chains: int = 8  # chains in the sampling-chain figure
    seed: int = 0
    # "ancestral" (the model's own chain), for diffusion "ddim" / "dpm++2m", for the flow
    # "euler" / "heun" (algorithms.md §14); eta: DDIM's stochasticity (0 deterministic, 1 the
    # ancestral posterior's variance)
    sampler: str = "ancestral"
    eta: float = 0.0

    def validate(self) -> None:
        require([
            (self.sampler in registry.all_samplers(),
             f"sample.sampler={self.sampler!r}: expected one of {registry.all_samplers()}"),
            (math.isfinite(self.eta) and 0 <= self.eta <= 1,
             f"sample.eta={self.eta}: expected 0 <= eta <= 1 (0 deterministic, 1 ancestral)"),
            (self.eta == 0 or self.sampler == "ddim",
             f"sample.eta={self.eta}: only the ddim sampler takes eta"),
            in_range("sample.steps", self.steps, 0, STEPS_MAX, " (0 = the training T)"),
            in_range("sample.n", self.n, 1, SAMPLES_MAX),
            in_range("sample.chains", self.chains, 1, CHAINS_MAX),
            in_range("sample.seed", self.seed, 0, SEED_MAX),
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
        s, name = self.sample.steps, self.method.name
        step_embedding = registry.capability(name, "step_embedding")
        samplers, nets = registry.samplers_of(name), registry.capability(name, "nets") or NET_NAMES
        conditional = tuple(n for n in registry.names() if registry.capability(n, "conditional"))
        require([(s == 0 or s >= self.method.T or step_embedding,
                   f"sample.steps={s}: sampling needs T' >= T={self.method.T} (algorithms.md §2)"),
                 (self.model.net != "conv" or not step_embedding,
                  (f"model.net='conv': method.name={self.method.name} needs a body with a step "
                   "embedding, model.net=mlp or unet (the paper's conv generator has none)")),
                 (self.model.net in nets,
                  (f"model.net={self.model.net!r}: method.name={name} builds only "
                   f"{' or '.join(nets)} bodies")),
                 (self.sample.sampler in samplers,
                  (f"sample.sampler={self.sample.sampler!r}: method.name={name} "
                   f"samples with {samplers}")),
                 (self.model.classes == 0 or name in conditional,
                  (f"model.classes={self.model.classes}: class-conditional models are built for "
                   f"method.name in {conditional}, not {name!r}"))])
        return self

    @property
    def sample_steps(self) -> int:
        """The default number of sampling steps T' (``sample.steps``, or the training T)."""
        return self.sample.steps or self.method.T


DATA_NAMES = ("mnist", "fashion", "spiral", "circle", "gaussians", "cifar10", "svhn", "celeba",
              "tfd", "folder", "arrays")
ARRAY_DTYPES = ("", "uint8", "float32")  # data.dtype: "" = read from the data file
NO_PATH_DATA = ("mnist", "fashion", "spiral", "circle", "gaussians")  # data.path is refused
NET_NAMES = ("mlp", "conv", "unet")
LR_SCHEDULES = ("constant", "cosine")
TRACKERS = ("", "tensorboard", "wandb")  # train.tracker

CONFIG_FILE_MAX = 1 << 20  # bytes of a config file (a full config is about 3 KiB)
CONFIG_DEPTH_MAX = 16  # nesting of its mappings and lists (a full config has 4 levels)


def load_file(path: str) -> Config:
    """A config file: JSON or TOML (``.toml``), a full config as a run directory's
    ``config.json`` holds it, or a partial one (the rest at its defaults). A setting of
    another method than its ``method.name`` that differs from its default is refused: the
    run would ignore it. A path that is not a regular file (a FIFO, a device, a symlink
    loop) is refused unopened."""
    try:
        regular_file(path, "--config")
    except InputError as e:
        raise ConfigError(str(e)) from None
    try:
        with open(path, "rb") as f:
            text = f.read(CONFIG_FILE_MAX + 1)
    except OSError as e:
        raise ConfigError(f"--config {path!r}: cannot read it: {e.strerror}") from None
    raw = parse_text(text, str(path).endswith(".toml"), f"--config {path!r}")
    cfg = from_dict(raw).validate()
    given = {}
    for m, settings in _method_sections(migrate(raw).get("method", {})).items():
        default = type(settings)()
        for key, value in vars(settings).items():
            if value != getattr(default, key):
                given.setdefault(m, f"--config {path!r} sets method.{m}.{key}")
                break
    _refuse_other_methods(given, cfg.method.name)
    return cfg


def parse_text(text: bytes, toml: bool, what: str) -> Any:
    """The content of a config file (JSON, or TOML), checked before and after parsing: at
    most :data:`CONFIG_FILE_MAX` bytes, nested at most :data:`CONFIG_DEPTH_MAX` deep; else
    :class:`ConfigError` naming ``what``."""
    import tomllib  # here: Python 3.10 has no tomllib, and only a TOML config needs it

    kind = "TOML" if toml else "JSON"
    if len(text) > CONFIG_FILE_MAX:
        raise ConfigError(f"{what}: larger than {CONFIG_FILE_MAX:,} bytes; not a config file")
    too_deep = ConfigError(f"{what}: {kind} nested more than {CONFIG_DEPTH_MAX} levels deep; "
                           "not a config file")
    try:
        d = tomllib.loads(text.decode()) if toml else json.loads(text)
    except RecursionError:  # deeper than the parser goes
        raise too_deep from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what}: not valid {kind}: {e}") from None
    if nesting(d) > CONFIG_DEPTH_MAX:
        raise too_deep
    return d


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain JSON-able dict (tuples become lists), with only the chosen method's settings
    (``method.<method.name>``: the others are not used, and :func:`from_dict` gives them
    their defaults)."""
    d = json.loads(json.dumps(dataclasses.asdict(cfg)))
    d["method"][cfg.method.name] = d["method"].pop("settings")
    return d


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a :class:`Config` from :func:`to_dict` output (or a partial dict of sections),
    migrating keys of older versions (:func:`migrate`)."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
    d = migrate(d)
    unknown = set(d) - set(_SECTIONS) - {"preset"}
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}; known: {', '.join(_SECTIONS)}")
    sections = {name: build(cls, d.get(name, {}), name) for name, cls in _SECTIONS.items()
                if name != "method"}
    return Config(**sections, method=_method_from_dict(d.get("method", {})),
                  preset=str(d.get("preset", "")))


def _method_from_dict(raw: Any) -> MethodConfig:
    """The ``method`` section: its name and T, and the settings of the method it names, built
    by that method's registered settings class (algorithms.md §2)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config section 'method' must be a mapping, got {raw!r}")
    name = coerce(raw.get("name", MethodConfig.name), str, "method.name")
    if registry.settings_class(name) is None:
        raise ConfigError(f"method.name={name!r}: expected one of {registry.names()} (a method "
                          "of your own: infusion.register_method(YourMethod) first)")
    sections = _method_sections(raw)
    t = coerce(raw.get("T", MethodConfig.T), int, "method.T")
    return MethodConfig(name=name, T=t, settings=sections.get(name))


def _method_sections(raw: Any) -> dict[str, Any]:
    """Every method section ``method.<name>`` of a raw ``method`` mapping, each built by its
    method's settings class (typed and checked by name, even those another ``method.name``
    ignores)."""
    if not isinstance(raw, dict):
        return {}
    out = {}
    for key, value in raw.items():
        if key in ("name", "T"):
            continue
        cls = registry.settings_class(key)
        if cls is None:
            raise ConfigError(f"unknown setting method.{key}; known: name, T, "
                              f"{', '.join(registry.names())}")
        out[key] = build(cls, value, f"method.{key}")
    return out


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
    dataclass field, then validate. Old flat method keys (``method.alpha0``) are accepted.
    A setting of another method than the resulting ``method.name`` (``method.infusion.omega``
    for a VAE) is refused: it would be ignored."""
    own = []  # (method, setting path, value, item): a method's own settings, set last
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
        if parts[0] == "method" and len(parts) > 1 and parts[1] not in ("name", "T"):
            cls = registry.settings_class(parts[1])
            if cls is None:
                raise ConfigError(f"--set {item!r}: unknown setting method.{parts[1]}; known: "
                                  f"T, name, {', '.join(registry.names())}")
            if len(parts) == 2:
                raise ConfigError(f"--set {item!r}: method.{parts[1]} is a section; name one "
                                  "of its settings")
            assign(cls(), parts[2:], text, item, f"method.{parts[1]}.")  # known, typed
            own.append((parts[1], parts[2:], text, item))
            continue
        cfg = assign(cfg, parts, text, item)
        cls = registry.settings_class(cfg.method.name)
        if cls is not None and not isinstance(cfg.method.settings, cls):  # method.name changed
            cfg = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, settings=None))
    given: dict[str, str] = {}
    for m, *_, item in own:
        given.setdefault(m, f"--set {item!r}")
    _refuse_other_methods(given, cfg.method.name)
    for m, parts, text, item in own:
        settings = assign(cfg.method.settings, parts, text, item, f"method.{m}.")
        cfg = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, settings=settings))
    return cfg.validate()


def _refuse_other_methods(given: dict[str, str], name: str) -> None:
    """Settings of a method other than ``method.name`` are ignored by the run, so they are
    refused (``given``: method section -> how the setting was given) naming both."""
    other = {m: how for m, how in given.items() if m != name}
    if other:
        m, how = next(iter(other.items()))
        raise ConfigError(f"{how}: method.{m}.* is used only by method.name={m}, and this "
                          f"config has method.name={name}, which would ignore it; set "
                          f"method.{name}.* instead, or method.name={m}")


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "method": MethodConfig,
             "train": TrainConfig, "sample": SampleConfig}
