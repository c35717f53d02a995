"""A run directory's mechanics: its lock, its own files, its resumable state and metrics, and
the stop signals a run honours. The training loop (:mod:`infusion.training.loop`) uses these; they
know nothing of models.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError
from ..io import atomic_write

# The run's own files: removed by ``overwrite``, never anything else.
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", "infusion_chains", "samples.npz",
             "samples.png", "chains.png", "curve.png")


class RunError(UserError, RuntimeError):
    """A run directory that cannot be used as asked; the message says what to do."""


@contextlib.contextmanager
def lock(run_dir: Path, main: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (file ``.lock``, with the holder's pid) while a
    run writes it, and clear temporary files a killed writer left behind."""
    if not main:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise RunError(f"run directory {str(run_dir)!r} is in use by another infusion process "
                           f"(pid {f.read().strip() or '?'}); wait for it to finish") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        for stale in run_dir.glob("**/.*.tmp"):  # io.atomic_write's temporary names
            stale.unlink()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def claim(run_dir: Path, overwrite: bool) -> None:
    """Make ``run_dir`` ready for a new run: refuse one that holds a run, unless ``overwrite``,
    which removes that run's own files (:data:`RUN_FILES`) and nothing else."""
    used = [n for n in RUN_FILES if (run_dir / n).exists()]
    if used and not overwrite:
        resumable = any((run_dir / "checkpoints").glob("epoch-*.pt"))
        hint = ("pass --resume to continue it, " if resumable else
                "it saved no resumable state; ") + "--overwrite to replace it, or another --run-dir"
        raise RunError(f"run directory {str(run_dir)!r} already holds a run ({', '.join(used)}); "
                       f"{hint}")
    for name in used:
        p = run_dir / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()


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
    """Set by SIGINT/SIGTERM: the name of the signal, or ""."""

    requested: str = ""


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
