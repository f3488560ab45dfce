"""The local model store: GGUF files under TOOLACE_HOME/models and a JSON registry of names -> files.

The registry is rewritten atomically (temp file + rename) under an exclusive lock, so concurrent `pull`s cannot
lose each other's entries and a crash never leaves a half-written registry."""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from toolace.errors import InputError, ModelFileError
from toolace.limits import MAX_CHECKPOINT_JSON_BYTES
from toolace.paths import atomic_output, toolace_home

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
REGISTRY_VERSION = 1


def models_dir() -> Path:
    return toolace_home() / "models"


def registry_path() -> Path:
    return models_dir() / "registry.json"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InputError(f"model name {name!r}: use 1-64 lower-case letters, digits, '.', '_' or '-'")
    return name


def _read() -> dict[str, dict[str, Any]]:
    path = registry_path()
    if not path.exists():
        return {}
    if path.stat().st_size > MAX_CHECKPOINT_JSON_BYTES:
        raise ModelFileError(f"{path}: registry is over {MAX_CHECKPOINT_JSON_BYTES} bytes; not a toolace registry")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: registry is not valid JSON ({e}); fix or delete it") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not all(isinstance(v, dict) and isinstance(v.get("path"), str)
                                               for v in models.values()):
        raise ModelFileError(f"{path}: registry has no valid `models` table; fix or delete it")
    return models


@contextmanager
def _locked() -> Iterator[None]:
    models_dir().mkdir(parents=True, exist_ok=True)
    with (models_dir() / ".registry.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def register(name: str, path: str | os.PathLike[str]) -> None:
    """Record `name` -> `path` (an existing GGUF file), replacing any earlier entry of that name."""
    _check_name(name)
    target = Path(path).resolve()
    if not target.is_file():
        raise InputError(f"{target}: no such model file to register")
    with _locked():
        models = _read()
        models[name] = {"path": str(target), "registered": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with atomic_output(registry_path()) as tmp:
            tmp.write_text(json.dumps({"version": REGISTRY_VERSION, "models": models}, indent=2, sort_keys=True))


def lookup(name: str) -> Path | None:
    """The file registered as `name`, or None when there is no such entry or its file is gone."""
    entry = _read().get(name)
    if entry is None:
        return None
    path = Path(entry["path"])
    return path if path.is_file() else None


def list_models() -> list[dict[str, Any]]:
    """Every registered model: name, path, size in bytes (None when the file is missing), registration time."""
    out = []
    for name, entry in sorted(_read().items()):
        path = Path(entry["path"])
        out.append({"name": name, "path": str(path), "size": path.stat().st_size if path.is_file() else None,
                    "registered": entry.get("registered")})
    return out
