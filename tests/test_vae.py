"""The variational autoencoder (algorithms.md §16): its log-weight and loss against the exact
answers of a linear-Gaussian model, the continuous Bernoulli against quadrature, the loss written out by
hand for a linear VAE, the sampler's step, the settings' errors and the command line end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate

from infusion import config
from infusion.chain.distributions import cb_icdf, cb_log_norm, cb_log_prob, cb_mean, cb_var
from infusion.chain.sampler import sample_chain
from infusion.cli import main
from infusion.config import MethodConfig, ModelConfig
from infusion.evaluate.likelihood import estimate_likelihood, log_weights, stream_estimate
from infusion.methods import build_method
from infusion.methods.vae import GaussianDecoder, Vae, VaeModel, VaeSettings

D, K, NOISE_VAR = 4, 2, 0.25  # data and latent dimensions, the decoder's variance σ²


def vae_method(latent: int = K, decoder: str = "gaussian") -> Vae:
    return build_method(MethodConfig(name="vae", T=1, settings=VaeSettings(latent, decoder)))


class LinearGaussianVae(VaeModel):
    """The VAE's own bodies without hidden layers (both linear) and p(x | z) = N(a_μ, σ²·I):
    the decoder x = W z + b + N(0, σ² I) once its head holds W and b."""

    def observation(self, a_mu, a_sigma):
        return GaussianDecoder(a_mu, torch.full_like(a_mu, NOISE_VAR))


def linear_gaussian(posterior_scale: float = 1.0, var_factor: float = 1.0):
    """(model, W, b, A, Σ): a linear-Gaussian VAE in float64 whose encoder is the exact
    posterior q(z | x) = N(A(x − b), Σ), Σ = (I + WᵀW/σ²)⁻¹, A = Σ Wᵀ/σ² (diagonal: W has
    orthogonal columns), or that posterior's mean scaled and its variance multiplied."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, K, generator=g, dtype=torch.float64))
    w = q * torch.tensor([1.5, 0.7], dtype=torch.float64)
    b = torch.tensor([0.2, -0.1, 0.5, 0.3], dtype=torch.float64)
    sigma = torch.diag(1 / (1 + (w.T @ w).diagonal() / NOISE_VAR))
    a = sigma @ w.T / NOISE_VAR
    model = LinearGaussianVae((D,), ModelConfig(hidden=()), latent=K).double().eval()
    enc, dec = model.net.encoder, model.net.decoder
    with torch.no_grad():
        dec.head_mu.weight.copy_(w)
        dec.head_mu.bias.copy_(b)
        enc.head_mu.weight.copy_(posterior_scale * a)
        enc.head_mu.bias.copy_(-posterior_scale * a @ b)
        enc.head_sigma.weight.zero_()
        enc.head_sigma.bias.copy_(torch.log(var_factor * sigma.diagonal()))
    return model, w, b, posterior_scale * a, var_factor * sigma


def exact_log_p(x, w, b):
    """log p(x) = log N(x; b, W Wᵀ + σ² I)."""
    cov = w @ w.T + NOISE_VAR * torch.eye(D, dtype=torch.float64)
    return torch.distributions.MultivariateNormal(b, cov).log_prob(x)


def exact_elbo(x, w, b, a, sigma):
    """E_q[log p(x | z)] − KL(q ‖ N(0, I)) for q = N(A(x − b), Σ), Σ diagonal."""
    mu = (x - b) @ a.T
    resid = (x - b - mu @ w.T).square().sum(-1) + torch.trace(w.T @ w @ sigma)
    expected = -0.5 * D * math.log(2 * math.pi * NOISE_VAR) - resid / (2 * NOISE_VAR)
    s = sigma.diagonal()
    kl = 0.5 * (mu.square().sum(-1) + (s - 1 - s.log()).sum())
    return expected - kl


def points(n: int = 20) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_with_the_exact_posterior_every_log_weight_is_log_p_x():
    model, w, b, _, _ = linear_gaussian()
    x, method = points(), vae_method()
    truth = exact_log_p(x, w, b)
    lw = log_weights(model, method, x, 30, torch.Generator().manual_seed(2), batch_size=64)
    assert lw.std(1).max() < 1e-12  # zero variance: p(z, x)/q(z | x) = p(x) for every z
    torch.testing.assert_close(lw.mean(1), truth, rtol=0, atol=1e-10)
    acc = stream_estimate(model, method, x, 500, torch.Generator().manual_seed(3), 128)
    torch.testing.assert_close(acc.lower_bound(), truth, rtol=0, atol=1e-10)  # ELBO
    torch.testing.assert_close(acc.importance_sampling(), truth, rtol=0, atol=1e-10)  # IWAE
    # the library's estimator on the float32 model: ELBO = IWAE = log p(x) to float precision
    res = estimate_likelihood(model.float(), method, x.float(), 50, seed=4)
    for kind in ("lb", "is"):
        np.testing.assert_allclose(res[kind].per_example[0], truth.numpy(), atol=1e-4)


def test_with_a_wrong_encoder_the_elbo_is_below_and_iwae_climbs_towards_log_p_x():
    # a proposal narrower than the posterior and off its mean: IWAE approaches from below
    model, w, b, a, sigma = linear_gaussian(posterior_scale=0.6, var_factor=0.5)
    x, method = points(200), vae_method()
    truth, elbo = exact_log_p(x, w, b), exact_elbo(x, w, b, a, sigma)
    assert bool((elbo < truth - 0.05).all())  # KL(q ‖ posterior) > 0
    draws = 4000
    lw = log_weights(model, method, x, draws, torch.Generator().manual_seed(5), batch_size=4000)
    stderr = lw.std(1) / math.sqrt(draws)
    assert bool(((lw.mean(1) - elbo).abs() < 5 * stderr + 1e-9).all())  # mean ℓ = the ELBO
    with torch.no_grad():  # the loss: the negative ELBO (closed-form KL), per example
        loss = method.loss(model, x.repeat_interleave(draws, 0), torch.Generator().manual_seed(6))
    loss = loss.reshape(len(x), draws)
    assert bool(((loss.mean(1) + elbo).abs() < 5 * loss.std(1) / math.sqrt(draws) + 1e-9).all())
    acc = stream_estimate(model, method, x, 1000, torch.Generator().manual_seed(7), 1000,
                          ks=(1, 10, 100))
    by_k = [float(acc.importance_sampling(k).mean()) for k in (1, 10, 100, 1000)]
    assert by_k == sorted(by_k) and by_k[-1] < float(truth.mean())
    assert float(truth.mean()) - by_k[-1] < 0.15 * (float(truth.mean()) - by_k[0])


LAMBDAS = (1e-4, 0.02, 0.3, 0.49, 0.4999, 0.5, 0.5001, 0.51, 0.8, 0.98, 0.9999)


@pytest.mark.parametrize("lam", LAMBDAS)
def test_the_continuous_bernoulli_is_a_density_on_the_unit_interval(lam):
    eta = torch.tensor([[math.log(lam / (1 - lam))]], dtype=torch.float64)

    def density(x, power=0):
        return math.exp(float(cb_log_prob(torch.tensor([[x]], dtype=torch.float64), eta))) * x**power

    total = integrate.quad(density, 0, 1, epsabs=1e-12, epsrel=1e-12)[0]
    assert total == pytest.approx(1.0, abs=1e-9)
    mean = integrate.quad(density, 0, 1, args=(1,), epsabs=1e-13)[0]
    second = integrate.quad(density, 0, 1, args=(2,), epsabs=1e-13)[0]
    assert float(cb_mean(eta)) == pytest.approx(mean, abs=1e-9)
    assert float(cb_var(eta)) == pytest.approx(second - mean**2, rel=1e-6)
    for u in (0.1, 0.5, 0.9):  # the inverse CDF: P(X <= x(u)) = u
        x = float(cb_icdf(eta, torch.tensor([[u]], dtype=torch.float64)))
        assert integrate.quad(density, 0, x, epsabs=1e-13)[0] == pytest.approx(u, abs=1e-8)


def test_the_continuous_bernoulli_is_torchs_and_stable_near_one_half():
    lam = torch.tensor([0.01, 0.2, 0.45, 0.55, 0.8, 0.99], dtype=torch.float64)
    x = torch.rand(6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theirs = torch.distributions.ContinuousBernoulli(probs=lam).log_prob(x)
    ours = cb_log_prob(x[:, None], torch.log(lam / (1 - lam))[:, None])
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    # float32 across the series' edge |η| = ½ and at λ = ½ itself: as float64 does
    eta = torch.tensor([0.0, 1e-7, -1e-7, 0.4999999, 0.5, 0.5000001, -0.5, 3.0, -40.0, 90.0])
    for fn in (cb_log_norm, cb_mean, cb_var):
        torch.testing.assert_close(fn(eta), fn(eta.double()).float(), rtol=1e-5, atol=1e-7)
    assert float(cb_log_norm(torch.zeros(1))) == pytest.approx(math.log(2))
    eta0 = torch.zeros(1, 3, requires_grad=True)
    (grad,) = torch.autograd.grad(cb_log_prob(torch.tensor([[0.1, 0.5, 0.9]]), eta0).sum(), eta0)
    torch.testing.assert_close(grad, torch.tensor([[-0.4, 0.0, 0.4]]))  # x − ½ at η = 0


def _linear_vae_by_hand(decoder: str):
    """A VAE with linear encoder and decoder (no hidden layer) in float64, its weights drawn
    from a fixed generator, and 5 points x in (0, 1)^D."""
    cfg = ModelConfig(hidden=(), beta=0.3, eps=0.02)
    model = VaeModel((D,), cfg, latent=K, decoder=decoder).double()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.rand(5, D, generator=g, dtype=torch.float64) * 0.9 + 0.05
    return model, cfg, x


@pytest.mark.parametrize("decoder", ["gaussian", "bernoulli"])
def test_the_loss_and_the_log_weight_are_the_elbo_written_out_by_hand(decoder):
    """For a linear VAE with fixed weights, the loss and the log-weight of one draw, written
    out from the formulas: the encoder gives μ_z = W_e x + b_e and log σ_z² = V_e x + c_e;
    with the generator's standard normals ε, z = μ_z + σ_z·ε; the decoder's logits are
    a_μ = W_d z + b_d, a_σ = V_d z + c_d, and log p(x | z) is the Gaussian
    N(x; sigmoid(a_μ), β·sigmoid(a_σ) + ε_var) or the continuous Bernoulli of logits a_μ
    (torch's own distribution). Then
    loss = ½·Σ(μ_z² + σ_z² − 1 − log σ_z²) − log p(x | z)   (the negative ELBO, KL closed form)
    ℓ = log p(x | z) + log N(z; 0, I) − log N(z; μ_z, σ_z²)   (the log-weight)."""
    model, cfg, x = _linear_vae_by_hand(decoder)
    method = vae_method(K, decoder)
    w = {k: v.detach() for k, v in model.net.state_dict().items()}
    mu = x @ w["encoder.head_mu.weight"].T + w["encoder.head_mu.bias"]
    log_var = x @ w["encoder.head_sigma.weight"].T + w["encoder.head_sigma.bias"]
    eps = torch.randn(len(x), K, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z = mu + torch.exp(log_var / 2) * eps
    a_mu = z @ w["decoder.head_mu.weight"].T + w["decoder.head_mu.bias"]
    if decoder == "gaussian":
        a_sigma = z @ w["decoder.head_sigma.weight"].T + w["decoder.head_sigma.bias"]
        m, v = 1 / (1 + torch.exp(-a_mu)), cfg.beta / (1 + torch.exp(-a_sigma)) + cfg.eps
        log_px = (-0.5 * torch.log(2 * math.pi * v) - (x - m) ** 2 / (2 * v)).sum(1)
    else:
        log_px = torch.distributions.ContinuousBernoulli(logits=a_mu).log_prob(x).sum(1)
    kl = 0.5 * (mu**2 + torch.exp(log_var) - 1 - log_var).sum(1)
    log_prior = (-0.5 * math.log(2 * math.pi) - z**2 / 2).sum(1)
    log_q = (-0.5 * math.log(2 * math.pi) - log_var / 2 - eps**2 / 2).sum(1)
    with torch.no_grad():
        loss = method.loss(model, x, torch.Generator().manual_seed(3))
        ell = method.log_weight(model, x, torch.Generator().manual_seed(3))
    # float64 throughout, the same draws: only the order of operations differs, and torch's
    # continuous Bernoulli computes its normaliser its own way (they differ by ~2e-10
    # relative); 1e-9 leaves room for that rounding and none for a formula (terms of order 1)
    torch.testing.assert_close(loss, kl - log_px, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ell, log_px + log_prior - log_q, rtol=1e-9, atol=1e-9)
    assert float(kl.min()) > 0.1 and float(log_prior.max()) < -0.1  # neither term is ~0


@pytest.mark.parametrize("decoder,shape,latent", [("bernoulli", (1, 4, 4), 20),
                                                   ("gaussian", (2,), 3)])
def test_sampling_decodes_each_samples_own_latent(decoder, shape, latent):
    torch.manual_seed(0)
    model = VaeModel(shape, ModelConfig(hidden=(8, 8)), latent, decoder).eval()
    assert model.stats_ready and model.T == 1  # no batch norm: nothing to collect
    out = sample_chain(model, 6, seed=3)
    assert out.samples.shape == out.means.shape == (6, *shape)
    assert torch.equal(out.samples, sample_chain(model, 6, seed=3).samples)
    again = sample_chain(model, 6, seeds=range(3, 9), batch_size=4)
    torch.testing.assert_close(again.samples, out.samples)
    assert not torch.allclose(sample_chain(model, 6, seed=4).samples, out.samples)
    d = math.prod(shape)
    for i in (0, 5):  # sample i: its seed's z(0) block, ⌈latent/d⌉ latent blocks, one more
        gen = torch.Generator().manual_seed(3 + i)
        blocks = [torch.randn(d, generator=gen) for _ in range(2 + -(-latent // d))]
        with torch.no_grad():
            p = model.decode(torch.cat(blocks[1:-1])[:latent][None])
            torch.testing.assert_close(out.means[i].reshape(1, -1), p.mean)
            torch.testing.assert_close(out.samples[i].reshape(1, -1), p.draw(blocks[-1][None]))
    if decoder == "bernoulli":
        assert 0 <= float(out.samples.min()) and float(out.samples.max()) <= 1
    assert sample_chain(model, 2, steps=3, seed=0).samples.shape == (2, *shape)


@pytest.mark.parametrize("setting,message", [
    ("method.vae.latent=0", "method.vae.latent=0"),
    ("method.vae.decoder=poisson", "method.vae.decoder='poisson'"),
    ("method.T=3", r"method\.T=3: .* set method\.T=1"),
    ("model.net=conv", "model.net='conv': method.name=vae"),
])
def test_bad_settings_are_refused_naming_the_setting(setting, message):
    with pytest.raises(config.ConfigError, match=message):
        config.override(config.preset("mnist-vae50"), [setting])


def test_the_presets_and_the_default_steps():
    for name, latent in (("mnist-vae50", 50), ("mnist-vae10", 10)):
        cfg = config.preset(name)
        assert (cfg.method.name, cfg.method.T, cfg.method.vae.latent) == ("vae", 1, latent)
    with pytest.raises(config.ConfigError, match=r"method\.T=15"):  # the default T is refused
        config.override(config.preset("mnist"), ["method.name=vae"])


def test_train_sample_evaluate_export_on_the_command_line(tiny_mnist, tmp_path):
    """A VAE trained, sampled, evaluated and exported with the command line: one epoch of the
    64 fake training images in batches of 16 is 4 optimiser steps; ``sample --seed 3`` gives
    sample i from seed 3 + i, the library's ``sample_chain``, and the export draws the same;
    the report's bound is the ELBO of each test example, estimated apart from the code that
    wrote it (the loss: closed-form KL, many draws), and its IS estimate is above it."""
    from infusion.data import to_model_space
    from infusion.models import load_model

    run, quiet = tmp_path / "vae", "--quiet"
    assert main(["train", "--preset", "mnist-vae10", "--run-dir", str(run),
                 "--set", "model.hidden=16", "--set", "train.epochs=1",
                 "--set", "train.batch_size=16", "--set", "train.valid_examples=32",
                 "--set", "sample.n=4", "--set", "sample.chains=2", quiet]) == 0
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 4)]
    model, cfg = load_model(run, "cpu")
    assert (cfg.method.name, cfg.method.vae.latent, model.latent) == ("vae", 10, 10)
    out = tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(run), "--n", "5", "--seed", "3",
                 "--out", str(out)]) == 0
    drawn = sample_chain(model, 5, seed=3).samples.numpy()
    np.testing.assert_array_equal(np.load(out)["samples"], drawn)
    report, k = tmp_path / "report.json", 100
    assert main(["evaluate", "--checkpoint", str(run), "--metrics", "lb,is", "--k", str(k),
                 "--examples", "8", "--lb-examples", "8", "--lb-k", str(k),
                 "--out", str(report), quiet]) == 0
    metrics = json.loads(report.read_text())["metrics"]
    assert metrics["lb"]["n"] == metrics["is"]["n"] == 8 and metrics["is"]["k"] == k
    per = np.load(report.with_name("per_example.npz"))
    lb, iwae = per["lb"][0], per["is"][0]
    assert (iwae >= lb - 1e-4).all()  # the same k draws: log-mean-exp >= mean
    # the ELBO of the 8 test examples as the evaluation dequantised them (seed + 1000),
    # from 1,000 draws of the negative loss (the KL in closed form)
    x = to_model_space(torch.from_numpy(tiny_mnist["test_x"][:8]),
                       torch.Generator().manual_seed(1000))
    draws, method = 1000, vae_method(10)
    with torch.no_grad():
        loss = method.loss(model, x.repeat_interleave(draws, 0),
                           torch.Generator().manual_seed(9)).reshape(8, draws).double()
        ell = log_weights(model, method, x, draws, torch.Generator().manual_seed(10), 8000)
    elbo = -loss.mean(1).numpy()
    # the report's bound is a mean of k log-weights: within 5 standard errors of the ELBO
    # (the loss's own error added; both from the draws' standard deviation, about 20 nats
    # here, so about 13 nats on bounds near −1,300: a flipped sign is far out)
    tol = 5 * (ell.std(1).numpy() / math.sqrt(k) + loss.std(1).numpy() / math.sqrt(draws))
    assert (np.abs(lb - elbo) < tol).all()
    export = tmp_path / "export"
    assert main(["export", "--checkpoint", str(run), "--out", str(export)]) == 0
    again = tmp_path / "e.npz"
    assert main(["sample", "--checkpoint", str(export), "--n", "5", "--seed", "3",
                 "--out", str(again)]) == 0
    np.testing.assert_array_equal(np.load(again)["samples"], drawn)
