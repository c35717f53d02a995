"""The package's floor plan (docs/design.md): every module imports only from its own floor or
below, there are no import circles (lazy imports inside functions count), and the paths of
version 0.2 still import, as the very modules that replaced them."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import infusion

SRC = Path(infusion.__file__).parent
# Floors, lowest first (docs/design.md).
FLOORS = {"errors": 0, "limits": 0, "io": 0, "device": 0, "figures": 0, "_logging": 0, "hub": 0,
          "config": 1, "data": 2,
          "chain": 3, "methods": 4, "models": 5, "generate": 5, "training": 6, "evaluate": 7,
          "cli": 8,
          "__init__": 9, "__main__": 9, "_compat": 9}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports (every import statement, lazy ones too)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "__init__":
        package = []
    known = {module_name(p) for p in SRC.rglob("*.py")}
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            if not target and [a.name for a in node.names] == ["__version__"]:
                continue  # the version string, which every floor may read
            for alias in node.names:  # `from . import checkpoint`: a module, not a name
                sub = f"{target}.{alias.name}" if target else alias.name
                out.add(sub if sub in known else (target or "__init__"))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for m in mods:
                if m and m.startswith("infusion."):
                    out.add(m.removeprefix("infusion."))
    return {m for m in out if m != name}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in SRC.rglob("*.py")}


def floor(module: str) -> int:
    return FLOORS[module.split(".")[0]]


def test_every_module_has_a_floor():
    assert sorted(m for m in graph() if m.split(".")[0] not in FLOORS) == []


def test_no_module_imports_from_a_floor_above_it():
    upward = sorted(f"{a} -> {b}" for a, deps in graph().items() if a != "_compat"
                    for b in deps if floor(b) > floor(a))
    assert upward == []


def test_no_import_circles():
    g = graph()
    state: dict[str, int] = {}
    circles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(g.get(m, set())):
            if state.get(d) == 1:
                circles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert circles == []


def test_the_checker_sees_a_circle(tmp_path, monkeypatch):
    """The circle check can fail: two modules importing each other are reported."""
    pkg = tmp_path / "infusion"
    (pkg / "chain").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("def f():\n    from .chain import model\n")
    (pkg / "chain" / "__init__.py").write_text("")
    (pkg / "chain" / "model.py").write_text("from ..errors import f\n")
    monkeypatch.setitem(globals(), "SRC", pkg)
    with pytest.raises(AssertionError):
        test_no_import_circles()
    with pytest.raises(AssertionError):
        test_no_module_imports_from_a_floor_above_it()


@pytest.mark.parametrize("old,new", [("trainer", "training.loop"), ("operator", "chain.model"),
                                     ("checkpoint", "models"), ("training.checkpoint", "models"),
                                     ("evaluate.likelihoods", "evaluate.likelihood_rows")])
def test_old_module_paths_still_import(old, new):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"infusion.{old}")
    assert module is importlib.import_module(f"infusion.{new}")
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)


def test_old_runtime_names_still_import():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from infusion.runtime import batches, compute_step_statistics, load_model
    from infusion.data.batches import batches as b
    from infusion.methods.statistics import compute_step_statistics as c
    from infusion.models import load_model as m

    assert (batches, compute_step_statistics, load_model) == (b, c, m)
    assert infusion.load_model is m  # one load_model


def test_the_command_line_starts_without_torch():
    """The parser, the config and the presets import no method (the config's registry loads
    them when first asked), so ``infusion --help`` does not import torch."""
    code = ("import sys, infusion.cli, infusion.config; infusion.cli.build_parser(); "
            "infusion.config.PRESETS['spiral']; print(sorted(m for m in sys.modules "
            "if m == 'torch' or m.startswith('infusion.methods')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
