"""The one model interface, the method protocol, nested settings with migration of version-0.1
configs and checkpoints, and the step-by-step sampler (issue 11)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from infusion import config, train
from infusion.chain.model import ChainModel
from infusion.chain.sampler import PerSampleNoise, run_chain, sample_chain
from infusion.methods import METHODS, Method, build_method
from infusion.models import load_model

OLD = Path(__file__).parent / "data" / "v0_1"  # run directories written by version 0.1
TINY = ["data.toy_size=256", "model.hidden=8,8", "train.epochs=2", "train.batch_size=64",
        "train.valid_examples=64", "sample.n=4", "sample.chains=2", "method.T=3"]
PRESETS = {"infusion": "spiral", "walkback": "spiral-walkback", "gsn": "spiral-gsn",
           "diffusion": "spiral-diffusion", "flow": "spiral-flow", "vae": "spiral-vae"}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_in_bf16_on_the_cpu_and_loads_back(tmp_path, name):
    steps = min(3, getattr(config.METHOD_SETTINGS[name], "T_max", 3))  # the VAE: T = 1
    cfg = config.override(config.preset(PRESETS[name]),
                          TINY + [f"method.T={steps}", "train.precision=bf16"])
    final = train(cfg, tmp_path / name, progress=False, log=lambda s: None)
    model, loaded = load_model(final)
    assert isinstance(model, ChainModel) and loaded.method.name == name
    assert model.stats_ready and model.sample_steps == loaded.sample_steps
    out = sample_chain(model, 3, seed=0)
    assert out.samples.shape == (3, 2) and torch.isfinite(out.samples).all()


def test_methods_declare_capabilities_instead_of_being_probed():
    caps = {n: (m.has_likelihood, m.has_infusion_chain, m.has_reversibility, m.likelihood)
            for n, m in METHODS.items()}
    assert caps == {"infusion": (True, True, False, "bound"),
                    "walkback": (True, False, True, "bound"),
                    "gsn": (False, False, False, "bound"),
                    "diffusion": (True, False, False, "bound"),
                    "flow": (True, False, False, "estimate"),
                    "vae": (True, False, False, "bound")}
    gsn = build_method(config.preset("spiral-gsn").method)
    assert isinstance(gsn, Method) and gsn.settings == config.preset("spiral-gsn").method.gsn
    model = gsn.build_model((2,), config.preset("spiral-gsn").model)
    with pytest.raises(TypeError, match="no likelihood"):
        gsn.log_weight(model, torch.rand(4, 2), None)


def test_nested_settings_validate_themselves_and_name_the_setting():
    cfg = config.override(config.preset("spiral-walkback"), ["method.walkback.sigma_max=0.3"])
    assert cfg.method.walkback.sigma_max == 0.3 and cfg.method.settings is cfg.method.walkback
    with pytest.raises(config.ConfigError, match=r"method\.walkback\.\* .*method\.name=infusion"):
        config.override(config.preset("mnist"), ["method.walkback.sigma_max=0.3"])  # ignored
    with pytest.raises(config.ConfigError, match=r"method\.walkback\.sigma_max=-1"):
        config.override(config.preset("spiral-walkback"), ["method.walkback.sigma_max=-1"])
    with pytest.raises(config.ConfigError, match="method.walkback is a section"):
        config.override(config.preset("mnist"), ["method.walkback=1"])
    with pytest.raises(config.ConfigError, match="unknown setting method.gsn.bogus"):
        config.override(config.preset("mnist"), ["method.gsn.bogus=1"])
    # diffusion and the flow run a step-embedding MLP: any step count, no conv body
    flow = config.override(config.preset("mnist-flow"), ["sample.steps=5"])
    assert flow.sample_steps == 5 < flow.method.T
    with pytest.raises(config.ConfigError, match="model.net='conv': method.name=flow"):
        config.override(config.preset("mnist-flow"), ["model.net=conv"])
    with pytest.raises(config.ConfigError, match="sample.steps=5: sampling needs T' >= T=15"):
        config.override(config.preset("mnist"), ["sample.steps=5"])
    # the flat names of version 0.1 still work on the command line
    old = config.override(config.preset("mnist"), ["method.alpha0=0.1"])
    assert old.method.infusion.alpha0 == 0.1
    old = config.override(config.preset("mnist-walkback"), ["method.vw_n1=3"])
    assert old.method.walkback.n1 == 3


def test_flat_configs_of_version_0_1_migrate():
    flat = {"method": {"name": "walkback", "T": 8, "vw_alpha": 0.4, "vw_sigma_max": 0.2,
                       "alpha0": 0.1, "gsn_noise": "salt_pepper", "diff_predict": "v"}}
    sections = config.migrate(flat)["method"]  # each flat key into its method's section
    assert (sections["infusion"], sections["gsn"], sections["diffusion"]) == (
        {"alpha0": 0.1}, {"noise": "salt_pepper"}, {"predict": "v"})
    m = config.from_dict(flat).method  # the config keeps the chosen method's settings
    assert (m.walkback.alpha, m.walkback.sigma_max) == (0.4, 0.2)
    assert m.walkback.temperature_scales == "std"  # as 0.1 trained it
    assert config.preset("spiral-walkback").method.walkback.temperature_scales == "variance"
    # today's dicts round-trip unchanged
    cfg = config.preset("mnist-walkback")
    assert config.from_dict(config.to_dict(cfg)) == cfg


@pytest.mark.parametrize("name", ["infusion", "walkback", "gsn", "diffusion"])
def test_version_0_1_checkpoints_load_and_compute_what_they_computed(name):
    model, _ = load_model(OLD / name)  # run directory -> checkpoints/latest -> final.pt
    ref = np.load(OLD / name / "reference.npz")
    z = torch.from_numpy(ref["z"])
    for t in (1, 2):
        noise = torch.full_like(z, 0.3) if name == "gsn" else None
        with torch.no_grad():
            mean, var = model(z, t, noise)
        np.testing.assert_allclose(mean.numpy(), ref[f"mean_{t}"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(var.numpy(), ref[f"var_{t}"], rtol=1e-6, atol=1e-9)


def test_a_version_0_1_run_resumes_without_repeating_rows(tmp_path):
    run = tmp_path / "old"
    shutil.copytree(OLD / "infusion", run)
    # a 0.1 best.pt: the 0.1 parameter names (op.net.*), which finalize() must read too
    old = torch.load(run / "checkpoints" / "epoch-0002.pt", weights_only=True)
    assert any(k.startswith("op.net.") for k in old["model"])
    torch.save({"format": 1, "model": old["model"], "epoch": 2}, run / "checkpoints" / "best.pt")
    train(None, run, resume=True, progress=False, log=lambda s: None)  # finalize only
    assert load_model(run)[0].stats_ready
    train(None, run, resume=True, overrides=["train.epochs=3"], progress=False,
          log=lambda s: None)
    rows = [line for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    assert [int(r.split('"epoch": ')[1].split(",")[0]) for r in rows] == [1, 2, 3]


def test_walkback_temperature_multiplies_the_variance():
    cfg = config.preset("spiral-walkback")
    model = build_method(cfg.method).build_model((2,), cfg.model)
    s = torch.rand(5, 2)
    _, var1 = model.transition(s, 0)
    _, var2 = model.transition(s, 1)  # temperature 2
    torch.testing.assert_close(var2, 2 * var1)
    # the cap keeps the hottest step's std at sigma_max: sigma <= sigma_max / sqrt(T_max)
    assert model.sigma_cap == pytest.approx(cfg.method.walkback.sigma_max / 2 ** ((cfg.method.T - 1) / 2))


def test_sampler_is_handed_its_noise_step_by_step_and_reports_every_state(spiral_run):
    model, _ = load_model(spiral_run)
    calls, seen = [], []

    def noise():
        calls.append(1)
        return torch.zeros(4, model.d)

    z, mean = run_chain(model, noise, 7, callback=lambda info: seen.append(info["t"]))
    assert len(calls) == 8 and seen == list(range(8))  # z(0) and one block per step
    torch.testing.assert_close(z, mean)  # zero noise: the state is the mean
    # per-sample generators: the same sample at any batch size, and any number of steps
    a = sample_chain(model, 5, model.T, seed=10, batch_size=2).samples
    b = sample_chain(model, 5, model.T, seeds=[10, 11, 12, 13, 14], batch_size=5).samples
    torch.testing.assert_close(a, b)
    first = PerSampleNoise([10], model.d)()
    torch.testing.assert_close(first, PerSampleNoise([10, 99], model.d)()[:1])


def test_sampling_defaults_to_the_runs_sample_steps(spiral_run):
    model, cfg = load_model(spiral_run)
    assert model.sample_steps == cfg.sample_steps
    default = sample_chain(model, 2, seed=0).samples
    torch.testing.assert_close(default, sample_chain(model, 2, cfg.sample_steps, seed=0).samples)


def test_a_mid_training_checkpoint_samples_from_python(tmp_path):
    import infusion

    cfg = config.override(config.preset("spiral"), TINY + ["train.epochs=1"])
    train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    state = tmp_path / "run" / "checkpoints" / "epoch-0001.pt"
    model, _ = infusion.load_model(state, "cpu", log=lambda s: None)  # computes §6 statistics
    assert model.stats_ready
    assert infusion.sample_chain(model, 4, seed=0).samples.shape == (4, 2)


def test_config_knows_each_models_samplers():
    """config.SAMPLERS_OF (checked without importing torch models) matches what the models run."""
    from infusion.methods.diffusion import DiffusionModel
    from infusion.methods.flow import FlowModel

    assert config.SAMPLERS_OF == {"diffusion": DiffusionModel.samplers,
                                  "flow": FlowModel.samplers}
    assert set(config.SAMPLERS) == {s for v in config.SAMPLERS_OF.values() for s in v}


def test_a_method_is_declared_once():
    """The method registry and the config's registry name the same methods, each with the
    settings class its own module declares; what the config knows of a method (samplers, step
    input, conditioning) is read from that class, and its model runs exactly those samplers;
    a saved config carries only the chosen method's settings."""
    import dataclasses

    assert {f.name for f in dataclasses.fields(config.MethodConfig)} == {"name", "T", "settings"}
    assert set(METHODS) == set(config.METHOD_SETTINGS)
    for name, settings in config.METHOD_SETTINGS.items():
        assert METHODS[name].Settings is settings
        assert settings.__module__ == METHODS[name].__module__  # declared in the method's file
        assert config.SAMPLERS_OF.get(name, ("ancestral",)) == settings.samplers
        assert (name in config.STEP_EMBEDDING_METHODS) == settings.step_embedding
        assert (name in config.CONDITIONAL_METHODS) == settings.conditional
        cfg = config.preset(PRESETS[name])
        model = build_method(cfg.method).build_model((2,), cfg.model)
        assert model.samplers == settings.samplers
    saved = config.to_dict(config.preset("mnist"))
    assert set(saved["method"]) == {"name", "T", "infusion"}
    assert config.from_dict(saved) == config.preset("mnist")
