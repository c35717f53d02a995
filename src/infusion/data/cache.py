"""The verified data cache (algorithms.md §1) and what every data source shares: ``DataError``,
``Split``, the split names and where the cache lives.

Every data set is cached once as an ``.npz`` of uint8 images (and int64 labels) named
``<split>_x`` / ``<split>_y``, next to a ``.sha256`` record in ``sha256sum -c`` format that is
checked on every load: a corrupt cache is reported, never used or silently replaced.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import atomic_write, sha256


class DataError(UserError, RuntimeError):
    """A data problem the user can fix; the message names the file or source and the fix."""


@dataclass(frozen=True)
class Split:
    """One split: uint8 images (N, C, H, W), or float32 (N, 2) points for 2-D toys."""

    images: np.ndarray
    labels: np.ndarray | None


SPLITS = ("train", "valid", "test")


def cache_dir() -> Path:
    """The cache root: $INFUSION_CACHE if set, else ~/.cache/infusion (created on demand)."""
    env = os.environ.get("INFUSION_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "infusion"
    root.mkdir(parents=True, exist_ok=True)
    return root


def write_cache(npz: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the npz (stored, fixed timestamps: same content gives the same bytes, so two
    processes filling the cache at once agree) and then its .sha256 record."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, np.ascontiguousarray(arr), allow_pickle=False)

    atomic_write(npz, write)
    line = f"{sha256(npz)}  {npz.name}\n"  # `sha256sum -c` format
    atomic_write(npz.with_name(npz.name + ".sha256"), lambda tmp: tmp.write_text(line))


def verify_record(npz: Path, label: str, fix: str) -> None:
    """Check a cache file against its ``.sha256`` record; DataError naming both otherwise."""
    record = npz.with_name(npz.name + ".sha256")
    try:
        expected = record.read_text().split()[0]
    except (OSError, IndexError) as e:
        raise DataError(f"{label} {npz}: its checksum record {record} is missing or "
                        f"unreadable ({e}; an interrupted write?): {fix}") from None
    if sha256(npz) != expected:
        raise DataError(f"{label} {npz} is corrupt (sha256 differs from {record}): {fix}")
