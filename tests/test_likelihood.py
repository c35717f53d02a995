"""Likelihood estimates (algorithms.md §7) on a chain with a closed-form marginal, Parzen window (algorithms.md §8),
and the per-step statistics pass (algorithms.md §6) checked end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from infusion.chain.model import FactorialGaussianPrior
from infusion.config import MethodConfig
from infusion.data import parzen_space
from infusion.evaluate import likelihood as lik
from infusion.evaluate import parzen as pz
from infusion.methods.infusion import Infusion, InfusionSettings


class LinearGaussianChain(nn.Module):
    """z(0) ~ N(m0, v0), z(t) = a_t·z(t-1) + b_t + sqrt(v_t)·ε: x = z(T) is Gaussian."""

    def __init__(self, d=4, T=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.T, self.d = T, d
        self.prior = FactorialGaussianPrior(d)
        self.prior.mean.copy_(torch.rand(d, generator=g))
        self.prior.var.copy_(0.1 + 0.2 * torch.rand(d, generator=g))
        self.register_buffer("a", 0.3 + 0.5 * torch.rand(T, d, generator=g))
        self.register_buffer("b", 0.3 * torch.rand(T, d, generator=g))
        self.register_buffer("v", 0.02 + 0.05 * torch.rand(T, d, generator=g))
        self.stats_ready = True

    def forward(self, z, t):
        return self.a[t - 1] * z + self.b[t - 1], self.v[t - 1].expand_as(z)

    def marginal(self):
        m, s = self.prior.mean.double(), self.prior.var.double()
        for t in range(self.T):
            m = self.a[t].double() * m + self.b[t].double()
            s = self.a[t].double() ** 2 * s + self.v[t].double()
        return m, s

    def exact_log_prob(self, x):
        m, s = self.marginal()
        return (-0.5 * (math.log(2 * math.pi) + s.log() + (x.double() - m) ** 2 / s)).sum(-1)

    def draw(self, n, seed):
        m, s = self.marginal()
        g = torch.Generator().manual_seed(seed)
        return (m + s.sqrt() * torch.randn(n, self.d, generator=g, dtype=torch.float64)).float()


def _setup(T=3):
    model = LinearGaussianChain(T=T).double()
    method = Infusion(MethodConfig(T=T, settings=InfusionSettings(alpha0=0.1, omega=0.2, target_var=1e-2)))
    x = model.draw(40, seed=1).double()
    return model, method, x, model.exact_log_prob(x)


def test_bound_below_and_importance_sampling_converges_to_exact_log_p():
    model, method, x, exact = _setup()
    g = torch.Generator().manual_seed(2)
    lw = lik.log_weights(model, method, x, 2000, g, batch_size=8192)
    assert lw.shape == (40, 2000) and lw.dtype == torch.float64
    lb, se = lik.lower_bound(lw), lw.std(1) / math.sqrt(2000)
    # E ℓ = log p − KL(q ‖ posterior) <= log p, per example
    assert bool((lb <= exact + 4 * se).all())
    gap = (exact - lb).mean().item()
    assert gap > 0.5  # the bound is visibly loose on this chain ...
    is_1000 = lik.importance_sampling(lw[:, :1000])
    err_1000 = (is_1000 - exact).abs().mean().item()
    assert err_1000 < 0.1 * gap  # ... and IS with k = 1000 is close to the exact log p
    is_10 = lik.importance_sampling(lw[:, :10])
    assert is_10.mean() < is_1000.mean() <= exact.mean() + 0.05
    assert lik.lower_bound(lw[:, :1]).mean() < is_10.mean()  # IS at k = 1 is the bound


def test_estimate_likelihood_reports_mean_stderr_and_spread():
    model, method, x, exact = _setup()
    res = lik.estimate_likelihood(model, method, x, 200, seed=3, repeats=3, batch_size=500,
                                  ks=[1, 10, 500])
    assert set(res) == {"lb", "is", "is@1", "is@10"}
    lb, is_ = res["lb"], res["is"]
    assert lb.per_example.shape == (3, 40)
    assert lb.mean < res["is@10"].mean < is_.mean < exact.mean().item() + 0.05
    assert res["is@1"].summary()["k"] == 1
    assert lik.Estimate.from_array(np.ones(5)).spread is None  # one repeat: no spread


class _Table:
    """A stand-in method whose draws are known: the j-th draw of example i (x[:, 0] = (i+½)/N)
    is ``table[i, j]``, counted over every call (so repeat r gets draws r·k … r·k + k − 1)."""

    name, has_likelihood = "table", True

    def __init__(self, table: np.ndarray):
        self.table, self.count = table, np.zeros(len(table), int)

    def log_weight(self, model, x, generator, final_var=None):
        out = []
        for i in (x[:, 0].double() * len(self.table) - 0.5).round().long().tolist():
            out.append(self.table[i, self.count[i]])
            self.count[i] += 1
        return torch.tensor(out, dtype=torch.float64)


def test_estimates_of_known_draws():
    """Bound, IS, nested IS@k' and their mean, standard error and spread, from draws known in
    advance, against scipy's logsumexp: IS@1 is the first draw itself, not a rewriting of it."""
    from scipy.special import logsumexp

    n, k, repeats = 6, 12, 3
    table = -50 + 20 * np.random.default_rng(0).standard_normal((n, repeats * k))
    x = torch.stack([(torch.arange(n) + 0.5) / n, torch.full((n,), 0.5)], 1)
    res = lik.estimate_likelihood(_ready(nn.Linear(1, 1)), _Table(table), x, k, seed=0,
                                  repeats=repeats, batch_size=5, ks=[1, 10])
    draws = table.reshape(n, repeats, k).transpose(1, 0, 2)  # (repeat, example, draw)
    expected = {"lb": draws.mean(-1), "is": logsumexp(draws, -1) - np.log(k),
                "is@1": draws[..., 0], "is@10": logsumexp(draws[..., :10], -1) - np.log(10)}
    for name, per in expected.items():
        np.testing.assert_allclose(res[name].per_example, per, rtol=1e-12, err_msg=name)
        assert res[name].mean == pytest.approx(per.mean(), rel=1e-12), name
        assert res[name].stderr == pytest.approx(per.mean(0).std(ddof=1) / math.sqrt(n)), name
        assert res[name].spread == pytest.approx(per.mean(1).std(ddof=1)), name
    assert bool((res["lb"].per_example < res["is"].per_example).all())  # Jensen


def test_final_var_replaces_only_the_final_variance():
    model, method, x, _ = _setup()
    a = lik.log_weights(model, method, x, 3, torch.Generator().manual_seed(0), 64)
    b = lik.log_weights(model, method, x, 3, torch.Generator().manual_seed(0), 64, final_var=0.04)
    assert not torch.allclose(a, b)
    model.v[-1] = 0.04  # the model's own final variance is that constant: nothing changes
    a = lik.log_weights(model, method, x, 3, torch.Generator().manual_seed(0), 64)
    b = lik.log_weights(model, method, x, 3, torch.Generator().manual_seed(0), 64, final_var=0.04)
    assert torch.allclose(a, b)
    with pytest.raises(ValueError, match="final_var"):
        lik.log_weights(model, method, x, 3, None, final_var=0.0)


@pytest.mark.parametrize("name", ["infusion", "walkback", "diffusion"])
def test_final_var_changes_no_draw_in_any_method(name):
    """With the same draws, ℓ(v) = C − (d/2)·log v − R/(2v) per example (only the last Gaussian
    term sees v; diffusion's scale² only shifts C and R): three values of v fix C and R, and
    a fourth must follow."""
    from infusion.methods import build_method

    from .conftest import tiny_config

    cfg = tiny_config(model={"hidden": (8,), "batch_norm": False}, method={"name": name, "T": 3})
    method = build_method(cfg.method)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = method.build_model((2,), cfg.model).eval()
    x = torch.rand(5, 2, generator=torch.Generator().manual_seed(1))
    vs = [0.01, 0.05, 0.2, 0.7]
    ell = torch.stack([method.log_weight(model, x, torch.Generator().manual_seed(2), final_var=v)
                       for v in vs], -1).double()  # (5, 4); float32 models
    design = torch.tensor([[1.0, -math.log(v), -1 / v] for v in vs], dtype=torch.float64)
    coef = torch.linalg.solve(design[:3], ell[:, :3].T)  # (3, 5): C, d/2, R/2 per example
    assert torch.allclose(coef[1], torch.full((5,), 1.0, dtype=torch.float64), atol=1e-3)  # d/2
    assert torch.allclose((design[3:] @ coef)[0], ell[:, 3], atol=1e-3)
    plain = method.log_weight(model, x, torch.Generator().manual_seed(2))
    assert not torch.allclose(plain.double(), ell[:, 0])


class _Recorder:
    """A stand-in method: ℓ = Σ x + noise·0; records the batch sizes it was called with."""

    name, has_likelihood = "recorder", True

    def __init__(self):
        self.rows, self.seen = [], []

    def log_weight(self, model, x, generator, final_var=None):
        self.rows.append(len(x))
        self.seen.append(x.clone())
        return x.sum(-1) + 0 * torch.rand(len(x), generator=generator, dtype=x.dtype)


def _ready(module: nn.Module) -> nn.Module:
    """A stand-in model with the statistics flag the likelihood code checks."""
    module.stats_ready = True
    return module


@pytest.mark.parametrize("k,batch", [(1, 7), (5, 7), (13, 4), (3, 1000)])
def test_log_weights_layout_and_bounded_batches(k, batch):
    x = torch.randn(11, 3, generator=torch.Generator().manual_seed(0))
    rec = _Recorder()
    lw = lik.log_weights(_ready(nn.Linear(1, 1)), rec, x, k, torch.Generator(), batch_size=batch)
    assert lw.shape == (11, k)
    assert torch.allclose(lw, x.double().sum(-1, keepdim=True).expand(11, k))
    assert max(rec.rows) <= batch and sum(rec.rows) == 11 * k


def _chunked(lw: torch.Tensor, rows: int, cols: int) -> lik.StreamingEstimate:
    """Feed (N, k) to a StreamingEstimate in blocks of ``rows`` examples × ``cols`` draws."""
    acc = lik.StreamingEstimate(lw.shape[0], ks=[1, 7, 10, 64])
    for lo in range(0, lw.shape[0], rows):
        for j in range(0, lw.shape[1], cols):
            acc.update(lo, lw[lo: lo + rows, j: j + cols])
    return acc


@pytest.mark.parametrize("rows,cols", [(13, 100), (1, 1), (5, 7), (13, 64), (2, 33)])
def test_streaming_estimate_equals_the_batch_one_for_any_chunking(rows, cols):
    g = torch.Generator().manual_seed(0)
    # ℓ around −1000 with a spread of hundreds: logsumexp must not overflow or lose digits
    lw = -1000 + 300 * torch.randn(13, 100, generator=g, dtype=torch.float64)
    acc = _chunked(lw, rows, cols)
    assert torch.allclose(acc.lower_bound(), lik.lower_bound(lw), rtol=1e-13, atol=0)
    assert torch.allclose(acc.importance_sampling(), lik.importance_sampling(lw), rtol=1e-13,
                          atol=0)
    for c in (1, 7, 10, 64):  # nested IS@c from the same stream: the first c draws
        assert torch.allclose(acc.importance_sampling(c), lik.importance_sampling(lw[:, :c]),
                              rtol=1e-13, atol=0)
    assert torch.equal(acc.importance_sampling(100), acc.importance_sampling())
    with pytest.raises(KeyError):
        acc.importance_sampling(5)


@pytest.mark.parametrize("batch", [1, 7, 64, 5000])
def test_stream_estimate_matches_log_weights_on_a_real_chain(batch):
    """The model path: the same generator and batch size give the same draws, so the streamed
    bound / IS / IS@k' equal those of the whole (N, k) array."""
    model, method, x, _ = _setup()
    x = x[:9]
    lw = lik.log_weights(model, method, x, 50, torch.Generator().manual_seed(4), batch)
    acc = lik.stream_estimate(model, method, x, 50, torch.Generator().manual_seed(4), batch,
                              ks=[1, 10])
    assert torch.allclose(acc.lower_bound(), lik.lower_bound(lw), rtol=1e-12, atol=0)
    assert torch.allclose(acc.importance_sampling(), lik.importance_sampling(lw), rtol=1e-12,
                          atol=0)
    assert torch.allclose(acc.importance_sampling(10), lik.importance_sampling(lw[:, :10]),
                          rtol=1e-12, atol=0)


def test_streaming_memory_does_not_grow_with_k(monkeypatch):
    """Observable memory of the evaluation path: the rows of every forward pass, the size of
    every block of ℓ handed over and the numbers the estimator keeps, for k from 10 to 5000."""
    blocks = []
    real_update = lik.StreamingEstimate.update

    def update(self, lo, block):
        blocks.append(block.numel())
        return real_update(self, lo, block)

    monkeypatch.setattr(lik.StreamingEstimate, "update", update)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    kept = set()
    for k in (10, 500, 5000):
        rec, blocks[:] = _Recorder(), []
        acc = lik.stream_estimate(_ready(nn.Linear(1, 1)), rec, x, k, torch.Generator(),
                                  batch_size=64, ks=[1, 5])
        assert max(rec.rows) <= 64 and sum(rec.rows) == 6 * k
        assert max(blocks) <= 64 and sum(blocks) == 6 * k
        kept.add(acc.numel)
        assert torch.allclose(acc.importance_sampling(), x.double().sum(-1))  # ℓ constant per example
    assert kept == {6 * 5}  # sum, logsumexp, count, IS@1 and IS@5: 5 numbers an example


def test_estimate_likelihood_reports_each_repeat():
    model, method, x, _ = _setup()
    seen = []
    res = lik.estimate_likelihood(model, method, x[:8], 20, seed=1, repeats=3, ks=[5],
                                  on_repeat=lambda r, part: seen.append((r, part)))
    assert [r for r, _ in seen] == [1, 2, 3]
    assert [part["is"].per_example.shape for _, part in seen] == [(1, 8), (2, 8), (3, 8)]
    np.testing.assert_array_equal(seen[1][1]["lb"].per_example, res["lb"].per_example[:2])
    assert set(seen[0][1]) == {"lb", "is", "is@5"}


def test_isotropic_variance_is_the_argmax_over_the_grid():
    """The chain's own final variance is 0.04 in every dimension: with x drawn from it the
    validation IS is highest at 0.04 of a coarse grid, and the table is the mean IS with the
    same draws for every value (computed here independently through log_weights)."""
    model, method, _, _ = _setup()
    model.v[-1] = 0.04
    x = model.draw(60, seed=3)  # float32, as to_model_space gives continuous data
    grid = [0.004, 0.04, 0.4]
    best, table = lik.select_final_var(model, method, x, grid, k=50, seed=7, batch_size=256)
    assert best == 0.04 == max(table, key=table.get)
    for v in grid:
        lw = lik.log_weights(model, method, x, 50, torch.Generator().manual_seed(8), 256,
                             final_var=v)
        assert table[v] == pytest.approx(float(lik.importance_sampling(lw).mean()), rel=1e-12)
    best, table = lik.select_final_var(model, method, x, [0.01, 0.02], k=5)
    assert best == max(table, key=table.get) == 0.02
    with pytest.raises(ValueError, match="grid"):
        lik.select_final_var(model, method, x, [0.0, 0.1])


def test_data_is_dequantised_afresh_and_stats_are_required(tiny_mnist):
    raw = torch.from_numpy(tiny_mnist["test_x"][:6])
    rec = _Recorder()
    model = _ready(nn.Linear(1, 1))
    lik.estimate_likelihood(model, rec, raw, 2, seed=0, repeats=2, batch_size=100)
    first, second = (x.reshape(6, 2, -1) for x in rec.seen)  # (example, draw, d)
    k = raw.reshape(6, 1, -1).float()
    for x in (first, second):
        assert bool(((x >= k / 256) & (x < (k + 1) / 256)).all())
    assert torch.equal(first[:, 0], first[:, 1])  # both draws of an example score one point
    assert not torch.equal(first, second)  # each repeat dequantises afresh
    points = torch.rand(5, 2)
    rec = _Recorder()
    lik.estimate_likelihood(model, rec, points, 1)
    assert torch.equal(rec.seen[0], points)  # continuous data are used as they are
    model.stats_ready = False
    with pytest.raises(RuntimeError, match="statistics"):
        lik.log_weights(model, rec, points, 1, None)
    no_likelihood = type("NoLikelihood", (), {"name": "gsn", "has_likelihood": False})()
    with pytest.raises(ValueError, match="no likelihood"):
        lik.log_weights(_ready(nn.Linear(1, 1)), no_likelihood, points, 1, None)


# ----------------------------------------------------------------------------- Parzen
def _numpy_parzen(samples, x, sigma):
    """An independent implementation: the formula of algorithms.md §8 in numpy, no chunks."""
    s, x = np.asarray(samples, np.float64), np.asarray(x, np.float64)
    d2 = ((x[:, None, :] - s[None, :, :]) ** 2).sum(-1)
    a = -d2 / (2 * sigma**2)
    m = a.max(1, keepdims=True)
    lme = (m[:, 0] + np.log(np.exp(a - m).sum(1))) - np.log(len(s))
    return lme - 0.5 * x.shape[1] * np.log(2 * np.pi * sigma**2)


def test_parzen_one_sample_is_a_gaussian_density():
    g = torch.Generator().manual_seed(0)
    s, x, sigma = torch.rand(1, 6, generator=g), torch.rand(9, 6, generator=g), 0.3
    expected = torch.distributions.Normal(s.double(), sigma).log_prob(x.double()).sum(-1)
    assert torch.allclose(pz.parzen_log_prob(s, x, sigma), expected, atol=1e-10)


def test_parzen_matches_independent_implementation_chunked_or_not():
    g = torch.Generator().manual_seed(1)
    s, x = torch.rand(300, 20, generator=g), torch.rand(70, 20, generator=g)
    ref = _numpy_parzen(s, x, 0.17)
    for chunk in (7, 64, 4096):
        got = pz.parzen_log_prob(s, x, 0.17, chunk=chunk).numpy()
        assert np.allclose(got, ref, atol=1e-8)
    grid = pz.parzen_log_prob(s, x, [0.1, 0.17, 0.5], chunk=50)
    assert grid.shape == (3, 70)
    assert np.allclose(grid[1].numpy(), ref, atol=1e-8)
    assert np.allclose(grid[2].numpy(), _numpy_parzen(s, x, 0.5), atol=1e-8)
    with pytest.raises(ValueError, match="dimensions"):
        pz.parzen_log_prob(s, x[:, :3], 0.1)


def test_sigma_selection_finds_the_kernel_width_and_grid_has_paper_value():
    assert 0.17 in pz.SIGMA_GRID
    assert all(any(math.isclose(v, s) for s in pz.SIGMA_GRID) for v in np.logspace(-1, 0, 10))
    g = torch.Generator().manual_seed(2)
    centres = 10 * torch.rand(400, 5, generator=g)  # far apart: kernels do not overlap
    valid = centres + 0.1 * torch.randn(400, 5, generator=g)
    best, table = pz.select_sigma(centres, valid, [0.03, 0.1, 0.3, 1.0])
    assert best == 0.1 and set(table) == {0.03, 0.1, 0.3, 1.0}
    raw = torch.randint(0, 256, (20, 1, 2, 2), dtype=torch.uint8)
    est = pz.parzen_estimate(torch.rand(30, 1, 2, 2), raw[:10], raw[10:], grid=[0.2, 0.5])
    assert est.extra["sigma"] in (0.2, 0.5) and est.per_example.shape == (1, 10)
    with pytest.raises(ValueError, match="at least one sample"):
        pz.parzen_log_prob(torch.zeros(0, 4), torch.zeros(1, 4), 1.0)
    assert torch.equal(parzen_space(raw), raw.reshape(20, -1).float() / 256)  # no noise


def test_parzen_estimates_fixed_and_validation_sigma():
    g = torch.Generator().manual_seed(3)
    samples = torch.rand(200, 1, 3, 3, generator=g)
    raw = torch.randint(0, 256, (50, 1, 3, 3), dtype=torch.uint8, generator=g)
    est = pz.parzen_estimates(samples, raw[:20], raw[20:], grid=[0.1, 0.3, 1.0], fixed_sigma=0.17)
    best, table = pz.select_sigma(samples, parzen_space(raw[:20]), [0.1, 0.3, 1.0])
    assert est["valid"].extra["sigma"] == best and est["valid"].extra["valid_by_sigma"] == table
    for key, sigma in (("valid", best), ("fixed", 0.17)):
        expected = pz.parzen_log_prob(samples, parzen_space(raw[20:]), sigma).numpy()
        np.testing.assert_allclose(est[key].per_example[0], expected, rtol=1e-12)
        assert est[key].stderr == pytest.approx(expected.std(ddof=1) / math.sqrt(30))
    assert est["fixed"].extra["sigma"] == 0.17


# ----------------------------------------------------------------------------- algorithms.md §6
def test_step_statistics_are_exact_averages_of_batch_moments():
    from infusion.chain.nets import step_norms
    from infusion.data import load_data
    from infusion.data.batches import batches
    from infusion.methods import build_method
    from infusion.methods.statistics import compute_step_statistics

    from .conftest import tiny_config

    cfg = tiny_config(data={"name": "spiral", "toy_size": 150})
    data = load_data(cfg)
    method = build_method(cfg.method)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = method.build_model(data.shape, cfg.model)
    norm = step_norms(model)[0]
    # Manual pass: the same batches and noise, batch statistics, recording the first hidden
    # layer's pre-norm activations at every step.
    seen: list[torch.Tensor] = []
    hook = model.net.linears[0].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    g = torch.Generator().manual_seed(5)
    model.train()
    with torch.no_grad():
        n_batches = 0
        for idx in batches(len(data.train), 64):
            method.loss(model, data.model_space(data.train[idx], g), g)
            n_batches += 1
    hook.remove()
    T = cfg.method.T
    per_step = [[h for j, h in enumerate(seen) if j % T == t] for t in range(T)]
    mean = torch.stack([torch.stack([h.double().mean(0) for h in hs]).mean(0) for hs in per_step])
    var = torch.stack([torch.stack([h.double().var(0, unbiased=False) for h in hs]).mean(0)
                       for hs in per_step])
    assert len(seen) == n_batches * T and len(per_step[0][-1]) == 150 - 2 * 64  # uneven last batch
    compute_step_statistics(model, method, data, batch_size=64, seed=5)
    assert model.stats_ready
    assert torch.allclose(norm.stat_mean.double(), mean, atol=1e-5)
    assert torch.allclose(norm.stat_var.double(), var, rtol=1e-4, atol=1e-6)
