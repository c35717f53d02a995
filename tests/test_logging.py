"""The library speaks through ``logging`` and never prints; the command line prints its
messages (``infusion --quiet``: warnings only); figures leave the user's matplotlib backend
alone."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

import infusion
from infusion import config, figures
from infusion.cli import commands, main

from .conftest import tiny_config

SRC = Path(infusion.__file__).resolve().parent
CLI_TINY = ["--set", "data.toy_size=256", "--set", "model.hidden=16", "--set", "method.T=3",
            "--set", "train.epochs=1", "--set", "train.batch_size=64", "--set", "sample.n=8"]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected():
    """A standard handler on the ``infusion`` logger, at INFO, removed afterwards."""
    logger, handler = logging.getLogger("infusion"), Collect()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_training_messages_reach_a_logging_handler_and_nothing_is_printed(tmp_path, collected,
                                                                          capsys):
    infusion.train(tiny_config(), tmp_path / "run", progress=False)
    messages = [r.getMessage() for r in collected]
    assert any(m.startswith("epoch 1: train_loss") for m in messages)
    assert any(m.startswith("epoch 2: train_loss") for m in messages)
    assert any(m.startswith("samples: ") for m in messages)
    assert all(r.name.startswith("infusion.") for r in collected)
    assert {r.name for r in collected} >= {"infusion.training.loop", "infusion.training.finalize"}
    assert capsys.readouterr() == ("", "")


def test_an_epoch_line_without_validation_lists_no_empty_field(tmp_path, collected):
    infusion.train(tiny_config(train={"epochs": 1, "valid_examples": 0}), tmp_path / "run",
                   progress=False)
    line = next(r.getMessage() for r in collected if r.getMessage().startswith("epoch 1:"))
    assert re.fullmatch(r"epoch 1: train_loss -?[\d.]+, [\d,]+ example-steps/s", line), line


def test_the_log_parameter_still_receives_the_messages(tmp_path, collected):
    lines: list[str] = []
    logger = logging.getLogger("infusion")
    before = (logger.level, logger.propagate, list(logger.handlers))
    infusion.train(tiny_config(train={"epochs": 1}), tmp_path / "run", progress=False,
                   log=lines.append)
    assert any(s.startswith("epoch 1:") for s in lines) and any("samples:" in s for s in lines)
    assert (logger.level, logger.propagate, list(logger.handlers)) == before  # as it was
    assert any(r.getMessage().startswith("epoch 1:") for r in collected)  # on that logger too


def test_library_code_neither_prints_nor_switches_the_backend():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if "cli" in path.relative_to(SRC).parts:
            continue
        text = path.read_text()
        for pattern in (r"\bprint\(", r"log\s*=\s*print\b", r"matplotlib\.use\(",
                        r"import matplotlib\.pyplot|from matplotlib import pyplot"):
            found += [f"{path.relative_to(SRC)}: {pattern}" for _ in re.finditer(pattern, text)]
    assert found == []


def test_the_package_adds_only_a_null_handler():
    handlers = logging.getLogger("infusion").handlers
    assert [type(h) for h in handlers] == [logging.NullHandler]


def test_the_cli_prints_messages_and_quiet_keeps_warnings_only(tmp_path, capsys):
    run = tmp_path / "run"
    # a command's own --quiet hides the progress bars alone, as it always did
    assert main(["train", "--preset", "spiral", "--run-dir", str(run), *CLI_TINY,
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1: train_loss" in out and "final checkpoint:" in out
    assert not re.search(r"^(INFO|WARNING)", out, re.MULTILINE)  # plain lines
    assert main(["--quiet", "train", "--preset", "spiral", "--run-dir", str(run),
                 "--overwrite", *CLI_TINY]) == 0
    out = capsys.readouterr().out
    assert "epoch 1" not in out and "samples:" not in out and "final checkpoint:" in out
    handlers = logging.getLogger("infusion").handlers
    assert not [h for h in handlers if isinstance(h, commands.Terminal)]  # removed after main


def test_the_cli_prints_warnings_even_when_quiet_and_debug_with_v(capsys):
    logger = logging.getLogger("infusion.some.module")
    with commands.messages(logging.WARNING):
        logger.info("an info line")
        logger.warning("a warning line")
    with commands.messages(logging.DEBUG):
        logger.debug("a debug line")
    assert capsys.readouterr().out == "warning: a warning line\na debug line\n"
    assert main(["-v", "presets"]) == 0 and "spiral" in capsys.readouterr().out


def test_figures_are_returned_and_saved_on_request(tmp_path):
    fig = figures.chain_figure(torch.rand(4, 3, 1, 8, 8), every=2)  # 3 chains, 3 columns
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    png = figures.save_figure(fig, tmp_path / "chains.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert isinstance(figures.scatter_figure([torch.rand(9, 2)] * 2, ["a", "b"]), Figure)


BACKEND_SCRIPT = """
import sys
import matplotlib
matplotlib.use("svg")  # the user's choice: training and evaluation must leave it
from infusion import config, train
from infusion.evaluate import EvalSettings, evaluate
from infusion.evaluate.paper_figures import make_figures

run = sys.argv[2]
train(config.load_file(sys.argv[1]), run, progress=False)
evaluate(run, ["lb", "is", "parzen"], run + "/eval/report.json",
         EvalSettings(is_examples=20, is_k=2, n_samples=200, parzen_valid=50, parzen_test=50),
         device="cpu", progress=False)
done = make_figures(run, device="cpu", n=2)
assert str(done["fig1_sampling_chains"]).endswith(".png"), done
print("backend", matplotlib.get_backend(), "pyplot" if "matplotlib.pyplot" in sys.modules else "")
"""


def test_training_and_evaluation_leave_the_matplotlib_backend_alone(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config.to_dict(tiny_config(train={"epochs": 1}))))
    result = subprocess.run([sys.executable, "-c", BACKEND_SCRIPT, str(cfg), str(tmp_path / "run")],
                            check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "backend svg"  # and pyplot never imported
    assert (tmp_path / "run" / "chains.png").is_file()
