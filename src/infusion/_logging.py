"""How the library speaks: messages go to the ``infusion`` loggers of :mod:`logging` (one per
module, ``logging.getLogger(__name__)``), progress bars are tqdm's. Nothing here installs a
handler that prints; an application (the command line, a notebook's ``logging.basicConfig``)
chooses where the messages go.

A few entry points (:func:`infusion.train`, :func:`infusion.fit`, :func:`infusion.load_model`)
still take ``log=``, a callable that receives the messages in place of logging, for one version:
:func:`messages_to` routes them there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

ROOT = "infusion"  # the library's loggers all live under this one


def bar_disable(progress: bool) -> bool | None:
    """tqdm's ``disable=`` for ``progress``: None (a bar on a terminal only) when a bar is
    wanted, True (no bar) when it is not."""
    return None if progress else True


class _CallableHandler(logging.Handler):
    """Each message (its text alone) to a callable; whatever the callable raises reaches the
    code that logged, as it did when the library called it directly."""

    def __init__(self, log: Callable[[str], object]) -> None:
        super().__init__(logging.INFO)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log(record.getMessage())


@contextlib.contextmanager
def messages_to(log: Callable[[str], object] | None) -> Iterator[None]:
    """Within the block, the library's info and warning messages go to ``log`` alone (not to
    the handlers above the ``infusion`` logger); with ``log=None``, logging is left as it is.
    The ``log=`` parameter of :func:`infusion.train`, :func:`infusion.fit` and
    :func:`infusion.load_model`, kept for one version: configure :mod:`logging` instead."""
    if log is None:
        yield
        return
    logger = logging.getLogger(ROOT)
    handler = _CallableHandler(log)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


@contextlib.contextmanager
def warnings_only(active: bool = True) -> Iterator[None]:
    """Within the block (if ``active``), only warnings and errors of the library are logged:
    the processes of a distributed run other than the first keep quiet."""
    if not active:
        yield
        return
    logger = logging.getLogger(ROOT)
    level = logger.level
    logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(level)
