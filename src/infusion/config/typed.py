"""Frozen dataclasses built from plain dicts and changed by ``a.b=value`` strings, every value
coerced to its field's type (int, float, bool, str, tuples of them, nested dataclasses); a
value that does not fit is a :class:`~infusion.errors.ConfigError` naming its path. The
machinery behind :mod:`infusion.config`; it knows nothing of the config's sections.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import fields, replace
from typing import Any

from ..errors import ConfigError, InputError


def build(cls: type, raw: Any, path: str) -> Any:
    """A (possibly nested) settings dataclass from a dict, each value coerced to its type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {path!r} must be a mapping, got {raw!r}")
    known = {g.name: g for g in fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown setting {path}.{key}; known: {', '.join(known)}")
    values = {}
    for key, v in raw.items():
        hint = field_type(cls, key)
        values[key] = (build(hint, v, f"{path}.{key}") if dataclasses.is_dataclass(hint)
                       else coerce(v, hint, f"{path}.{key}"))
    return cls(**values)


def assign(obj: Any, parts: list[str], text: str, item: str, prefix: str = "") -> Any:
    """``obj`` with the field at ``parts`` set to ``text`` parsed by its type (frozen copies)."""
    key = parts[0]
    here = f"{prefix}{key}"
    known = {g.name for g in fields(obj)} - {"preset"}
    if key not in known:
        raise ConfigError(f"--set {item!r}: unknown setting {here}; known: "
                          f"{', '.join(sorted(known))}")
    hint = field_type(type(obj), key)
    if dataclasses.is_dataclass(hint):
        if len(parts) == 1:
            raise ConfigError(f"--set {item!r}: {here} is a section; name one of its settings")
        return replace(obj, **{key: assign(getattr(obj, key), parts[1:], text, item, here + ".")})
    if len(parts) > 1:
        raise ConfigError(f"--set {item!r}: {here} is a setting, not a section")
    return replace(obj, **{key: parse(text, hint, item.split("=", 1)[0])})


def field_type(cls: type, key: str) -> Any:
    return typing.get_type_hints(cls)[key]


def parse(text: str, hint: Any, path: str) -> Any:
    """Parse a command-line string into the field's type."""
    if typing.get_origin(hint) is tuple:
        parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
        return coerce(parts, hint, path)
    return coerce(text, hint, path)


def coerce(value: Any, hint: Any, path: str) -> Any:
    try:
        if typing.get_origin(hint) is tuple:
            (elem, _) = typing.get_args(hint)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise TypeError(value)
            return tuple(coerce(v, elem, path) for v in value)
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise InputError(value)
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, (bool, int)):
                raise TypeError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise InputError(value)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise TypeError(value)
            return float(value)
        if not isinstance(value, str):
            raise TypeError(value)
        return value
    except (TypeError, ValueError, OverflowError):
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{path}={value!r}: expected {name}") from None
