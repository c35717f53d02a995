"""The variational autoencoder (algorithms.md §16): its log-weight and loss against the exact
answers of a linear-Gaussian model, the continuous Bernoulli against quadrature, a short
training run, the sampler's step, the settings' errors and the command line end to end."""

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
from infusion.config import MethodConfig, ModelConfig, VaeSettings
from infusion.evaluate.likelihood import estimate_likelihood, log_weights, stream_estimate
from infusion.methods import build_method
from infusion.methods.vae import GaussianDecoder, Vae, VaeModel

from .conftest import short_fit

D, K, NOISE_VAR = 4, 2, 0.25  # data and latent dimensions, the decoder's variance σ²


def vae_method(latent: int = K, decoder: str = "gaussian") -> Vae:
    return build_method(MethodConfig(name="vae", T=1, vae=VaeSettings(latent, decoder)))


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


@pytest.mark.parametrize("decoder", ["gaussian", "bernoulli"])
def test_a_few_steps_of_training_lower_the_loss(decoder):
    torch.manual_seed(0)  # weight init only: the loss draws from its own generators
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.2] * 3 + [0.8] * 3, [0.8] * 3 + [0.2] * 3])
    x = (centres[torch.randint(0, 2, (128,), generator=g)]
         + 0.05 * torch.randn(128, 6, generator=g)).clamp(0, 1)
    model = VaeModel((6,), ModelConfig(hidden=(16,)), latent=2, decoder=decoder)
    before, after = short_fit(vae_method(2, decoder), model, x, steps=60, batch=64, lr=1e-2)
    assert after < before - 1.0


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
    run, quiet = tmp_path / "vae", "--quiet"
    assert main(["train", "--preset", "mnist-vae10", "--run-dir", str(run),
                 "--set", "model.hidden=16", "--set", "train.epochs=1",
                 "--set", "train.batch_size=16", "--set", "train.valid_examples=32",
                 "--set", "sample.n=4", "--set", "sample.chains=2", quiet]) == 0
    out = tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(run), "--n", "5", "--seed", "3",
                 "--out", str(out)]) == 0
    assert np.load(out)["samples"].shape == (5, 1, 28, 28)
    report = tmp_path / "report.json"
    assert main(["evaluate", "--checkpoint", str(run), "--metrics", "lb,is", "--k", "10",
                 "--examples", "8", "--lb-examples", "8", "--out", str(report), quiet]) == 0
    rows = json.loads(report.read_text())["metrics"]
    assert set(rows) == {"lb", "is"} and all(math.isfinite(r["mean"]) for r in rows.values())
    assert rows["is"]["mean"] >= rows["is"]["lb_same_draws"]["mean"]  # IWAE >= ELBO, same draws
    export = tmp_path / "export"
    assert main(["export", "--checkpoint", str(run), "--out", str(export)]) == 0
    again = tmp_path / "e.npz"
    assert main(["sample", "--checkpoint", str(export), "--n", "5", "--seed", "3",
                 "--out", str(again)]) == 0
    assert np.array_equal(np.load(out)["samples"], np.load(again)["samples"])
