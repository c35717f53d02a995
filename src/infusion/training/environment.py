"""Where and how a run was made: the library version (and its git commit when it runs from a
checkout), torch, the device, the thread count and the command line, recorded in every run
directory as ``environment.json`` (one entry per start or resume) and read by model cards."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from .. import __version__
from ..io import atomic_write

FILE = "environment.json"


def git_commit() -> str | None:
    """The commit of the checkout the library runs from, with "+changes" when it has any;
    None when it is installed from a wheel or git is missing."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, check=False,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", str(here.parent)],
                               cwd=here, capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.strip() else "")


def environment(device: torch.device) -> dict:
    """This process's environment, as a JSON-able dict."""
    info = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "infusion": __version__,
            "git_commit": git_commit(), "python": sys.version.split()[0],
            "torch": torch.__version__, "platform": platform.platform(),
            "device": str(device), "threads": torch.get_num_threads(),
            "command": _command()}
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
    return info


def _command() -> list[str]:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("infusion", "__main__.py"):
        argv[0] = "infusion"
    return argv


def record(run_dir: Path, device: torch.device) -> None:
    """Append this start's environment to ``run_dir/environment.json``."""
    path = Path(run_dir) / FILE
    try:
        entries = json.loads(path.read_text()) if path.is_file() else []
    except (OSError, ValueError):
        entries = []
    if not isinstance(entries, list):
        entries = []
    entries.append(environment(device))
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(entries, indent=2) + "\n"))
