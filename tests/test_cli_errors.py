"""Bad input gets one ``error:`` line and exit status 2; a bug keeps its traceback (issue 13)."""

from __future__ import annotations

import io
import os

import pytest
import torch

from infusion import cli


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(argv, capsys, *needles):
    try:
        code, _, err = run(argv, capsys)
    except SystemExit as e:  # argparse's own usage errors exit 2 too
        code, err = e.code, capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "error:" in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_bad_inputs_are_one_line_errors(tmp_path, spiral_run, capsys):
    ckpt = spiral_run / "checkpoints"
    out = tmp_path / "s.npz"
    assert_user_error(["sample", "--checkpoint", ckpt / "best.pt", "--out", out], capsys,
                      "weights only")
    assert_user_error(["sample", "--checkpoint", spiral_run, "--out", out, "--n", "0"], capsys,
                      ">= 1")
    assert_user_error(["sample", "--checkpoint", spiral_run, "--out", out, "--batch-size", "0"],
                      capsys, ">= 1")
    assert_user_error(["sample", "--checkpoint", spiral_run, "--out", out, "--device", "bogus"],
                      capsys, "bogus")
    if not torch.cuda.is_available():
        assert_user_error(["sample", "--checkpoint", spiral_run, "--out", out, "--device", "cuda"],
                          capsys, "no CUDA")
    (tmp_path / "dir.npz").mkdir()
    assert_user_error(["sample", "--checkpoint", spiral_run, "--out", tmp_path / "dir.npz"],
                      capsys, "is a directory")
    assert_user_error(["sample", "--checkpoint", tmp_path / "missing", "--out", out], capsys,
                      "does not exist")
    assert_user_error(["sample", "--checkpoint", spiral_run, "--out", out, "--seeds", "a-b"],
                      capsys, "--seeds")
    assert_user_error(["presets", "no-such-preset"], capsys, "unknown preset")
    assert_user_error(["train", "--preset", "spiral", "--run-dir", tmp_path / "one",
                       "--set", "data.n_train=1"], capsys, "needs >= 2")
    assert_user_error(["train", "--preset", "spiral", "--run-dir", spiral_run, "--resume"],
                      capsys, "drop --preset")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert_user_error(["train", "--config", bad, "--run-dir", tmp_path / "two"], capsys,
                      "not valid JSON")


def test_outputs_are_not_replaced_unless_asked(tmp_path, spiral_run, capsys):
    out = tmp_path / "s.npz"
    assert run(["sample", "--checkpoint", spiral_run, "--out", out, "--n", "3"], capsys)[0] == 0
    before = out.read_bytes()
    assert_user_error(["sample", "--checkpoint", spiral_run, "--out", out, "--n", "4"], capsys,
                      "exists", "--overwrite")
    assert out.read_bytes() == before
    assert run(["sample", "--checkpoint", spiral_run, "--out", out, "--n", "4",
                "--overwrite"], capsys)[0] == 0
    export = tmp_path / "export"
    assert run(["export", "--checkpoint", spiral_run, "--out", export], capsys)[0] == 0
    assert_user_error(["export", "--checkpoint", spiral_run, "--out", export], capsys, "exists")
    # the export samples the same points for the same seeds
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for src, dst in ((spiral_run, a), (export, b)):
        assert run(["sample", "--checkpoint", src, "--out", dst, "--seeds", "3-5"], capsys)[0] == 0
    import numpy as np

    assert np.array_equal(np.load(a)["samples"], np.load(b)["samples"])
    # and evaluates (every --checkpoint takes an export)
    report = tmp_path / "r.json"
    assert run(["evaluate", "--checkpoint", export, "--metrics", "lb", "--lb-examples", "20",
                "--out", report, "--quiet"], capsys)[0] == 0
    assert report.exists()


def test_a_pt2_extractor_is_refused_before_anything_is_unpickled(tmp_path):
    from infusion.errors import InputError
    from infusion.evaluate.metrics import get_extractor

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    evil = tmp_path / "model.pt2"
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(InputError, match=r"\.pt2.*pickle"):
        get_extractor("torchscript", path=evil)
    assert not marker.exists()


def test_an_extractor_file_for_the_projects_own_classifier_is_one_error_line(tmp_path, capsys):
    """The data set's own classifier reads no file: --extractor-path with it is refused
    before anything runs, as one error line."""
    from infusion.errors import InputError
    from infusion.evaluate import EvalSettings

    for extractor in ("", "mnist-cnn", "fashion-cnn"):
        with pytest.raises(InputError, match="--extractor-path 'w.zip'.*reads no file"):
            EvalSettings(extractor=extractor, extractor_path="w.zip").validate()
    EvalSettings(extractor="torchscript", extractor_path="w.zip").validate()  # its file
    code, _, err = run(["evaluate", "--checkpoint", str(tmp_path / "none"), "--metrics", "fid",
                        "--extractor-path", "w.zip", "--out", str(tmp_path / "r.json")], capsys)
    assert code == 2 and "reads no file" in err and "Traceback" not in err


def test_an_internal_error_keeps_its_traceback_and_says_it_is_a_bug(monkeypatch, capsys):
    def broken(args):
        return 1 / 0

    parser = cli.build_parser
    monkeypatch.setattr(cli.parser, "build_parser", lambda: _with_func(parser(), "presets", broken))
    code, _, err = run(["presets"], capsys)
    assert code == 1 and "ZeroDivisionError" in err and "Traceback" in err and "bug" in err


def _with_func(parser, command, func):
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices[command].set_defaults(func=func)
    return parser


def test_a_closed_stdout_does_not_kill_the_command(monkeypatch, capsys):
    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError

    monkeypatch.setattr("sys.stdout", Closed())
    assert cli.main(["presets"]) == 0
