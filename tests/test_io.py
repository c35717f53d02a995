"""The one atomic writer, npz saving and hashing (infusion.io; docs/design.md conventions)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from infusion.io import atomic_write, save_npz, sha256


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "sub" / "f.txt"  # the directory is created
    assert atomic_write(path, lambda tmp: tmp.write_text("old")) == path

    def fails(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fails)
    assert path.read_text() == "old"  # untouched
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]  # no temporary file left
    atomic_write(path, lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_text() == "new" and len(list(path.parent.iterdir())) == 1


def test_save_npz_and_sha256(tmp_path):
    a = np.arange(6).reshape(2, 3)
    path = save_npz(tmp_path / "a.npz", a=a, b=np.ones(2))
    with np.load(path) as z:
        assert np.array_equal(z["a"], a) and z["b"].tolist() == [1.0, 1.0]
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (3 * (1 << 20) + 5))  # several chunks
    assert sha256(big) == hashlib.sha256(big.read_bytes()).hexdigest()
