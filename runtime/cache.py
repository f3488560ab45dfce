"""Disk prompt cache: the KV state of the (long, stable) system prompt with its tool list, persisted so a desktop
app's first call after a restart is warm. Keyed by the model file's sha256, the llama.cpp build and the prefix
tokens' hash.

The cache only saves time, so nothing in it can fail a call: an unreadable hash index or state file is a miss (and
is rewritten), and a file another process or slot removes at any moment is a miss too. It is bounded in bytes
(`cache_max_bytes`, by default DEFAULT_CACHE_TOKENS of the model's per-token KV state) and in files; the files read
least recently go first (docs/design.md, "Caches")."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp

from toolace.errors import InputError, OutputError, ToolaceError
from toolace.limits import DEFAULT_CACHE_TOKENS, MAX_CACHE_FILES, MIN_PREFIX_TOKENS
from toolace.paths import TEMP_SUFFIX, atomic_output, remove_if_abandoned, sha256_file, toolace_home

from .model import Model

log = logging.getLogger("toolace.cache")
INDEX_NAME = "model-hashes.json"


@functools.cache
def build_identity() -> str:
    """The llama.cpp build a state was computed by: its version and CPU features, LLAMAFILE among them. Another
    build's kernels round differently (docs/speculative.md), so its states would change outputs: they are misses."""
    return f"{llama_cpp.__version__}|{llama_cpp.llama_print_system_info().decode(errors='replace')}"


def _read_index(index: Path) -> dict[str, str]:
    """The remembered hashes; a missing, unreadable or malformed index is an empty one (it is rewritten)."""
    try:
        known = json.loads(index.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # ValueError: bad UTF-8, bad JSON, absurd numbers
        return {}
    if not isinstance(known, dict):
        return {}
    return {k: v for k, v in known.items() if isinstance(v, str)}


def model_digest(path: Path, index_dir: Path) -> str:
    """sha256 of the model file, remembered per (path, size, mtime) so a 5 GB file is hashed once."""
    st = path.stat()
    index = index_dir / INDEX_NAME
    where = f"{path.resolve()}|"
    key = f"{where}{st.st_size}|{st.st_mtime_ns}"
    known = _read_index(index)
    if key in known:
        return known[key]
    digest = sha256_file(path)
    # One entry per model path: a changed file's old hash is of no use, so the index cannot grow without bound.
    known = {k: v for k, v in known.items() if not k.startswith(where)} | {key: digest}
    try:
        with atomic_output(index) as tmp:
            tmp.write_text(json.dumps(known))
    except OutputError as e:  # only saves re-hashing next time
        log.warning("model hash index not written: %s", e)
    return digest


def default_cache_bytes(model: Model) -> int:
    """DEFAULT_CACHE_TOKENS of this model's KV state: sized to the model, as its state files are."""
    return DEFAULT_CACHE_TOKENS * model.kv_bytes_per_token()


def check_cache_max_bytes(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"cache_max_bytes must be a non-negative integer (bytes), got {value!r}")


class PromptCache:
    """`restore`/`store` act on `model`, or on the slot given (runtime/batch.SlotModel), which shares its weights.
    `max_bytes`: the folder's state files are kept within this many bytes (None: default_cache_bytes)."""

    def __init__(self, model: Model, folder: Path | None = None, max_bytes: int | None = None) -> None:
        if max_bytes is not None:
            check_cache_max_bytes(max_bytes)
        self.model = model
        self.folder = folder or toolace_home() / "kv-cache"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = default_cache_bytes(model) if max_bytes is None else max_bytes
        self._digest: str | None = None
        self.hits = 0

    def _path(self, prefix: Sequence[int], m: Any) -> Path:
        if self._digest is None:
            self._digest = model_digest(self.model.path, self.folder)
        h = hashlib.sha256(self._digest.encode())
        h.update(b"|n_ctx=%d|%s|%s|" % (m.n_ctx, m.STATE_KIND.encode(), build_identity().encode()))
        h.update(",".join(map(str, prefix)).encode())
        return self.folder / f"{h.hexdigest()[:32]}.kv"

    def restore(self, prefix: Sequence[int], slot: Any = None) -> bool:
        """Load the prefix's KV from disk unless the live context already holds it."""
        m = slot or self.model
        if len(prefix) < MIN_PREFIX_TOKENS or m.tokens[: len(prefix)] == list(prefix):
            return False
        path = self._path(prefix, m)
        if not path.is_file():
            return False
        # A file removed since is_file() (another slot's eviction) fails to load like a damaged one: a miss.
        ok = m.load_state(path) and m.tokens == list(prefix)
        if not ok:
            m.reset()
            if path.is_file():  # damaged or not this prefix's state: remove it, so store() writes a good one
                log.warning("prompt cache file %s unreadable; removed", path.name)
                path.unlink(missing_ok=True)
            return False
        with contextlib.suppress(OSError):  # mark it recently used; it may have been evicted meanwhile
            os.utime(path)
        self.hits += 1
        return True

    def store(self, prefix: Sequence[int], slot: Any = None) -> None:
        """Persist the prefix's KV (the context must currently start with it); truncates the context to it."""
        m = slot or self.model
        if len(prefix) < MIN_PREFIX_TOKENS or m.tokens[: len(prefix)] != list(prefix):
            return
        path = self._path(prefix, m)
        if path.is_file():
            return
        m.truncate(len(prefix))
        try:
            with atomic_output(path) as tmp:
                m.save_state(tmp)
        except ToolaceError as e:  # the cache only saves time: a full disk must not fail the answer
            log.warning("prompt cache not written: %s", e)
            return
        self.evict()

    def evict(self) -> None:
        """Remove the least recently used state files until the rest fit max_bytes and MAX_CACHE_FILES. Other
        slots and processes evict too: a file that vanishes between listing and stat or unlink is simply gone.
        A temporary file whose writer was killed mid-write is removed too (nothing else ever would)."""
        for tmp in self.folder.glob(f".*{TEMP_SUFFIX}"):  # atomic_output's temporaries; a live writer holds the lock
            remove_if_abandoned(tmp)
        files: list[tuple[int, int, Path]] = []
        for p in self.folder.glob("*.kv"):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_atime_ns, st.st_size, p))
        files.sort()  # oldest access first (restore() touches a file it loads)
        total, count = sum(size for _, size, _ in files), len(files)
        for _, size, p in files:
            if total <= self.max_bytes and count <= MAX_CACHE_FILES:
                break
            try:
                p.unlink(missing_ok=True)
            except OSError as e:  # e.g. a read-only folder: the cap is best effort, the answer is not at stake
                log.warning("prompt cache file %s not removed: %s", p.name, e)
                continue
            total, count = total - size, count - 1
