"""`toolace pull REPO[:QUANT]` (also `hf.co/REPO:QUANT`): a ready GGUF when the repo publishes one for the quant
(convert/pull_gguf.py), else the checkpoint downloaded, converted and quantized here (the safetensors path); either
way the model lands in the store under a short name. Names are checked before anything is downloaded: a taken name
or one the store cannot hold is refused with the fix (`--name NAME`) in the message (docs/models.md)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from toolace.errors import DownloadError, InputError
from toolace.limits import DEFAULT_N_CTX
from toolace.paths import sha256_file

from ..runtime.kv_types import DEFAULT_KV_TYPE
from . import store
from .convert import convert
from .gguf_check import check_gguf
from .gguf_files import DEFAULT_QUANT, DEFAULT_QUANT_WHY, quant_tag
from .hub import _truthy, check_repo_id, hub_cache_dir
from .pick_quant import parse_size, pick_by_ram
from .pull_gguf import Listing, ProgressCallback, choose, listing, pull_gguf
from .quantize import quant_type
from .template_info import template_info

# How people write a hub model: `hf.co/{user}/{repo}:{quant}` (Ollama, LM Studio), a full URL, or the bare id.
REF_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/", "https://hf.co/", "huggingface.co/", "hf.co/")


def parse_ref(ref: str, quant: str | None = None) -> tuple[str, str | None]:
    """(repo id, quant tag or None) from `REPO`, `REPO:QUANT`, `hf.co/REPO:QUANT`; `quant` (the --quant flag) must
    agree with a tag in the reference."""
    if not isinstance(ref, str):
        raise InputError(f"{ref!r} is not a hub repo id")
    text = ref.strip()
    prefix = next((p for p in REF_PREFIXES if text.lower().startswith(p)), "")
    repo, sep, tag = text[len(prefix):].partition(":")
    if sep and not tag:
        raise InputError(f"{ref!r}: nothing after ':'; write REPO:QUANT (e.g. {repo}:{DEFAULT_QUANT})")
    check_repo_id(repo)
    if tag and quant and tag.upper() != quant.upper():
        raise InputError(f"{ref!r} asks for {tag.upper()} but --quant says {quant.upper()}; give one of them")
    return repo, (tag or quant or None)


def default_name(repo_id: str) -> str:
    """The store name for a repo: its lower-cased name part (Team-ACE/ToolACE-8B -> toolace-8b)."""
    return check_repo_id(repo_id).split("/", 1)[1].lower()


def _listing_or_none(repo_id: str, revision: str | None) -> Listing | None:
    """The hub's file list, or None when offline or unreachable (then only the local caches can serve)."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return None
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return listing(repo_id, revision, os.environ.get("HF_ENDPOINT") or None)
    except RepositoryNotFoundError:
        raise DownloadError(f"{repo_id}: no such repository on the hub (or it is private/gated: log in with "
                            "`hf auth login`)") from None
    except RevisionNotFoundError:
        raise DownloadError(f"{repo_id}: no revision {revision!r} on the hub") from None
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code < 500:
            raise DownloadError(f"{repo_id}: the hub refused the listing: {e}") from None
        return None
    except DownloadError:
        raise
    except Exception:  # unreachable, timed out, garbled: the cache may still serve the convert path
        return None


def _cached_commit(repo_id: str, revision: str | None) -> str | None:
    ref = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "refs" / (revision or "main")
    return ref.read_text().strip() if ref.is_file() else revision


def _convert_path(repo_id: str, quant: str, name: str, revision: str | None, commit: str | None) -> Path:
    """A safetensors checkpoint: download, convert, quantize into the store (the file name keeps the quant)."""
    qt = quant_type(quant)  # a bad type fails before any download
    store.claim(name, repo_id, qt.name)
    out = convert(repo_id, store.models_dir() / f"{name}-{qt.name}.gguf", outtype=qt.name, revision=revision)
    store.register(name, out, source=repo_id, revision=commit or _cached_commit(repo_id, revision), quant=qt.name,
                   files=[str(out)], size=out.stat().st_size, sha256=sha256_file(out),
                   template=template_info(check_gguf(out).kv), kind="converted")
    return out


def pull(ref: str, quant: str | None = None, name: str | None = None, revision: str | None = None,
         progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
         quiet: bool = False, max_ram: str | int | None = None, n_ctx: int = DEFAULT_N_CTX,
         kv_type: str = DEFAULT_KV_TYPE, note: Callable[[str], None] | None = None) -> Path:
    """Pull `ref` (`REPO`, `REPO:QUANT`, `hf.co/REPO:QUANT`) into the store as `name` (default: the repo's name part,
    lower-cased); returns the GGUF path. `quant`: the tag when `ref` has none (default Q4_K_M, case-insensitive).
    `max_ram` (bytes, or a size such as "8GB") instead of a quant: the least lossy of the repo's GGUF quants whose
    memory estimate at `n_ctx` tokens and `kv_type` fits (convert/pick_quant.py). `note` receives one line saying
    which quant was chosen and why. `progress` is called with a PullProgress after every chunk; setting `cancel`
    stops the download (DownloadCancelled), keeping the partial file for the next pull to resume. `quiet`: no
    progress bar on a terminal."""
    repo_id, tag = parse_ref(ref, quant)
    ram = parse_size(max_ram) if max_ram is not None else None
    if ram is not None and tag:
        raise InputError(f"{ref!r}: give a quant ({tag.upper()}) or --max-ram, not both")
    name = store.check_name(name if name is not None else default_name(repo_id))
    want = (tag or DEFAULT_QUANT).upper()
    tell = note or (lambda _line: None)
    found = _listing_or_none(repo_id, revision)
    if ram is not None and (found is None or not any(quant_tag(f) for f in found.files)):
        raise InputError(f"{repo_id}: --max-ram chooses among a repo's ready GGUF quants, and "
                         f"{'the hub cannot be reached' if found is None else 'this repo has none'}; "
                         f"name a quant instead ({repo_id}:{DEFAULT_QUANT})")
    if not tag and ram is None:
        tell(f"{want}: the default quant ({DEFAULT_QUANT_WHY}); name another with {repo_id}:QUANT, or let "
             "--max-ram SIZE pick the best that fits")
    if found is None:
        held = store.entry(name)
        if held and held.get("kind") == "gguf" and str(held.get("source", "")).lower() == repo_id.lower() \
                and held.get("quant") == want and Path(held["path"]).is_file():
            return Path(held["path"])  # offline, and already pulled: nothing to do
        return _convert_path(repo_id, want, name, revision, None)
    if any(quant_tag(f) for f in found.files):
        endpoint = os.environ.get("HF_ENDPOINT") or None
        if ram is not None:
            pick = pick_by_ram(repo_id, found.commit, {n: f.size for n, f in found.files.items()}, ram, n_ctx,
                               kv_type, endpoint)
            tell(pick.why)
            choice = pick.choice
        else:
            choice = choose(found, want)
        store.claim(name, repo_id, choice.quant)
        return pull_gguf(found, choice, name, endpoint, progress, cancel, quiet)
    if not any(f.endswith(".safetensors") for f in found.files):
        raise DownloadError(f"{repo_id}: neither GGUF nor safetensors files in the repo; nothing toolace can run")
    return _convert_path(repo_id, want, name, revision, found.commit)
