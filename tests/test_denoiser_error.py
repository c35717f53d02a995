"""experiments/denoiser_error.py: the Wiener filter and each method's denoiser read-out."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from infusion import config
from infusion.methods import build_method
from infusion.methods.diffusion import DiffusionModel, Schedule, make_betas
from infusion.methods.flow import FlowModel

from .conftest import load_experiment

denoiser_error = load_experiment("denoiser_error")


def test_wiener_filter_is_the_gaussian_posterior_mean_and_its_error_the_expected_one():
    g = torch.Generator().manual_seed(0)
    d = 4
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    y = torch.randn(200_000, d, generator=g, dtype=torch.float64) @ mix.T + torch.arange(d) - 1.0
    wiener = denoiser_error.Wiener(y)
    a, b = 0.6, 0.8
    ys = a * y + b * torch.randn(y.shape, generator=g, dtype=torch.float64)
    mu, cov = y.mean(0), torch.cov(y.T)
    # E[y | y_s] = μ + aΣ(a²Σ + b²I)⁻¹(y_s − aμ) for Gaussian y (solved directly, not by eigh)
    want = mu + torch.linalg.solve(a**2 * cov + b**2 * torch.eye(d, dtype=torch.float64),
                                   (ys - a * mu).T).T @ (a * cov)
    torch.testing.assert_close(wiener(ys, a, b), want, rtol=1e-9, atol=1e-9)
    measured = ((wiener(ys, a, b) - y) ** 2).sum(1).mean()
    want_err = torch.trace(cov - a**2 * cov @ torch.linalg.solve(
        a**2 * cov + b**2 * torch.eye(d, dtype=torch.float64), cov))
    assert wiener.expected(a, b) == pytest.approx(float(want_err), rel=1e-9)
    assert float(measured) == pytest.approx(wiener.expected(a, b), rel=0.02)


class Oracle(nn.Module):
    """A body that answers each method's regression target exactly, for one known batch."""

    def __init__(self, y, eps, target) -> None:
        super().__init__()
        self.y, self.eps, self.target = y, eps, target

    def forward(self, z, t):
        return self.target(t), torch.zeros_like(z)


@pytest.mark.parametrize("snr", [0.05, 1.0, 30.0])
def test_denoiser_reads_the_clean_image_from_each_methods_exact_target(snr):
    g = torch.Generator().manual_seed(1)
    y, eps = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    sched = Schedule.from_betas(make_betas("cosine", 1000))
    diff = DiffusionModel((6,), sched, net=nn.Identity(), scale=2.0, target="v")

    def v_target(k):  # v = √ᾱ·ε − √(1−ᾱ)·y at the step the read-out chose
        ab = diff.alpha_bar[k.long() - 1][:, None]
        return ab.sqrt() * eps - (1 - ab).sqrt() * y
    diff.net = Oracle(y, eps, v_target)
    flow = FlowModel((6,), 10, net=Oracle(y, eps, lambda t: eps - y), scale=2.0)
    for model in (diff, flow):
        a, b, predict = denoiser_error.denoiser(model)(snr)
        if model is flow:  # y_τ = (1 − τ)·y + τ·ε with (1 − τ)/τ = √snr
            assert (a + b, (a / b) ** 2) == pytest.approx((1.0, snr), rel=1e-9)
        else:  # variance preserving, at the schedule's nearest step
            assert a**2 + b**2 == pytest.approx(1.0, rel=1e-5)
            ab = diff.alpha_bar.double()
            nearest = (torch.log10(ab / (1 - ab)) - math.log10(snr)).abs().min()
            assert abs(math.log10(a**2 / b**2 / snr)) == pytest.approx(float(nearest), abs=1e-6)
        torch.testing.assert_close(predict(a * y + b * eps), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("edges", [(1, 2, 11), (1, 5, 6, 40)])
def test_the_bound_by_bands_of_steps_sums_to_the_bound(edges):
    """Every step k in exactly one band (bands past T dropped), the prior apart: bands, prior
    and d·log scale add up to the method's own draw of ℓ on the same path."""
    cfg = config.override(config.preset("mnist-diffusion"),
                          ["method.T=20", "model.hidden=16", "method.diffusion.predict=x0"])
    method = build_method(cfg.method)
    torch.manual_seed(0)
    model = method.build_model((12,), cfg.model).eval()
    x = torch.rand(5, 12, generator=torch.Generator().manual_seed(1))
    rows = denoiser_error.bound_rows(model, method, x, torch.Generator().manual_seed(2), edges)
    want = method.log_weight(model, x, torch.Generator().manual_seed(2)).mean()
    got = sum(r["nats"] for r in rows) + model.d * math.log(model.scale)
    assert got == pytest.approx(float(want), rel=1e-5, abs=1e-3)
    bands = [r["steps"] for r in rows]
    assert bands == {(1, 2, 11): ["1–1", "2–10", "11–20", "prior"],
                     (1, 5, 6, 40): ["1–4", "5–5", "6–20", "prior"]}[edges]
    assert rows[0]["log10_snr"][0] > rows[-2]["log10_snr"][1]  # from low noise to high
    # each band holds its own steps' terms: step k's from the path drawn alone
    per_step = {k: float((p - q).mean()) for k, p, q in
                method.path_terms(model, x, torch.Generator().manual_seed(2))}
    for r in rows[:-1]:
        lo, hi = map(int, r["steps"].split("–"))
        assert r["nats"] == pytest.approx(sum(per_step[k] for k in range(lo, hi + 1)), rel=1e-6)
    assert rows[-1]["nats"] == pytest.approx(per_step[21], rel=1e-6)
