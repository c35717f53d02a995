"""Every `infusion …` command shown in README.md and docs/usage.md (and docs/results.md,
docs/reproduce.md) parses with the command-line parser, names a preset that exists and uses
`--set` keys that the config has. Nothing is run.

Commands are taken from fenced code blocks: lines starting with `infusion` (or holding
`-m infusion`, as `python -m infusion …` and `torchrun … -m infusion …`), with
backslash-continued lines joined and `#` comments dropped. There are no exceptions: a command
in these pages must be one that works as written (names in capitals, such as RUN, stand for a
path and parse as one).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

import infusion
from infusion import cli

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("README.md", "docs/usage.md", "docs/results.md", "docs/reproduce.md")
LEAST = {"docs/usage.md": 40}  # commands a page must yield (else 5), so the test cannot pass empty
FENCE = re.compile(r"^\s*(```|~~~)")


def build_parser():
    """The CLI's argparse parser (``infusion.cli.build_parser``)."""
    if hasattr(cli, "build_parser"):
        return cli.build_parser()
    from infusion.cli import parser  # the cli package's own module

    return parser.build_parser()


def fenced_lines(text: str) -> list[str]:
    """The lines inside fenced code blocks, backslash continuations joined."""
    out, inside, pending = [], False, ""
    for line in text.splitlines():
        if FENCE.match(line):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        line = pending + line
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        out.append(line)
    return out


def commands(page: str) -> list[list[str]]:
    """The argument lists (after `infusion`) of every command in a page's code blocks."""
    return commands_in((ROOT / page).read_text())


def commands_in(text: str) -> list[list[str]]:
    """The argument lists (after `infusion`) of every command in the code blocks of ``text``."""
    found = []
    for line in fenced_lines(text):
        text = line.strip().removeprefix("$ ")
        try:
            words = shlex.split(text, comments=True)
        except ValueError:  # not a shell line (e.g. Python with an odd quote)
            continue
        if words[:1] == ["infusion"]:
            found.append(words[1:])
        elif "-m" in words and words[words.index("-m") + 1: words.index("-m") + 2] == ["infusion"]:
            found.append(words[words.index("-m") + 2:])
    return found


def check(args: list[str]) -> None:
    """Raise AssertionError naming the command unless it parses, its --preset exists and its
    --set keys name fields of the config."""
    shown = "infusion " + shlex.join(args)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            ns = build_parser().parse_args(args)
    except SystemExit as e:
        if e.code not in (0, None):  # --help and --version exit 0
            raise AssertionError(f"{shown!r} is refused by the parser: "
                                 f"{err.getvalue().strip().splitlines()[-1:]}") from None
        return
    preset = getattr(ns, "preset", None)
    if ns.command in ("train", "bench") and preset:
        assert preset in infusion.PRESETS, f"{shown!r}: no preset {preset!r}"
    if ns.command == "presets" and ns.name:
        assert ns.name in infusion.PRESETS, f"{shown!r}: no preset {ns.name!r}"
    for item in getattr(ns, "set", []) or []:
        key, eq, _ = item.partition("=")
        assert eq, f"{shown!r}: --set {item!r} has no '='"
        node = infusion.Config()
        for part in key.split("."):
            assert hasattr(node, part), f"{shown!r}: the config has no setting {key!r}"
            node = getattr(node, part)


@pytest.mark.parametrize("page", PAGES)
def test_every_command_in_the_page_parses(page):
    found = commands(page)
    assert len(found) >= LEAST.get(page, 5), f"{page}: too few commands found"
    failures = []
    for args in found:
        try:
            check(args)
        except AssertionError as e:
            failures.append(str(e))
    assert failures == []


def test_a_wrong_command_is_rejected():
    with pytest.raises(AssertionError, match="no-such-flag"):
        check(["train", "--no-such-flag"])
    with pytest.raises(AssertionError, match="no preset"):
        check(["train", "--preset", "no-such-preset"])
    with pytest.raises(AssertionError, match="no setting 'train.no_such_key'"):
        check(["train", "--preset", "mnist", "--set", "train.no_such_key=1"])
    with pytest.raises(AssertionError, match="refused"):
        check(["sample", "--checkpoint", "runs/x"])  # --out is required


def test_the_extraction_joins_continued_lines_and_skips_prose():
    text = "infusion train --bogus\n```bash\ninfusion train --preset mnist \\\n  --set train.lr=1e-4  # c\n```\n"
    lines = fenced_lines(text)
    assert [line.split() for line in lines] == [
        ["infusion", "train", "--preset", "mnist", "--set", "train.lr=1e-4", "#", "c"]]
    assert commands_in(text) == [["train", "--preset", "mnist", "--set", "train.lr=1e-4"]]
