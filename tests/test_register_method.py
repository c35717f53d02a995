"""A method added from outside the library (docs/design.md, "A method is one file"): this
module alone declares a method — its settings dataclass with its capabilities, its
:class:`~infusion.methods.Method`, one :func:`~infusion.methods.register_method` line and a
preset — and the library trains it, types and checks its settings, samples it, and loads its
run and its export back."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from infusion import config, load_model, sample_chain, save_pretrained, train
from infusion.chain.distributions import normal_log_prob
from infusion.chain.model import GaussianChainModel
from infusion.config import ConfigError
from infusion.errors import require
from infusion.methods import METHODS, Method, build_method, register_method, unregister_method
from infusion.models import CheckpointError


@dataclass(frozen=True)
class ShrinkSettings:
    """``method.shrink.*``: the corruption's std at the chain's first step."""

    samplers: ClassVar[tuple[str, ...]] = ("ancestral",)

    noise: float = 0.3

    def validate(self) -> None:
        require([(math.isfinite(self.noise) and 0 < self.noise <= 1,
                  f"method.shrink.noise={self.noise}: expected in (0, 1]")])


class Shrink(Method):
    """A denoising chain: step t of T reconstructs x from x plus noise·(T − t + 1)/T·ε,
    loss −Σ_t log N(x; μ_t, σ²_t); the sampler runs the T steps from the factorial prior."""

    name = "shrink"
    Settings = ShrinkSettings

    def build_model(self, shape, cfg):
        return GaussianChainModel(shape, self.T, cfg)

    def loss(self, model, x, generator):
        total = x.new_zeros(x.shape[0])
        for t in range(1, self.T + 1):
            level = self.settings.noise * (self.T - t + 1) / self.T
            z = x + level * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            mean, var = model(z, t)
            total = total - normal_log_prob(x, mean, var)
        return total


SPIRAL = {"data": {"name": "spiral", "toy_size": 512}, "model": {"hidden": (16, 16)},
          "method": {"name": "shrink", "T": 3, "shrink": {"noise": 0.2}},
          "train": {"epochs": 2, "batch_size": 64, "patience": 0, "valid_examples": 64,
                    "cpu_threads": 1},
          "sample": {"n": 8, "chains": 2}}


@pytest.fixture
def shrink():
    """The method and its preset registered for one test, and removed after it."""
    register_method(Shrink)
    config.register_preset("spiral-shrink", "2-D spiral, the test's denoising chain", SPIRAL)
    yield Shrink
    unregister_method("shrink")
    config.PRESETS.pop("spiral-shrink", None)


def test_a_method_from_a_test_module_trains_samples_and_reloads(shrink, tmp_path):
    cfg = config.override(config.preset("spiral-shrink"), ["method.shrink.noise=0.25"])
    assert cfg.method.settings == ShrinkSettings(noise=0.25) and cfg.method.shrink.noise == 0.25
    assert config.to_dict(cfg)["method"] == {"name": "shrink", "T": 3, "shrink": {"noise": 0.25}}
    assert config.from_dict(config.to_dict(cfg)) == cfg
    assert isinstance(build_method(cfg.method), Shrink) and METHODS["shrink"] is Shrink

    final = train(cfg, tmp_path / "run", progress=False)
    model, loaded = load_model(final)
    assert loaded == cfg and isinstance(model, GaussianChainModel) and model.stats_ready
    out = sample_chain(model, 5, seed=3)
    assert out.samples.shape == (5, 2) and torch.isfinite(out.samples).all()

    export = save_pretrained(model, loaded, tmp_path / "export")
    again, from_export = load_model(export)
    assert from_export.method == cfg.method
    assert torch.equal(sample_chain(again, 5, seed=3).samples, out.samples)


def test_its_settings_are_typed_and_checked_by_name(shrink):
    base = config.preset("spiral-shrink")
    with pytest.raises(ConfigError, match=r"method\.shrink\.noise=2\.0: expected in \(0, 1\]"):
        config.override(base, ["method.shrink.noise=2"])
    with pytest.raises(ConfigError, match=r"method\.shrink\.noise='loud': expected float"):
        config.override(base, ["method.shrink.noise=loud"])
    with pytest.raises(ConfigError, match="unknown setting method.shrink.bogus"):
        config.override(base, ["method.shrink.bogus=1"])
    with pytest.raises(ConfigError, match=r"method\.shrink\.\* is used only by method\.name="
                                          r"shrink"):
        config.override(config.preset("spiral"), ["method.shrink.noise=0.5"])
    # either order: the method's own settings apply to the method named last
    a = config.override(config.preset("spiral"), ["method.shrink.noise=0.5", "method.name=shrink"])
    b = config.override(config.preset("spiral"), ["method.name=shrink", "method.shrink.noise=0.5"])
    assert a.method == b.method == config.MethodConfig("shrink", 20, ShrinkSettings(0.5))
    # the sampler and the capabilities come from its settings class
    assert "shrink" not in config.STEP_EMBEDDING_METHODS + config.CONDITIONAL_METHODS
    with pytest.raises(ConfigError, match="sample.sampler='ddim': method.name=shrink"):
        config.override(base, ["sample.sampler=ddim"])


def test_registration_refuses_what_it_cannot_serve(shrink):
    class Other(Shrink):
        pass

    with pytest.raises(ConfigError, match="'shrink' is already registered"):
        register_method(Other)
    register_method(Shrink)  # the same class again: nothing changes
    with pytest.raises(ConfigError, match="'infusion' is already registered"):
        register_method(type("Fake", (Shrink,), {"name": "infusion"}))
    assert METHODS["infusion"].__module__ == "infusion.methods.infusion"
    with pytest.raises(TypeError, match="frozen dataclass"):
        register_method(type("Loose", (Shrink,), {"name": "loose", "Settings": dict}))
    with pytest.raises(ConfigError, match="'T': expected an identifier other than"):
        register_method(type("Clash", (Shrink,), {"name": "T"}))
    with pytest.raises(TypeError, match="subclass of infusion.Method"):
        register_method(ShrinkSettings)
    with pytest.raises(ConfigError, match="preset 'spiral' exists"):
        config.register_preset("spiral", "again", SPIRAL)
    assert "loose" not in METHODS and "T" not in METHODS


def test_a_run_of_an_unregistered_method_is_refused_by_name(shrink, tmp_path):
    final = train(config.preset("spiral-shrink"), tmp_path / "run", progress=False)
    unregister_method("shrink")
    with pytest.raises(CheckpointError, match=r"method\.name='shrink': expected one of \(.*"
                                              r"infusion\.register_method"):
        load_model(final)
