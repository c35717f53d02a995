"""The one typed configuration (:mod:`.schema`), its typed ``--set`` overrides (:mod:`.typed`),
each method's settings (:mod:`.method_settings`) and the named presets (:mod:`.presets`)."""

from .method_settings import *
from .method_settings import METHOD_NAMES, METHOD_SETTINGS, MethodConfig  # noqa: F401
from .presets import PRESETS, describe, preset  # noqa: F401
from .schema import *
from .schema import (  # noqa: F401
    _FLAT_METHOD_KEYS,
    _SECTIONS,
    CONDITIONAL_METHODS,
    DATA_NAMES,
    LR_SCHEDULES,
    NET_NAMES,
    SAMPLERS,
    SAMPLERS_OF,
    STEP_EMBEDDING_METHODS,
)
