"""Sample-quality metrics with known answers; the classifier and the extractor plug-ins."""

from __future__ import annotations

import logging
import math
from typing import ClassVar

import numpy as np
import pytest
import torch

from infusion.errors import InputError
from infusion.evaluate import classifier as clf
from infusion.evaluate import metrics as mt


def _exact_moments(n, mean, cov, seed):
    """n points whose sample mean and (ddof=1) covariance are exactly ``mean`` and ``cov``."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    w, v = np.linalg.eigh(np.cov(z, rowvar=False))
    z = z @ v @ np.diag(w**-0.5) @ v.T  # whitened: identity sample covariance
    return mean + z @ np.linalg.cholesky(cov).T


def test_kernel_distance_against_torchmetrics():
    """One subset of all rows: the plain unbiased MMD², which torchmetrics' KID (subsets=1,
    subset_size=N, a pass-through feature network) computes too."""
    tm = pytest.importorskip("torchmetrics.image.kid")
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(60, 5, generator=g), 0.3 + 1.2 * torch.randn(60, 5, generator=g)

    class Identity(torch.nn.Module):
        num_features = 5

        def forward(self, x):
            return x

    ref = tm.KernelInceptionDistance(feature=Identity(), subsets=1, subset_size=60)
    ref.update(real, real=True)
    ref.update(fake, real=False)
    expected = float(ref.compute()[0])
    got, std = mt.kernel_distance(real, fake, subsets=1, subset_size=60)
    assert got == pytest.approx(expected, rel=1e-5) and got > 0.01 and std == 0.0
    same, _ = mt.kernel_distance(real, torch.randn(60, 5, generator=g), subsets=3)
    assert abs(same) < got / 5  # another draw of the same distribution: near 0
    with pytest.raises(ValueError, match="feature sets"):
        mt.kernel_distance(real, fake[:, :3])


def test_precision_recall_known_answers():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 3, generator=g)
    assert mt.precision_recall(real, real, k=3) == {"precision": 1.0, "recall": 1.0, "k": 3}
    far = mt.precision_recall(real, real + 100.0)
    assert far["precision"] == far["recall"] == 0.0
    # samples from one half of the data: all precise, half the data recalled
    half = mt.precision_recall(real, real[real[:, 0] > 0] + 1e-3, chunk=64)
    assert half["precision"] == 1.0 and 0.4 < half["recall"] < 0.7
    with pytest.raises(ValueError, match="k=3"):
        mt.precision_recall(real[:3], real)


def test_frechet_distance_known_answers():
    a = np.random.default_rng(0).standard_normal((400, 6)) @ np.diag([1, 2, 3, 0.1, 0.5, 1])
    assert mt.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # Gaussians with commuting covariances: FD = ‖μ1 − μ2‖² + Σ (√s1 − √s2)².
    s1, s2 = np.array([1.0, 2.0, 0.5, 3.0]), np.array([0.2, 2.5, 1.0, 1.0])
    m1, m2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.5])
    expected = ((m1 - m2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((4, 4)))  # a rotation
    for rot in (np.eye(4), q):  # also with full, non-diagonal covariances
        x = _exact_moments(300, m1 @ rot, rot.T @ np.diag(s1) @ rot, 2)
        y = _exact_moments(500, m2 @ rot, rot.T @ np.diag(s2) @ rot, 3)
        assert mt.frechet_distance(torch.tensor(x), y) == pytest.approx(expected, rel=1e-7)
    with pytest.raises(ValueError, match="feature sets"):
        mt.frechet_distance(a, a[:, :3])


def test_classifier_score_and_coverage():
    sure = torch.full((1000, 10), -50.0)
    sure[torch.arange(1000), torch.arange(1000) % 10] = 50.0  # confident, balanced
    mean, std = mt.classifier_score(sure, splits=10)
    assert mean == pytest.approx(10.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    one_class = torch.zeros(100, 10)
    one_class[:, 3] = 50
    assert mt.classifier_score(one_class, 5)[0] == pytest.approx(1.0)
    assert mt.classifier_score(torch.zeros(100, 10), 5)[0] == pytest.approx(1.0)  # undecided
    cov = mt.class_coverage(sure)
    assert cov["histogram"] == [100] * 10 and cov["classes_covered"] == 10
    assert cov["entropy"] == pytest.approx(math.log(10)) and cov["confident_fraction"] == 1.0
    cov = mt.class_coverage(one_class)
    assert cov["entropy"] == pytest.approx(0.0) and cov["classes_covered"] == 1
    assert mt.class_coverage(torch.zeros(7, 10))["confident_fraction"] == 0.0
    with pytest.raises(ValueError, match="splits"):
        mt.classifier_score(sure[:3], 10)


def test_nearest_neighbours_chunked_equal_brute_force():
    g = torch.Generator().manual_seed(0)
    q, r = torch.rand(53, 12, generator=g), torch.rand(201, 12, generator=g)
    d_ref, i_ref = torch.cdist(q.double(), r.double()).min(1)
    for chunk in (5, 64, 1000):
        d, i = mt.nearest_neighbours(q, r, chunk=chunk)
        assert torch.equal(i, i_ref) and torch.allclose(d.double(), d_ref, atol=1e-5)


def test_memorisation_detects_copies_and_writes_figures(tmp_path):
    g = torch.Generator().manual_seed(0)
    train = torch.rand(300, 1, 6, 6, generator=g)
    test = torch.rand(40, 1, 6, 6, generator=g)
    copies = train[torch.arange(0, 60, 3)]  # 20 memorised samples
    res = mt.memorisation(copies, train, test, out_dir=tmp_path, chunk=64)
    assert res["sample_to_train"]["median"] == pytest.approx(0.0, abs=1e-3)
    assert res["fraction_below_test_1st_percentile"] == 1.0
    assert res["test_to_train"]["median"] > 0.5
    for f in res["figures"]:
        assert (tmp_path / f.split("/")[-1]).stat().st_size > 0
    fresh = mt.memorisation(torch.rand(20, 1, 6, 6, generator=g), train, test)
    assert fresh["fraction_below_test_1st_percentile"] < 0.2 and "figures" not in fresh


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, still supported
def test_extractor_plugins(tmp_path):
    with pytest.raises(ValueError, match="unknown feature extractor"):
        mt.get_extractor("nope")
    with pytest.raises(FileNotFoundError, match="no such file"):
        mt.get_extractor("inception", path=str(tmp_path / "absent.pt"))

    class Tiny(torch.nn.Module):
        def forward(self, x):
            f = x.mean((2, 3))
            return f, torch.cat([f, -f], 1)

    path = tmp_path / "tiny.pt"
    torch.jit.script(Tiny()).save(str(path))
    ext = mt.get_extractor("inception", path=str(path))
    assert isinstance(ext, mt.FeatureExtractor)
    images = torch.rand(5, 1, 8, 8)
    assert ext.features(images).shape == (5, 3)  # grey repeated to 3 channels, resized
    assert ext.logits(images).shape == (5, 6)
    mt.register_extractor("tiny-test", lambda: ext)
    assert "tiny-test" in mt.extractor_names()


class _FakeInceptionV3(torch.nn.Module):
    """Stands in for torch-fidelity's FeatureExtractorInceptionV3 (its constructor and its
    forward's contract: uint8 (N, 3, H, W) in, one tensor per requested feature out)."""

    made: ClassVar[list] = []

    def __init__(self, name, features_list, feature_extractor_weights_path=None):
        super().__init__()
        self.made.append((name, list(features_list), feature_extractor_weights_path))

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.ndim == 4 and x.shape[1] == 3
        f = x.float().mean((2, 3))
        return f, torch.cat([f, -f], 1)


def test_inception_goes_through_torch_fidelity(tmp_path, monkeypatch):
    import sys
    import types

    from infusion.evaluate import inception as inc

    # without the optional extra: a clear error naming it
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    with pytest.raises(InputError, match=r"infusion-training\[inception\]"):
        mt.get_extractor("inception")
    fake = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    fake.FeatureExtractorInceptionV3 = _FakeInceptionV3
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    ext = mt.get_extractor("inception")  # torch-fidelity's own weights (its download)
    assert _FakeInceptionV3.made[-1] == ("inception-v3-compat", ["2048", "logits_unbiased"], None)
    k = torch.tensor([0, 1, 128, 255], dtype=torch.float32).view(1, 1, 2, 2)
    feats = ext.features(k / 256)  # grey [0, 1] images -> RGB uint8 pixels k
    assert torch.equal(feats, torch.full((1, 3), 96.0)) and ext.logits(k / 256).shape == (1, 6)
    # a weights file is checked against the published sha256 before it is unpickled
    bad = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(1)}, bad)
    assert not inc.is_torchscript(bad)
    with pytest.raises(InputError, match="not torch-fidelity's Inception weights"):
        mt.get_extractor("inception", path=str(bad))
    monkeypatch.setattr(inc, "WEIGHTS_SHA256_PREFIX", inc.sha256(bad)[:8])
    assert mt.get_extractor("inception", path=str(bad)).info["path"] == str(bad)
    assert _FakeInceptionV3.made[-1][2] == str(bad)


def test_sample_quality_with_a_random_extractor():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ext = mt.ModuleExtractor(clf.MnistCNN((4, 8), 16), "random", batch_size=7)
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(40, 1, 28, 28, generator=g), torch.rand(30, 1, 28, 28, generator=g)
    res = mt.sample_quality(ext, a, a, splits=4)
    assert res["fid"]["value"] == pytest.approx(0.0, abs=1e-6)
    # the classifier score from the extractor's logits, written here with scipy: per split
    # of the samples (first parts one longer), exp of the mean KL(p(y|x) ‖ p(y))
    from scipy.special import softmax
    from scipy.stats import entropy

    probs = softmax(ext.logits(a).double().numpy(), 1)
    parts = [float(np.exp(np.mean([entropy(p, part.mean(0)) for p in part])))
             for part in np.array_split(probs, 4)]
    assert res["score"]["value"] == pytest.approx(np.mean(parts), rel=1e-9)
    assert res["score"]["std"] == pytest.approx(np.std(parts), rel=1e-6, abs=1e-12)
    assert res["score"]["splits"] == 4
    assert sum(res["coverage"]["histogram"]) == 40
    assert mt.sample_quality(ext, a, b, ["fid"])["fid"]["value"] > 0
    assert set(mt.sample_quality(ext, a, b, ["coverage"])) == {"coverage"}


def test_classifier_trains_deterministically_and_is_cached_verified(tiny_mnist, caplog):
    s = clf.ClassifierSettings(channels=(4, 8), hidden=16, epochs=1, batch_size=16)
    net1, acc1 = clf.train_classifier(s)
    net2, acc2 = clf.train_classifier(s)
    assert 0.0 <= acc1 <= 1.0 and acc1 == acc2
    for p1, p2 in zip(net1.parameters(), net2.parameters()):
        assert torch.equal(p1, p2)
    caplog.set_level(logging.INFO, logger="infusion")
    _net3, info = clf.load_or_train_classifier(s)
    logs = caplog.messages
    assert logs and info["test_accuracy"] == acc1 and s.cache_name() in info["path"]
    net4, info4 = clf.load_or_train_classifier(s)  # from the cache: nothing to say
    assert caplog.messages == logs and len(logs) == 2 and info4["test_accuracy"] == acc1
    for p1, p4 in zip(net1.parameters(), net4.parameters()):
        assert torch.equal(p1, p4)
    with open(info["path"], "ab") as f:
        f.write(b"tampered")
    with pytest.raises(RuntimeError, match="sha256"):
        clf.load_or_train_classifier(s)
