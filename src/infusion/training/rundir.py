"""A run directory's mechanics: its lock, its own files, its resumable state and metrics, and
the stop signals a run honours. The training loop (:mod:`infusion.training.loop`) uses these; they
know nothing of models.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError
from ..io import (
    MANIFEST,
    atomic_write,
    clean_stale_temps,
    not_written_here,
    start_manifest,
)

# The run's own files: removed by ``overwrite``, never anything else (beside the preview grids
# samples/epoch-NNNN.png, :func:`run_files`).
RUN_FILES = ("config.json", "metrics.jsonl", "environment.json", "checkpoints", "infusion_chains",
             "samples.npz", "samples.png", "samples_by_class.png", "chains.png", "curve.png")
# The folders a run (and the commands reading it) write into: where its temporary files lie.
RUN_DIRS = (".", "checkpoints", "samples", "infusion_chains", "data", "eval", "figures")


class RunError(UserError, RuntimeError):
    """A run directory that cannot be used as asked; the message says what to do."""


@contextlib.contextmanager
def lock(run_dir: Path, main: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (file ``.lock``, with the holder's pid) while a
    run writes it, and clear the temporary files a killed writer of this run left behind
    (:func:`infusion.io.clean_stale_temps` in :data:`RUN_DIRS`: never a live process's, a
    nested run's or a user's). Links are not followed: a ``.lock`` or a run file that is a
    symbolic link is refused."""
    if not main:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise RunError(f"{str(path)!r} is a symbolic link; infusion does not write through "
                       "links: remove it, or use another --run-dir") from None
    with os.fdopen(fd, "r+") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunError(f"{str(path)!r} is not a regular file; remove it, or use another "
                           "--run-dir")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"run directory {str(run_dir)!r} is in use by another infusion process "
                           f"(pid {f.read(32).strip() or '?'}); wait for it to finish") from None
        linked = [n for n in (*RUN_FILES, "samples", "data") if (run_dir / n).is_symlink()]
        if linked:
            raise RunError(f"{str(run_dir / linked[0])!r} is a symbolic link; infusion does not "
                           "write through links: remove it, or use another --run-dir")
        try:
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(path)) from None
        for d in RUN_DIRS:
            clean_stale_temps(run_dir / d)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_files(run_dir: Path) -> list[Path]:
    """The files of a run present in ``run_dir``: :data:`RUN_FILES` and the preview grids
    ``samples/epoch-NNNN.png``."""
    found = [run_dir / n for n in RUN_FILES if os.path.lexists(run_dir / n)]
    samples = run_dir / "samples"
    if samples.is_dir() and not samples.is_symlink():
        found += sorted(p for p in samples.glob("epoch-*.png") if p.stem[6:].isdigit())
    return found


def claim(run_dir: Path, overwrite: bool, main: bool = True) -> None:
    """Make ``run_dir`` ready for a new run: refuse one that holds a run's files
    (:func:`run_files`; the user's own files of those names too, which a new run would
    replace), unless ``overwrite``, which removes them and nothing else. Where the directory
    has a manifest (:func:`infusion.io.read_manifest`), ``overwrite`` removes only what the
    library wrote and refuses a file of a run's name that it did not write; then the new run
    starts an empty manifest. Only the ``main`` process (rank 0) removes and starts; the
    others check alone, so that every process refuses the same directory."""
    used = run_files(run_dir)
    if used and not overwrite:
        resumable = any((run_dir / "checkpoints").glob("epoch-*.pt"))
        hint = ("pass --resume to continue it, " if resumable else
                "it saved no resumable state; ") + "--overwrite to replace it, or another --run-dir"
        names = ", ".join(str(p.relative_to(run_dir)) for p in used)
        raise RunError(f"run directory {str(run_dir)!r} already holds a run ({names}); {hint}")
    foreign = not_written_here(run_dir, used)
    if foreign:
        raise RunError(f"{str(foreign[0])!r} was not written by infusion (it is not named in "
                       f"{str(run_dir / MANIFEST)!r}); --overwrite replaces only the run's own "
                       "files: move it away, or use another --run-dir")
    if not main:
        return
    for p in used:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    if any(p.parent.name == "samples" for p in used):
        with contextlib.suppress(OSError):  # the preview folder, if nothing else is in it
            (run_dir / "samples").rmdir()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        start_manifest(run_dir)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise RunError(f"{str(run_dir / MANIFEST)!r} is a symbolic link; infusion does not "
                       "write through links: remove it, or use another --run-dir") from None


def training_state_file(run_dir: str | Path) -> Path:
    """The run's resumable training state (``checkpoints/epoch-NNNN.pt``, the highest epoch)."""
    found = [p for p in (Path(run_dir) / "checkpoints").glob("epoch-*.pt") if p.stem[6:].isdigit()]
    if not found:
        raise RunError(f"nothing to resume in {str(run_dir)!r}: no checkpoints/epoch-*.pt (the run "
                       "stopped before its first checkpoint); start it again with --overwrite")
    return max(found, key=lambda p: int(p.stem[6:]))


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """``metrics.jsonl``, rewritten whole from the rows a checkpoint holds (never appended)."""
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(run_dir / "metrics.jsonl", lambda tmp: tmp.write_text(text))


def read_metrics(run_dir: Path, last_epoch: int) -> list[dict]:
    """The rows of ``metrics.jsonl`` up to ``last_epoch``, one per epoch (the last wins): how a
    version-0.1 run, which appended rows, is resumed without duplicates."""
    f = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()] \
        if f.exists() else []
    by_epoch = {r["epoch"]: r for r in rows if r.get("epoch", last_epoch + 1) <= last_epoch}
    return [by_epoch[k] for k in sorted(by_epoch)]


class StopRequest:
    """Set by SIGINT/SIGTERM: the name of the signal, or "". With ``at_once``, the signal
    also raises KeyboardInterrupt where the run is."""

    requested: str = ""
    at_once: bool = False


@contextlib.contextmanager
def stop_signals() -> Iterator[StopRequest]:
    """Turn SIGINT/SIGTERM into a request the loop honours after the current step (in the main
    thread only); a second signal interrupts at once."""
    stop = StopRequest()
    sigs = (signal.SIGINT, signal.SIGTERM)
    try:
        old = {s: signal.getsignal(s) for s in sigs}
        for s in sigs:
            signal.signal(s, lambda num, _frame: _request(stop, num, old))
    except ValueError:  # not the main thread: signals stay as they are
        yield stop
        return
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _request(stop: StopRequest, num: int, old: dict) -> None:
    if stop.requested:  # the second signal: the default behaviour
        signal.signal(num, old[num])
        raise KeyboardInterrupt
    stop.requested = signal.Signals(num).name
    if stop.at_once:
        raise KeyboardInterrupt
