"""Every input is bounded and answered: files that are not regular files (FIFOs, devices,
symlink loops) are refused by name, never opened to block or read forever; compressed data
are read no further than their header declares; every JSON or JSONL file read back is
checked (or its bad part skipped, with a warning that says so); a Dataset is estimated before
it is read; and every bad argument to the Python API is a ``UserError`` naming it."""

from __future__ import annotations

import gzip
import json
import logging
import os
import struct
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from infusion import cli, config, limits, models
from infusion.chain.sampler import sample_chain, sample_labels
from infusion.config import Config, DataConfig
from infusion.data import DataError, images, load_split, mnist, to_data_space
from infusion.data.arrays import from_dataset, store
from infusion.errors import InputError, UserError
from infusion.evaluate import evaluate
from infusion.evaluate.card import model_card
from infusion.evaluate.likelihood import estimate_likelihood
from infusion.evaluate.metrics import get_extractor
from infusion.evaluate.report import read_report
from infusion.figures import read_metric_rows
from infusion.generate.files import sample_to_file
from infusion.generate.inpaint import inpaint, load_mask_file
from infusion.io import read_json, read_jsonl, regular_file
from infusion.methods import build_method
from infusion.methods.statistics import compute_step_statistics
from infusion.training import rundir
from infusion.training.fit import fit
from infusion.training.loop import train

from .conftest import tiny_config, with_alarm

TINY = ["data.toy_size=128", "model.hidden=8,8", "method.T=2", "train.epochs=1",
        "train.batch_size=32", "train.valid_examples=32", "train.valid_stats_batches=2",
        "sample.n=4", "sample.chains=2"]


def user_error(argv, capsys, *needles) -> str:
    """``infusion ARGV`` ends with one ``error:`` line (exit 2) holding every needle."""
    try:
        code = with_alarm(lambda: cli.main([str(a) for a in argv]))
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "error:" in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A spiral run of one tiny epoch."""
    run = tmp_path_factory.mktemp("bounded") / "run"
    train(config.override(config.preset("spiral"), TINY), run, progress=False)
    return run


@pytest.fixture(scope="module")
def tiny_model(tiny_run):
    return models.load_model(tiny_run, "cpu")


def symlink_loop(d: Path) -> Path:
    (d / "loop-a").symlink_to(d / "loop-b")
    (d / "loop-b").symlink_to(d / "loop-a")
    return d / "loop-a"


# ---------------------------------------------------------------------- files that are not files


def test_regular_file_names_what_a_path_is_instead(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = [(fifo, "FIFO"), ("/dev/zero", "device"), (tmp_path, "folder"),
             (symlink_loop(tmp_path), "symlink loop"), (tmp_path / "none", "no such file")]
    for path, kind in cases:
        with pytest.raises(InputError, match=kind) as e:
            with_alarm(lambda path=path: regular_file(path, "--report"))
        assert "--report" in str(e.value) and str(path) in str(e.value)
    ok = tmp_path / "ok.json"
    ok.write_text("{}")
    assert regular_file(ok, "--report") == ok


def test_read_json_is_capped_and_names_what_is_wrong(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"metrics": {}, "pad": "x" * 1000}))
    assert read_json(path, "--report")["metrics"] == {}
    with pytest.raises(InputError, match=r"--report .*larger than 100 bytes"):
        read_json(path, "--report", max_bytes=100)
    path.write_text("{not json")
    with pytest.raises(InputError, match=r"--report .*not valid JSON"):
        read_json(path, "--report")
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match=r"--report .*nested"):
        read_json(path, "--report")
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(InputError, match=r"--report .*not valid JSON"):
        read_json(path, "--report")


def test_read_jsonl_skips_what_is_not_an_object_and_says_so(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    path.write_text('{"epoch": 1}\nnot json\n[1, 2]\n\n{"epoch": 2}\n')
    with caplog.at_level(logging.WARNING, logger="infusion"):
        rows = read_jsonl(path, "metrics")
    assert rows == [{"epoch": 1}, {"epoch": 2}]
    assert "metrics" in caplog.text and "line 2" in caplog.text and "line 3" in caplog.text
    assert "skipped" in caplog.text


def test_export_refuses_a_fifo_and_a_device_as_its_report(tmp_path, tiny_run, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out = tmp_path / "export"
    user_error(["export", "--checkpoint", tiny_run, "--out", out, "--report", fifo], capsys,
               "--report", "FIFO")
    user_error(["export", "--checkpoint", tiny_run, "--out", out, "--report", "/dev/zero"],
               capsys, "--report", "device")
    user_error(["export", "--checkpoint", tiny_run, "--out", out, "--report",
                symlink_loop(tmp_path)], capsys, "--report", "symlink loop")
    assert not out.exists()


FRAME = {"settings": {"seed": 0}, "seconds": {"total": 1.0}, "machine": {"cpu_count": 2}}


@pytest.mark.parametrize("report, needle", [
    ([1, 2], "a JSON object"),
    ({"settings": {}}, "'metrics'"),
    ({"metrics": [], "settings": {}}, "'metrics'"),
    ({"metrics": {}, "settings": {}}, "summary"),
    ({**FRAME, "metrics": {"lb": {"mean": None, "stderr": 0.1}}}, "'lb'"),
    ({**FRAME, "metrics": {"lb": {"mean": -3.0}}}, "'lb'"),
    ({**FRAME, "metrics": {"lb": {"mean": -3.0, "stderr": 0.1}, "fid": 7}}, "'fid'"),
])
def test_export_refuses_a_report_that_is_not_a_report(tmp_path, tiny_run, capsys, report,
                                                      needle):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    good = {**FRAME, "metrics": {"lb": {"mean": -3.0, "stderr": 0.1}}}
    (tmp_path / "good.json").write_text(json.dumps(good))
    assert read_report(tmp_path / "good.json", "--report") == good
    out = tmp_path / "export"
    user_error(["export", "--checkpoint", tiny_run, "--out", out, "--report", path], capsys,
               "--report", needle)
    assert not out.exists()


def test_a_config_file_that_is_a_fifo_is_refused(tmp_path, capsys):
    fifo = tmp_path / "cfg.json"
    os.mkfifo(fifo)
    user_error(["train", "--config", fifo, "--run-dir", tmp_path / "run"], capsys,
               "--config", "FIFO")
    assert not (tmp_path / "run").exists()


def test_init_from_a_symlink_loop_is_named(tmp_path):
    cfg = tiny_config(train={"init_from": str(symlink_loop(tmp_path))})
    for overwrite in (False, True):
        with pytest.raises(UserError, match=r"train\.init_from.*symlink loop"):
            train(cfg, tmp_path / "run", overwrite=overwrite, progress=False)
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_checkpoint_that_is_a_symlink_loop_is_named(tmp_path):
    with pytest.raises(models.CheckpointError, match="symlink loop"):
        models.load_model(symlink_loop(tmp_path), "cpu")


# ---------------------------------------------------------------------- IDX files


def idx(dims: tuple[int, ...], body: bytes, magic: int = 2051) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + body


def test_idx_corrupt_gzip_stream_is_a_data_error(tmp_path):
    raw = idx((3, 28, 28), bytes(range(256)) * 9 + bytes(48))
    gz = bytearray(gzip.compress(raw))
    gz[15:25] = b"\xa5" * 10  # inside the deflate stream
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(bytes(gz))
    with pytest.raises(DataError, match="corrupt"):
        mnist.read_idx(path)
    with pytest.raises(DataError, match=r"idx_dir .*corrupt"):
        mnist.ensure_mnist(idx_dir=tmp_path, sources=["idx"], cache=tmp_path / "cache")


@pytest.mark.parametrize("kind", ["fifo", "file", "loop"])
def test_an_idx_dir_that_is_not_a_folder_is_named(tmp_path, capsys, monkeypatch, kind):
    """``--idx-dir`` naming a FIFO (never opened: it could block), a file or a symlink loop:
    one error saying what it is, not that it "has no" IDX file. So is an IDX file of the
    folder that is a FIFO."""
    target = tmp_path / "idx"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "file":
        target.write_bytes(b"not a folder")
    else:
        target = symlink_loop(tmp_path)
    what = {"fifo": "a FIFO", "file": "a regular file", "loop": "a symlink loop"}[kind]
    with pytest.raises(DataError, match=f"{what}.*, not a folder") as e:
        with_alarm(lambda: mnist.ensure_mnist(idx_dir=target, sources=["idx"],
                                              cache=tmp_path / "cache"))
    assert str(target) in str(e.value) and "has no" not in str(e.value)
    monkeypatch.setenv("INFUSION_CACHE", str(tmp_path / "cli-cache"))
    err = user_error(["data", "--name", "mnist", "--idx-dir", target], capsys, str(target), what)
    assert "has no" not in err
    if kind == "fifo":  # an IDX file of the folder that is a FIFO
        folder = tmp_path / "folder"
        folder.mkdir()
        os.mkfifo(folder / "train-images-idx3-ubyte")
        with pytest.raises(DataError, match="train-images-idx3-ubyte.* a FIFO"):
            with_alarm(lambda: mnist.ensure_mnist(idx_dir=folder, sources=["idx"],
                                                  cache=tmp_path / "cache"))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_holding_more_or_less_than_its_header_declares_is_refused(tmp_path, gz):
    pack = gzip.compress if gz else bytes
    path = tmp_path / "x"
    path.write_bytes(pack(idx((2, 28, 28), bytes(2 * 784 - 1))))
    with pytest.raises(DataError, match="truncated"):
        mnist.read_idx(path)
    path.write_bytes(pack(idx((2, 28, 28), bytes(2 * 784 + 1))))
    with pytest.raises(DataError, match="more"):
        mnist.read_idx(path)
    path.write_bytes(pack(idx((2, 28, 28), bytes(2 * 784))))
    assert mnist.read_idx(path).shape == (2, 28, 28)


def test_idx_decompression_stops_at_the_declared_size(tmp_path, monkeypatch):
    """A stream that never ends (a gzip bomb) is read only to the declared size + 1 byte."""
    declared = 16 << 20
    read = []

    class Endless:
        def __init__(self, *_a, **_k):
            self.head = idx((1, 4096, 4096), b"")

        def read(self, n=-1):
            assert n is not None and n >= 0, "an unbounded read"
            out, self.head = self.head[:n], self.head[n:]
            out += bytes(n - len(out))
            read.append(len(out))
            return out

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(b"x"))
    monkeypatch.setattr(mnist.gzip, "open", Endless)
    with pytest.raises(DataError, match="more"):
        with_alarm(lambda: mnist.read_idx(path))
    assert sum(read) <= 16 + declared + (1 << 20)


@pytest.mark.parametrize("dims", [(2**31, 2**31, 4), (2**32 - 1, 2**32 - 1, 2**32 - 1),
                                  (2**32 - 1,)])
def test_idx_dimensions_too_large_or_wrapping_are_refused(tmp_path, dims):
    path = tmp_path / "x"
    path.write_bytes(idx(dims, b"", magic=2051 if len(dims) == 3 else 2049))
    with pytest.raises(DataError, match=r"header"):
        mnist.read_idx(path)


# ---------------------------------------------------------------------- JSON read back


@pytest.mark.parametrize("env", ['{"command": ["infusion"]}', '"text"', "null",
                                 '[1, null, "x"]', "not json"])
def test_the_card_skips_an_environment_that_is_not_a_list_of_objects(tmp_path, caplog, env):
    (tmp_path / "environment.json").write_text(env)
    with caplog.at_level(logging.WARNING, logger="infusion"):
        text = model_card(tmp_path / "export", Config(), (2,), run_dir=tmp_path)
    assert "## Training" in text and "Commands" not in text
    assert "environment.json" in caplog.text


def test_the_card_shows_the_entries_that_are_objects(tmp_path, caplog):
    entries = [1, {"command": ["infusion", "train"], "infusion": "9.9", "torch": "2",
                   "threads": 2, "platform": "linux"}, {"command": "not a list"}]
    (tmp_path / "environment.json").write_text(json.dumps(entries))
    with caplog.at_level(logging.WARNING, logger="infusion"):
        text = model_card(tmp_path / "export", Config(), (2,), run_dir=tmp_path)
    assert "infusion train" in text and "Environment: infusion" in text
    assert "environment.json" in caplog.text


def test_the_card_reads_metric_rows_past_bad_lines_and_null_bounds(tmp_path, caplog):
    rows = ['{"epoch": 1, "valid_bound_population": null}', "garbage", "[1, 2]",
            '{"epoch": 2, "valid_bound_population": -3.5}', '{"epoch": "x"}',
            '{"epoch": 3, "valid_bound_population": "high"}']
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="infusion"):
        text = model_card(tmp_path / "export", Config(), (2,), run_dir=tmp_path)
    assert "-3.5 nats at epoch 2" in text
    assert "metrics.jsonl" in caplog.text and "line 2" in caplog.text
    got = read_metric_rows(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in got] == [1, 2, 3]
    assert all(v is None or isinstance(v, (int, float)) for r in got for v in r.values())
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "valid_bound_population": null}\n')
    text = model_card(tmp_path / "export", Config(), (2,), run_dir=tmp_path)
    assert "nats at epoch" not in text


# ---------------------------------------------------------------------- data loaders


def _pngs(folder: Path, n: int = 3) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("where", [".", "sub"])
def test_a_symlink_loop_in_an_image_folder_is_named(tmp_path, where):
    """Two links naming each other, in the folder or below: an error naming the loop (an image
    or a folder of images that would be left out), never a hang or a traceback; from the
    loaders and from ``fit``. A data.path that is itself a loop is named so too."""
    photos = _pngs(tmp_path / "photos")
    (photos / "sub").mkdir()
    loop = symlink_loop(photos / where)
    for load in (lambda: images.load_images("folder", "train", path=photos, image_size=8,
                                            cache=tmp_path / "cache"),
                 lambda: fit(photos, run_dir=tmp_path / "run", progress=False)):
        with pytest.raises(DataError, match="symlink loop") as e:
            with_alarm(load)
        assert str(loop.relative_to(tmp_path)) in str(e.value)
    with pytest.raises(DataError, match="symlink loop"):
        images.load_images("folder", "train", path=symlink_loop(tmp_path), image_size=8,
                           cache=tmp_path / "cache")


def test_a_tfd_file_that_is_not_a_mat_is_a_data_error(tmp_path):
    pytest.importorskip("scipy")
    path = tmp_path / "TFD_48x48.mat"
    path.write_text("hello world, this is not a MATLAB file\n")
    with pytest.raises(DataError, match="not a readable MATLAB"):
        images.ensure("tfd", path=path, cache=tmp_path / "cache")


class Points(torch.utils.data.Dataset):
    """``n`` 2-D points; item 0 takes ``first`` seconds; counts the items read."""

    def __init__(self, n: int, first: float = 0.0):
        self.n, self.first, self.reads = n, first, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads += 1
        if i == 0 and self.first:
            time.sleep(self.first)
        return np.full(2, i % 7, np.float32)


def test_fit_estimates_a_huge_dataset_before_reading_it(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "free_memory", lambda device=None: 1 << 30)
    ds = Points(10**9)
    with pytest.raises(InputError, match=r"data.*1,000,000,000"):
        with_alarm(lambda: fit(ds, run_dir=tmp_path / "run", progress=False))
    assert ds.reads <= 1 and not (tmp_path / "run").exists()


def test_reading_a_slow_dataset_says_how_long_it_will_take(caplog):
    ds = Points(1000, first=0.05)
    with caplog.at_level(logging.INFO, logger="infusion"):
        x = from_dataset(ds, "data")
    assert x.shape == (1000, 2) and ds.reads == 1000
    assert "1,000 items" in caplog.text and "about" in caplog.text


def test_a_dataset_whose_items_or_length_raise_is_an_input_error(tmp_path):
    class Raises(Points):
        def __getitem__(self, i):
            raise KeyError("no such row")

    class BadLength(Points):
        def __len__(self):
            return -1  # noqa: PLE0303 — the bad length under test

    with pytest.raises(InputError, match=r"data\[0\].*KeyError"):
        fit(Raises(10), run_dir=tmp_path / "run", progress=False)
    with pytest.raises(InputError, match=r"data.*len"):
        fit(BadLength(10), run_dir=tmp_path / "run", progress=False)


# ---------------------------------------------------------------------- the Python API


def test_a_run_dir_that_is_a_file_is_an_input_error(tmp_path):
    mine = tmp_path / "mine"
    mine.write_text("a user's file")
    x = np.random.default_rng(0).random((40, 2)).astype(np.float32)
    with pytest.raises(InputError, match=r"run_dir.*not a folder"):
        fit(x, run_dir=mine, overrides=TINY[1:], progress=False)
    for run_dir in (mine, mine / "sub"):
        with pytest.raises(InputError, match=r"run_dir.*not a folder"):
            train(tiny_config(), run_dir, progress=False)
    assert mine.read_text() == "a user's file"


@pytest.mark.parametrize("n", [0, -1, True, 2.5, "4"])
def test_sample_chain_refuses_a_bad_n(tiny_model, n):
    model, _ = tiny_model
    with pytest.raises(InputError, match=r"\bn="):
        sample_chain(model, n)


def test_sample_chain_refuses_what_is_not_a_model():
    with pytest.raises(InputError, match="model.*load_model"):
        sample_chain("runs/spiral", 2)


TAKES_A_MODEL = {
    "inpaint": lambda m, tmp: inpaint(m, torch.zeros(1, 1, 2, 2),
                                      torch.ones(1, 2, 2, dtype=torch.bool)),
    "compute_step_statistics": lambda m, tmp: compute_step_statistics(
        m, build_method(config.preset("spiral").method), None, 32),
    "estimate_likelihood": lambda m, tmp: estimate_likelihood(
        m, build_method(config.preset("spiral").method), torch.zeros(2, 2), 2),
    "sample_to_file": lambda m, tmp: sample_to_file(m, tmp / "s.npz", 2),
}


@pytest.mark.parametrize("name", list(TAKES_A_MODEL))
@pytest.mark.parametrize("not_a_model", ["runs/spiral", Path("runs/spiral"), {"model": {}}],
                         ids=["str", "path", "dict"])
def test_functions_that_take_a_model_refuse_what_is_not_one(tmp_path, name, not_a_model):
    """A path (or a checkpoint's dict) where a model belongs: an InputError naming ``model``
    and saying how to load one, as ``sample_chain`` says; nothing written."""
    with pytest.raises(InputError, match=r"^model=.*expected a ChainModel.*infusion\.load_model"):
        TAKES_A_MODEL[name](not_a_model, tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("start", [torch.zeros(2, 3), torch.zeros(3, 2), torch.zeros(4),
                                   torch.empty(2, 2, device="meta"),
                                   torch.zeros(2, 2).to_sparse(), "zeros"])
def test_sample_chain_refuses_a_start_of_the_wrong_shape_or_kind(tiny_model, start):
    model, _ = tiny_model
    with pytest.raises(InputError, match="start"):
        sample_chain(model, 2, start=start)


@pytest.mark.parametrize("clamp", [
    (torch.ones(3, dtype=torch.bool), torch.zeros(3)),
    (torch.ones(2, dtype=torch.bool), torch.zeros(3, 2)),
    (torch.ones(2, dtype=torch.bool),),
    (torch.ones(2, dtype=torch.bool), torch.zeros(2).to_sparse()),
    (torch.empty(2, device="meta"), torch.zeros(2)),
    "top",
])
def test_sample_chain_refuses_a_clamp_of_the_wrong_shape_or_kind(tiny_model, clamp):
    model, _ = tiny_model
    with pytest.raises(InputError, match="clamp"):
        sample_chain(model, 2, clamp=clamp)


def test_sample_chain_still_takes_good_start_and_clamp(tiny_model):
    model, _ = tiny_model
    start = torch.zeros(2, 2)
    res = sample_chain(model, 2, start=start, clamp=(torch.tensor([True, False]),
                                                     torch.tensor([0.25, 0.0])))
    assert res.samples.shape == (2, 2) and torch.all(res.samples[:, 0] == 0.25)


def test_two_dimensional_labels_are_refused():
    conditional = types.SimpleNamespace(classes=3)
    with pytest.raises(InputError, match="labels"):
        sample_labels(conditional, torch.zeros(2, 2, dtype=torch.long), [0, 1, 2, 3])
    with pytest.raises(InputError, match="labels"):
        sample_labels(conditional, [[0, 1], [2]], [0, 1])
    x = np.random.default_rng(0).random((40, 2)).astype(np.float32)
    with pytest.raises(InputError, match="labels"):
        fit(x, labels=np.zeros((40, 2), int), progress=False)
    with pytest.raises(InputError, match="labels"):
        fit(x, labels=[[0, 1], [2]], progress=False)


def test_evaluate_of_a_model_without_its_config_is_an_input_error(tiny_model):
    model, _ = tiny_model
    with pytest.raises(InputError, match="cfg"):
        evaluate(model)


def test_to_data_space_refuses_the_wrong_shape_and_kind(tmp_path):
    points = np.random.default_rng(0).random((8, 2)).astype(np.float32)
    path, digest = store(tmp_path / "arrays.npz", {"train": points, "valid": points})
    cfg = DataConfig(name="arrays", path=str(path), sha256=digest, scale=(2.0, 4.0),
                     offset=(0.1, 0.2))
    assert to_data_space(np.full((3, 2), 0.5, np.float32), cfg).shape == (3, 2)
    for x in (np.zeros((3, 3), np.float32), np.zeros(2, np.float32), "x",
              torch.empty(3, 2, device="meta"), torch.zeros(3, 2).to_sparse()):
        with pytest.raises(InputError, match=r"\bx\b"):
            to_data_space(x, cfg)


@pytest.mark.parametrize("x", [torch.empty(20, 2, device="meta"),
                               torch.eye(20, 2).to_sparse()])
def test_fit_refuses_meta_and_sparse_tensors(tmp_path, x):
    with pytest.raises(InputError, match=r"data.*(meta|sparse)"):
        fit(x, run_dir=tmp_path / "run", progress=False)
    with pytest.raises(InputError, match=r"valid.*(meta|sparse)"):
        fit(np.zeros((20, 2), np.float32), valid=x, run_dir=tmp_path / "run", progress=False)


def test_resuming_reads_metric_rows_past_bad_lines(tmp_path, caplog):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "a": 1}\n{"epoch": 2, "a\n'
                                            '{"epoch": "3"}\n{"epoch": 2, "a": 2}\n')
    with caplog.at_level(logging.WARNING, logger="infusion"):
        rows = rundir.read_metrics(tmp_path, 5)
    assert rows == [{"epoch": 1, "a": 1}, {"epoch": 2, "a": 2}] and "line 2" in caplog.text


def test_a_mask_file_that_is_a_fifo_is_refused(tmp_path):
    fifo = tmp_path / "mask.png"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"mask file .*FIFO"):
        with_alarm(lambda: load_mask_file(fifo, (1, 28, 28)))
    with pytest.raises(InputError, match=r"mask file .*symlink loop"):
        load_mask_file(symlink_loop(tmp_path), (1, 28, 28))


def test_fit_names_data_that_is_a_symlink_loop_a_fifo_or_a_device(tmp_path):
    fifo = tmp_path / "x.npz"
    os.mkfifo(fifo)
    for data, kind in ((symlink_loop(tmp_path), "symlink loop"), (fifo, "FIFO"),
                       ("/dev/zero", "device")):
        with pytest.raises(InputError, match=kind):
            with_alarm(lambda data=data: fit(data, run_dir=tmp_path / "run", progress=False))


@pytest.mark.parametrize("extractor", ["inception", "torchscript"])
def test_a_feature_extractor_file_that_is_a_fifo_is_refused(tmp_path, extractor):
    fifo = tmp_path / "features.pt"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="is a FIFO"):
        with_alarm(lambda: get_extractor(extractor, path=str(fifo)), 20)


def test_a_tfd_path_that_is_a_fifo_is_named_not_missing(tmp_path):
    fifo = tmp_path / "TFD_48x48.mat"
    os.mkfifo(fifo)
    assert cli.main(["data", "--name", "tfd", "--path", str(fifo)]) == 2
    with pytest.raises(DataError, match="a FIFO .*, not a regular file"):
        with_alarm(lambda: load_split(DataConfig(name="tfd", path=str(fifo)), "train"), 20)
