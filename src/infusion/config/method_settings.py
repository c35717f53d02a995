"""The ``method`` section of the config: which method, its steps ``method.T``, and its own
settings ``method.<name>.*``, an instance of the frozen dataclass that the method's module
declares and registers (:mod:`infusion.config.registry`; algorithms.md §2–5 and §11–16 give
their meaning). The config knows no method by name: what it checks of one — its samplers,
whether its network takes the step as an input, whether it can be class-conditional, its
largest T — it reads from that class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import require
from ..limits import STEPS_MAX, in_range
from . import registry


@dataclass(frozen=True)
class MethodConfig:
    """Which method, its steps, and its settings (``None``: the method's defaults).

    ``cfg.method.<name>`` reads a method's settings by name: the chosen method's own, another
    method's defaults (those the run would use if ``method.name`` named it)."""

    name: str = "infusion"
    T: int = 15  # training steps (infusion), heated levels (walkback), walkback k (GSN), 1 (VAE), …
    settings: Any = None

    def __post_init__(self) -> None:
        cls = registry.settings_class(self.name) if isinstance(self.name, str) else None
        if self.settings is None and cls is not None:
            object.__setattr__(self, "settings", cls())

    def __getattr__(self, key: str) -> Any:
        cls = None if key.startswith("_") else registry.settings_class(key)
        if cls is None:
            raise AttributeError(f"MethodConfig has no attribute {key!r} (methods: "
                                 f"{', '.join(registry.names())})")
        return self.settings if key == self.name else cls()

    def validate(self) -> None:
        names = registry.names()
        require([(self.name in names, f"method.name={self.name!r}: expected one of {names}")])
        cls = registry.settings_class(self.name)
        require([(isinstance(self.settings, cls),
                  (f"method.settings: a {type(self.settings).__name__}, but method.name="
                   f"{self.name} takes {cls.__name__} (method.{self.name}.*)"))])
        t_max = registry.capability(self.name, "T_max") or STEPS_MAX
        require([in_range("method.T", self.T, 1, t_max, f" for method.name={self.name}"
                           + registry.capability(self.name, "T_note"))])
        self.settings.validate()
