"""The paper's figures from one run directory (paper Figs. 1–4, 7; thesis Fig. A.2), and the
likelihood and reversibility figures of the baselines (algorithms.md §7, §11).

* Fig. 1: sampling chains (means μ(t) of algorithms.md §2, one row per chain).
* Fig. 2: infusion chains (algorithms.md §3) for fixed validation targets as training progresses, from
  the ``infusion_chains/epoch-NNNN.npz`` files the trainer writes at ``train.record_chains_at``.
* Fig. 3: lower-bound curves (algorithms.md §7) on training and validation data per epoch, from
  ``metrics.jsonl`` (``train_bound`` needs ``train.train_bound_examples`` > 0).
* Fig. 4: samples with the nearest training image (``figures.save_neighbour_figure``).
* Fig. 7: infusion chains for the same targets under a constant and an increasing rate.
* ``likelihood_vs_k``: the importance-sampling estimate of algorithms.md §7 (for walkback its eq. 10,
  for diffusion the IS form of its bound) against the number of proposal draws k, from the
  shared ``likelihood`` code, for every method that defines a likelihood.
* ``reversibility`` (walkback runs): the appendix H measure, KL / entropy, as the chain runs.

:func:`make_figures` draws all of them into ``<run>/figures/`` and says which it had to skip.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .. import figures
from ..chain.model import ChainModel, given
from ..chain.sampler import sample_chain
from ..config import Config
from ..data import load_data, to_unit
from ..errors import InputError
from ..io import check_outputs, claim_folder
from ..methods import build_method
from ..methods.infusion import infusion_rates
from ..methods.walkback import reversibility
from ..models import load_model
from .likelihood import estimate_likelihood
from .metrics import nearest_neighbours

logger = logging.getLogger(__name__)


def fig1_sampling_chains(path: str | Path, model: ChainModel, steps: int, n: int = 8,
                         seed: int = 0, columns: int = 11) -> Path:
    """Fig. 1: ``n`` sampling chains of ``steps`` steps, about ``columns`` steps shown."""
    res = sample_chain(model, n, steps, seed=seed, return_trajectory=True)
    every = max(1, steps // max(1, columns - 1))
    return figures.save_chain_figure(path, res.trajectory_means, every=every)


def fig2_infusion_chains(path: str | Path, run_dir: str | Path) -> Path:
    """Fig. 2: the recorded infusion chains, one panel per epoch (rows: targets; columns:
    z̃(0) … z̃(T-1), μ_T, then the target)."""
    files = sorted((Path(run_dir) / "infusion_chains").glob("epoch-*.npz"))
    if not files:
        raise FileNotFoundError(f"{str(run_dir)!r} has no infusion_chains/epoch-*.npz; train with "
                                "--set train.record_chains_at=0,1,5,… to record them")
    panels = []
    for f in files:
        with np.load(f) as z:
            panels.append((f"epoch {int(z['epoch'])}", z["chain"], z["targets"]))
    return figures.save_chain_panels(path, panels)


def fig3_bound_curves(path: str | Path, metrics_file: str | Path) -> Path:
    """Fig. 3: the stochastic lower bound on training and validation examples per epoch, with
    population statistics (a fixed model, algorithms.md §6) and, dashed, with each minibatch's
    own statistics (the paper's mode during training)."""
    rows = figures.read_metric_rows(metrics_file)
    if not any(r.get(k) is not None for r in rows for k in figures.BOUND_KEYS):
        raise InputError(f"{str(metrics_file)!r} holds no validation bound values")
    return figures.save_curves(path, metrics_file, panels=(figures.BOUND_KEYS,))


def fig4_nearest_neighbours(path: str | Path, samples: torch.Tensor, train: torch.Tensor) -> Path:
    """Fig. 4: samples, last column the nearest training image of the next-to-last column."""
    _, idx = nearest_neighbours(samples, train)
    return figures.save_neighbour_figure(path, samples, train, idx)


@torch.no_grad()
def constant_vs_increasing_chains(model: ChainModel, cfg: Config, x: torch.Tensor, seed: int = 0,
                                  constant: float | None = None
                                  ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Infusion chains (algorithms.md §3) for targets x (n, d) under the run's increasing schedule
    α(t) = α(0) + tω and a constant one (default: the same mean rate), same noise seed.

    Returns ``[(title, chain (T+1, n, *shape), targets (n, *shape)), …]`` for
    :func:`infusion.figures.chain_panels_figure`.
    """
    mc = cfg.method
    if not build_method(mc).has_infusion_chain:
        raise InputError(f"method {mc.name!r} has no infusion chains")
    s = mc.settings  # infusion's: the one method with infusion chains
    rates = infusion_rates(mc.T, s.alpha0, s.omega)
    constant = float(np.mean(rates)) if constant is None else constant
    out = []
    for title, method_cfg in (
            (f"increasing: α(0)={s.alpha0:g}, ω={s.omega:g}", mc),
            (f"constant: α={constant:.3g}",
             replace(mc, settings=replace(s, alpha0=constant, omega=0.0)))):
        method = build_method(method_cfg)
        g = torch.Generator(device=x.device).manual_seed(seed)
        states = method.infusion_chain(model, x, g)
        chain = torch.stack(states).float().cpu().numpy().reshape(len(states), len(x), *model.shape)
        out.append((title, chain, x.float().cpu().numpy().reshape(len(x), *model.shape)))
    return out


FIGURES = ("fig1_sampling_chains", "fig2_infusion_chains", "fig3_bound_curves",
           "fig4_nearest_neighbours", "fig7_constant_vs_increasing", "likelihood_vs_k",
           "reversibility")  # each drawn to <name>.png


def make_figures(run_dir: str | Path, out_dir: str | Path | None = None, device: str = "auto",
                 n: int = 8, seed: int = 0) -> dict[str, Path | str]:
    """Every paper figure a run allows, into ``out_dir`` (default ``<run>/figures``).

    Returns ``{figure: path}`` for those written and ``{figure: "skipped: why"}`` for the rest
    (each also logged, at debug level, on the ``infusion.evaluate.paper_figures`` logger).

    Only the library's own files are replaced (:func:`infusion.io.claim_folder`): a file of a
    figure's name (:data:`FIGURES`) that it did not write — not named in the manifest that
    covers the folder (the run's, for ``<run>/figures``), or any in a folder without one — is
    refused (:class:`~infusion.errors.InputError`) before anything is drawn; a folder created
    here starts a manifest.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {str(run)!r} does not exist")
    out = Path(out_dir) if out_dir is not None else run / "figures"
    own = [out / f"{name}.png" for name in FIGURES]
    check_outputs(out, own, hint="draw the figures into another folder (--out)")
    model, cfg = load_model(run, device)
    claim_folder(out, own, hint="draw the figures into another folder (--out)")
    steps = cfg.sample.steps or cfg.method.T
    done: dict[str, Path | str] = {}

    def attempt(name: str, fn: Callable[[], Path]) -> None:
        try:
            done[name] = fn()
        except (FileNotFoundError, ValueError, ImportError) as e:
            done[name] = f"skipped: {e}"
        logger.debug(f"{name}: {done[name]}")

    attempt("fig1_sampling_chains",
            lambda: fig1_sampling_chains(out / "fig1_sampling_chains.png", model, steps, n, seed))
    attempt("fig2_infusion_chains",
            lambda: fig2_infusion_chains(out / "fig2_infusion_chains.png", run))
    attempt("fig3_bound_curves",
            lambda: fig3_bound_curves(out / "fig3_bound_curves.png", _require(run / "metrics.jsonl")))
    data = load_data(cfg, model.prior.mean.device)
    attempt("fig4_nearest_neighbours", lambda: _fig4(out, run, data, cfg))
    g = torch.Generator(device=data.valid.device).manual_seed(seed)
    targets = data.model_space(data.valid[:n], g)
    conditioned = given(model, data.labels("valid", slice(0, n)))  # a conditional model: their classes
    attempt("fig7_constant_vs_increasing", lambda: figures.save_chain_panels(
        out / "fig7_constant_vs_increasing.png",
        constant_vs_increasing_chains(conditioned, cfg, targets, seed)))
    attempt("likelihood_vs_k", lambda: likelihood_vs_k(
        out / "likelihood_vs_k.png", model, cfg, data.valid[:LIKELIHOOD_EXAMPLES], seed=seed,
        labels=data.labels("valid", slice(0, LIKELIHOOD_EXAMPLES))))
    attempt("reversibility", lambda: reversibility_figure(
        out / "reversibility.png", model, cfg, seed=seed))
    return done


LIKELIHOOD_EXAMPLES = 200  # validation examples of the likelihood-against-k figure


def likelihood_vs_k(path: str | Path, model, cfg: Config, raw: torch.Tensor, k_max: int = 64,
                    seed: int = 0, labels: torch.Tensor | None = None) -> Path:
    """The IS estimate (algorithms.md §7) on ``raw`` validation data against the number of draws k, and
    the stochastic lower bound (the mean single-draw ℓ), through ``likelihood.estimate_likelihood``.
    The estimate rises with k towards log p(x); how far it rises shows how loose the bound is.
    ``labels``: the examples' classes, for a class-conditional model (log p(x | y))."""
    method = build_method(cfg.method)
    if not method.has_likelihood or method.likelihood != "bound":
        raise InputError(f"method {cfg.method.name!r} has no bound and IS estimate to draw")
    ks = [2**i for i in range(int(np.log2(k_max)))]
    est = estimate_likelihood(model, method, raw, k_max, seed=seed, ks=ks,
                              labels=None if labels is None else labels.cpu())
    ks.append(k_max)
    curve = [est[f"is@{c}"].mean for c in ks[:-1]] + [est["is"].mean]
    return figures.save_line_plot(
        path, ks, {"IS estimate": curve, "lower bound (mean ℓ)": [est["lb"].mean] * len(ks)},
        "proposal draws k", "nats / example",
        title=f"{cfg.method.name}: {len(raw)} validation examples", logx=True)


def reversibility_figure(path: str | Path, model, cfg: Config, n_chains: int = 100,
                         steps: int = 1000, seed: int = 0) -> Path:
    """The running estimate of VW appendix H's irreversibility KL (nats per step) along
    temperature-1 chains (``methods.walkback.reversibility``), with KL / entropy in the title
    (the paper reports 3.6%; meaningful when the entropy is positive)."""
    if not build_method(cfg.method).has_reversibility:
        raise InputError(f"the reversibility measure (VW appendix H) is for walkback runs, this "
                         f"is {cfg.method.name!r}")
    r = reversibility(model, n_chains, steps, seed=seed, trace=True)
    return figures.save_line_plot(
        path, range(1, steps + 1), {"KL(p ‖ time reversal)": r["running_kl"]},
        "temperature-1 steps after burn-in", "nats / step",
        title=f"{n_chains} chains: KL {r['kl']:.3g} ± {r['kl_se']:.2g} nats/step\n"
              f"entropy {r['entropy']:.3g} nats/step, ratio {r['ratio']:.2%}")


def _fig4(out: Path, run: Path, data, cfg: Config) -> Path:
    if not data.pixels:
        raise InputError("nearest training neighbours are drawn for image data only")
    with np.load(_require(run / "samples.npz")) as z:
        samples = torch.from_numpy(z["means"][:100])
    train = to_unit(data.train.cpu()).reshape(len(data.train), *data.shape)
    return fig4_nearest_neighbours(out / "fig4_nearest_neighbours.png", samples, train)


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    return path
