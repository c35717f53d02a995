"""The model every method trains: a Markov chain of a prior p(0) and a transition operator
p(t)(z(t) | z(t-1)) (docs/algorithms.md §2).

:class:`ChainModel` is the one base class. Shared code (sampler, trainer, likelihood,
precision, compile, DDP, checkpoints) touches only its surface: ``shape``, ``d``, ``T``,
``prior``, ``net`` (the network body, :mod:`infusion.chain.nets`), ``forward(z, t, noise=None)``,
``step(z, t, noise)`` (the sampler's step), ``respaced(steps)`` and ``stats_ready``.
:class:`GaussianChainModel` is the paper's model (infusion, GSN); walkback, diffusion, the flow
and the VAE subclass the base with their own parametrisations.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import InputError
from .distributions import normal_log_prob
from .nets import build_net, step_norms, with_bn_eps


class FactorialGaussianPrior(nn.Module):
    """p(0): a factorial Gaussian with the training set's per-dimension mean and variance
    (algorithms.md §2). The variance gets a floor (authors' code: + 1e-5) because MNIST border
    pixels are constant."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((d,), 0.5))
        self.register_buffer("var", torch.ones(d))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, var_floor: float = 1e-5) -> FactorialGaussianPrior:
        """Set the moments from training data x (N, d) in model space."""
        x = x.reshape(x.shape[0], -1).double()
        self.mean.copy_(x.mean(0).to(self.mean.dtype))
        self.var.copy_((x.var(0, unbiased=False) + var_floor).to(self.var.dtype))
        return self

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        """z(0) = mean + sqrt(var)·noise, noise ~ N(0, I) of shape (B, d)."""
        return self.mean + self.var.sqrt() * noise

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B,)
        return normal_log_prob(z, self.mean, self.var)


class ChainModel(nn.Module, metaclass=abc.ABCMeta):
    """Base class of every method's model: prior ``prior``, network body ``net``, states of
    shape ``shape`` (``d`` values), trained for ``T`` steps.

    ``forward(z, t, noise)`` returns the Gaussian transition (μ, σ²) of the sampler's step t
    (1-based), each (B, d), on flat states z (B, d). A transition that draws internal noise
    (GSN's corruption) sets ``aux_noise = True`` and receives a standard-normal ``noise`` (B, d)
    from the sampler, so that a sample depends only on its own seed. :meth:`step` is what the
    sampler runs; a model whose draw is not that Gaussian's, or whose internal noise is not
    (B, d) (the VAE's latent and decoder, algorithms.md §16), overrides it.
    """

    aux_noise = False
    classes = 0  # > 0: a class-conditional operator, run through :meth:`given`
    samplers: tuple[str, ...] = ("ancestral",)  # what :meth:`solver` can run
    # Whether clamping some dimensions (inpainting, algorithms.md §9) conditions the others:
    # true where each step reads its input state; a model whose steps draw afresh (the VAE)
    # would ignore the clamped values, so clamping it is refused.
    clampable = True
    # The defaults of sample_chain, set from the run's ``sample`` section when a model is loaded.
    sample_steps = 0  # T' (0: the training T)
    sampler = "ancestral"
    eta = 0.0

    def __init__(self, shape: tuple[int, ...], T: int, net: nn.Module, prior: nn.Module) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.d = math.prod(self.shape)
        self.T = int(T)
        self.prior = prior
        self.net = net

    @abc.abstractmethod
    def forward(self, z: torch.Tensor, t, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ²) of the sampler's step t given the state z (B, d)."""

    def step(self, z: torch.Tensor, t, noise: Callable[[], torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the sampling chain (algorithms.md §2): (z(t), μ(t)) from z(t-1) (B, d).
        ``noise()`` gives the next (B, d) block of standard normals: one for the internal draw
        (if ``aux_noise``), then one for z(t) = μ + σ·ε with (μ, σ²) = ``self(z, t, aux)``."""
        aux = noise() if self.aux_noise else None
        mean, var = self(z, t, aux)
        return mean + var.sqrt() * noise(), mean

    def respaced(self, steps: int) -> ChainModel:
        """The model to run for a chain of ``steps`` steps. Steps past T reuse step T
        (algorithms.md §2), so only a model with a schedule (diffusion) can run fewer."""
        if steps < self.T:
            raise InputError(f"steps={steps}: sampling needs T' >= the training T={self.T} "
                             "(algorithms.md §2)")
        return self

    def solver(self, sampler: str, steps: int, eta: float = 0.0) -> ChainModel:
        """The chain that ``sampler`` runs for ``steps`` steps: "ancestral" is the model's own
        (:meth:`respaced`); a model naming others in ``samplers`` overrides this."""
        if sampler not in self.samplers:
            raise InputError(f"sampler {sampler!r}: {type(self).__name__} runs "
                             f"{', '.join(self.samplers)}")
        if eta:
            raise InputError(f"eta={eta}: only diffusion's ddim sampler takes eta")
        return self.respaced(steps)

    def given(self, y: torch.Tensor | None) -> ChainModel | Given:
        """This class-conditional model with the classes ``y`` (B,) of a batch fixed: the
        operator p(t)(· | z, y) of algorithms.md §15, with the model's whole surface, so the
        methods and the sampler run it as they run an unconditional one. ``y`` None: the
        model itself (an unconditional model's batches have no classes)."""
        if y is None:
            return self
        if not self.classes:
            raise InputError(f"{type(self).__name__} is unconditional (model.classes=0): "
                             "it takes no classes")
        return Given(self, y)

    @property
    def stats_ready(self) -> bool:
        """True once the per-step batch-norm statistics of algorithms.md §6 are stored (or the
        network has no batch norm)."""
        return all(n.has_stats for n in step_norms(self))


class GaussianChainModel(ChainModel):
    """The paper's chain (algorithms.md §2): p(0) fitted to the data, and
    p(t)(z(t) | z(t-1)) = N(μ, diag σ²) with (a_μ, a_σ) = net(z(t-1), t),
    μ = sigmoid(a_μ), σ² = β·sigmoid(a_σ) + ε."""

    def __init__(self, shape: tuple[int, ...], T: int, cfg: ModelConfig, slots: int | None = None
                 ) -> None:
        d = math.prod(shape)
        net = with_bn_eps(build_net(cfg.net, shape, tuple(cfg.hidden), slots or T,
                                    cfg.batch_norm, cfg.classes), cfg.bn_eps)
        super().__init__(shape, T, net, FactorialGaussianPrior(d))
        self.beta, self.eps, self.classes = cfg.beta, cfg.eps, cfg.classes

    def forward(self, z: torch.Tensor, t, noise: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ²) of step t; ``y`` (B,): the classes of a class-conditional model (§15)."""
        a_mu, a_sigma = self.net(z, t, y)
        return torch.sigmoid(a_mu), self.beta * torch.sigmoid(a_sigma) + self.eps


def check_model(model, *, stand_ins: bool = False) -> None:
    """The rule for every function that takes a model (``model``): a model loaded in memory,
    a :class:`ChainModel` — never a path, a checkpoint's dict or anything else, which is an
    :class:`~infusion.errors.InputError` naming the argument and saying to load it with
    ``infusion.load_model``. ``stand_ins``: any ``torch.nn.Module`` is taken too, for code
    that needs only part of the chain's surface (the likelihood and statistics passes, which
    tests drive with analytic chains)."""
    if not isinstance(model, nn.Module if stand_ins else ChainModel):
        raise InputError(f"model={str(model)[:80]!r}: expected a ChainModel; load one with "
                         "infusion.load_model(path)")


def given(model, y: torch.Tensor | None):
    """``model`` with the classes ``y`` of a batch fixed (:meth:`ChainModel.given`), or
    ``model`` itself when ``y`` is None: an unconditional model's batches, or any object with
    the chain's surface (tests' analytic chains)."""
    return model if y is None else model.given(y)


class Given:
    """A class-conditional :class:`ChainModel` with the classes ``y`` of one batch fixed
    (:meth:`ChainModel.given`): calls pass y on, everything else is the model's own. The prior
    p(0) stays unconditional (algorithms.md §15)."""

    def __init__(self, model: ChainModel, y: torch.Tensor) -> None:
        self.model, self.y = model, y

    def __call__(self, z: torch.Tensor, t, noise: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(z, t, noise, y=self.y)

    def step(self, z: torch.Tensor, t, noise: Callable[[], torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's own sampler step (:meth:`ChainModel.step`), run with the classes fixed."""
        return type(self.model).step(self, z, t, noise)

    def __getattr__(self, name: str):
        return getattr(self.model, name)
