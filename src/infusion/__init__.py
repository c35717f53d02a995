"""infusion: generative models learned as the transition operator of a Markov chain.

Infusion Training (Bordes, Honari & Vincent, ICLR 2017) and the methods it is measured against,
sharing one operator, one sampler, one trainer and one set of evaluations. The public API is
re-exported here lazily, so ``import infusion`` stays cheap. A name is always one thing:
``infusion.train`` is the training function (the loop lives in :mod:`infusion.trainer`).
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "Config": "config", "preset": "config", "override": "config", "PRESETS": "config",
    "ConfigError": "config",
    "ChainModel": "operator", "GaussianChainModel": "operator",
    "FactorialGaussianPrior": "operator",
    "Method": "methods", "METHODS": "methods", "build_method": "methods",
    "sample_chain": "sampler", "run_chain": "sampler", "Samples": "sampler",
    "train": "trainer", "fit": "fitting", "FitResult": "fitting",
    "compute_step_statistics": "runtime", "load_ready_model": "runtime",
    "load_model": "runtime", "save_pretrained": "checkpoint", "from_pretrained": "checkpoint",
    "export": "checkpoint",
    "sample_to_file": "sample",
    "load_mnist": "data", "toy": "data", "load_split": "data", "to_data_space": "data",
    "log_weights": "likelihood", "estimate_likelihood": "likelihood",
    "parzen_log_prob": "parzen", "parzen_estimate": "parzen",
    "EvalSettings": "evaluate", "frechet_distance": "metrics", "get_extractor": "metrics",
    "register_extractor": "metrics",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'infusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
