"""Image data sets (algorithms.md §1): real formats made here, fetched from a local server, cached."""

from __future__ import annotations

import logging
import socket
import zipfile

import numpy as np
import pytest

from infusion.data import DataError, fetch
from infusion.data import images as image_sets

from .fake_images import celeba_zip, cifar_tarball, evil_tar, image_bytes, serve, sha256, svhn_mats


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("INFUSION_CACHE", str(root))
    return root


def test_cifar10_download_verify_cache(tmp_path, cache, monkeypatch):
    www = tmp_path / "www"
    www.mkdir()
    made = cifar_tarball(www / "cifar-10-python.tar.gz", per_batch=4)
    tarball = www / "cifar-10-python.tar.gz"
    with serve(www) as url:
        monkeypatch.setattr(image_sets, "CIFAR10", fetch.Remote(
            f"{url}/cifar-10-python.tar.gz", sha256(tarball), tarball.stat().st_size))
        train = image_sets.load_images("cifar10", "train")
    # 5 batches of 4: the last 10% (2) of the 20 training images are the validation split
    rows = np.concatenate([made["rows"][f"data_batch_{i}"] for i in range(1, 6)])
    labels = np.concatenate([made["labels"][f"data_batch_{i}"] for i in range(1, 6)])
    assert train.images.dtype == np.uint8 and train.images.shape == (18, 3, 32, 32)
    np.testing.assert_array_equal(train.images.reshape(18, -1), rows[:18])  # CHW row layout
    np.testing.assert_array_equal(train.labels, labels[:18])
    # the server is gone: the verified cache alone serves every split now
    valid = image_sets.load_images("cifar10", "valid")
    test = image_sets.load_images("cifar10", "test")
    np.testing.assert_array_equal(valid.images.reshape(2, -1), rows[18:])
    np.testing.assert_array_equal(test.images.reshape(4, -1), made["rows"]["test_batch"])
    npz = cache / "cifar10" / "cifar10-uint8.npz"
    assert (cache / "cifar10" / "cifar10-uint8.npz.sha256").read_text().split()[0] == sha256(npz)
    assert not (cache / "cifar10" / "cifar-10-python.tar.gz").exists()  # raw download removed
    # a corrupted cache is detected, never used
    with open(npz, "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.raises(DataError, match="corrupt"):
        image_sets.load_images("cifar10", "train")


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, cache, monkeypatch):
    www = tmp_path / "www"
    www.mkdir()
    cifar_tarball(www / "cifar-10-python.tar.gz")
    with serve(www) as url:
        monkeypatch.setattr(image_sets, "CIFAR10", fetch.Remote(
            f"{url}/cifar-10-python.tar.gz", "0" * 64, 10**9))
        with pytest.raises(DataError, match="sha256"):
            image_sets.load_images("cifar10", "train")
    assert sorted(p.name for p in (cache / "cifar10").iterdir()) == []


def test_offline_error_says_how_to_place_the_file(cache, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(image_sets, "CIFAR10", fetch.Remote(
        f"http://127.0.0.1:{port}/cifar-10-python.tar.gz", "0" * 64, 100))
    with pytest.raises(DataError, match="copy the file there by hand") as e:
        image_sets.load_images("cifar10", "train", timeout=2)
    assert str(cache / "cifar10" / "cifar-10-python.tar.gz") in str(e.value)


def test_svhn_mat_files(tmp_path, cache, monkeypatch):
    www = tmp_path / "www"
    www.mkdir()
    made = svhn_mats(www, n_train=20, n_test=6)
    with serve(www) as url:
        monkeypatch.setattr(image_sets, "SVHN", {
            s: fetch.Remote(f"{url}/{s}_32x32.mat", sha256(www / f"{s}_32x32.mat"),
                               (www / f"{s}_32x32.mat").stat().st_size) for s in ("train", "test")})
        train = image_sets.load_images("svhn", "train")
    x, y = made["train"]
    assert train.images.shape == (18, 3, 32, 32)
    # X[row, col, channel, i] is pixel (channel, row, col) of image i; label 10 is digit 0
    np.testing.assert_array_equal(train.images[3, 1], x[:, :, 1, 3])
    np.testing.assert_array_equal(train.labels, y[:18, 0] % 10)
    assert set(np.unique(train.labels)) <= set(range(10))
    test = image_sets.load_images("svhn", "test")
    np.testing.assert_array_equal(test.images[5, 2], made["test"][0][:, :, 2, 5])


def test_user_supplied_copy_is_verified(tmp_path, cache):
    bad = tmp_path / "cifar-10-python.tar.gz"
    cifar_tarball(bad)
    with pytest.raises(DataError, match="sha256 differs"):
        image_sets.load_images("cifar10", "train", path=bad)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_malicious_tar_is_refused(tmp_path, kind):
    evil = tmp_path / "evil.tar.gz"
    evil_tar(evil, kind)
    dest = tmp_path / "out" / "inner"
    with pytest.raises(DataError, match="refusing"):
        fetch.safe_extract(evil, dest)
    assert not (tmp_path / "out" / "evil.txt").exists()
    assert not dest.exists() or not any(dest.rglob("*"))  # nothing at all was extracted


def test_malicious_zip_is_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("img_align_celeba/000001.jpg", image_bytes((8, 8), (0, 0, 0), "JPEG"))
        zf.writestr("../../evil.jpg", b"x")
    with pytest.raises(DataError, match=r"refusing.*climbs out"):
        fetch.safe_extract(evil, tmp_path / "out")
    with pytest.raises(DataError, match="refusing"):
        image_sets.ensure("celeba", path=evil)
    assert not (tmp_path.parent / "evil.jpg").exists()


def test_safe_extract_of_a_good_archive(tmp_path):
    www = tmp_path / "c.tar.gz"
    cifar_tarball(www, per_batch=2)
    out = fetch.safe_extract(www, tmp_path / "x")
    assert (out / "cifar-10-batches-py" / "test_batch").is_file()


def test_celeba_zip_crops_and_official_partition(tmp_path, cache, caplog):
    z = tmp_path / "img_align_celeba.zip"
    numbers = [1, 2, 3, 162_770, 162_771, 182_637, 182_638, 202_599]
    celeba_zip(z, numbers, size=(44, 54))
    with caplog.at_level(logging.INFO, logger="infusion"):
        npz = image_sets.ensure("celeba", path=z)
    assert any("not byte-identical" in n for n in caplog.messages)
    sizes = {s: image_sets.read_cache(npz, s).images.shape for s in ("train", "valid", "test")}
    assert sizes == {"train": (4, 3, 64, 64), "valid": (2, 3, 64, 64), "test": (2, 3, 64, 64)}
    train = image_sets.read_cache(npz, "train").images
    # a uniform image stays uniform through crop and resize (JPEG: within a few levels)
    assert abs(int(train[0, 1].mean()) - 100) <= 3 and abs(int(train[0, 2].mean()) - 200) <= 3


def test_celeba_without_path_explains(cache):
    with pytest.raises(DataError, match="Google Drive"):
        image_sets.load_images("celeba", "train")


def test_folder_of_images_centre_crops(tmp_path, cache):
    folder = tmp_path / "pics"
    (folder / "sub").mkdir(parents=True)
    for i in range(20):  # wide and tall images with a centred red square of the shorter side
        size = (60, 40) if i % 2 else (30, 50)
        side = min(size)
        data = image_bytes(size, (0, 0, 255), "PNG", centre=(255, 0, 0), centre_side=side)
        (folder / ("sub" if i % 3 == 0 else "") / f"im{i:02d}.png").write_bytes(data)
    (folder / "notes.txt").write_text("not an image")
    split = {s: image_sets.load_images("folder", s, path=folder, image_size=16)
             for s in ("train", "valid", "test")}
    assert [split[s].images.shape[0] for s in ("train", "valid", "test")] == [16, 2, 2]
    x = np.concatenate([split[s].images for s in split])
    assert x.shape[1:] == (3, 16, 16)
    np.testing.assert_array_equal(x[:, 0], 255)  # the centre crop is all red, no blue border
    np.testing.assert_array_equal(x[:, 2], 0)


def test_folder_of_greyscale_images_has_one_channel(tmp_path, cache):
    folder = tmp_path / "grey"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.png").write_bytes(image_bytes((20, 20), 10 * i, "PNG", mode="L"))
    x = image_sets.load_images("folder", "train", path=folder, image_size=8).images
    assert x.shape == (3, 1, 8, 8)


def test_tfd_mat(tmp_path, cache):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 48, 48), dtype=np.uint8)
    folds = np.zeros((12, 5), np.int64)
    folds[:, 0] = [0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 1, 0]
    savemat(tmp_path / "TFD_48x48.mat", {"images": images, "folds": folds})
    split = {s: image_sets.load_images("tfd", s, path=tmp_path / "TFD_48x48.mat")
             for s in ("train", "valid", "test")}
    np.testing.assert_array_equal(split["train"].images[:, 0], images[[0, 1, 2, 3, 4, 10, 11]])
    np.testing.assert_array_equal(split["valid"].images[:, 0], images[[5, 6]])
    np.testing.assert_array_equal(split["test"].images[:, 0], images[[7, 8, 9]])
    with pytest.raises(DataError, match="not public"):
        image_sets.ensure("tfd", cache=tmp_path / "other")
