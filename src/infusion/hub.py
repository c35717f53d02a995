"""Exports on the Hugging Face Hub: ``load_model("hf://owner/name")`` (or
``hf://owner/name@revision``) downloads an export's ``config.json``, ``model.safetensors`` and
``README.md`` through ``huggingface_hub`` into its cache and loads them from there. The package
is an optional extra (``pip install "infusion-training[hub]"``), imported only when asked for;
``HF_HUB_OFFLINE=1`` loads from the cache alone."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from .errors import InputError

PREFIX = "hf://"
EXPORT_FILES = ("config.json", "model.safetensors", "README.md")
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def is_hub(source) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def parse(source: str) -> tuple[str, str | None]:
    """``hf://owner/name[@revision]`` -> (repo id, revision or None)."""
    repo, _, revision = source[len(PREFIX):].partition("@")
    if not _REPO.fullmatch(repo) or (revision == "" and "@" in source):
        raise InputError(f"{source!r}: expected hf://owner/name or hf://owner/name@revision")
    return repo, revision or None


def local_copy(source: str) -> Path:
    """The folder of the export ``source`` (hf://…) in the Hugging Face cache, downloaded
    first if needed."""
    repo, revision = parse(source)
    try:
        hub = importlib.import_module("huggingface_hub")
    except ImportError:
        raise InputError(f"loading {source!r} needs the huggingface_hub package: pip install "
                         "'infusion-training[hub]' (or huggingface_hub)") from None
    try:
        folder = hub.snapshot_download(repo_id=repo, revision=revision,
                                       allow_patterns=list(EXPORT_FILES))
    except Exception as e:  # network, authentication, a missing repository
        raise InputError(f"could not fetch {source!r} from the Hugging Face Hub: "
                         f"{type(e).__name__}: {e}") from e
    return Path(folder)
