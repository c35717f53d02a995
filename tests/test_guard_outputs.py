"""Outputs a command names are not replaced unless --overwrite: evaluate's report,
inpaint's files, the figures, bench --json and the per-seed PNGs of sample --png-dir. Each
refusal is one `error:` line, exit status 2, and leaves the earlier file byte for byte."""

from __future__ import annotations

import pytest

from infusion import io
from infusion.cli import main

from .conftest import fake_mnist_cache, tiny_config


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """A one-epoch model of a fake MNIST cache (conftest's tiny_mnist, module-wide)."""
    root = tmp_path_factory.mktemp("outputs")
    with pytest.MonkeyPatch.context() as mp:
        fake_mnist_cache(mp, root)
        from infusion import train

        cfg = tiny_config(data={"name": "mnist"}, model={"hidden": (16,)}, method={"T": 2},
                          train={"epochs": 1, "batch_size": 32, "valid_examples": 32},
                          sample={"n": 4, "chains": 2})
        run = root / "run"
        train(cfg, run, progress=False, log=lambda s: None)
        yield run


def refused(argv, capsys) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "error:" in err and "--overwrite" in err, err
    return err


def ok(argv, capsys) -> None:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 0, err


def test_evaluate_keeps_a_report_unless_overwrite(mnist_run, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["evaluate", "--checkpoint", mnist_run, "--metrics", "lb", "--lb-examples", "8",
            "--out", out, "--quiet"]
    ok(argv, capsys)
    before = out.read_bytes(), out.with_suffix(".md").read_bytes()
    refused(argv + ["--seed", "5"], capsys)
    assert (out.read_bytes(), out.with_suffix(".md").read_bytes()) == before
    ok(argv + ["--seed", "5", "--overwrite"], capsys)
    assert out.read_bytes() != before[0]


def test_inpaint_keeps_its_outputs_unless_overwrite(mnist_run, tmp_path, capsys):
    out = tmp_path / "inp"
    argv = ["inpaint", "--checkpoint", mnist_run, "--mask", "top", "--chains", "2", "--n", "2",
            "--out", out, "--device", "cpu"]
    ok(argv, capsys)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"inpaint.png", "inpaint.npz"} <= set(before)
    refused(argv + ["--seed", "7"], capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    ok(argv + ["--seed", "7", "--overwrite"], capsys)
    assert (out / "inpaint.npz").read_bytes() != before["inpaint.npz"]


def test_figures_keep_earlier_figures_unless_overwrite(mnist_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "figs"
    out.mkdir()
    io.start_manifest(out, ["fig1_sampling_chains.png"])  # an earlier `figures` wrote it
    earlier = out / "fig1_sampling_chains.png"
    earlier.write_bytes(b"an earlier figure")
    argv = ["figures", "--run-dir", mnist_run, "--out", out, "--n", "2", "--device", "cpu"]
    refused(argv, capsys)
    assert earlier.read_bytes() == b"an earlier figure"
    from infusion.evaluate import paper_figures

    seen = []
    monkeypatch.setattr(paper_figures, "make_figures", lambda *a, **k: seen.append(a) or {})
    ok(argv + ["--overwrite"], capsys)
    assert len(seen) == 1


def test_bench_keeps_a_json_file_unless_overwrite(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench.json"
    out.write_text('{"mine": 1}\n')
    argv = ["bench", "--preset", "spiral", "--steps", "1", "--set", "model.hidden=4",
            "--set", "method.T=2", "--matmul-size", "64", "--json", out]
    refused(argv, capsys)
    assert out.read_text() == '{"mine": 1}\n'
    from infusion.training import bench

    monkeypatch.setattr(bench, "bench", lambda *a, **k: {"fake": 2})
    monkeypatch.setattr(bench, "format_report", lambda r: "report")
    ok(argv + ["--overwrite"], capsys)
    assert out.read_text() == '{\n  "fake": 2\n}\n'


def test_per_seed_pngs_are_kept_unless_overwrite(mnist_run, tmp_path, capsys):
    pngs = tmp_path / "png"
    pngs.mkdir()
    mine = pngs / "seed-000001.png"
    mine.write_bytes(b"the user's own file")
    out = tmp_path / "s.npz"
    argv = ["sample", "--checkpoint", mnist_run, "--n", "2", "--out", out, "--png-dir", pngs]
    err = refused(argv, capsys)
    assert "seed-000001.png" in err
    assert mine.read_bytes() == b"the user's own file"
    assert not out.exists() and not out.with_suffix(".png").exists()  # nothing written
    ok(argv + ["--overwrite"], capsys)
    assert mine.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (pngs / "seed-000000.png").exists()
