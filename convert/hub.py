"""Checkpoint downloads from the Hugging Face hub (what `toolace pull` and `toolace convert REPO_ID` fetch).

Only safetensors, JSON, tokenizer and model-card files are fetched (never pickles), into huggingface_hub's own cache,
which resumes a dropped connection (HTTP Range) and reuses a finished download. Path-trick file names are refused
before any fetch; every snapshot is checked offline (links stay in the repo's folder, LFS blobs match their sha256).
HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE / HF_ENDPOINT are read when the call is made (huggingface_hub reads them once
at import, too early for a process that sets them later).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from toolace.errors import DownloadError, InputError
from toolace.paths import sha256_file

ALLOW_PATTERNS = ["*.safetensors", "*.json", "tokenizer*", "*.jinja", "README.md"]
# The hub's own rule for repo ids (owner/name, letters, digits, '-', '_', '.'), stricter about path tricks.
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
REPO_ID_RE = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")  # an LFS blob's name in the cache: its content's sha256
# A repo file name that could land outside the snapshot folder: an empty, '.' or '..' segment, absolute, drive, NUL.
UNSAFE_NAME_RE = re.compile(r"(^|[/\\])\.{0,2}([/\\]|$)|^[A-Za-z]:|\0")


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


def _listed_commit(repo_id: str, revision: str | None, endpoint: str | None) -> str | None:
    """Ask the hub once for the commit and file list and refuse path tricks in either before anything is fetched;
    None when the hub cannot answer, and then only the cache may serve."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import filter_repo_objects

    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision)
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code < 500:
            raise  # no such repo or revision, gated, private: the caller says which
        return None
    except Exception:  # unreachable, timed out, garbled: never fall back to an unchecked listing
        return None
    if not isinstance(info.sha, str) or not COMMIT_RE.fullmatch(info.sha):
        raise DownloadError(f"{repo_id}: the hub answered {info.sha!r}, not a commit hash")
    for name in filter_repo_objects([s.rfilename for s in info.siblings or []], allow_patterns=ALLOW_PATTERNS):
        if UNSAFE_NAME_RE.search(name):
            raise DownloadError(f"{repo_id}: refusing to download {name!r}: a file name with '..', an absolute "
                                "path or a drive would land outside the cache folder")
    return info.sha


def verify_snapshot(repo_id: str, snapshot: Path) -> Path:
    """Offline integrity check: every snapshot entry must resolve inside the repo's cache folder, and each LFS blob
    (named by its content's sha256) must hash to its name; a corrupt blob is removed so the next pull refetches it."""
    repo_dir = (hub_cache_dir() / f"models--{repo_id.replace('/', '--')}").resolve()
    snapshot = snapshot.resolve()
    if not snapshot.is_relative_to(repo_dir / "snapshots"):
        raise DownloadError(f"{repo_id}: snapshot {snapshot} is outside the repo's cache folder {repo_dir}")
    for root, dirs, files in os.walk(snapshot):  # links are not followed: each one is checked where it points
        for entry in (Path(root) / name for name in dirs + files):
            rel, target = entry.relative_to(snapshot).as_posix(), entry.resolve()
            if not target.is_relative_to(repo_dir):
                raise DownloadError(f"{repo_id}/{rel}: resolves to {target}, outside the repo's cache folder")
            if target.parent != repo_dir / "blobs" or not SHA256_RE.fullmatch(target.name):
                continue  # small files are named by their git sha1, which hashes a header too: nothing to compare
            try:
                actual = sha256_file(target)
            except OSError as e:
                raise DownloadError(f"{repo_id}/{rel}: cannot be read: {e}") from None
            if actual != target.name:
                with contextlib.suppress(OSError):  # a read-only cache still gets the refusal
                    entry.unlink()
                    target.unlink()
                raise DownloadError(f"{repo_id}/{rel}: sha256 {actual} does not match the hub's {target.name}; "
                                    "removed it from the cache, pull again to refetch it")
    return snapshot


def download(repo_id: str, revision: str | None = None) -> Path:
    """Fetch (or find in the cache) the convertible files of `repo_id`; returns the verified snapshot folder."""
    check_repo_id(repo_id)
    _check_revision(revision)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now: huggingface_hub reads it at import
    try:
        commit = None if offline else _listed_commit(repo_id, revision, endpoint)
        # Fetching by the checked commit means a second, different answer from the hub is never used.
        path = snapshot_download(repo_id, revision=commit or revision, cache_dir=hub_cache_dir(),
                                 allow_patterns=ALLOW_PATTERNS, local_files_only=commit is None, endpoint=endpoint)
    except RepositoryNotFoundError:
        raise DownloadError(f"{repo_id}: no such repository on the hub (or it is private/gated: log in with "
                            "`hf auth login`)") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise DownloadError(f"{repo_id}: not in the local cache and {why}") from None
    except (HfHubHTTPError, OSError) as e:
        raise DownloadError(f"{repo_id}: download failed: {e}") from None
    except ValueError as e:  # huggingface_hub's own refusal (a path-trick name, a file too large for plain HTTP)
        raise DownloadError(f"{repo_id}: download refused: {e}") from None
    snapshot = verify_snapshot(repo_id, Path(path))
    if commit and revision != commit:  # fetched by commit: the branch's ref, which an offline pull reads, is ours
        ref = snapshot.parent.parent / "refs" / (revision or "main")
        ref.parent.mkdir(parents=True, exist_ok=True)
        (tmp := ref.with_name(f".{ref.name}.{os.getpid()}.tmp")).write_text(commit)
        os.replace(tmp, ref)  # atomic: a concurrent reader never sees half a hash
    return snapshot
