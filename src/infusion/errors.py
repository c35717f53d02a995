"""Errors a user can cause and fix, told apart from bugs.

The command line prints a :class:`UserError` as one ``error: …`` line (exit status 2); any
other exception is a bug in infusion and keeps its traceback. Library code raises
:class:`InputError` (a ``ValueError``) for an argument or a file's content that makes no sense,
naming the input and what was expected.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a state the user can fix; the message says what and how."""


class InputError(UserError, ValueError):
    """An argument, setting or file content that makes no sense; the message names it."""


class ConfigError(InputError):
    """A configuration value, preset name or override that makes no sense; the message names it."""


def require(checks: list[tuple[bool, str]]) -> None:
    """Raise :class:`ConfigError` with the message of the first failed check."""
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
