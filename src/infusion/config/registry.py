"""The method registry the config asks (docs/design.md, "A method is one file"): for every
method name, the frozen settings dataclass that its own module declares (``method.<name>.*``)
with the capabilities the config checks against, as class attributes:

* ``samplers``: the ``sample.sampler`` values it runs (default ``("ancestral",)``);
* ``step_embedding``: its network takes the continuous step as input, so any number of
  sampling steps works (default False);
* ``conditional``: it can be class-conditional, ``model.classes`` > 0 (default False);
* ``T_max`` and ``T_note``: the largest ``method.T`` and a note for the refusal;
* ``nets``: the ``model.net`` bodies it builds (default: every body).

Methods register through :func:`infusion.methods.register_method`, which adds the method class
to :data:`infusion.methods.METHODS` and its settings here. The config sits below the methods
(it must stay importable without torch, for the command line's start-up), so it never imports
them: the package wires the built-in methods in once, through :func:`add_loader`, and the
first question asked of the registry loads them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError

# what a settings class that declares nothing can do
CAPABILITY_DEFAULTS: dict[str, Any] = {"samplers": ("ancestral",), "step_embedding": False,
                                       "conditional": False, "T_max": None, "T_note": "",
                                       "nets": None}
RESERVED = ("name", "T", "settings")  # the method section's own keys: not method names

_SETTINGS: dict[str, type] = {}
_loaders: list[Callable[[], Any]] = []


def add_loader(load: Callable[[], Any]) -> None:
    """Run ``load`` (which registers methods) before the registry first answers."""
    _loaders.append(load)


def _load() -> None:
    while _loaders:
        _loaders.pop(0)()


def register_settings(name: str, settings: type, replace: bool = False) -> None:
    """Declare ``settings`` (a frozen dataclass with ``validate()``) as ``method.<name>.*``. A
    name already taken by another class is refused unless ``replace``."""
    _load()  # the built-ins first, so a user's method cannot take their names silently
    if not (isinstance(name, str) and name.isidentifier() and name not in RESERVED):
        raise ConfigError(f"method name {name!r}: expected an identifier other than "
                          f"{', '.join(RESERVED)} (it becomes method.{name}.* of the config)")
    params = getattr(settings, "__dataclass_params__", None)
    if not (isinstance(settings, type) and dataclasses.is_dataclass(settings)
            and params is not None and params.frozen and callable(getattr(settings, "validate", None))):
        raise TypeError(f"method {name!r}: its settings {settings!r} must be a frozen "
                        "dataclass with a validate() method")
    held = _SETTINGS.get(name)
    if held is not None and held is not settings and not replace:
        raise ConfigError(f"method {name!r} is already registered (settings {held.__name__}); "
                          "pass replace=True to replace it")
    _SETTINGS[name] = settings


def unregister(name: str) -> None:
    """Remove ``method.<name>`` (a method a test or a notebook registered)."""
    _SETTINGS.pop(name, None)


def settings_class(name: str) -> type | None:
    """The settings class of method ``name``, or None where no method has that name."""
    _load()
    return _SETTINGS.get(name)


def names() -> tuple[str, ...]:
    """Every registered method's name, in registration order."""
    _load()
    return tuple(_SETTINGS)


def capability(name: str, key: str) -> Any:
    """What method ``name`` declares for ``key`` (see the module's docstring), or its default."""
    return getattr(settings_class(name), key, CAPABILITY_DEFAULTS[key])


def samplers_of(name: str) -> tuple[str, ...]:
    """The ``sample.sampler`` values method ``name`` runs."""
    return tuple(capability(name, "samplers"))


def all_samplers() -> tuple[str, ...]:
    """Every sampler some registered method runs, "ancestral" first."""
    return tuple(dict.fromkeys(s for n in names() for s in samplers_of(n)))
