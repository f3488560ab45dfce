"""`toolace pull REPO_ID`: download a checkpoint from the hub, convert and quantize it into the model store, and
register it under a short name."""

from __future__ import annotations

from pathlib import Path

from . import store
from .convert import convert
from .hub import check_repo_id
from .quantize import quant_type


def default_name(repo_id: str) -> str:
    """The store name for a repo: its lower-cased name part (Team-ACE/ToolACE-8B -> toolace-8b)."""
    return check_repo_id(repo_id).split("/", 1)[1].lower()


def pull(repo_id: str, quant: str = "Q4_K_M", revision: str | None = None) -> Path:
    """Download `repo_id`, convert and quantize it into the model store, register it; returns the GGUF path."""
    name = default_name(repo_id)
    qt = quant_type(quant)  # a bad type fails before any download
    out = convert(repo_id, store.models_dir() / f"{name}-{qt.name}.gguf", outtype=qt.name, revision=revision)
    store.register(name, out)
    return out
