"""Known answers where the formulas are used (issue 28): the infusion training loss against a
re-implementation of algorithms.md §3–4 on a recording stand-in model, the sampler's noise
scale against σ² from the model's output, class-conditional samples that receive each row's
own class, and the default x̂_0 clipping of DDIM / DPM-Solver++ where it does clip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from infusion.chain.model import ChainModel, FactorialGaussianPrior
from infusion.chain.nets import step_norms
from infusion.chain.sampler import run_chain, sample_chain
from infusion.config import MethodConfig
from infusion.generate.files import sample_to_file
from infusion.methods.diffusion import DiffusionModel, Schedule, make_betas
from infusion.methods.infusion import Infusion, InfusionSettings

from .conftest import tiny_config


def _prior(d: int, mean: float, var: float) -> FactorialGaussianPrior:
    prior = FactorialGaussianPrior(d).double()
    prior.mean.fill_(mean)
    prior.var.fill_(var)
    return prior


# ----------------------------------------------------------------------------- infusion loss
class RecordingChain(ChainModel):
    """A deterministic, state-dependent transition that records every input it is given:
    μ_t(z) = 0.1 + 0.2·sigmoid(w_t·z + b_t) ∈ (0.1, 0.3), σ²_t(z) = 1e-4·(1 + t·sigmoid(Σz)).
    Its prior p(0) = N(0.2, 1e-6): every model draw lies far below the targets in [0.6, 0.9],
    so each dimension of a recorded state shows whether it was infused from x."""

    def __init__(self, d: int, T: int) -> None:
        g = torch.Generator().manual_seed(0)
        super().__init__((d,), T, nn.Identity(), _prior(d, 0.2, 1e-6))
        self.register_buffer("w", torch.randn(T, d, generator=g, dtype=torch.float64))
        self.register_buffer("b", torch.randn(T, d, generator=g, dtype=torch.float64))
        self.seen: list[tuple[int, torch.Tensor]] = []

    def transition(self, z: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean = 0.1 + 0.2 * torch.sigmoid(self.w[t - 1] * z + self.b[t - 1])
        var = 1e-4 * (1 + t * torch.sigmoid(z.sum(-1, keepdim=True))).expand_as(z)
        return mean, var

    def forward(self, z, t, noise=None):
        self.seen.append((t, z.detach().clone()))
        return self.transition(z, t)


def test_infusion_loss_is_the_weighted_chain_of_algorithms_md_4():
    """L = Σ_{t=1..T} (t/T)·(−log N(x; μ_t, σ²_t)) with μ_t, σ²_t of the state z̃(t−1), and each
    z̃(t) a draw of q(t): per dimension x + 0.01·ε with probability α(t) = α(0) + ω·t, else the
    model's N(μ_t, σ²_t). Recomputed here from the recorded states: the step weights, the
    Gaussian and the rates (α(t), not α(t−1)) are the documented ones."""
    T, alpha0, omega, B, d = 4, 0.1, 0.2, 4000, 2
    method = Infusion(MethodConfig(T=T, settings=InfusionSettings(alpha0=alpha0, omega=omega)))
    model = RecordingChain(d, T)
    g = torch.Generator().manual_seed(1)
    x = 0.6 + 0.3 * torch.rand(B, d, generator=g, dtype=torch.float64)
    loss = method.loss(model, x, torch.Generator().manual_seed(2))
    assert loss.shape == (B,)
    assert [t for t, _ in model.seen] == list(range(1, T + 1))
    states = [z for _, z in model.seen]  # z̃(0) … z̃(T−1)

    expected = torch.zeros(B, dtype=torch.float64)
    for t, z in enumerate(states, start=1):
        mean, var = model.transition(z, t)
        nll = 0.5 * (torch.log(2 * math.pi * var) + (x - mean) ** 2 / var).sum(-1)
        expected += (t / T) * nll
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=0)

    # the infused fraction of each state is its rate; the other dimensions are model draws
    for t, z in enumerate(states):  # z = z̃(t)
        infused = (z - x).abs() < 0.1
        assert float(infused.double().mean()) == pytest.approx(alpha0 + omega * t, abs=0.03), t
        if t == 0:
            mean, var = torch.full_like(x, 0.2), torch.full_like(x, 1e-6)  # p(0)
        else:
            mean, var = model.transition(states[t - 1], t)
        r = ((z - mean) / var.sqrt())[~infused]
        assert float(r.abs().max()) < 6 and float(r.var()) == pytest.approx(1.0, abs=0.1), t
        assert float((z - x)[infused].std()) == pytest.approx(0.01, rel=0.1), t  # √1e-4

    # uniform weights: the same chain, each step's Gaussian term with weight 1
    uniform = Infusion(MethodConfig(T=T, settings=InfusionSettings(
        alpha0=alpha0, omega=omega, step_weight="uniform")))
    model.seen.clear()
    got = uniform.loss(model, x, torch.Generator().manual_seed(2))
    ref = torch.zeros(B, dtype=torch.float64)
    for t, z in model.seen:
        mean, var = model.transition(z, t)
        ref += 0.5 * (torch.log(2 * math.pi * var) + (x - mean) ** 2 / var).sum(-1)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)


# ----------------------------------------------------------------------------- noise scale
class ConstantChain(ChainModel):
    """p(t)(· | z) = N(μ, σ²) with fixed per-dimension μ and σ² (σ² far from σ⁴)."""

    def __init__(self, mean, var) -> None:
        d = len(mean)
        super().__init__((d,), 1, nn.Identity(), _prior(d, 0.5, 1.0).float())
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("var", torch.tensor(var))

    def forward(self, z, t, noise=None):
        return self.mean.expand_as(z), self.var.expand_as(z)


def test_one_sampler_step_has_the_model_variance():
    """z(t) = μ + σ·ε: over 20,000 chains the step's empirical variance is σ² (not σ⁴)."""
    var = [0.04, 0.25, 0.09]
    model = ConstantChain([0.3, 0.7, 0.5], var)
    z = sample_chain(model, 20000, 1, seed=0, batch_size=20000).samples.double()
    np.testing.assert_allclose(z.mean(0).numpy(), [0.3, 0.7, 0.5], atol=0.02)
    np.testing.assert_allclose(z.var(0).numpy(), var, rtol=0.05)
    blocks = iter(torch.randn(3, 20000, 3, generator=torch.Generator().manual_seed(1)))
    z, _ = run_chain(model, lambda: next(blocks), 2)
    np.testing.assert_allclose(z.double().var(0).numpy(), var, rtol=0.05)


def test_the_paper_chain_steps_with_its_own_sigma():
    """On the paper's Gaussian chain (stored statistics, eval mode): the standardised residual
    (z(t) − μ_t)/σ_t of each step, with (μ_t, σ²_t) = model(z(t−1), t), has variance 1."""
    cfg = tiny_config(model={"hidden": (16, 16)}, method={"T": 2})
    from infusion.methods import build_method

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_method(cfg.method).build_model((2,), cfg.model)
    for n in step_norms(model):
        n.stat_ready.fill_(True)  # mean 0, variance 1: a fixed, valid normalisation
    model.eval()
    res = sample_chain(model, 5000, 2, seed=0, return_trajectory=True, batch_size=5000)
    for t in (1, 2):
        with torch.no_grad():
            mean, var = model(res.states[t - 1], t)
        assert float(var.max()) < 0.11  # σ² ≤ β + ε: σ⁴ would be 10× smaller at least
        r = (res.states[t] - mean) / var.sqrt()
        assert float(r.var()) == pytest.approx(1.0, abs=0.05), t
        assert float(r.mean()) == pytest.approx(0.0, abs=0.05), t


# ----------------------------------------------------------------------------- classes
class ClassEcho(ChainModel):
    """A class-conditional stand-in: μ = (y + 1)/(K + 1) in every dimension, σ² = 1e-10,
    recording the classes of every call."""

    def __init__(self, classes: int = 7, d: int = 2) -> None:
        super().__init__((d,), 1, nn.Identity(), _prior(d, 0.5, 0.01).float())
        self.classes = classes
        self.calls: list[list[int]] = []

    def forward(self, z, t, noise=None, y=None):
        assert y is not None and y.shape == (z.shape[0],)
        self.calls.append(y.tolist())
        mean = ((y.float() + 1) / (self.classes + 1))[:, None].expand_as(z)
        return mean, torch.full_like(z, 1e-10)

    def decode(self, means: torch.Tensor) -> list[int]:
        return (means[:, 0] * (self.classes + 1) - 1).round().long().tolist()


@pytest.mark.parametrize("batch", [1, 3, 4, 100])
def test_each_row_is_drawn_with_its_own_class(batch):
    model = ClassEcho()
    labels = [5, 0, 3, 3, 6, 1, 2, 4, 0, 6, 2]  # no batch is a palindrome or a prefix repeat
    res = sample_chain(model, len(labels), 1, seed=40, labels=labels, batch_size=batch)
    assert res.labels.tolist() == labels
    assert model.decode(res.means) == labels  # what the model really received, row by row
    assert [c for call in model.calls for c in call] == labels
    model.calls.clear()
    default = sample_chain(model, 9, 1, seed=12, batch_size=batch)  # class = seed mod K
    assert model.decode(default.means) == [(12 + i) % 7 for i in range(9)]
    res = sample_chain(model, 4, 1, seeds=[30, 2, 9, 15], batch_size=batch)
    assert model.decode(res.means) == [2, 2, 2, 1]


def test_sample_files_hold_each_rows_class(tmp_path):
    model = ClassEcho()
    labels = [6, 6, 1, 4, 0, 2, 5]
    out = sample_to_file(model, tmp_path / "s.npz", n=7, steps=1, seeds=range(7), labels=labels,
                         batch_size=2)
    z = np.load(out)
    assert z["labels"].tolist() == labels
    assert model.decode(torch.from_numpy(z["means"])) == labels


def test_conditional_samples_do_not_depend_on_the_batch_they_are_in():
    """The paper's model with trained-looking class embeddings: a batch of mixed classes gives
    each row what that row gives alone (its seed and class), at any batch size."""
    cfg = tiny_config(model={"hidden": (16, 16), "classes": 4}, method={"T": 2})
    from infusion.methods import build_method

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_method(cfg.method).build_model((2,), cfg.model)
        for table in model.net.class_embeds:
            nn.init.normal_(table.weight, std=2.0)
    for n in step_norms(model):
        n.stat_ready.fill_(True)
    labels = [3, 0, 2, 2, 1, 3, 0]
    seeds = list(range(100, 107))
    batch = sample_chain(model, 7, seeds=seeds, labels=labels, batch_size=3).means
    alone = torch.cat([sample_chain(model, 1, seeds=[s], labels=[c]).means
                       for s, c in zip(seeds, labels)])
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-6)
    other = torch.cat([sample_chain(model, 1, seeds=[s], labels=[(c + 1) % 4]).means
                       for s, c in zip(seeds, labels)])
    assert bool(((batch - other).abs().amax(1) > 1e-3).all())  # the class matters in every row


# ----------------------------------------------------------------------------- x̂_0 clipping
class FarData(nn.Module):
    """An x_0-predicting network that always answers y = 3 (model space 3.5), far outside the
    data's range [−½, ½] of diffusion space (scale 1)."""

    def forward(self, y, k):
        return torch.full_like(y, 3.0), torch.zeros_like(y)


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_default_solvers_clip_the_data_prediction(sampler):
    """By default x̂_0 is clipped to the data's range before it is used, and the last step
    (into ᾱ = 1) returns x̂_0 itself: every sample is exactly 1.0 in model space, the top of
    the range. Unclipped, the same chain ends at x̂_0 = 3.5."""
    schedule = Schedule.from_betas(make_betas("linear", 200))
    model = DiffusionModel((3,), schedule, net=FarData(), scale=1.0, target="x0").eval()
    out = sample_chain(model, 50, 10, seed=0, sampler=sampler)
    assert torch.equal(out.samples, torch.ones_like(out.samples))
    assert torch.equal(out.means, torch.ones_like(out.means))
    from infusion.methods.diffusion_solvers import SolverChain

    free = SolverChain(model, sampler, 10, clip_x0=False)
    blocks = iter(torch.randn(11, 50, 3, generator=torch.Generator().manual_seed(0)))
    z, _ = run_chain(free, lambda: next(blocks), 10)
    torch.testing.assert_close(z, torch.full_like(z, 3.5))


def test_default_ddim_is_the_clipped_recursion():
    """DDIM (η = 0) with the default clipping, against the recursion written here:
    x̂_0 = clip((y − √(1−ᾱ)·ε̂)/√ᾱ, −½, ½), y' = √ᾱ'·x̂_0 + √(1−ᾱ')·ε̂ (ε̂ as predicted), on
    the exact denoiser of data N(3, 0.1²) — outside the range, so clipping acts at every step."""
    from infusion.methods.diffusion_solvers import logsnr_steps

    schedule = Schedule.from_betas(make_betas("linear", 200))
    ab = torch.tensor(schedule.alpha_bar, dtype=torch.float64)

    class ExactEps(nn.Module):
        def forward(self, y, k):
            a = ab[k - 1][:, None].to(y.dtype)
            return (1 - a).sqrt() * (y - a.sqrt() * 3.0) / (a * 0.01 + 1 - a), torch.zeros_like(y)

    model = DiffusionModel((3,), schedule, net=ExactEps(), scale=1.0).eval()
    noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    blocks = iter([noise] + [torch.randn(2, 3) for _ in range(10)])  # η = 0: steps add none
    z, _ = run_chain(model.solver("ddim", 10), lambda: next(blocks), 10)
    y = noise.double()  # z(0) from the prior N(½, 1) of model space: y = noise
    ts = logsnr_steps(schedule.alpha_bar, 10)
    clipped = 0
    for i, t in enumerate(ts):
        a = ab[t]
        a_next = ab[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        eps = (1 - a).sqrt() * (y - a.sqrt() * 3.0) / (a * 0.01 + 1 - a)
        raw = (y - (1 - a).sqrt() * eps) / a.sqrt()
        clipped += int((raw.abs() > 0.5).sum())
        x0 = raw.clamp(-0.5, 0.5)
        y = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    assert clipped >= 3 * 2 * 5  # clipping acts, at least at half of the steps
    torch.testing.assert_close(z.double(), y + 0.5, rtol=1e-4, atol=1e-4)
