"""The local model store: GGUF files under TOOLACE_HOME/models and a JSON registry of names -> files.

The registry is rewritten atomically (temp file + rename) under an exclusive lock, so concurrent `pull`s cannot
lose each other's entries and a crash never leaves a half-written registry. An entry records where a model came
from (repo, revision, quant), its files, size and sha256, and when it was last loaded (docs/models.md)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from toolace.errors import InputError, ModelFileError, ToolaceError
from toolace.limits import MAX_CHECKPOINT_JSON_BYTES, MAX_MODEL_NAME_CHARS
from toolace.paths import atomic_output, toolace_home

NAME_RE = re.compile(rf"^[a-z0-9][a-z0-9._-]{{0,{MAX_MODEL_NAME_CHARS - 1}}}$")
REGISTRY_VERSION = 1
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def models_dir() -> Path:
    return toolace_home() / "models"


def registry_path() -> Path:
    return models_dir() / "registry.json"


def now() -> str:
    return time.strftime(TIME_FORMAT, time.gmtime())


def check_name(name: str) -> str:
    """A valid store name, or one InputError saying what is wrong and how to choose another (`--name`)."""
    if not isinstance(name, str) or not name:
        raise InputError("model name must be a non-empty string")
    if len(name) > MAX_MODEL_NAME_CHARS:
        raise InputError(f"model name {name[:24]!r}... is {len(name)} characters, over the {MAX_MODEL_NAME_CHARS} a "
                         "store name may have; choose a shorter one with --name NAME")
    if not NAME_RE.fullmatch(name):
        raise InputError(f"model name {name!r}: use 1-{MAX_MODEL_NAME_CHARS} lower-case letters, digits, '.', '_' or "
                         "'-', starting with a letter or digit; choose one with --name NAME")
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


def register(name: str, path: str | os.PathLike[str], **info: Any) -> None:
    """Record `name` -> `path` (an existing GGUF file, the first part of a split one), replacing any earlier entry
    of that name. `info`: what `toolace list` shows (source, revision, quant, files, size, sha256)."""
    check_name(name)
    target = Path(path).resolve()
    if not target.is_file():
        raise InputError(f"{target}: no such model file to register")
    with _locked():
        models = _read()
        models[name] = {**info, "path": str(target), "registered": now()}
        _write(models)


def _write(models: dict[str, dict[str, Any]]) -> None:
    with atomic_output(registry_path()) as tmp:
        tmp.write_text(json.dumps({"version": REGISTRY_VERSION, "models": models}, indent=2, sort_keys=True))


def entry(name: str) -> dict[str, Any] | None:
    """The registry entry of `name`, or None."""
    return _read().get(name)


def claim(name: str, source: str, quant: str) -> None:
    """Refuse, before anything is downloaded, a name already registered for another model: a different repo (hub
    ids compare case-insensitively, as the hub does) or another quant of the same one. The same model again is fine:
    pulling it refreshes it."""
    check_name(name)
    held = _read().get(name)
    if held is None:
        return
    same = str(held.get("source", "")).lower() == source.lower() and str(held.get("quant", "")) == quant
    if not same:
        owner = f"{held.get('source') or held['path']} ({held.get('quant') or 'quant unknown'})"
        raise InputError(f"model name {name!r} is taken by {owner}; pull with --name NAME to keep both, or "
                         f"`toolace rm {name}` first")


def unregister(name: str) -> dict[str, Any]:
    """Remove `name` from the registry and return its entry (the caller deletes the files)."""
    with _locked():
        models = _read()
        if name not in models:
            raise InputError(f"no model named {name!r} in the store (`toolace list` shows them)")
        gone = models.pop(name)
        _write(models)
    return gone


def touch(name: str) -> None:
    """Note that `name` was just loaded (`toolace list`'s last-used column). Best effort: a read-only or broken
    store never stops a model from loading."""
    with suppress(OSError, ToolaceError), _locked():
        models = _read()
        if name in models:
            models[name]["last_used"] = now()
            _write(models)


def lookup(name: str) -> Path | None:
    """The file registered as `name`, or None when there is no such entry or its file is gone."""
    found = _read().get(name)
    if found is None:
        return None
    path = Path(found["path"])
    return path if path.is_file() else None


def list_models() -> list[dict[str, Any]]:
    """Every registered model: name, path, size in bytes (None when the file is missing), registration time, and
    whatever the pull recorded (source, revision, quant, sha256, files, last_used)."""
    out = []
    for name, found in sorted(_read().items()):
        path = Path(found["path"])
        files = [Path(f) for f in found.get("files") or [found["path"]]]
        size = sum(f.stat().st_size for f in files) if all(f.is_file() for f in files) else None
        out.append({**found, "name": name, "path": str(path), "size": size,
                    "registered": found.get("registered")})
    return out
