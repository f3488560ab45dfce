"""Disk prompt cache: the KV state of the (long, stable) system prompt with its tool list, persisted so a desktop
app's first call after a restart is warm. Keyed by the model file's sha256 and the prefix tokens' hash."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolace.errors import OutputError, ToolaceError
from toolace.limits import MAX_CACHE_FILES, MIN_PREFIX_TOKENS
from toolace.paths import atomic_output, sha256_file, toolace_home

from .model import Model

log = logging.getLogger("toolace.cache")



def model_digest(path: Path, index_dir: Path) -> str:
    """sha256 of the model file, remembered per (path, size, mtime) so a 5 GB file is hashed once."""
    st = path.stat()
    index = index_dir / "model-hashes.json"
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        known = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError):
        known = {}
    if key not in known:
        known[key] = sha256_file(path)
        try:
            with atomic_output(index) as tmp:
                tmp.write_text(json.dumps(known))
        except OutputError as e:  # only saves re-hashing next time
            log.warning("model hash index not written: %s", e)
    return str(known[key])


class PromptCache:
    """`restore`/`store` act on `model`, or on the slot given (runtime/batch.SlotModel), which shares its weights."""

    def __init__(self, model: Model, folder: Path | None = None) -> None:
        self.model = model
        self.folder = folder or toolace_home() / "kv-cache"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._digest: str | None = None
        self.hits = 0

    def _path(self, prefix: Sequence[int], m: Any) -> Path:
        if self._digest is None:
            self._digest = model_digest(self.model.path, self.folder)
        h = hashlib.sha256(self._digest.encode())
        h.update(b"|n_ctx=%d|%s|" % (m.n_ctx, m.STATE_KIND.encode()))
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
        ok = m.load_state(path) and m.tokens == list(prefix)
        if not ok:
            m.reset()
            return False
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
        files = sorted(self.folder.glob("*.kv"), key=lambda p: p.stat().st_atime)
        for old in files[:-MAX_CACHE_FILES]:
            old.unlink(missing_ok=True)
