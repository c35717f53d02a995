"""Fashion-MNIST (``data.name = "fashion"``): its sources in order (a folder, the Debian
package's folder, the official downloads), each file checked, the MNIST split, the presets and
the data set's own classifier. Made-up IDX files only: the real data are not needed."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from infusion import config, data
from infusion.cli import main
from infusion.data import DataError, fashion, mnist
from infusion.evaluate.classifier import ClassifierSettings
from infusion.evaluate.metrics import default_extractor, extractor_names

from .fake_images import serve
from .test_data import REAL_CACHE, SMALL, fake_official, idx_bytes


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Own cache, a shrunken split, no folder from the environment, no system folder."""
    monkeypatch.setenv("INFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("INFUSION_FASHION_IDX", raising=False)
    monkeypatch.setattr(mnist, "_SPLIT_SIZES", dict(SMALL))
    monkeypatch.setattr(fashion, "FASHION", dataclasses.replace(fashion.FASHION, system_dirs=()))


def write_set(d: Path, arrays: dict, name_in_header: bool) -> dict[str, bytes]:
    """The four .gz files in d; with or without the file name in the gzip header (Debian's
    package has none), which changes the .gz bytes and not the contents."""
    d.mkdir(parents=True, exist_ok=True)
    raw = {}
    for name, arr in arrays.items():
        raw[name] = idx_bytes(arr)
        with open(d / f"{name}.gz", "wb") as f, gzip.GzipFile(
                filename=name if name_in_header else "", mode="wb", fileobj=f, mtime=0) as g:
            g.write(raw[name])
    return raw


def pin(monkeypatch, raw: dict[str, bytes], gz_dir: Path | None = None, **changes) -> None:
    """Make the set's recorded checksums those of these made-up files."""
    sums = {n: hashlib.sha256(b).hexdigest() for n, b in raw.items()}
    if gz_dir is not None:
        changes["gz"] = {n: (hashlib.sha256((gz_dir / f"{n}.gz").read_bytes()).hexdigest(),
                             (gz_dir / f"{n}.gz").stat().st_size) for n in raw}
    monkeypatch.setattr(fashion, "FASHION",
                        dataclasses.replace(fashion.FASHION, raw=sums, **changes))


def test_the_system_folder_is_read_by_content_whatever_the_gzip_header(tmp_path, monkeypatch,
                                                                       caplog):
    caplog.set_level(logging.INFO, logger="infusion")
    arrays = fake_official(3)
    official = tmp_path / "official"
    raw = write_set(official, arrays, name_in_header=True)
    debian = tmp_path / "usr-share"
    write_set(debian, arrays, name_in_header=False)
    assert (official / "t10k-labels-idx1-ubyte.gz").read_bytes() != \
        (debian / "t10k-labels-idx1-ubyte.gz").read_bytes()
    pin(monkeypatch, raw, official, system_dirs=(str(debian),), mirrors=())
    npz = data.ensure_fashion(progress=False)
    assert npz.name == "fashion-uint8.npz" and npz.parent.name == "fashion"
    assert f"folder {debian}" in caplog.messages[-1]
    train, valid, test = (data.load_fashion(s) for s in ("train", "valid", "test"))
    n_train = SMALL["train"]
    assert np.array_equal(train.images[:, 0], arrays["train-images-idx3-ubyte"][:n_train])
    assert np.array_equal(valid.labels, arrays["train-labels-idx1-ubyte"][n_train:])
    assert np.array_equal(test.images[:, 0], arrays["t10k-images-idx3-ubyte"])
    assert train.labels.dtype == np.int64
    # the MNIST cache is another file: the two sets never mix
    assert not (npz.parent.parent / "mnist").exists()


def test_a_file_whose_contents_differ_is_refused_and_the_next_source_tried(tmp_path,
                                                                           monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="infusion")
    arrays = fake_official(4)
    good = tmp_path / "good"
    raw = write_set(good, arrays, name_in_header=True)
    bad = tmp_path / "bad"
    tampered = dict(arrays)
    tampered["t10k-labels-idx1-ubyte"] = (arrays["t10k-labels-idx1-ubyte"] + 1) % 10
    write_set(bad, tampered, name_in_header=False)
    pin(monkeypatch, raw, system_dirs=(str(bad), str(good)), mirrors=())
    data.ensure_fashion(progress=False)
    assert f"folder {good}" in caplog.messages[-1]
    assert np.array_equal(data.load_fashion("test").labels, arrays["t10k-labels-idx1-ubyte"])
    # named by the user, the bad folder is an error that says what failed
    monkeypatch.setenv("INFUSION_CACHE", str(tmp_path / "cache2"))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: its contents fail their "
                                        "sha256 check"):
        data.ensure_fashion(idx_dir=bad, progress=False)


def test_downloads_are_checked_against_the_official_gz_files(tmp_path, monkeypatch):
    arrays = fake_official(5)
    root = tmp_path / "www"
    raw = write_set(root, arrays, name_in_header=True)
    with serve(root) as url:
        monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
        pin(monkeypatch, raw, root, mirrors=("http://127.0.0.1:9/", url + "/"))
        npz = data.ensure_fashion(progress=False)
    assert np.array_equal(data.load_fashion("test").labels, arrays["t10k-labels-idx1-ubyte"])
    assert not (npz.parent / "download").exists()


def test_when_every_source_fails_the_error_says_how_to_get_it(monkeypatch):
    pin(monkeypatch, {}, mirrors=("http://127.0.0.1:9/",))
    with pytest.raises(DataError) as e:
        data.ensure_fashion(progress=False, timeout=1)
    text = str(e.value)
    assert "could not obtain Fashion-MNIST" in text and "http://127.0.0.1:9/" in text
    assert "apt-get install dataset-fashion-mnist" in text and "INFUSION_FASHION_IDX" in text


def test_the_cli_fetches_it_from_a_folder(tmp_path, monkeypatch, capsys):
    arrays = fake_official(6)
    raw = write_set(tmp_path / "idx", arrays, name_in_header=False)
    pin(monkeypatch, raw)
    assert main(["data", "--name", "fashion", "--idx-dir", str(tmp_path / "idx")]) == 0
    assert "Fashion-MNIST ready" in capsys.readouterr().out


def test_the_entrance_presets_and_classifier_know_it(tmp_path, monkeypatch):
    raw = write_set(tmp_path / "idx", fake_official(7), name_in_header=False)
    pin(monkeypatch, raw)
    monkeypatch.setenv("INFUSION_FASHION_IDX", str(tmp_path / "idx"))
    cfg = config.preset("fashion-demo").data
    assert cfg.name == "fashion" and data.shape_of(cfg) == (1, 28, 28)
    assert data.is_pixels(cfg)
    split = data.load_split(cfg, "valid", progress=False)
    assert split.images.shape == (SMALL["valid"], 1, 28, 28) and split.images.dtype == np.uint8
    paper = config.preset("fashion")
    assert (paper.model.hidden, paper.method.T, paper.data.name) == ((1200, 1200), 15, "fashion")
    # the data set's own classifier: another cache file; MNIST's name is unchanged
    assert "fashion-cnn" in extractor_names() and default_extractor("fashion") == "fashion-cnn"
    assert default_extractor("mnist") == "mnist-cnn"
    assert ClassifierSettings(data="fashion").cache_name().startswith("fashion-cnn-v1-")
    assert ClassifierSettings().cache_name() == "mnist-cnn-v1-c16x32-h128-e4-b128-lr0.003-s0.pt"


def test_the_real_fashion_mnist_if_cached(monkeypatch):
    if not (REAL_CACHE / "fashion" / "fashion-uint8.npz").exists():
        pytest.skip(f"no Fashion-MNIST cache at {REAL_CACHE}")
    monkeypatch.setattr(mnist, "_SPLIT_SIZES", {"train": 50_000, "valid": 10_000, "test": 10_000})
    splits = {s: data.load_fashion(s, cache=REAL_CACHE, sources=[]) for s in data.SPLITS}
    assert [len(splits[s].labels) for s in data.SPLITS] == [50_000, 10_000, 10_000]
    # the official sets hold 6,000 training and 1,000 test images of every class
    full = np.bincount(np.concatenate([splits["train"].labels, splits["valid"].labels]))
    assert full.tolist() == [6000] * 10
    assert np.bincount(splits["test"].labels).tolist() == [1000] * 10
