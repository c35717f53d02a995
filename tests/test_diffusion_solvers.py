"""Few-step diffusion samplers (algorithms.md §13): DDIM and DPM-Solver++(2M) against diffusers'
schedulers on the same network and noise, DDIM η = 1 against the ancestral chain, and the
sampler option end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infusion import config
from infusion.chain.sampler import run_chain, sample_chain
from infusion.errors import InputError
from infusion.methods import build_method
from infusion.methods.diffusion import DiffusionModel, Schedule, make_betas
from infusion.methods.diffusion_solvers import SolverChain, logsnr_steps

T, D = 50, 6


def diffusion_model(target: str = "eps", seed: int = 0):
    cfg = config.override(config.preset("spiral"), [
        "method.name=diffusion", f"method.T={T}", f"method.diffusion.predict={target}",
        "model.hidden=16,16"])
    method = build_method(cfg.method)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = method.build_model((D,), cfg.model)
        for p in model.net.parameters():  # outputs of a useful size, not tiny ones
            p.data.mul_(3.0)
    return model.eval(), method


class Blocks:
    """The same (B, d) standard-normal blocks for our sampler and for diffusers."""

    def __init__(self, n: int, batch: int = 5, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.blocks = [torch.randn(batch, D, generator=g) for _ in range(n)]
        self.i = 0

    def __call__(self) -> torch.Tensor:
        self.i += 1
        return self.blocks[self.i - 1]


def ours(model, kind: str, steps: int, eta: float, timesteps, blocks: Blocks) -> torch.Tensor:
    chain = SolverChain(model, kind, steps, eta, timesteps, clip_x0=False)  # as diffusers here
    z, _ = run_chain(chain, blocks, steps)
    return model.to_diffusion(z)


def theirs(model, scheduler, blocks: Blocks, eta: float | None = None) -> torch.Tensor:
    y = blocks.blocks[0].clone()  # the prior draw: N(0, I) in diffusion space
    for i, t in enumerate(scheduler.timesteps):
        out, _ = model.predict(y, torch.full((len(y),), int(t) + 1))
        kw = {"eta": eta, "variance_noise": blocks.blocks[i + 1]} if eta is not None else {}
        y = scheduler.step(out, t, y, **kw).prev_sample
    return y


PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


@pytest.mark.parametrize("target", ["eps", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_diffusers(target, eta):
    diffusers = pytest.importorskip("diffusers")
    model, method = diffusion_model(target)
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, trained_betas=method.betas.tolist(),
                                    clip_sample=False, set_alpha_to_one=True,
                                    prediction_type=PREDICTION[target])
    sched.set_timesteps(10)
    blocks = Blocks(11)
    a = ours(model, "ddim", 10, eta, sched.timesteps.tolist(), blocks)
    b = theirs(model, sched, blocks, eta)
    assert a.abs().max() > 0.1  # a sample, not a collapse
    torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("target", ["eps", "v"])
@pytest.mark.parametrize("steps", [5, 20])
@pytest.mark.parametrize("spacing", ["ours", "diffusers"])
def test_dpm_solver_matches_diffusers(target, steps, spacing):
    diffusers = pytest.importorskip("diffusers")
    model, method = diffusion_model(target)
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, trained_betas=method.betas.tolist(), algorithm_type="dpmsolver++",
        solver_order=2, prediction_type=PREDICTION[target])
    ts = None
    if spacing == "ours":
        sched.set_timesteps(timesteps=logsnr_steps(model.alpha_bar, steps))
    else:  # diffusers' default "linspace" spacing, handed to ours
        sched.set_timesteps(steps)
        ts = sched.timesteps.tolist()
    blocks = Blocks(steps + 1)
    a = ours(model, "dpm++2m", steps, 0.0, ts, blocks)
    b = theirs(model, sched, blocks)
    assert a.abs().max() > 0.1
    torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


class ExactEps(torch.nn.Module):
    """The exact noise prediction for data N(m, s²) per dimension, in diffusion space."""

    def __init__(self, alpha_bar, m: float, s: float) -> None:
        super().__init__()
        self.register_buffer("ab", torch.tensor(alpha_bar, dtype=torch.float32))
        self.m, self.s = m, s

    def forward(self, y, k):
        ab = self.ab[k - 1][:, None]
        eps = (1 - ab).sqrt() * (y - ab.sqrt() * self.m) / (ab * self.s**2 + 1 - ab)
        return eps, torch.zeros_like(y)


@pytest.mark.parametrize("sampler,steps,tol", [("dpm++2m", 10, 0.05), ("dpm++2m", 20, 0.05),
                                               ("ddim", 50, 0.15)])
def test_solvers_reach_gaussian_data_with_the_exact_denoiser(sampler, steps, tol):
    """Known answer: with the exact denoiser of N(0.1, 0.12²) data (T = 1000, linear betas;
    inside the data range [-0.5, 0.5] that x̂_0 is clipped to) the samples have that mean
    and standard deviation."""
    schedule = Schedule.from_betas(make_betas("linear", 1000))
    model = DiffusionModel((4,), schedule, net=ExactEps(schedule.alpha_bar, 0.1, 0.12),
                           scale=1.0).eval()
    y = sample_chain(model, 2000, steps, seed=0, sampler=sampler, batch_size=2000).samples - 0.5
    assert float(y.mean()) == pytest.approx(0.1, abs=0.01)
    assert float(y.std()) == pytest.approx(0.12, rel=tol)


def test_ddim_eta_one_is_the_ancestral_step():
    """DDIM with η = 1 on every training step has the ancestral chain's posterior mean and
    variance β̃ (Song et al. 2021), given the same data prediction x̂_0."""
    model, _ = diffusion_model("eps")
    chain = SolverChain(model, "ddim", T, 1.0, list(range(T - 1, -1, -1)), clip_x0=False)
    z = torch.rand(7, D)
    for t in range(1, T + 1):
        mean, var = chain(z, t)
        k = T - t + 1
        y = model.to_diffusion(z)
        kk = torch.full((7,), k)
        pred, _ = model.predict(y, kk)
        post_mean, post_var = model.posterior(model.data_and_noise(y, kk, pred)[0], y, kk)
        torch.testing.assert_close(model.to_diffusion(mean), post_mean, atol=1e-4, rtol=1e-4)
        if k > 1:
            torch.testing.assert_close(var * model.scale**2, post_var, atol=1e-6, rtol=1e-4)
        else:
            assert float(var.abs().max()) == 0.0  # into ᾱ = 1: no noise


def test_solvers_run_in_order_and_refuse_nonsense():
    model, _ = diffusion_model()
    chain = model.solver("dpm++2m", 4)
    z = torch.rand(3, D)
    chain(z, 1)
    with pytest.raises(RuntimeError, match="in order"):
        chain(z, 3)
    for bad in [lambda: model.solver("ddim", T + 1), lambda: model.solver("dpm++2m", 4, eta=0.5),
                lambda: model.solver("euler", 4), lambda: model.solver("ddim", 4, eta=-1.0),
                lambda: SolverChain(model, "ddim", 3, 0.0, [10, 20, 5])]:
        with pytest.raises(InputError):
            bad()


def test_sampler_setting_end_to_end():
    """sample.sampler reaches sample_chain; per-seed samples do not depend on the batch; the
    few-step solvers are refused for methods that have no schedule."""
    model, _ = diffusion_model()
    model.sampler, model.sample_steps = "dpm++2m", 8
    a = sample_chain(model, 6, seed=3, batch_size=6)
    b = sample_chain(model, 6, seed=3, batch_size=4)
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-4, atol=1e-4)  # matmul blocking
    c = sample_chain(model, 6, seed=3, sampler="ancestral")
    assert not torch.allclose(a.samples, c.samples)
    d1 = sample_chain(model, 4, 8, seed=0, sampler="ddim", eta=1.0)
    d2 = sample_chain(model, 4, 8, seed=1, sampler="ddim", eta=1.0)
    assert not torch.allclose(d1.samples, d2.samples)
    with pytest.raises(config.ConfigError, match="infusion samples with"):
        config.override(config.preset("spiral"), ["sample.sampler=ddim"])
    with pytest.raises(config.ConfigError, match="eta"):
        config.override(config.preset("spiral"), ["method.name=diffusion", "sample.eta=0.5"])


def test_cli_sampler(tmp_path, capsys):
    from infusion.cli import main

    tiny = ["--set", "data.toy_size=256", "--set", "model.hidden=16", "--set", "train.epochs=1",
            "--set", "train.batch_size=64", "--set", "sample.n=8", "--quiet"]
    run = tmp_path / "diff"
    assert main(["train", "--preset", "spiral", "--run-dir", str(run), "--set",
                 "method.name=diffusion", "--set", "method.T=8", "--set", "sample.steps=4",
                 "--set", "sample.sampler=dpm++2m", *tiny]) == 0
    out = tmp_path / "a.npz"
    assert main(["sample", "--checkpoint", str(run), "--n", "4", "--out", str(out)]) == 0
    assert "4 steps, dpm++2m" in capsys.readouterr().out  # the run's sampler by default
    assert main(["sample", "--checkpoint", str(run), "--n", "4", "--sampler", "ddim", "--eta",
                 "0.5", "--out", str(tmp_path / "b.npz")]) == 0
    assert not np.allclose(np.load(out)["samples"], np.load(tmp_path / "b.npz")["samples"])
    other = tmp_path / "inf"
    assert main(["train", "--preset", "spiral", "--run-dir", str(other), "--set", "method.T=3",
                 *tiny]) == 0
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(other), "--n", "2", "--sampler", "ddim",
                 "--out", str(tmp_path / "c.npz")]) == 2
    assert "sampler 'ddim'" in capsys.readouterr().err
