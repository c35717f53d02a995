"""How well a trained diffusion or flow model denoises, noise level by noise level, against the
best *linear* denoiser of the same data (algorithms.md §13–§14).

Both methods learn, at every noise level, the posterior mean E[y | y_s] of clean data y given
y_s = a·y + b·ε (diffusion: a = √ᾱ_k, b = √(1 − ᾱ_k), read from v̂; the flow: a = 1 − τ,
b = τ, read from the velocity). Among *linear* maps of y_s, the best is the Wiener filter
μ + aΣ(a²Σ + b²I)⁻¹(y_s − aμ), with μ, Σ the training images' mean and covariance; its
expected squared error is Σ_i λ_i b² / (a²λ_i + b²) over the eigenvalues λ_i of Σ. A network
that has learned its denoiser does at least as well as this filter at every level (the
posterior mean is the best of all maps); where it does worse, the samples carry the
difference. For each signal-to-noise ratio a²/b² this prints the model's squared error per
test image (model space, pixels in [0, 1]), the Wiener filter's (measured on the same noisy
images, and expected), the share of the model's error on the background pixels (raw 0), and
the error of returning the noisy image itself rescaled (y_s / a).

With ``--bound``, for a diffusion model: where its variational bound (algorithms.md §13) gains
or loses its nats — the terms log p(x_{k-1} | x_k) − log q(x_k | x_{k-1}) of one forward path
per test image, summed over bands of steps k (low noise to high) and averaged over the images.

    python experiments/denoiser_error.py --run RUN_DIR [--run RUN_DIR ...] [--examples 2000]
    python experiments/denoiser_error.py --run RUN_DIR --bound --examples 200
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from infusion import load_model
from infusion.data import load_split, to_model_space
from infusion.methods import build_method
from infusion.methods.diffusion import DiffusionModel
from infusion.methods.flow import TIME_SCALE, FlowModel

LOG10_SNR = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


def denoiser(model):
    """(a, b, predict) at a given SNR for a diffusion or flow model: predict(y_s) -> ŷ."""
    if isinstance(model, DiffusionModel):
        ab = model.alpha_bar.double().numpy()

        def at(snr: float):
            k = int(np.argmin(np.abs(np.log(ab / (1 - ab)) - np.log(snr)))) + 1
            a, b = float(np.sqrt(ab[k - 1])), float(np.sqrt(1 - ab[k - 1]))

            def predict(ys):
                kk = torch.full((ys.shape[0],), k, dtype=torch.long)
                pred, _ = model.predict(ys, kk)
                return model.data_and_noise(ys, kk, pred)[0]
            return a, b, predict
        return at
    if isinstance(model, FlowModel):
        def at(snr: float):
            tau = 1.0 / (1.0 + np.sqrt(snr))  # (1 − τ)/τ = √snr

            def predict(ys):
                t = torch.full((ys.shape[0],), tau, dtype=ys.dtype)
                return ys - tau * model.net(ys, TIME_SCALE * t)[0]
            return 1 - tau, tau, predict
        return at
    raise SystemExit(f"{type(model).__name__}: expected a diffusion or flow model")


def data(cfg, examples: int, g: torch.Generator, scale: float):
    """Training and first ``examples`` test images, flat, in the y = (x − ½)·scale space
    (float64), dequantised with ``g``, and the test images' background mask (raw 0)."""
    train = to_model_space(torch.from_numpy(load_split(cfg, "train", progress=False).images), g)
    raw = torch.from_numpy(load_split(cfg, "test", progress=False).images[:examples])
    y_train, y = ((v.double() - 0.5) * scale for v in (train, to_model_space(raw, g)))
    return y_train, y, (raw.reshape(len(raw), -1) == 0).double()


class Wiener:
    """The best linear denoiser of data with the mean and covariance of ``y_train``."""

    def __init__(self, y_train: torch.Tensor) -> None:
        self.mu = y_train.mean(0)
        lam, self.U = torch.linalg.eigh(torch.cov(y_train.T))
        self.lam = lam.clamp_min(0)

    def __call__(self, ys: torch.Tensor, a: float, b: float) -> torch.Tensor:
        gain = self.U @ torch.diag(a * self.lam / (a**2 * self.lam + b**2)) @ self.U.T
        return self.mu + (ys - a * self.mu) @ gain.T

    def expected(self, a: float, b: float) -> float:
        """Expected squared error per example (of the Gaussian with these moments)."""
        return float((self.lam * b**2 / (a**2 * self.lam + b**2)).sum())


def error_rows(model, cfg, examples: int = 2000, seed: int = 0) -> list[dict]:
    """One row per level of :data:`LOG10_SNR`: the model's squared error per test image and
    the Wiener filter's (measured on the same noisy images, and expected), in model space
    (pixels in [0, 1]), the share of the model's error on the background pixels and the error
    of the rescaled noisy image y_s / a."""
    at = denoiser(model)
    g = torch.Generator().manual_seed(seed)
    s = model.scale
    y_train, y, background = data(cfg.data, examples, g, s)
    wiener = Wiener(y_train)
    rows = []
    for log_snr in LOG10_SNR:
        a, b, predict = at(10.0**log_snr)
        ys = a * y + b * torch.randn(y.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            y_hat = predict(ys.float()).double()
        err = ((y_hat - y) ** 2) / s**2
        rows.append({"log10_snr": float(np.log10(a**2 / b**2)), "model": float(err.sum(1).mean()),
                     "wiener": float(((wiener(ys, a, b) - y) ** 2).sum(1).mean()) / s**2,
                     "wiener_expected": wiener.expected(a, b) / s**2,
                     "background_share": float((err * background).sum() / err.sum()),
                     "noisy": float(((ys / a - y) ** 2).sum(1).mean()) / s**2})
    return rows


def bound_rows(model, method, x: torch.Tensor, g: torch.Generator,
               edges: tuple[int, ...] = (1, 2, 11, 51, 201)) -> list[dict]:
    """A diffusion model's bound on images ``x`` (model space, flat), band by band of steps
    (k from each of ``edges`` to the next, the last band to T; then the prior): the mean over
    the images of Σ_k log p(x_{k-1} | x_k) − log q(x_k | x_{k-1}) in nats along one forward
    path each (drawn with ``g``, as ``method.log_weight`` draws it), and each band's log₁₀ SNR
    at its ends. The bands and the prior sum to the bound less d·log scale."""
    if not isinstance(model, DiffusionModel):
        raise SystemExit(f"{type(model).__name__}: --bound takes a diffusion model")
    ab = model.alpha_bar.double().numpy()
    snr = np.log10(ab / (1 - ab))
    bands = [(lo, min(hi, model.T + 1)) for lo, hi in zip(edges, [*edges[1:], model.T + 1])
             if lo <= model.T]
    sums = [0.0] * (len(bands) + 1)
    for k, log_p, log_q in method.path_terms(model, x, g):
        i = next((i for i, (lo, hi) in enumerate(bands) if lo <= k < hi), len(bands))
        sums[i] += float((log_p - log_q).mean())
    rows = [{"steps": f"{lo}–{hi - 1}", "log10_snr": (float(snr[lo - 1]), float(snr[hi - 2])),
             "nats": v} for (lo, hi), v in zip(bands, sums)]
    return rows + [{"steps": "prior", "log10_snr": None, "nats": sums[-1]}]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, help="a run directory or export")
    p.add_argument("--examples", type=int, default=2000, help="first test images")
    p.add_argument("--seed", type=int, default=0, help="the noise's and dequantisation's seed")
    p.add_argument("--bound", action="store_true",
                   help="a diffusion model's bound by bands of steps instead")
    a = p.parse_args(argv)
    for run in a.run:
        model, cfg = load_model(run, "cpu")
        if a.bound:
            g = torch.Generator().manual_seed(a.seed)
            raw = torch.from_numpy(load_split(cfg.data, "test", progress=False).images[:a.examples])
            x = to_model_space(raw, g).reshape(len(raw), -1)
            rows = bound_rows(model.eval(), build_method(cfg.method), x, g)
            print(f"{run}: bound on the first {a.examples:,} test images, nats by band of steps")
            for r in rows:
                snr = "" if r["log10_snr"] is None else "{:.2f} to {:.2f}".format(*r["log10_snr"])
                print(f"{r['steps']:>9} {snr:>15} {r['nats']:12.1f}")
            bound = sum(r["nats"] for r in rows) + model.d * np.log(model.scale)
            print(f"{'bound':>9} {'':>15} {bound:12.1f}")
            continue
        print(f"{run}: the first {a.examples:,} test images ({cfg.data.name}); squared error "
              "per image, pixels in [0, 1]")
        print(f"{'log10 SNR':>9} {'model':>8} {'Wiener':>8} {'expected':>8} {'model/Wiener':>12} "
              f"{'on background':>13} {'noisy/a':>8}")
        for r in error_rows(model, cfg, a.examples, a.seed):
            print(f"{r['log10_snr']:9.2f} {r['model']:8.2f} {r['wiener']:8.2f} "
                  f"{r['wiener_expected']:8.2f} {r['model'] / r['wiener']:12.2f} "
                  f"{r['background_share']:13.1%} {r['noisy']:8.1f}")


if __name__ == "__main__":
    main()
