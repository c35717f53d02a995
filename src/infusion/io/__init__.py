"""Files, written and read (docs/design.md: nothing half-written is ever left behind, and
only the library's own files are replaced).

- :mod:`.write`: the one atomic writer (:func:`atomic_write`, :func:`all_or_nothing`), npz
  saving and sha256 hashing;
- :mod:`.manifest`: which files the library wrote (a folder's ``.infusion-files``), so that
  ``--overwrite`` replaces or deletes those and never a user's;
- :mod:`.read`: what a path names (no FIFO or device opened), JSON read back with a cap.
"""

from __future__ import annotations

from .manifest import (
    MANIFEST,
    UntrustedFileError,
    check_folder,
    check_outputs,
    check_own_file,
    check_replace,
    claim_folder,
    delete_own,
    manifest_name,
    not_written_here,
    open_own_file,
    own_files,
    read_manifest,
    record_write,
    start_manifest,
    written_here,
)
from .read import (
    JSON_DEPTH_MAX,
    JSON_READ_MAX,
    folder_path,
    nesting,
    path_kind,
    read_json,
    read_jsonl,
    regular_file,
    resolved,
)
from .write import (
    all_or_nothing,
    atomic_write,
    clean_stale_temps,
    save_npz,
    sha256,
    stage_directory,
    temp_path,
)

__all__ = [
    "JSON_DEPTH_MAX", "JSON_READ_MAX", "MANIFEST", "UntrustedFileError", "all_or_nothing",
    "atomic_write", "check_folder", "check_outputs", "check_own_file", "check_replace",
    "claim_folder", "clean_stale_temps", "delete_own", "folder_path", "manifest_name",
    "nesting", "not_written_here", "open_own_file", "own_files", "path_kind", "read_json",
    "read_jsonl", "read_manifest", "record_write", "regular_file", "resolved", "save_npz",
    "sha256", "stage_directory", "start_manifest", "temp_path", "written_here",
]
