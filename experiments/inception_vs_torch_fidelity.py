"""The ``inception`` extractor against torch-fidelity's own pipeline: the same features, and
the same FID and KID from ``torch_fidelity.calculate_metrics``, on the same images.

Needs torch-fidelity (``pip install 'infusion-training[inception]'``, with torchvision).
``--weights`` takes its real weights file; without one (no download here) the network gets
random variance-preserving weights, which checks the plumbing (pixels, channels, resizing,
feature selection, the Fréchet distance and KID) but not the published weights.

    python experiments/inception_vs_torch_fidelity.py [--weights FILE] [--n 60]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def random_weights(path: Path) -> None:
    """torch-fidelity's Inception-v3 with Kaiming-normal convolutions (features of order 1),
    saved as the state-dict file it loads."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    cls, load = fe.FeatureExtractorInceptionV3, fe.FeatureExtractorInceptionV3.load_state_dict
    cls.load_state_dict = lambda self, *a, **k: None  # build it without weights
    fetch, fe.load_state_dict_from_url = fe.load_state_dict_from_url, lambda *a, **k: {}
    try:
        torch.manual_seed(0)
        net = cls("inception-v3-compat", ["2048"])
    finally:
        cls.load_state_dict, fe.load_state_dict_from_url = load, fetch
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)


class _Images(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth")
    p.add_argument("--n", type=int, default=60, help="images per set")
    a = p.parse_args(argv)
    import torch_fidelity

    from infusion.evaluate import inception, metrics

    path = a.weights
    if path is None:
        path = str(Path(tempfile.mkdtemp()) / "random-inception.pth")
        random_weights(Path(path))
        inception.WEIGHTS_SHA256_PREFIX = inception.sha256(path)[:8]  # accept the stand-in
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (a.n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = (x.float() * 0.7).to(torch.uint8)  # a darker copy: a distance well above zero
    ext = metrics.get_extractor("inception", path=path, batch_size=20)
    fx, fy = ext.features(x.float() / 256), ext.features(y.float() / 256)
    ref = ext.module(x)[0]  # torch-fidelity's network on its own uint8 input
    ref_metrics = torch_fidelity.calculate_metrics(
        input1=_Images(x), input2=_Images(y), fid=True, kid=True, kid_subset_size=a.n // 3,
        kid_subsets=100, feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=path, cuda=False, verbose=False, batch_size=20,
        cache=False)
    kid, kid_std = metrics.kernel_distance(fx, fy, subsets=100, subset_size=a.n // 3)
    print(f"features: max |ours - torch-fidelity| = {(fx - ref).abs().max().item():.3g} "
          f"(largest feature {ref.abs().max().item():.3g})")
    print(f"FID: ours {metrics.frechet_distance(fx, fy):.6f}, torch-fidelity "
          f"{ref_metrics['frechet_inception_distance']:.6f}")
    print(f"KID: ours {kid:.5f} ± {kid_std:.5f}, torch-fidelity "
          f"{ref_metrics['kernel_inception_distance_mean']:.5f} ± "
          f"{ref_metrics['kernel_inception_distance_std']:.5f} (random subsets of their own)")


if __name__ == "__main__":
    main()
