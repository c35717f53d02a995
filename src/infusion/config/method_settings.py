"""The methods' own settings: ``method.<name>.*`` of the config, one frozen dataclass per
method, each validating itself (algorithms.md §2–5 and §11–16 give their meaning) and declaring
what the rest of the config checks against — the method's samplers, whether its network takes
the step as an input, whether it can be class-conditional — and :class:`MethodConfig`, the
``method`` section that holds them. Adding a method adds one class here, its field in
:class:`MethodConfig` and one line to :data:`METHOD_SETTINGS`; everything the config knows of
a method comes from that class (torch-free, so the command line stays light).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import require
from ..limits import STEPS_MAX, WIDTH_MAX, in_range


@dataclass(frozen=True)
class InfusionSettings:
    """Infusion training (algorithms.md §3–5): ``method.infusion.*``."""

    samplers: ClassVar[tuple[str, ...]] = ("ancestral",)  # sample.sampler values it runs
    step_embedding: ClassVar[bool] = False  # the network takes the (continuous) step as input
    conditional: ClassVar[bool] = True  # model.classes > 0 (algorithms.md §15)

    alpha0: float = 0.0  # infusion rate of q(0)
    omega: float = 0.01  # α(t) = α(t-1) + ω, clipped to [0, 1]
    target_var: float = 1e-4  # variance of the narrow Gaussian at the target (footnote 1)
    loss: str = "denoising"  # "denoising" (§4), "bound" (lower-bound-based, §5) or "mixed"
    bound_weight: float = 0.5  # "mixed": (1 - w)·denoising + w·(−bound) (§5)
    step_weight: str = "linear"  # "linear": t/T (footnote 3); "uniform": 1

    def validate(self) -> None:
        p = "method.infusion"
        require([
            (0.0 <= self.alpha0 <= 1.0,
             f"{p}.alpha0={self.alpha0}: an infusion rate must lie in [0, 1]"),
            (-1.0 <= self.omega <= 1.0, f"{p}.omega={self.omega}: expected in [-1, 1]"),
            (math.isfinite(self.target_var) and self.target_var > 0,
             f"{p}.target_var={self.target_var}: expected > 0"),
            (self.loss in ("denoising", "bound", "mixed"),
             f"{p}.loss={self.loss!r}: expected 'denoising', 'bound' or 'mixed'"),
            (0.0 <= self.bound_weight <= 1.0,
             f"{p}.bound_weight={self.bound_weight}: expected a weight in [0, 1]"),
            (self.step_weight in ("linear", "uniform"),
             f"{p}.step_weight={self.step_weight!r}: expected 'linear' or 'uniform'"),
        ])


@dataclass(frozen=True)
class WalkbackSettings:
    """Variational walkback (algorithms.md §11): ``method.walkback.*``; ``method.T`` = the
    heated levels L, temperatures base^0 … base^(L-1)."""

    samplers: ClassVar[tuple[str, ...]] = ("ancestral",)
    step_embedding: ClassVar[bool] = False
    conditional: ClassVar[bool] = False
    # method.T: the hottest temperature base^(T-1) must stay a finite float32 noise scale
    T_max: ClassVar[int] = 100

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
        require([
            (0.0 < self.alpha <= 1.0, f"{p}.alpha={self.alpha}: expected in (0, 1]"),
            (self.schedule in ("double", "sqrt2"),
             f"{p}.schedule={self.schedule!r}: expected 'double' or 'sqrt2'"),
            (self.temperature_scales in ("variance", "std"),
             f"{p}.temperature_scales={self.temperature_scales!r}: expected 'variance' or 'std'"),
            in_range(f"{p}.n1", self.n1, 0, STEPS_MAX),
            in_range(f"{p}.extra", self.extra, 0, STEPS_MAX),
            (math.isfinite(self.sigma_offset), f"{p}.sigma_offset={self.sigma_offset}: expected finite"),
            (math.isfinite(self.sigma_max) and self.sigma_max > 0,
             f"{p}.sigma_max={self.sigma_max}: expected > 0"),
            (0.0 <= self.prior_momentum < 1.0,
             f"{p}.prior_momentum={self.prior_momentum}: expected in [0, 1)"),
        ])


@dataclass(frozen=True)
class GSNSettings:
    """GSN / denoising-autoencoder walkback (algorithms.md §12): ``method.gsn.*``;
    ``method.T`` = the walkback steps k."""

    samplers: ClassVar[tuple[str, ...]] = ("ancestral",)
    step_embedding: ClassVar[bool] = False
    conditional: ClassVar[bool] = False

    noise: str = "gaussian"  # corruption: "gaussian" or "salt_pepper"
    noise_level: float = 0.2  # Gaussian std, or salt-and-pepper probability per dimension

    def validate(self) -> None:
        p = "method.gsn"
        require([
            (self.noise in ("gaussian", "salt_pepper"),
             f"{p}.noise={self.noise!r}: expected 'gaussian' or 'salt_pepper'"),
            (math.isfinite(self.noise_level) and self.noise_level > 0
             and (self.noise != "salt_pepper" or self.noise_level <= 1),
             f"{p}.noise_level={self.noise_level}: expected > 0 (<= 1 for salt_pepper)"),
        ])


@dataclass(frozen=True)
class DiffusionSettings:
    """Gaussian diffusion (algorithms.md §13): ``method.diffusion.*``; ``method.T`` = the
    diffusion steps."""

    samplers: ClassVar[tuple[str, ...]] = ("ancestral", "ddim", "dpm++2m")
    step_embedding: ClassVar[bool] = True
    conditional: ClassVar[bool] = False

    schedule: str = "linear"  # betas: "linear" (Ho et al., scaled by 1000/T) or "cosine"
    loss: str = "noise"  # "noise": the simple loss (+ 1e-3 × bound for σ); "bound": the bound
    data_scale: float = 2.0  # diffusion space y = (x - 0.5)·scale; 2 maps [0, 1] to [-1, 1]
    predict: str = "eps"  # the mean head predicts the noise "eps", the clean "x0", or "v"

    def validate(self) -> None:
        p = "method.diffusion"
        require([
            (self.schedule in ("linear", "cosine"),
             f"{p}.schedule={self.schedule!r}: expected 'linear' or 'cosine'"),
            (self.loss in ("noise", "bound"), f"{p}.loss={self.loss!r}: expected 'noise' or 'bound'"),
            (self.predict in ("eps", "x0", "v"),
             f"{p}.predict={self.predict!r}: expected 'eps', 'x0' or 'v'"),
            (math.isfinite(self.data_scale) and self.data_scale > 0,
             f"{p}.data_scale={self.data_scale}: expected > 0"),
        ])


@dataclass(frozen=True)
class FlowSettings:
    """Flow matching / rectified flow (algorithms.md §14): ``method.flow.*``; ``method.T`` = the
    default number of sampling (ODE) steps."""

    samplers: ClassVar[tuple[str, ...]] = ("ancestral", "euler", "heun")
    step_embedding: ClassVar[bool] = True
    conditional: ClassVar[bool] = False

    data_scale: float = 2.0  # flow space y = (x - 0.5)·scale, as diffusion's
    likelihood_steps: int = 50  # Heun steps of the probability-flow ODE for log p(x)
    # training times s: "uniform", U(0, 1); "logit_normal", sigmoid of N(0, 1) (Esser et al.
    # 2024), more of them near s = ½ where the velocity is hardest to predict
    time_sampling: str = "uniform"

    def validate(self) -> None:
        p = "method.flow"
        require([
            (self.time_sampling in ("uniform", "logit_normal"),
             f"{p}.time_sampling={self.time_sampling!r}: expected 'uniform' or 'logit_normal'"),
            (math.isfinite(self.data_scale) and self.data_scale > 0,
             f"{p}.data_scale={self.data_scale}: expected > 0"),
            in_range(f"{p}.likelihood_steps", self.likelihood_steps, 1, STEPS_MAX),
        ])


VAE_DECODERS = ("gaussian", "bernoulli")  # p(x | z): factorial Gaussian, continuous Bernoulli


@dataclass(frozen=True)
class VaeSettings:
    """The variational autoencoder (algorithms.md §16): ``method.vae.*``. ``method.T`` must be
    1: a VAE draws x in one step (z ~ N(0, I), then x ~ p(x | z)); other values are refused
    rather than ignored, so that every count derived from T (sampling steps, Parzen's steps,
    the report's training T) means what it says. Its bodies are MLPs (``model.net=mlp``)
    without batch norm (``model.batch_norm`` is not used)."""

    samplers: ClassVar[tuple[str, ...]] = ("ancestral",)
    step_embedding: ClassVar[bool] = False
    conditional: ClassVar[bool] = False
    T_max: ClassVar[int] = 1  # method.T
    T_note: ClassVar[str] = (" (a VAE draws x in one step, z ~ N(0, I) then x ~ p(x | z): "
                             "set method.T=1)")
    nets: ClassVar[tuple[str, ...]] = ("mlp",)  # the model.net values it builds

    latent: int = 50  # dimensions of z
    # p(x | z): "gaussian", the factorial Gaussian of infusion's last step (μ = sigmoid(a_μ),
    # σ² = β·sigmoid(a_σ) + ε); "bernoulli", the continuous Bernoulli, a density on [0, 1]^d
    decoder: str = "gaussian"

    def validate(self) -> None:
        p = "method.vae"
        require([
            in_range(f"{p}.latent", self.latent, 1, WIDTH_MAX, " (dimensions of z)"),
            (self.decoder in VAE_DECODERS,
             f"{p}.decoder={self.decoder!r}: expected 'gaussian' or 'bernoulli'"),
        ])


# One settings class per method: ``method.<name>.*`` (adding a method adds a line here).
METHOD_SETTINGS: dict[str, type] = {"infusion": InfusionSettings, "walkback": WalkbackSettings,
                                    "gsn": GSNSettings, "diffusion": DiffusionSettings,
                                    "flow": FlowSettings, "vae": VaeSettings}
METHOD_NAMES = tuple(METHOD_SETTINGS)


@dataclass(frozen=True)
class MethodConfig:
    """Which method and its steps; each method's own settings in its nested section."""

    name: str = "infusion"
    T: int = 15  # training steps (infusion), heated levels (walkback), walkback k (GSN), 1 (VAE), …
    infusion: InfusionSettings = field(default_factory=InfusionSettings)
    walkback: WalkbackSettings = field(default_factory=WalkbackSettings)
    gsn: GSNSettings = field(default_factory=GSNSettings)
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)
    flow: FlowSettings = field(default_factory=FlowSettings)
    vae: VaeSettings = field(default_factory=VaeSettings)

    @property
    def settings(self) -> Any:
        """The settings of the method named by ``name``."""
        return getattr(self, self.name)

    def validate(self) -> None:
        require([
            (self.name in METHOD_NAMES, f"method.name={self.name!r}: expected one of {METHOD_NAMES}"),
        ])
        require([in_range("method.T", self.T, 1, getattr(self.settings, "T_max", STEPS_MAX),
                          f" for method.name={self.name}" + getattr(self.settings, "T_note", ""))])
        self.settings.validate()
