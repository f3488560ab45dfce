"""`toolace pull REPO_ID`: download a checkpoint from the Hugging Face hub, convert, quantize, register.

Only safetensors, JSON, tokenizer and model-card files are fetched (never pickles), into huggingface_hub's own
cache, so an interrupted download resumes and a finished one is reused. HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE are
read when the call is made (huggingface_hub reads them once at import, too early for a process that sets them later).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from toolace.errors import DownloadError, InputError

from . import store

ALLOW_PATTERNS = ["*.safetensors", "*.json", "tokenizer*", "*.jinja", "README.md"]
# The hub's own rule for repo ids (owner/name, letters, digits, '-', '_', '.'), stricter about path tricks.
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
REPO_ID_RE = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")


def check_repo_id(repo_id: str) -> str:
    """Refuse anything that is not a plain `owner/name` hub id: absolute paths, `..`, odd characters."""
    if not isinstance(repo_id, str) or not REPO_ID_RE.fullmatch(repo_id) or ".." in repo_id:
        raise InputError(f"{repo_id!r} is not a hub repo id (owner/name of letters, digits, '-', '_', '.') "
                         "nor an existing local folder")
    return repo_id


def _check_revision(revision: str | None) -> str | None:
    if revision is not None and (not REVISION_RE.fullmatch(revision) or ".." in revision):
        raise InputError(f"revision {revision!r} is not a branch, tag or commit name")
    return revision


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def download(repo_id: str, revision: str | None = None) -> Path:
    """Fetch (or find in the cache) the convertible files of `repo_id`; returns the snapshot folder."""
    check_repo_id(repo_id)
    _check_revision(revision)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=hub_cache_dir(),
                                 allow_patterns=ALLOW_PATTERNS, local_files_only=offline)
    except RepositoryNotFoundError:
        raise DownloadError(f"{repo_id}: no such repository on the hub (or it is private/gated: log in with "
                            "`hf auth login`)") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise DownloadError(f"{repo_id}: not in the local cache and {why}") from None
    except (HfHubHTTPError, OSError) as e:
        raise DownloadError(f"{repo_id}: download failed: {e}") from None
    return Path(path)


def default_name(repo_id: str) -> str:
    """The store name for a repo: its lower-cased name part (Team-ACE/ToolACE-8B -> toolace-8b)."""
    return check_repo_id(repo_id).split("/", 1)[1].lower()


def pull(repo_id: str, quant: str = "Q4_K_M", revision: str | None = None) -> Path:
    """Download `repo_id`, convert and quantize it into the model store, register it; returns the GGUF path."""
    from .convert import convert
    from .quantize import quant_type

    name = default_name(repo_id)
    qt = quant_type(quant)  # a bad type fails before any download
    out = convert(repo_id, store.models_dir() / f"{name}-{qt.name}.gguf", outtype=qt.name, revision=revision)
    store.register(name, out)
    return out
