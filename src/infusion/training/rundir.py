"""A run directory's mechanics: its lock, its own files, its resumable state and metrics, and
the stop signals a run honours. The training loop (:mod:`infusion.training.loop`) uses these; they
know nothing of models.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError
from ..io import (
    MANIFEST,
    atomic_write,
    check_own_file,
    check_replace,
    clean_stale_temps,
    delete_own,
    manifest_name,
    open_own_file,
    own_files,
    read_jsonl,
    start_manifest,
)

# The names of a run's files (:func:`run_files`): a top-level file, or a folder whose files of
# the names below are the run's; anything else in those folders is not.
RUN_FILES = ("config.json", "metrics.jsonl", "environment.json", "checkpoints", "infusion_chains",
             "samples.npz", "samples.png", "samples_by_class.png", "chains.png", "curve.png")
_IN_FOLDERS = {"checkpoints": re.compile(r"epoch-\d+\.pt|final\.pt|best\.pt|latest"),
               "infusion_chains": re.compile(r"epoch-\d+\.npz"),
               "samples": re.compile(r"epoch-\d+\.png")}
_DATA_FILE = re.compile(r"arrays-[0-9a-f]{16}\.npz(\.sha256)?")  # infusion.fit's, in data/
# The folders a run (and the commands reading it) write into: where its temporary files lie.
RUN_DIRS = (".", "checkpoints", "samples", "infusion_chains", "data", "eval", "figures")


class RunError(UserError, RuntimeError):
    """A run directory that cannot be used as asked; the message says what to do."""


@contextlib.contextmanager
def lock(run_dir: Path, main: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (file ``.lock``, with the holder's pid) while a
    run writes it, and clear the temporary files a killed writer of this run left behind
    (:func:`infusion.io.clean_stale_temps` in :data:`RUN_DIRS`: never a live process's, a
    nested run's or a user's). Before anything is written, the ``.lock`` and the manifest must
    be regular files of their own, and no run file or folder a symbolic link: anything else
    is refused (:func:`infusion.io.check_own_file`), nothing touched."""
    if not main:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    check_own_file(run_dir / MANIFEST)
    fd = open_own_file(path, os.O_RDWR | os.O_CREAT)
    with os.fdopen(fd, "r+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"run directory {str(run_dir)!r} is in use by another infusion process "
                           f"(pid {f.read(32).strip() or '?'}); wait for it to finish") from None
        _refuse_links(run_dir)
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


def _refuse_links(run_dir: Path) -> None:
    """Refuse a run file or folder that is a symbolic link: infusion does not write through
    links."""
    linked = [n for n in (*RUN_FILES, "samples", "data") if (run_dir / n).is_symlink()]
    if linked:
        raise RunError(f"{str(run_dir / linked[0])!r} is a symbolic link; infusion does not "
                       "write through links: remove it, or use another --run-dir")


def run_files(run_dir: Path) -> list[Path]:
    """The files of a run present in ``run_dir``, by their names: the top-level files of
    :data:`RUN_FILES`, the checkpoints (``checkpoints/epoch-NNNN.pt``, ``final.pt``,
    ``best.pt``, ``latest``), the recorded chains (``infusion_chains/epoch-NNNN.npz``) and the
    preview grids (``samples/epoch-NNNN.png``). A user's other files in those folders are not
    a run's."""
    found = []
    for name in (*RUN_FILES, "samples"):
        p = run_dir / name
        if name in _IN_FOLDERS and p.is_dir() and not p.is_symlink():
            found += sorted(q for q in p.iterdir() if _IN_FOLDERS[name].fullmatch(q.name))
        elif name != "samples" and os.path.lexists(p):
            found.append(p)
    return found


def _data_files(run_dir: Path) -> list[Path]:
    """The data files of :func:`infusion.fit` in ``run_dir/data`` (``arrays-HASH.npz`` and its
    ``.sha256`` record), by their names."""
    d = run_dir / "data"
    if not d.is_dir() or d.is_symlink():
        return []
    return sorted(p for p in d.iterdir() if _DATA_FILE.fullmatch(p.name))


def _new_data(run_dir: Path, data: str) -> list[Path]:
    """The new run's own data file and its record, where ``data`` (its ``data.path``) lies in
    ``run_dir/data`` (stored there by :func:`infusion.fit` before the run starts)."""
    if not data or not _DATA_FILE.fullmatch(Path(data).name) or (
            os.path.abspath(Path(data).parent) != os.path.abspath(run_dir / "data")):
        return []
    npz = run_dir / "data" / Path(data).name
    return [npz, npz.with_name(npz.name + ".sha256")]


def claim(run_dir: Path, overwrite: bool, main: bool = True, data: str = "") -> None:
    """Make ``run_dir`` ready for a new run: refuse one that holds a run's files
    (:func:`run_files`; the user's own files of those names too, which a new run would
    replace), unless ``overwrite``, which deletes the run's files and nothing else: each file
    must be named in the directory's manifest (:func:`infusion.io.read_manifest`), or the
    whole command is refused before anything is deleted; a user's other files, in the run's
    folders too, stay. A directory without a manifest (a run of an earlier version) is known
    by its files' names. With ``overwrite``, the replaced run's data files in ``data/``
    (``infusion.fit``'s, named in the manifest) go too, but not the new run's own, ``data``
    (its ``data.path``), which the new manifest names. Only the ``main`` process (rank 0)
    deletes and starts the manifest; the others check alone, so that every process refuses
    the same directory."""
    keep = [p for p in _new_data(run_dir, data) if os.path.lexists(p)]
    used = run_files(run_dir)
    if used and not overwrite:
        resumable = any((run_dir / "checkpoints").glob("epoch-*.pt"))
        hint = ("pass --resume to continue it, " if resumable else
                "it saved no resumable state; ") + "--overwrite to replace it, or another --run-dir"
        names = ", ".join(str(p.relative_to(run_dir)) for p in used)
        raise RunError(f"run directory {str(run_dir)!r} already holds a run ({names}); {hint}")
    check_own_file(run_dir / MANIFEST)
    _refuse_links(run_dir)
    check_replace([*used, *keep], RunError, hint="use another --run-dir", names_decide=True)
    old_data = own_files(p for p in _data_files(run_dir) if p not in keep) if overwrite else []
    if not main:
        return
    for p in [*used, *old_data]:
        p.unlink()
    for folder in ("checkpoints", "infusion_chains", "samples", "data"):
        with contextlib.suppress(OSError):  # the run's folders, if nothing else is in them
            (run_dir / folder).rmdir()
    run_dir.mkdir(parents=True, exist_ok=True)
    start_manifest(run_dir, [manifest_name(p, run_dir) for p in keep])


def training_state_file(run_dir: str | Path) -> Path:
    """The run's resumable training state (``checkpoints/epoch-NNNN.pt``, the highest epoch)."""
    found = [p for p in (Path(run_dir) / "checkpoints").glob("epoch-*.pt") if p.stem[6:].isdigit()]
    if not found:
        raise RunError(f"nothing to resume in {str(run_dir)!r}: no checkpoints/epoch-*.pt (the run "
                       "stopped before its first checkpoint); start it again with --overwrite")
    return max(found, key=lambda p: int(p.stem[6:]))


def remove_stale_checkpoints(ckpt_dir: Path, current: str) -> None:
    """Delete the epoch checkpoints that the newer one, ``current``, replaces: the run's own
    ``epoch-NNNN.pt`` (named in its manifest, or by their names in a run of an earlier
    version), never a user's file beside them."""
    for p in own_files(p for p in ckpt_dir.glob("epoch-*.pt")
                       if p.stem[6:].isdigit() and p.name != current):
        delete_own(p)


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """``metrics.jsonl``, rewritten whole from the rows a checkpoint holds (never appended)."""
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(run_dir / "metrics.jsonl", lambda tmp: tmp.write_text(text))


def read_metrics(run_dir: Path, last_epoch: int) -> list[dict]:
    """The rows of ``metrics.jsonl`` up to ``last_epoch``, one per epoch (the last wins): how a
    version-0.1 run, which appended rows, is resumed without duplicates. A line that is not a
    JSON object, or a row without a whole-number epoch, is left out (with a warning for the
    former, :func:`infusion.io.read_jsonl`)."""
    f = run_dir / "metrics.jsonl"
    rows = read_jsonl(f, "metrics file") if f.exists() else []
    by_epoch = {r["epoch"]: r for r in rows if isinstance(r.get("epoch"), int)
                and r["epoch"] <= last_epoch}
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
