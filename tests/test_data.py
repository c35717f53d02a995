"""Tests for infusion.data (algorithms.md §1): IDX/pickle parsing, the verified cache, sources, scaling,
and the entrance (load_split, shape_of, load_data)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from infusion import data
from infusion.config import Config, DataConfig
from infusion.data import DataError, fetch, mnist

from .fake_images import serve

SMALL = {"train": 8, "valid": 4, "test": 5}
# The cache this machine really uses, read before any test points INFUSION_CACHE elsewhere.
REAL_CACHE = Path(os.environ.get("INFUSION_CACHE") or Path.home() / ".cache" / "infusion")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test gets its own cache and no hand-placed IDX directory."""
    monkeypatch.setenv("INFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("INFUSION_MNIST_IDX", raising=False)


@pytest.fixture
def small(monkeypatch):
    """Shrink the 50k/10k/10k split so fake data sets of a few images go through the
    real assembly code."""
    monkeypatch.setattr(mnist, "_SPLIT_SIZES", dict(SMALL))


def idx_bytes(arr: np.ndarray) -> bytes:
    magic = 2051 if arr.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def fake_official(seed: int = 0) -> dict[str, np.ndarray]:
    """Official-layout arrays: 12 training and 5 test images (SMALL split sizes)."""
    rng = np.random.default_rng(seed)
    n_train = SMALL["train"] + SMALL["valid"]
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (SMALL["test"], 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, SMALL["test"], dtype=np.uint8),
    }


def write_idx_dir(d: Path, arrays: dict[str, np.ndarray], gz: bool = True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        (d / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return d


def no_temp_files(d: Path) -> bool:
    return not [p for p in d.rglob("*") if p.name.endswith((".tmp", ".part"))]


# --- IDX parsing -------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path, gz):
    arrays = fake_official()
    write_idx_dir(tmp_path, arrays, gz=gz)
    for name, arr in arrays.items():
        got = data.read_idx(tmp_path / (name + ".gz" if gz else name))
        assert got.dtype == np.uint8 and np.array_equal(got, arr)


def test_read_idx_bad_magic_and_truncation(tmp_path):
    raw = bytearray(idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    bad = tmp_path / "bad-magic"
    bad.write_bytes(b"\x00\x00\x08\x04" + raw[4:])
    with pytest.raises(DataError, match="bad-magic.*magic number 2052"):
        data.read_idx(bad)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(bytes(raw[:-5])))
    with pytest.raises(DataError, match="short.gz.*truncated"):
        data.read_idx(short)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(bytes(raw))[:40])
    with pytest.raises(DataError, match="broken.gz"):
        data.read_idx(broken)


# --- the cache, filled from the idx source -----------------------------------------------

def test_idx_source_fills_cache_with_spec_split(tmp_path, small, caplog):
    caplog.set_level(logging.INFO, logger="infusion")
    arrays = fake_official()
    idx = write_idx_dir(tmp_path / "idx", arrays, gz=False)
    npz = data.ensure_mnist(idx_dir=idx, sources=["idx"])
    assert len(caplog.messages) == 2 and caplog.messages[-1].endswith("(from idx)")
    assert npz == tmp_path / "cache" / "mnist" / "mnist-uint8.npz"
    record = npz.with_name("mnist-uint8.npz.sha256").read_text().split()
    assert record == [hashlib.sha256(npz.read_bytes()).hexdigest(), "mnist-uint8.npz"]
    assert no_temp_files(tmp_path / "cache")
    train_x, train_y = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    expect = {"train": (train_x[:8], train_y[:8]), "valid": (train_x[8:], train_y[8:]),
              "test": (arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"])}
    for split, (x, y) in expect.items():
        got = data.load_mnist(split)  # from the cache: no sources needed any more
        assert got.images.dtype == np.uint8 and got.images.shape == (len(x), 1, 28, 28)
        assert got.labels.dtype == np.int64
        assert np.array_equal(got.images[:, 0], x) and np.array_equal(got.labels, y)
    # An existing cache is used as is: no source is tried.
    caplog.clear()
    assert data.ensure_mnist(sources=["idx"]) == npz and caplog.messages == []


def test_idx_source_via_env_and_wrong_sizes(tmp_path, small, monkeypatch):
    arrays = fake_official()
    arrays["t10k-labels-idx1-ubyte"] = arrays["t10k-labels-idx1-ubyte"][:3]
    idx = write_idx_dir(tmp_path / "idx", arrays)
    monkeypatch.setenv("INFUSION_MNIST_IDX", str(idx))
    with pytest.raises(DataError, match=r"(?s)idx:.*test labels.*\(3,\)"):
        data.ensure_mnist(sources=["idx"])
    assert not (tmp_path / "cache" / "mnist" / "mnist-uint8.npz").exists()


def test_cache_writes_are_deterministic(tmp_path, small):
    arrays = mnist._assemble(*fake_official().values(), where="test")
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    data.write_cache(a, arrays)
    time.sleep(1.1)  # a zip timestamp taken from the clock would now differ
    data.write_cache(b, arrays)
    assert a.read_bytes() == b.read_bytes()


def test_corrupt_cache_is_reported_not_used(tmp_path, small):
    idx = write_idx_dir(tmp_path / "idx", fake_official())
    npz = data.ensure_mnist(idx_dir=idx, sources=["idx"])
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit inside the image data
    npz.write_bytes(bytes(raw))
    for call in (lambda: data.load_mnist("train"), lambda: data.ensure_mnist(sources=[])):
        with pytest.raises(DataError) as e:
            call()
        assert str(npz) in str(e.value) and "corrupt" in str(e.value)
        assert "delete" in str(e.value)
    npz.with_name("mnist-uint8.npz.sha256").unlink()
    with pytest.raises(DataError, match="checksum record.*missing"):
        data.load_mnist("test")


def test_unknown_split_and_source():
    with pytest.raises(DataError, match="'training'.*train, valid, test"):
        data.load_mnist("training")
    with pytest.raises(DataError, match="unknown MNIST source 'torrent'"):
        data.ensure_mnist(sources=["torrent"])


def test_all_sources_failing_lists_them_quickly(tmp_path):
    start = time.monotonic()
    with pytest.raises(DataError) as e:
        data.load_mnist("train", sources=["idx", "http://127.0.0.1:9/"], timeout=2.0)
    assert time.monotonic() - start < 5
    msg = str(e.value)
    assert "- idx: no directory given" in msg and "- http://127.0.0.1:9/:" in msg
    assert "INFUSION_MNIST_IDX" in msg and str(tmp_path / "cache" / "mnist" / "mnist.pkl.gz") in msg
    assert not (tmp_path / "cache" / "mnist" / "mnist-uint8.npz").exists()
    assert no_temp_files(tmp_path / "cache")


# --- the mnist.pkl.gz source ---------------------------------------------------------------

def write_pkl(path: Path, k: dict[str, np.ndarray], y: dict[str, np.ndarray],
              protocol: int = 2) -> None:
    """The classic layout: tuple of (float32 (N,784) k/256, int64 labels), latin1-readable."""
    parts = tuple((k[s].reshape(len(k[s]), 784).astype(np.float32) / 256, y[s]) for s in k)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        pickle.dump(parts, f, protocol=protocol)


def small_pixels(seed=0):
    rng = np.random.default_rng(seed)
    k = {s: rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8) for s, n in SMALL.items()}
    k["train"][0, 0, 0, :2] = [0, 255]  # both ends of the range
    y = {s: rng.integers(0, 10, n).astype(np.int64) for s, n in SMALL.items()}
    return k, y


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pkl_conversion_is_exact(tmp_path, small, protocol):
    k, y = small_pixels()
    write_pkl(tmp_path / "mnist.pkl.gz", k, y, protocol)
    arrays = mnist._from_pkl(tmp_path / "mnist.pkl.gz")
    for s in SMALL:
        assert arrays[f"{s}_x"].dtype == np.uint8 and np.array_equal(arrays[f"{s}_x"], k[s])
        assert arrays[f"{s}_y"].dtype == np.int64 and np.array_equal(arrays[f"{s}_y"], y[s])


def test_hand_placed_pkl_is_tried_first(tmp_path, small):
    k, y = small_pixels()
    write_pkl(tmp_path / "cache" / "mnist" / "mnist.pkl.gz", k, y)
    got = data.load_mnist("valid", sources=[])
    assert np.array_equal(got.images, k["valid"]) and np.array_equal(got.labels, y["valid"])


def test_pkl_rejects_inexact_values_and_foreign_objects(tmp_path, small):
    k, y = small_pixels()
    path = tmp_path / "mnist.pkl.gz"
    parts = [(k[s].reshape(-1, 784) / np.float32(255), y[s]) for s in SMALL]  # k/255, not k/256
    with gzip.open(path, "wb") as f:
        pickle.dump(tuple(parts), f)
    with pytest.raises(DataError, match="not exact multiples of 1/256"):
        mnist._from_pkl(path)
    with gzip.open(path, "wb") as f:
        pickle.dump(os.getcwd, f)  # a pickle naming a callable must not be resolved
    with pytest.raises(DataError, match="refusing to load"):
        mnist._from_pkl(path)


# --- downloads, against a local HTTP server ------------------------------------------------

@pytest.fixture
def served(tmp_path, monkeypatch):
    """A directory served over HTTP on 127.0.0.1 (random port) in a thread; yields (dir, url)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    with serve(root) as url:
        yield root, url + "/"


def test_download_verifies_and_renames(tmp_path, served):
    root, url = served
    payload = os.urandom(3 * (1 << 20) + 17)  # a few chunks
    (root / "f.bin").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    dest_dir = tmp_path / "dl"
    dest_dir.mkdir()
    fetch.download(url + "f.bin", dest_dir / "f.bin", sha, timeout=5)
    assert (dest_dir / "f.bin").read_bytes() == payload and no_temp_files(dest_dir)

    with pytest.raises(DataError, match="does not match"):
        fetch.download(url + "f.bin", dest_dir / "g.bin", "0" * 64, timeout=5)
    with pytest.raises(DataError, match="expected 1000 bytes"):
        fetch.download(url + "f.bin", dest_dir / "g.bin", sha, timeout=5, max_bytes=1000)
    with pytest.raises(DataError, match="404"):
        fetch.download(url + "missing.bin", dest_dir / "g.bin", sha, timeout=5)
    assert sorted(p.name for p in dest_dir.iterdir()) == ["f.bin"]  # nothing else left


def test_mirror_source_end_to_end(tmp_path, served, small, monkeypatch):
    root, url = served
    arrays = fake_official()
    write_idx_dir(root, arrays)
    sums = {n: (hashlib.sha256((root / f"{n}.gz").read_bytes()).hexdigest(),
                (root / f"{n}.gz").stat().st_size) for n in arrays}
    monkeypatch.setattr(mnist, "MNIST", dataclasses.replace(mnist.MNIST, gz=sums))
    # The first mirror is unreachable; the second serves the files.
    npz = data.ensure_mnist(sources=["http://127.0.0.1:9/", url])
    got = data.load_mnist("test")
    assert np.array_equal(got.images[:, 0], arrays["t10k-images-idx3-ubyte"])
    assert not (npz.parent / "download").exists()  # the .gz files are not kept


# --- pixel scaling (algorithms.md §1) ---------------------------------------------------------------

def test_dequantize_range_statistics_and_reproducibility():
    k = torch.arange(256, dtype=torch.uint8).repeat(400)
    x = data.dequantize(k, torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.device == k.device and x.shape == k.shape
    kf = k.float()
    assert bool((x >= kf / 256).all()) and bool((x < (kf + 1) / 256).all())
    u = x * 256 - kf  # the noise: U(0,1), mean 1/2, variance 1/12
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    again = data.dequantize(k, torch.Generator().manual_seed(0))
    other = data.dequantize(k, torch.Generator().manual_seed(1))
    assert torch.equal(x, again) and not torch.equal(x, other)
    assert torch.equal(data.from_unit(x), k)
    with pytest.raises(TypeError):
        data.dequantize(kf)


def test_dequantize_never_reaches_the_next_level(monkeypatch):
    k = torch.full((4,), 255, dtype=torch.uint8)
    monkeypatch.setattr(torch, "rand", lambda *a, **kw: torch.full((4,), 1 - 2**-24))
    assert bool((data.dequantize(k) < 1).all())


def test_to_unit_and_from_unit():
    k = torch.arange(256, dtype=torch.uint8).reshape(16, 16)
    x = data.to_unit(k)
    assert x.dtype == torch.float32 and torch.equal(x * 256, k.float())
    assert torch.equal(data.from_unit(x), k)
    odd = torch.tensor([-0.5, 0.0, 0.999, 1.0, 3.0, float("nan")])
    assert data.from_unit(odd).tolist() == [0, 0, 255, 255, 255, 0]
    arr = data.from_unit(np.array([0.5, 1 / 256, 0.0]))
    assert arr.dtype == np.uint8 and arr.tolist() == [128, 1, 0]


# --- toys and paths ------------------------------------------------------------------------

@pytest.mark.parametrize("name", data.TOYS)
def test_toy_sets(name):
    a = data.toy(name, 2000, seed=3)
    assert a.labels is None and a.images.dtype == np.float32 and a.images.shape == (2000, 2)
    assert a.images.min() >= 0.05 and a.images.max() <= 0.95
    assert a.images.std(0).min() > 0.1  # spread over the square, not collapsed
    assert np.array_equal(a.images, data.toy(name, 2000, seed=3).images)
    assert not np.array_equal(a.images, data.toy(name, 2000, seed=4).images)


def test_toy_errors():
    with pytest.raises(DataError, match="'moons'.*spiral, circle, gaussians"):
        data.toy("moons", 10, 0)
    with pytest.raises(DataError, match="positive integer"):
        data.toy("circle", 0, 0)


def test_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("INFUSION_CACHE", str(tmp_path / "x" / "y"))
    assert data.cache_dir() == tmp_path / "x" / "y" and (tmp_path / "x" / "y").is_dir()


# --- the real data, when this machine has it cached ---------------------------------------

def test_real_mnist_if_cached():
    real = REAL_CACHE
    if not (real / "mnist" / "mnist-uint8.npz").exists():
        pytest.skip(f"no MNIST cache at {real}")
    splits = {s: data.load_mnist(s, cache=real, sources=[]) for s in data.SPLITS}
    assert [len(splits[s].labels) for s in data.SPLITS] == [50_000, 10_000, 10_000]
    assert splits["train"].images.shape == (50_000, 1, 28, 28)
    # Label counts of the official sets (60k training, 10k test).
    full = np.bincount(np.concatenate([splits["train"].labels, splits["valid"].labels]))
    assert full.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    test = np.bincount(splits["test"].labels)
    assert test.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --- the entrance: load_split, shape_of, load_data, model space ------------------------------

@pytest.mark.parametrize("name", data.TOYS)
def test_load_split_toys_use_the_train_valid_test_seeds(name):
    cfg = DataConfig(name=name, toy_size=50, seed=3, n_train=10)
    got = {s: data.load_split(cfg, s) for s in data.SPLITS}
    assert np.array_equal(got["train"].images, data.toy(name, 50, 3).images[:10])  # n_train
    assert np.array_equal(got["valid"].images, data.toy(name, 10, 4).images)  # size // 5
    assert np.array_equal(got["test"].images, data.toy(name, 10, 5).images)
    tiny = DataConfig(name=name, toy_size=6, seed=0)
    assert len(data.load_split(tiny, "valid").images) == 2  # at least two points


def test_load_split_mnist_cuts_only_the_training_split(tiny_mnist):
    cfg = DataConfig(name="mnist", n_train=5)
    train, valid, test = (data.load_split(cfg, s) for s in data.SPLITS)
    assert np.array_equal(train.images, tiny_mnist["train_x"][:5])
    assert np.array_equal(train.labels, tiny_mnist["train_y"][:5])
    assert np.array_equal(valid.images, tiny_mnist["valid_x"])
    assert np.array_equal(test.labels, tiny_mnist["test_y"])


def test_load_split_errors():
    with pytest.raises(DataError, match="'moons'.*mnist, fashion, spiral"):
        data.load_split(DataConfig(name="moons"), "train")
    with pytest.raises(DataError, match="'training'.*train, valid, test"):
        data.load_split(DataConfig(name="spiral"), "training")


def test_shape_of_reads_nothing(tmp_path):
    shapes = {n: data.shape_of(DataConfig(name=n, image_size=16))
              for n in ("mnist", "spiral", "cifar10", "svhn", "celeba", "tfd", "folder")}
    assert shapes == {"mnist": (1, 28, 28), "spiral": (2,), "cifar10": (3, 32, 32),
                      "svhn": (3, 32, 32), "celeba": (3, 64, 64), "tfd": (1, 48, 48),
                      "folder": (3, 16, 16)}
    assert data.shape_of(DataConfig(name="folder")) == (3, 64, 64)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*"))


def test_load_data_pixels_and_points(tiny_mnist):
    d = data.load_data(Config(data=DataConfig(name="mnist", n_train=8)))
    assert d.pixels and d.shape == (1, 28, 28) and d.train.dtype == torch.uint8
    assert len(d.train) == 8 and len(d.valid) == 32
    x = d.model_space(d.train, torch.Generator().manual_seed(0))
    k = d.train.reshape(8, -1).float()
    assert x.shape == (8, 784) and bool((x >= k / 256).all()) and bool((x < (k + 1) / 256).all())
    pts = data.load_data(Config(data=DataConfig(name="circle", toy_size=40)))
    assert not pts.pixels and pts.shape == (2,) and pts.train.dtype == torch.float32
    assert torch.equal(pts.model_space(pts.train, None), pts.train)


def test_model_space_maps():
    k = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    x = data.to_model_space(k, torch.Generator().manual_seed(1))
    assert torch.equal(x, data.dequantize(k, torch.Generator().manual_seed(1)).reshape(6, 16))
    assert torch.equal(data.parzen_space(k), k.reshape(6, 16).float() / 256)  # no noise
    p = torch.rand(5, 2)
    assert torch.equal(data.to_model_space(p, None), p) and torch.equal(data.parzen_space(p), p)
    assert torch.equal(data.parzen_space(k.numpy()), data.parzen_space(k))  # arrays too


def test_fallback_source_is_quiet_when_a_later_one_works(tmp_path, small, caplog):
    caplog.set_level(logging.INFO, logger="infusion")
    idx = write_idx_dir(tmp_path / "idx", fake_official())
    data.ensure_mnist(idx_dir=idx, sources=["http://127.0.0.1:9/", "idx"], timeout=2.0)
    logs = caplog.messages
    assert len(logs) == 2 and "127.0.0.1" not in " ".join(logs)  # no line per failed source
    assert logs[-1].endswith("(from idx)")
