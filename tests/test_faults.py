"""Faults that would lose a user's files or a run's work: links, temporary files, files of the
same names, races between two commands, kills between two writes, a full disk, FIFOs, and
signals at the end of a run."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from infusion import io, models
from infusion.cli.parser import main
from infusion.data import arrays, mnist
from infusion.errors import InputError, UserError
from infusion.training import rundir
from infusion.training.fit import fit
from infusion.training.loop import Interrupted, RunError, train

from .conftest import tiny_config, with_alarm

QUIET = {"progress": False, "log": lambda s: None}
FIT_TINY = ["model.hidden=8,8", "method.T=3", "train.epochs=1", "train.batch_size=32",
            "sample.n=4", "sample.chains=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny spiral run (2 epochs): copy it before changing it."""
    run = tmp_path_factory.mktemp("faults") / "run"
    train(tiny_config(), run, **QUIET)
    return run


def copy_of(run: Path, where: Path) -> Path:
    shutil.copytree(run, where)
    return where


def rows(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _reaped() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------ a user's files lost or replaced


def test_the_lock_is_not_written_through_a_link(tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(mine)
    with pytest.raises(UserError, match="symbolic link"):
        train(tiny_config(), run, **QUIET)
    assert mine.read_text() == "my notes"
    (run / ".lock").unlink()
    (tmp_path / "elsewhere").mkdir()
    (run / "checkpoints").symlink_to(tmp_path / "elsewhere")  # nor into a linked folder
    with pytest.raises(RunError, match="symbolic link"):
        train(tiny_config(), run, **QUIET)
    assert not any((tmp_path / "elsewhere").iterdir())


def test_clean_up_removes_only_a_dead_writers_temporary_files_of_this_run(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "sub").mkdir()
    (run / "a" / "checkpoints").mkdir(parents=True)  # a run directory inside this one
    dead, live = _reaped(), os.getppid()
    stale = run / "checkpoints" / f".epoch-0003.pt.infusion-{dead}-0123abcd.tmp"
    kept = [run / "sub" / ".notes.tmp",  # a user's
            run / "checkpoints" / ".draft.tmp",  # a user's, in a folder the run writes
            run / "checkpoints" / f".epoch-0004.pt.infusion-{live}-0123abcd.tmp",  # in flight
            run / "a" / "checkpoints" / f".epoch-0011.pt.infusion-{dead}-0123abcd.tmp"]
    for p in [stale, *kept]:
        p.write_text("x")
    with rundir.lock(run):
        pass
    assert not stale.exists()
    assert all(p.exists() for p in kept)


def test_an_output_clears_what_a_killed_writer_left_in_its_folder(tmp_path):
    stale = tmp_path / f".s.npz.infusion-{_reaped()}-0123abcd.tmp"  # left by a SIGKILL
    mine = tmp_path / ".s.npz.tmp"
    for p in (stale, mine):
        p.write_text("x")
    with io.all_or_nothing(overwrite=False):
        io.save_npz(tmp_path / "s.npz", a=np.zeros(2))
    assert not stale.exists() and mine.exists() and (tmp_path / "s.npz").is_file()


@pytest.mark.parametrize("name", ["samples_by_class.png", "samples/epoch-0001.png"])
def test_a_new_run_does_not_replace_a_users_files_of_its_names(tmp_path, name):
    run = tmp_path / "run"
    mine = run / name
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my picture")
    with pytest.raises(RunError, match="already holds"):
        train(tiny_config(train={"sample_every": 1}), run, **QUIET)
    assert mine.read_bytes() == b"my picture"


def test_the_manifest_names_what_a_run_wrote_and_overwrite_keeps_the_rest(tmp_path, trained):
    run = copy_of(trained, tmp_path / "run")
    own = io.read_manifest(run)
    assert own is not None and {"config.json", "metrics.jsonl", "checkpoints/final.pt"} <= own
    assert {io.manifest_name(p, run) for p in rundir.run_files(run)} <= own  # every run file
    mine = run / "samples_by_class.png"  # a run file's name the (unconditional) run never wrote
    mine.write_bytes(b"my picture")
    with pytest.raises(RunError, match="samples_by_class.png' was not written by infusion"):
        train(tiny_config(), run, overwrite=True, **QUIET)
    assert mine.read_bytes() == b"my picture" and (run / "checkpoints" / "final.pt").exists()
    mine.unlink()
    train(tiny_config(train={"epochs": 1}), run, overwrite=True, **QUIET)  # the run's own: replaced
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert "config.json" in io.read_manifest(run)
    (run / io.MANIFEST).unlink()  # a run of an earlier version: the names decide, as before
    train(tiny_config(train={"epochs": 1}), run, overwrite=True, **QUIET)
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / io.MANIFEST).symlink_to(tmp_path / "users-file")
    (tmp_path / "users-file").write_text("mine\n")
    with pytest.raises(UserError, match="is a symbolic link"):
        train(tiny_config(), evil, **QUIET)
    assert (tmp_path / "users-file").read_text() == "mine\n"


def test_evaluate_does_not_replace_the_users_files_beside_its_report(tmp_path, trained):
    from infusion.evaluate import evaluate

    out = tmp_path / "mine" / "r.json"
    out.parent.mkdir()
    for name in ("samples.npz", "r.md"):
        (out.parent / name).write_bytes(b"mine")
    with pytest.raises(InputError, match="exists beside the report"):
        evaluate(trained, ["lb"], out, overwrite=False, device="cpu", **QUIET)
    assert not out.exists()
    assert all((out.parent / n).read_bytes() == b"mine" for n in ("samples.npz", "r.md"))


def test_evaluate_overwrite_replaces_only_what_an_evaluation_wrote(tmp_path, trained):
    from infusion.evaluate import evaluate

    out = tmp_path / "ev" / "r.json"  # a folder the evaluation creates: it keeps a manifest
    evaluate(trained, ["lb"], out, device="cpu", **QUIET)
    assert {"r.json", "r.md"} <= io.read_manifest(out.parent)
    before = out.read_bytes()
    mine = out.parent / "samples.npz"  # a name the evaluation writes, put there by the user
    mine.write_bytes(b"mine")
    with pytest.raises(InputError, match="samples.npz' was not written by infusion"):
        evaluate(trained, ["lb"], out, overwrite=True, device="cpu", **QUIET)
    assert mine.read_bytes() == b"mine" and out.read_bytes() == before
    mine.unlink()
    evaluate(trained, ["lb"], out, overwrite=True, device="cpu", **QUIET)  # its own: replaced
    assert json.loads(out.read_text())["status"]["state"] == "complete"


def test_fit_does_not_write_its_data_into_a_file_of_the_users(tmp_path):
    mine = tmp_path / "mine.npz"
    np.savez(mine, keep=np.arange(3))
    before = mine.read_bytes()
    x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    with pytest.raises(InputError, match="data.path"):
        fit(x, run_dir=tmp_path / "run", overrides=[f"data.path={mine}", *FIT_TINY], **QUIET)
    assert mine.read_bytes() == before


def test_overwrite_does_not_delete_the_run_it_starts_from(tmp_path, trained):
    run = copy_of(trained, tmp_path / "run")
    with pytest.raises(RunError, match="--overwrite would delete"):
        train(tiny_config(train={"init_from": str(run)}), run, overwrite=True, **QUIET)
    assert (run / "checkpoints" / "final.pt").is_file()


# ------------------------------------------------------------------------ outputs, whole and alone


def sample_args(run: Path, out: Path, *extra: str) -> list[str]:
    return ["sample", "--checkpoint", str(run), "--out", str(out), "--n", "4", "--device", "cpu",
            *extra]


def test_a_sample_written_meanwhile_by_another_process_is_not_replaced(tmp_path, trained,
                                                                        monkeypatch, capsys):
    from infusion.generate import files

    out = tmp_path / "s.npz"
    real = files.sample_chain

    def other_process_writes_first(*a, **k):  # after the "exists?" check, before the write
        res = real(*a, **k)
        out.write_bytes(b"theirs")
        return res

    monkeypatch.setattr(files, "sample_chain", other_process_writes_first)
    assert main(sample_args(trained, out)) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == b"theirs"
    assert not out.with_suffix(".png").exists()  # nothing of the later command appears


def test_a_bad_png_dir_is_refused_before_anything_is_written(tmp_path, trained, capsys):
    out = tmp_path / "s.npz"
    assert main(sample_args(trained, out, "--png-dir", str(tmp_path / "pngs"))) == 2
    assert "not images" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_a_sample_killed_between_its_files_leaves_none_of_them(tmp_path, tiny_mnist, monkeypatch):
    from infusion import figures

    run = tmp_path / "run"
    train(tiny_config(data={"name": "mnist"}, train={"epochs": 1}), run, **QUIET)
    real, calls = figures.save_png, []

    def killed_at_the_third_png(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(figures, "save_png", killed_at_the_third_png)
    out, pngs = tmp_path / "s.npz", tmp_path / "pngs"
    assert main(sample_args(run, out, "--png-dir", str(pngs))) == 130
    assert not out.exists() and not out.with_suffix(".png").exists()
    assert not pngs.exists() or not [p for p in pngs.iterdir() if p.suffix == ".png"]
    monkeypatch.setattr(figures, "save_png", real)
    assert main(sample_args(run, out, "--png-dir", str(pngs))) == 0  # no --overwrite needed
    assert sorted(p.name for p in pngs.iterdir()) == [f"seed-{i:06d}.png" for i in range(4)]
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_a_killed_export_is_replaced_without_overwrite(tmp_path, trained, monkeypatch):
    out = tmp_path / "export"

    class KilledWhileWritingTheConfig:
        @staticmethod
        def dumps(*a, **k):
            raise KeyboardInterrupt

    monkeypatch.setattr(models, "json", KilledWhileWritingTheConfig)
    assert main(["export", "--checkpoint", str(trained), "--out", str(out)]) == 130
    monkeypatch.undo()
    assert not (out / "model.safetensors").exists()  # nothing half-written appeared
    assert main(["export", "--checkpoint", str(trained), "--out", str(out)]) == 0
    # a kill between the two renames leaves the weights alone: recognised as a half export
    (out / "config.json").unlink()
    (out / "README.md").unlink()
    assert main(["export", "--checkpoint", str(trained), "--out", str(out)]) == 0
    assert models.is_export(out)
    mine = tmp_path / "other"
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"not infusion's")  # a user's file is kept
    assert main(["export", "--checkpoint", str(trained), "--out", str(mine)]) == 2
    assert (mine / "model.safetensors").read_bytes() == b"not infusion's"


# --------------------------------------------------------------------------------- a full disk


def test_a_full_disk_is_one_error_line_naming_the_file(tmp_path, trained, monkeypatch, capsys):
    import safetensors.torch

    def writer_fails(*a, **k):  # what torch and safetensors raise on a full disk
        raise RuntimeError("unexpected pos 64 vs 0")

    monkeypatch.setattr(io.write, "_disk_full", lambda d: True)
    monkeypatch.setattr(safetensors.torch, "save_file", writer_fails)
    monkeypatch.setattr(models, "save_file", writer_fails)  # the name save_pretrained calls
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(trained), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left" in err and "model.safetensors" in err

    def no_space(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left.*f.txt"):
        io.atomic_write(tmp_path / "f.txt", no_space)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_training_goes_on_when_stdout_cannot_be_written(tmp_path):
    run = tmp_path / "run"
    sets = [a for s in ["data.toy_size=256", "model.hidden=8,8", "method.T=3", "train.epochs=1",
                        "train.batch_size=64", "train.valid_examples=64", "sample.n=4"]
            for a in ("--set", s)]
    with open("/dev/full", "w") as full:
        res = subprocess.run([sys.executable, "-m", "infusion", "train", "--preset", "spiral",
                              "--run-dir", str(run), "--quiet", *sets], stdout=full,
                             stderr=subprocess.PIPE, text=True, timeout=300, check=False,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert (run / "checkpoints" / "final.pt").is_file()


# ---------------------------------------------------------------------- inputs that are not files


def test_a_fifo_is_refused_as_a_checkpoint_and_as_data(tmp_path, trained):
    run = copy_of(trained, tmp_path / "run")
    os.mkfifo(run / "checkpoints" / "epoch-0099.pt")
    with pytest.raises(models.CheckpointError, match="not a regular file"):
        with_alarm(lambda: train(None, run, resume=True, **QUIET))
    os.mkfifo(tmp_path / "x.npz")
    with pytest.raises(InputError, match="not a regular file"):
        with_alarm(lambda: fit(tmp_path / "x.npz", run_dir=tmp_path / "fit", **QUIET))


def test_a_latest_pointer_at_a_big_file_is_not_printed_whole(tmp_path, trained):
    run = copy_of(trained, tmp_path / "run")
    big = tmp_path / "system-file"
    big.write_text("root:x:0:0:root:/root:/bin/bash\n" * 2000)
    (run / "checkpoints" / "latest").unlink()
    (run / "checkpoints" / "latest").symlink_to(big)
    with pytest.raises(models.CheckpointError) as e:
        models.load_model(run, "cpu")
    assert len(str(e.value)) < 400


def test_an_explicit_idx_dir_with_a_corrupt_file_is_an_error(tmp_path, monkeypatch):
    d = tmp_path / "idx"
    d.mkdir()
    for name in mnist.MNIST.gz:
        (d / name).write_bytes(b"\x00\x00\x08\x99corrupt")
    monkeypatch.setattr(mnist, "_from_mirror", lambda *a: pytest.fail("fell back to a mirror"))
    with pytest.raises(UserError, match="magic number"):
        mnist.ensure_mnist(cache=tmp_path / "cache", idx_dir=d, sources=("idx", "mirrors"),
                           progress=False)


def test_data_near_the_float32_limit_are_refused():
    x = np.array([[0.0, 1.0], [3e38, -3e38], [1.0, 2.0]], np.float64)
    with pytest.raises(InputError, match="float32 limit"):
        arrays.as_examples(x)


# ----------------------------------------------------------------------------- resume and signals


def test_resume_from_the_last_epoch_rewrites_every_metrics_row(tmp_path, trained):
    run = copy_of(trained, tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")  # a stop before the rows were written
    (run / "checkpoints" / "final.pt").unlink()
    (run / "checkpoints" / "latest").write_text("epoch-0002.pt\n")
    train(None, run, resume=True, **QUIET)
    assert rows(run) == [1, 2]


def test_resume_refuses_a_warm_start(tmp_path, trained):
    run = copy_of(trained, tmp_path / "run")
    before = (run / "config.json").read_text()
    with pytest.raises(RunError, match="train.init_from"):
        train(None, run, resume=True, overrides=[f"train.init_from={trained}"], **QUIET)
    assert (run / "config.json").read_text() == before


def test_a_moved_fit_run_resumes(tmp_path):
    x = np.random.default_rng(0).normal(size=(96, 2)).astype(np.float32) * 5
    fit(x, run_dir=tmp_path / "a", overrides=FIT_TINY, device="cpu", **QUIET)
    moved = tmp_path / "b"
    (tmp_path / "a").rename(moved)
    train(None, moved, resume=True, overrides=["train.epochs=2"], device="cpu", **QUIET)
    assert rows(moved) == [1, 2]


def test_a_signal_while_the_run_finishes_stops_it_resumably(tmp_path):
    run = tmp_path / "run"

    def signal_in_finalize(line: str) -> None:
        if line.startswith("using the best validation epoch"):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match="SIGTERM.*--resume"):
        train(tiny_config(), run, progress=False, log=signal_in_finalize)
    train(None, run, resume=True, **QUIET)
    assert rows(run) == [1, 2] and (run / "checkpoints" / "final.pt").is_file()


TERMINATED_EVALUATION = """
import os, signal, sys
from infusion.evaluate import evaluate

def log(line):  # the first step's line, once the report is written: terminated while it runs
    if os.path.exists(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGTERM)

try:
    evaluate(sys.argv[1], ["lb"], sys.argv[2], device="cpu", progress=False, log=log)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_sigterm_leaves_an_evaluation_report_interrupted(tmp_path, trained):
    out = tmp_path / "ev" / "report.json"
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(TERMINATED_EVALUATION),
                          str(trained), str(out)], capture_output=True, text=True, timeout=300,
                         check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 130, res.stderr[-2000:]
    assert json.loads(out.read_text())["status"]["state"] == "interrupted"
