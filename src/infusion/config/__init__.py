"""The one typed configuration (:mod:`.schema`), its typed ``--set`` overrides (:mod:`.typed`),
the ``method`` section (:mod:`.method_settings`) with the registry of the methods' own settings
(:mod:`.registry`) and the named presets (:mod:`.presets`)."""

from typing import Any

from . import registry
from .method_settings import MethodConfig  # noqa: F401
from .presets import PRESETS, describe, preset, register_preset  # noqa: F401
from .schema import *
from .schema import (  # noqa: F401
    _FLAT_METHOD_KEYS,
    _SECTIONS,
    DATA_NAMES,
    LR_SCHEDULES,
    NET_NAMES,
)


# Names that describe the registered methods, computed when asked (the methods register on
# first use): the method names, their settings classes, the samplers, the capabilities.
def __getattr__(name: str) -> Any:
    methods = registry.names() if name.isupper() or name.endswith("Settings") else ()
    if name == "METHOD_NAMES":
        return methods
    if name == "METHOD_SETTINGS":
        return {m: registry.settings_class(m) for m in methods}
    if name == "SAMPLERS":
        return registry.all_samplers()
    if name == "SAMPLERS_OF":  # the methods with samplers beyond their own chain
        return {m: registry.samplers_of(m) for m in methods
                if registry.samplers_of(m) != ("ancestral",)}
    if name == "STEP_EMBEDDING_METHODS":
        return tuple(m for m in methods if registry.capability(m, "step_embedding"))
    if name == "CONDITIONAL_METHODS":
        return tuple(m for m in methods if registry.capability(m, "conditional"))
    for m in methods:  # a settings class by its name (InfusionSettings, …)
        if registry.settings_class(m).__name__ == name:
            return registry.settings_class(m)
    raise AttributeError(f"module 'infusion.config' has no attribute {name!r}")
