"""The method protocol (docs/algorithms.md §3–5, §11–14, §16): how a training chain is built from a
data point, which loss each step gets, and what the method can estimate.

A method is a small object made from ``MethodConfig``. Shared code never asks a method for its
name or probes it with ``hasattr``: it reads the declared capabilities below.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ..chain.model import ChainModel
from ..config import MethodConfig, ModelConfig


class Method(abc.ABC):
    """Base class of every training method.

    Capabilities (class attributes):
      * ``has_likelihood``: :meth:`log_weight` returns one draw of ℓ per example; with
        ``likelihood = "bound"`` its mean is a lower bound on log p(x) and its log-mean-exp
        the IS estimate (§7); with ``"estimate"`` (the flow, §14) each draw is an unbiased
        estimate of log p(x) itself, reported as their mean, with no IS estimate, and too
        costly to score every epoch (training validates on the loss);
      * ``has_infusion_chain``: :meth:`infusion_chain` returns the training chain for given
        targets (paper Fig. 2);
      * ``has_reversibility``: the model has a temperature-1 operator whose departure from
        detailed balance can be measured (§11, appendix H of Goyal et al.).
    """

    name: ClassVar[str]
    # its settings ``method.<name>.*``: a frozen dataclass with validate(), declared in the
    # method's own module with its capabilities (infusion.config.registry)
    Settings: ClassVar[type]
    has_likelihood: ClassVar[bool] = False
    likelihood: ClassVar[str] = "bound"  # or "estimate": see above
    has_infusion_chain: ClassVar[bool] = False
    has_reversibility: ClassVar[bool] = False

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg
        self.T = cfg.T
        self.settings: Any = cfg.settings  # this method's ``method.<name>.*``
        # A random choice made once per minibatch (e.g. walkback's n) on which the steps'
        # collectives depend: the identity, or, inside a data-parallel training step, rank 0's
        # value on every process (set by infusion.training.distributed for that step).
        self.shared_choice: Callable[[int], int] = _identity

    def loss_steps(self) -> int:
        """Chain steps one example's loss runs through (whose activations the backward pass
        keeps): T for the chains; the methods that draw one time per example override it."""
        return self.T

    @abc.abstractmethod
    def build_model(self, shape: tuple[int, ...], cfg: ModelConfig) -> ChainModel:
        """The model this method trains, on states of shape ``shape``."""

    @abc.abstractmethod
    def loss(self, model: ChainModel, x: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
        """Per-example training loss, x: (B, d) in model space -> (B,)."""

    def log_weight(self, model: ChainModel, x: torch.Tensor, generator: torch.Generator | None,
                   final_var: float | None = None) -> torch.Tensor:
        """One draw of ℓ per example, (B, d) -> (B,) (only where ``has_likelihood``);
        ``final_var``: the last step's variance replaced by that constant (the isotropic
        variant of algorithms.md §7)."""
        raise TypeError(f"method {self.name!r} defines no likelihood (has_likelihood is False)")

    def infusion_chain(self, model: ChainModel, x: torch.Tensor,
                       generator: torch.Generator | None) -> list[torch.Tensor]:
        """The training chain's states for targets x (only where ``has_infusion_chain``)."""
        raise TypeError(f"method {self.name!r} has no infusion chain (has_infusion_chain is False)")


def _identity(value: int) -> int:
    return value
