"""Only the library's own files, at the root: a command deletes or replaces a file only if the
library wrote it (named, file by file, in the folder's manifest ``.infusion-files``), the
manifest and the run's ``.lock`` must be regular files of their own (a link, a directory, a
FIFO or a hard-linked one is refused, nothing touched), a refused command changes nothing, and
no write passes through a link out of a folder the library keeps."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from infusion import io
from infusion.cli.parser import main
from infusion.errors import UserError
from infusion.training import rundir
from infusion.training.fit import fit
from infusion.training.loop import train

from .conftest import tiny_config

QUIET = {"progress": False, "log": lambda s: None}
FIT_TINY = ["model.hidden=8,8", "method.T=3", "train.epochs=1", "train.batch_size=32",
            "sample.n=4", "sample.chains=2"]


def tiny(**train_settings):
    return tiny_config(train={"epochs": 1, "record_chains_at": (1,), "record_chains_n": 2,
                              **train_settings})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A one-epoch spiral run with a recorded infusion chain: copy it before changing it."""
    run = tmp_path_factory.mktemp("own") / "run"
    train(tiny(), run, **QUIET)
    return run


def copy_of(run: Path, where: Path) -> Path:
    shutil.copytree(run, where, symlinks=True)
    return where


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (links not followed) and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def ring(n: int, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).uniform(0, 2 * np.pi, n)
    return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)


# ------------------------------------------------------------ train --overwrite: files, not folders


def test_the_manifest_names_each_file_the_run_wrote(trained):
    own = io.read_manifest(trained)
    assert {"config.json", "checkpoints/final.pt", "checkpoints/latest",
            "infusion_chains/epoch-0001.npz"} <= own
    assert "checkpoints" not in own and "infusion_chains" not in own  # files, not folders
    assert {io.manifest_name(p, trained) for p in rundir.run_files(trained)} <= own


def test_overwrite_keeps_a_users_files_in_the_runs_folders(tmp_path, trained):
    run = copy_of(trained, tmp_path / "run")
    keep = run / "checkpoints" / "my-keep.pt"
    shutil.copy(run / "checkpoints" / "final.pt", keep)
    notes = run / "infusion_chains" / "notes.txt"
    notes.write_text("mine")
    train(tiny(epochs=1), run, overwrite=True, **QUIET)
    assert keep.read_bytes() == (trained / "checkpoints" / "final.pt").read_bytes()
    assert notes.read_text() == "mine"
    assert (run / "checkpoints" / "final.pt").is_file()
    assert {"checkpoints/my-keep.pt", "infusion_chains/notes.txt"}.isdisjoint(io.read_manifest(run))
    train(tiny(epochs=1), run, overwrite=True, **QUIET)  # and again: still the user's
    assert keep.is_file() and notes.is_file()


def test_a_users_file_of_a_run_name_inside_a_folder_is_refused_and_nothing_goes(tmp_path, trained):
    run = copy_of(trained, tmp_path / "run")
    mine = run / "checkpoints" / "epoch-0009.pt"  # a name the new run would write
    mine.write_bytes(b"mine")
    before = snapshot(run)
    with pytest.raises(UserError, match="epoch-0009.pt' was not written by infusion"):
        train(tiny(), run, overwrite=True, **QUIET)
    after = snapshot(run)
    after.pop(".lock", None)
    before.pop(".lock", None)
    assert after == before


def test_a_resumed_run_keeps_a_users_copy_beside_its_epoch_checkpoints(tmp_path, trained):
    run = copy_of(trained, tmp_path / "run")
    [epoch] = (run / "checkpoints").glob("epoch-*.pt")
    mine = run / "checkpoints" / "epoch-0001-mine.pt"
    shutil.copy(epoch, mine)
    train(None, run, resume=True, overrides=["train.epochs=2"], **QUIET)
    assert mine.is_file() and not epoch.exists()  # the run's own old checkpoint went
    assert (run / "checkpoints" / "epoch-0002.pt").is_file()


def test_a_users_file_at_the_name_of_a_checkpoint_the_run_deleted_is_not_the_runs(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train={"epochs": 2}), run, **QUIET)
    assert not (run / "checkpoints" / "epoch-0001.pt").exists()  # replaced by epoch 2's
    assert "checkpoints/epoch-0001.pt" not in io.read_manifest(run)  # and struck out
    mine = run / "checkpoints" / "epoch-0001.pt"
    mine.write_bytes(b"mine")
    with pytest.raises(UserError, match="epoch-0001.pt' was not written by infusion"):
        train(tiny_config(train={"epochs": 1}), run, overwrite=True, **QUIET)
    assert mine.read_bytes() == b"mine" and (run / "checkpoints" / "final.pt").is_file()


# --------------------------------------------------------------------- a --data run's own data file


def test_a_refused_overwrite_of_a_data_run_deletes_nothing(tmp_path):
    run = tmp_path / "run"
    first = fit(ring(120), run_dir=run, overrides=FIT_TINY, **QUIET)
    (run / "samples_by_class.png").write_bytes(b"my picture")  # refused: the user's file
    before = snapshot(run)
    with pytest.raises(UserError, match="samples_by_class.png' was not written by infusion"):
        fit(ring(100, seed=1), run_dir=run, overrides=FIT_TINY, overwrite=True, **QUIET)
    after = snapshot(run)
    after.pop(".lock", None)
    before.pop(".lock", None)
    assert after == before
    assert Path(first.config.data.path).is_file()  # the old run can still be evaluated
    from infusion import evaluate

    assert evaluate(run, ["lb"], tmp_path / "ev" / "r.json", device="cpu", **QUIET)["lb"]


def test_a_data_overwrite_keeps_a_users_file_in_data(tmp_path):
    run = tmp_path / "run"
    first = fit(ring(120), run_dir=run, overrides=FIT_TINY, **QUIET)
    mine = run / "data" / "arrays-mine.npz"
    np.savez(mine, keep=np.arange(3))
    kept = mine.read_bytes()
    second = fit(ring(100, seed=1), run_dir=run, overrides=FIT_TINY, overwrite=True, **QUIET)
    assert mine.read_bytes() == kept
    new = Path(second.config.data.path)
    assert not Path(first.config.data.path).exists()  # the replaced run's own data went
    assert sorted(p.name for p in (run / "data").iterdir()) == sorted(
        [mine.name, new.name, new.name + ".sha256"])
    own = io.read_manifest(run)
    assert {f"data/{new.name}", f"data/{new.name}.sha256"} <= own
    assert "data/arrays-mine.npz" not in own
    third = fit(ring(90, seed=2), run_dir=run, overrides=FIT_TINY, overwrite=True, **QUIET)
    assert not new.exists() and Path(third.config.data.path).is_file() and mine.is_file()


# -------------------------------------------------------- a manifest or a lock the library can't trust


def _make(kind: str, path: Path, users_file: Path) -> None:
    if kind == "symlink":
        path.symlink_to(users_file)
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "hardlink":
        os.link(users_file, path)


KINDS = ["symlink", "directory", "fifo", "hardlink"]

OVERWRITE_IN_A_CHILD = """
import sys
from infusion.cli.parser import main
sys.exit(main(["train", "--preset", "spiral", "--run-dir", sys.argv[1], "--overwrite", "--quiet",
               "--set", "train.epochs=1", "--set", "data.toy_size=256",
               "--set", "model.hidden=8,8", "--set", "method.T=2"]))
"""


@pytest.mark.parametrize("kind", KINDS)
def test_an_untrusted_manifest_is_refused_and_nothing_is_touched(tmp_path, trained, kind):
    run = copy_of(trained, tmp_path / "run")
    users_file = tmp_path / "notes.txt"
    users_file.write_text("my notes\n")
    (run / io.MANIFEST).unlink()
    _make(kind, run / io.MANIFEST, users_file)
    (run / "checkpoints" / "my-keep.pt").write_bytes(b"mine")
    before = snapshot(run)
    # in a child process: a FIFO must not block the test if it is opened
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(OVERWRITE_IN_A_CHILD), str(run)],
                         capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and str(run / io.MANIFEST) in res.stderr, res.stderr
    after = snapshot(run)
    assert after == before
    assert users_file.read_text() == "my notes\n"


@pytest.mark.parametrize("kind", KINDS)
def test_an_untrusted_lock_is_refused_and_nothing_is_touched(tmp_path, trained, kind):
    run = copy_of(trained, tmp_path / "run")
    users_file = tmp_path / "notes.txt"
    users_file.write_text("my notes\n")
    (run / ".lock").unlink(missing_ok=True)
    _make(kind, run / ".lock", users_file)
    before = snapshot(run)
    with pytest.raises(UserError, match=r"\.lock"):
        train(tiny(), run, overwrite=True, **QUIET)
    assert snapshot(run) == before
    assert users_file.read_text() == "my notes\n"


def test_a_hard_linked_manifest_is_not_written_through_by_a_new_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    users_file = tmp_path / "notes.txt"
    users_file.write_text("my notes\n")
    os.link(users_file, run / io.MANIFEST)
    with pytest.raises(UserError, match=io.MANIFEST):
        train(tiny(), run, **QUIET)
    assert users_file.read_text() == "my notes\n"
    assert not (run / "config.json").exists()


# ------------------------------------------------------------------ evaluate and export: their files


@pytest.mark.parametrize("name", ["report.md", "samples.npz"])
def test_evaluate_overwrite_in_a_users_folder_keeps_the_users_files(tmp_path, trained, capsys,
                                                                     name):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("a folder of the user's")
    (folder / name).write_bytes(b"mine")
    code = main(["evaluate", "--checkpoint", str(trained), "--metrics", "lb,parzen",
                 "--lb-examples", "8", "--n-samples", "20", "--parzen-valid", "8",
                 "--parzen-test", "8", "--device", "cpu", "--quiet",
                 "--out", str(folder / "report.json"), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and f"{name}' was not written by infusion" in err, err
    assert (folder / name).read_bytes() == b"mine"
    assert sorted(p.name for p in folder.iterdir()) == sorted(["notes.txt", name])


def test_export_overwrite_keeps_a_users_readme(tmp_path, trained, capsys):
    out = tmp_path / "hub"
    out.mkdir()
    (out / "README.md").write_text("my model card")
    code = main(["export", "--checkpoint", str(trained), "--out", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "README.md' was not written by infusion" in err, err
    assert (out / "README.md").read_text() == "my model card"
    assert sorted(p.name for p in out.iterdir()) == ["README.md"]


def test_export_overwrite_replaces_its_own_export(tmp_path, trained):
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(trained), "--out", str(out)]) == 0
    assert {"config.json", "model.safetensors", "README.md"} <= io.read_manifest(out)
    (out / "README.md").write_text("edited")
    assert main(["export", "--checkpoint", str(trained), "--out", str(out), "--overwrite"]) == 0
    assert (out / "README.md").read_text() != "edited"


def test_figures_overwrite_replaces_its_own_figures_and_keeps_a_users_file(tmp_path, trained,
                                                                           capsys):
    """``figures --overwrite`` in a run's real ``figures/`` folder: a file of a figure's name
    that the library did not write is refused, nothing written; its own figures are replaced."""
    run = copy_of(trained, tmp_path / "run")
    figs = run / "figures"
    figs.mkdir()
    mine = figs / "fig3_bound_curves.png"
    mine.write_bytes(b"my own curves")
    argv = ["figures", "--run-dir", str(run), "--n", "2", "--device", "cpu", "--overwrite"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "fig3_bound_curves.png" in err and "not written by infusion" in err, err
    assert sorted(p.name for p in figs.iterdir()) == ["fig3_bound_curves.png"]
    assert mine.read_bytes() == b"my own curves"
    mine.unlink()
    assert main(argv) == 0
    first = snapshot(figs)
    assert "fig3_bound_curves.png" in first
    assert main(argv + ["--seed", "1"]) == 0  # its own figures: replaced
    assert snapshot(figs)["fig1_sampling_chains.png"] != first["fig1_sampling_chains.png"]
    # with --out: a folder of the user's, without a manifest, keeps its file of a figure's name
    out = tmp_path / "mine"
    out.mkdir()
    (out / "reversibility.png").write_bytes(b"mine")
    assert main(argv + ["--out", str(out)]) == 2
    assert "reversibility.png" in capsys.readouterr().err
    assert snapshot(out) == {"reversibility.png": b"mine"}


# ------------------------------------------------------------------------- no write through a link


def test_figures_are_not_written_through_a_linked_figures_folder(tmp_path, trained, capsys):
    run = copy_of(trained, tmp_path / "run")
    elsewhere = tmp_path / "pictures"
    elsewhere.mkdir()
    (elsewhere / "fig1_sampling_chains.png").write_bytes(b"my picture")
    (run / "figures").symlink_to(elsewhere)
    code = main(["figures", "--run-dir", str(run), "--n", "2", "--device", "cpu",
                 "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "symbolic link" in err, err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["fig1_sampling_chains.png"]
    assert (elsewhere / "fig1_sampling_chains.png").read_bytes() == b"my picture"


def test_an_evaluation_is_not_written_through_a_linked_eval_folder(tmp_path, trained):
    from infusion import evaluate

    run = copy_of(trained, tmp_path / "run")
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    (run / "eval").symlink_to(elsewhere)
    with pytest.raises(UserError, match="symbolic link"):
        evaluate(run, ["lb"], device="cpu", **QUIET)
    assert not any(elsewhere.iterdir())


def test_atomic_write_refuses_a_linked_folder_of_a_kept_folder(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    io.start_manifest(kept)
    (tmp_path / "elsewhere").mkdir()
    (kept / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="symbolic link"):
        io.atomic_write(kept / "sub" / "f.txt", lambda tmp: tmp.write_text("x"))
    assert not any((tmp_path / "elsewhere").iterdir())
    io.atomic_write(kept / "f.txt", lambda tmp: tmp.write_text("x"))  # its own: recorded
    assert io.read_manifest(kept) == {"f.txt"}


def test_a_fit_refused_by_train_leaves_no_data_file(tmp_path, monkeypatch):
    """``fit`` stores the data before ``train`` makes its last checks: a run refused there
    (here: the tracker's package missing) takes the data file stored for it away again; an
    earlier run's data file stays."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    run = tmp_path / "run"
    with pytest.raises(UserError, match="wandb"):
        fit(ring(120), run_dir=run, overrides=[*FIT_TINY, "train.tracker=wandb"], **QUIET)
    assert not list(run.rglob("arrays-*"))
    first = fit(ring(120), run_dir=run, overrides=FIT_TINY, **QUIET)
    with pytest.raises(UserError, match="wandb"):  # the same data, refused over a finished run
        fit(ring(120), run_dir=run, overrides=[*FIT_TINY, "train.tracker=wandb"],
            overwrite=True, **QUIET)
    assert Path(first.config.data.path).is_file()
