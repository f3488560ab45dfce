"""Unfinished work in the model store: partial downloads (kept so the next pull resumes them) and the temporary
files of an interrupted conversion (`.NAME.*.bf16.part`, `.NAME.*.part`, which a `kill -9` leaves behind).

Whoever is writing holds an exclusive flock on the file (or, for a download, on its folder's lock file) for as long
as it writes; the kernel drops the lock when the process dies, however it dies. So "stale" needs no clock: a partial
whose lock can be taken has nobody writing it, and `toolace rm --partials` removes exactly those."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from toolace.errors import DownloadError
from toolace.limits import MAX_CHECKPOINT_JSON_BYTES
from toolace.paths import TEMP_SUFFIX, read_json_file, remove_if_abandoned, try_lock

from .store import models_dir

PULLS = ".pulls"  # folder of partial downloads, one subfolder per repo and quant
LOCK_NAME = "pull.lock"
META_NAME = "pull.json"  # what is being pulled: name, source, revision, quant, files, size
PART_SUFFIX = TEMP_SUFFIX  # a file still being written (a download, or atomic_output's temporary)


def pulls_dir() -> Path:
    return models_dir() / PULLS


def pull_key(repo_id: str, quant: str) -> str:
    """The partial-download folder of one repo's quant (a repo id's '/' cannot appear in a folder name)."""
    return f"{repo_id.replace('/', '--')}--{quant}".lower()


@contextmanager
def pull_folder(repo_id: str, quant: str, meta: dict[str, Any]) -> Iterator[Path]:
    """The partial-download folder for `repo_id`'s `quant`, locked for this pull (a second pull of the same files
    is refused rather than interleaved) and described by `meta` for `toolace list`."""
    folder = pulls_dir() / pull_key(repo_id, quant)
    folder.mkdir(parents=True, exist_ok=True)
    with try_lock(folder / LOCK_NAME) as mine:
        if not mine:
            raise DownloadError(f"{repo_id}:{quant} is being pulled by another toolace process; wait for it")
        (folder / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
        yield folder


def _bytes_in(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name not in (LOCK_NAME, META_NAME))


def partial_downloads() -> list[dict[str, Any]]:
    """Every unfinished download: what it is for, bytes on disk of bytes needed, whether a pull is writing it."""
    out = []
    for folder in sorted(pulls_dir().iterdir()) if pulls_dir().is_dir() else []:
        meta_path = folder / META_NAME
        if not meta_path.is_file():
            continue
        try:
            meta = read_json_file(meta_path, MAX_CHECKPOINT_JSON_BYTES, DownloadError, str(meta_path))
        except DownloadError:
            meta = {}
        with try_lock(folder / LOCK_NAME) as free:
            in_use = not free
        out.append({**(meta if isinstance(meta, dict) else {}), "path": str(folder), "downloaded": _bytes_in(folder),
                    "in_use": in_use})
    return out


def _stale_part_files() -> Iterator[Path]:
    """Conversion leftovers beside the store's models: hidden `.NAME.*.part` files nobody holds a lock on."""
    for path in sorted(models_dir().glob(f".*{PART_SUFFIX}")) if models_dir().is_dir() else []:
        if path.is_file():
            yield path


def sweep_partials() -> list[dict[str, Any]]:
    """Remove every partial download and conversion leftover no process is writing; returns what was removed."""
    removed = []
    for partial in partial_downloads():
        folder = Path(partial["path"])
        with try_lock(folder / LOCK_NAME) as free:
            if not free:
                continue
            size = _bytes_in(folder)
            shutil.rmtree(folder)
        removed.append({"path": str(folder), "bytes": size, "kind": "download",
                        "name": partial.get("name"), "source": partial.get("source")})
    for path in _stale_part_files():
        size = remove_if_abandoned(path)
        if size is not None:
            removed.append({"path": str(path), "bytes": size, "kind": "conversion"})
    for folder in pulls_dir().iterdir() if pulls_dir().is_dir() else []:  # folders whose pull.json never got written
        if folder.is_dir() and not (folder / META_NAME).exists():
            with suppress(OSError), try_lock(folder / LOCK_NAME) as free:
                if free:
                    shutil.rmtree(folder)
    return removed


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Hold the lock that marks `path` as being written (so `rm --partials` leaves it alone) while the block runs."""
    with try_lock(path) as mine:
        if not mine:
            raise DownloadError(f"{path} is being written by another process")
        yield
