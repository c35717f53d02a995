"""infusion: generative models learned as the transition operator of a Markov chain.

Infusion Training (Bordes, Honari & Vincent, ICLR 2017) and the methods it is measured against,
sharing one operator, one sampler, one trainer and one set of evaluations. The public API is
re-exported here lazily, so ``import infusion`` stays cheap. A name is always one thing:
``infusion.train`` is the training function (the loop lives in :mod:`infusion.training.loop`).
"""

from __future__ import annotations

import importlib
import logging

from . import _compat
from .config import registry as _registry

__version__ = "0.2.0"

_EXPORTS = {
    "Config": "config", "preset": "config", "override": "config", "PRESETS": "config",
    "ConfigError": "config",
    "ChainModel": "chain.model", "GaussianChainModel": "chain.model",
    "FactorialGaussianPrior": "chain.model",
    "Method": "methods", "METHODS": "methods", "build_method": "methods",
    "register_method": "methods", "register_preset": "config",
    "sample_chain": "chain.sampler", "run_chain": "chain.sampler", "Samples": "chain.sampler",
    "train": "training.loop", "fit": "training.fit", "FitResult": "training.fit",
    "compute_step_statistics": "methods.statistics",
    "load_model": "models", "load_ready_model": "models",
    "save_pretrained": "models", "from_pretrained": "models",
    "export": "models",
    "sample_to_file": "generate.files",
    "load_mnist": "data", "toy": "data", "load_split": "data", "to_data_space": "data",
    "log_weights": "evaluate.likelihood", "estimate_likelihood": "evaluate.likelihood",
    "parzen_log_prob": "evaluate.parzen", "parzen_estimate": "evaluate.parzen",
    "EvalSettings": "evaluate", "EvaluationResult": "evaluate.api", "Metric": "evaluate.api",
    "frechet_distance": "evaluate.metrics",
    "get_extractor": "evaluate.metrics", "register_extractor": "evaluate.metrics",
}

# messages go to the "infusion" loggers; the application chooses where they are shown
logging.getLogger("infusion").addHandler(logging.NullHandler())
_compat.install()  # module paths of version 0.2 (infusion.training.loop, …) for one version
# the built-in methods register their settings when the config first asks (they import torch;
# the config and the command line's start-up do not)
_registry.add_loader(lambda: importlib.import_module(".methods", __name__))


# Packages that are also called: ``infusion.evaluate(...)`` (evaluate/__init__.py)
_CALLABLE_PACKAGES = {"evaluate"}


def __getattr__(name: str):
    if name in _CALLABLE_PACKAGES:
        return importlib.import_module(f".{name}", __name__)
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'infusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS) + list(_CALLABLE_PACKAGES))
