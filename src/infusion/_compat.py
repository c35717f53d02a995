"""Module paths of version 0.2, kept for one version: ``import infusion.trainer`` still works
and gives :mod:`infusion.training.loop` itself (the same module object), with a
DeprecationWarning. ``infusion.runtime``'s names now live in four modules; its alias is a
module holding them. Installed by ``infusion/__init__``; no module of the library uses it."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED = {
    "typed": "config.typed", "presets": "config.presets",
    "method_settings": "config.method_settings",
    "operator": "chain.model", "nets": "chain.nets", "distributions": "chain.distributions",
    "sampler": "chain.sampler", "sample": "generate.files", "inpaint": "generate.inpaint",
    "trainer": "training.loop", "resume": "training.state", "rundir": "training.rundir",
    "validation": "training.validation", "finalize": "training.finalize",
    "watch": "training.watch", "ema": "training.ema", "distributed": "training.distributed",
    "fitting": "training.fit", "checkpoint": "models", "training.checkpoint": "models",
    "bench": "training.bench",
    "likelihood": "evaluate.likelihood", "parzen": "evaluate.parzen",
    "metrics": "evaluate.metrics", "classifier": "evaluate.classifier",
    "inception": "evaluate.inception", "paper_figures": "evaluate.paper_figures",
    "evaluate.likelihoods": "evaluate.likelihood_rows", "evaluate.samples": "evaluate.sample_rows",
    "commands": "cli.commands",
}
RUNTIME = {"resolve_device": "device", "bf16_is_fast": "device", "mixed_precision": "device",
           "batches": "data.batches", "compute_step_statistics": "methods.statistics",
           "ensure_step_statistics": "methods.statistics",
           "load_ready_model": "models", "load_model": "models"}


class _Alias(importlib.abc.Loader):
    def __init__(self, old: str) -> None:
        self.old = old

    def create_module(self, spec):
        pkg = __package__
        if self.old == "runtime":
            module = types.ModuleType(f"{pkg}.runtime", "Deprecated: the names of version "
                                      "0.2's infusion.runtime, from their new modules.")
            for name, where in RUNTIME.items():
                setattr(module, name, getattr(importlib.import_module(f"{pkg}.{where}"), name))
            new = ", ".join(sorted({f"{pkg}.{w}" for w in RUNTIME.values()}))
        else:
            new = f"{pkg}.{MOVED[self.old]}"
            module = importlib.import_module(new)
        warnings.warn(f"{pkg}.{self.old} is deprecated: use {new}", DeprecationWarning,
                      stacklevel=2)
        return module

    def exec_module(self, module) -> None:
        """Nothing to run: :meth:`create_module` returned the new module, already imported."""


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        pkg, _, old = fullname.partition(".")
        if pkg != __package__ or (old not in MOVED and old != "runtime"):
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(old))


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
