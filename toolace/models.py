"""The model store for apps: pull, list, show and remove models, with progress, cancellation and resume.

    from toolace import models
    cancel = threading.Event()
    entry = models.pull("hf.co/Team-ACE/ToolACE-8B-GGUF:Q4_K_M", progress=lambda p: print(p.fraction), cancel=cancel)
    models.list()                      # every model, and unfinished downloads (state "partial")
    models.show("toolace-8b-gguf", n_ctx=8192)["memory"]["total"]
    models.remove("toolace-8b-gguf")   # or models.remove(partials=True)

Parameters equal the CLI flags (`toolace pull/list/show/rm`, docs/models.md). Failures raise the project's errors:
InputError (a bad reference, a taken name), DownloadError (and DownloadCancelled), ResourceError (no disk space),
ModelFileError, OutputError. Nothing here loads llama.cpp."""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolace.convert.progress import ProgressCallback, PullProgress
from toolace.errors import InputError
from toolace.limits import DEFAULT_N_CTX
from toolace.runtime.kv_types import DEFAULT_KV_TYPE

__all__ = ["ProgressCallback", "PullProgress", "list", "pull", "remove", "show"]


def pull(ref: str, quant: str | None = None, name: str | None = None, revision: str | None = None,
         progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
         quiet: bool = True, max_ram: str | int | None = None, n_ctx: int = DEFAULT_N_CTX,
         kv_type: str = DEFAULT_KV_TYPE, note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Pull `ref` (`REPO`, `REPO:QUANT`, `hf.co/REPO:QUANT`) into the store; returns its `list()` entry. `progress`
    gets a PullProgress (file, done, total, rate, eta) after every chunk; setting `cancel` stops the download with
    DownloadCancelled and keeps the partial file, which the next pull of the same model resumes. `quiet=False`
    draws a progress bar when stderr is a terminal (the CLI's default). `max_ram` ("8GB", or bytes) instead of a
    quant picks the least lossy quant the repo offers that fits at `n_ctx` and `kv_type`; `note` gets one line
    saying which quant and why."""
    from toolace.convert.pull import default_name, parse_ref
    from toolace.convert.pull import pull as pull_model

    path = pull_model(ref, quant=quant, name=name, revision=revision, progress=progress, cancel=cancel, quiet=quiet,
                      max_ram=max_ram, n_ctx=n_ctx, kv_type=kv_type, note=note)
    wanted = name if name is not None else default_name(parse_ref(ref, quant)[0])
    return next(m for m in list(partials=False) if m["name"] == wanted and m["path"] == str(path))


def list(partials: bool = True) -> builtins.list[dict[str, Any]]:
    """Every model in the store (state "ready", or "missing" when its file is gone), then, with `partials`, every
    unfinished download (state "partial", `downloaded` of `size` bytes, `in_use` while a pull writes it)."""
    from toolace.convert import store
    from toolace.convert.partials import partial_downloads

    out = [{**m, "state": "ready" if m["size"] is not None else "missing"} for m in store.list_models()]
    if partials:
        out += [{**p, "state": "partial"} for p in partial_downloads()]
    return out


def show(name: str, n_ctx: int = DEFAULT_N_CTX, kv_type: str = "f16", parallel: int = 1) -> dict[str, Any]:
    """What a model is (a store name, a GGUF path or 'demo'): architecture, parameters, quant, trained context,
    chat template and whether it takes tools, files, and the memory it needs at `n_ctx` (docs/models.md, "Memory")
    against what this machine has available."""
    from toolace import probes
    from toolace.convert import store
    from toolace.convert.gguf_check import check_gguf
    from toolace.convert.gguf_files import local_parts
    from toolace.convert.info import FILE_TYPE_NAMES
    from toolace.convert.template_info import template_info
    from toolace.runtime.memory import check_kv_type, estimate_memory, model_shape
    from toolace.runtime.refs import resolve_model

    path = resolve_model(name, use=False)
    headers = [check_gguf(p) for p in local_parts(path)]
    kv, shape = headers[0].kv, model_shape(headers)
    est = estimate_memory(shape, n_ctx, check_kv_type(kv_type), parallel)
    entry = store.entry(name) or {}
    file_type = kv.get("general.file_type")
    return {
        "name": name, "path": str(path), "files": [str(h.path) for h in headers],
        "size": sum(h.file_size for h in headers), "source": entry.get("source"), "revision": entry.get("revision"),
        "sha256": entry.get("sha256"), "architecture": kv.get("general.architecture"),
        "parameters": sum(t.n_elements for h in headers for t in h.tensors),
        "quant": entry.get("quant") or FILE_TYPE_NAMES.get(file_type, str(file_type) if file_type else None),
        "context_length": shape.n_ctx_train, "template": template_info(kv),
        "memory": {**est.as_dict(), "available": probes.available_memory_bytes()},
    }


def remove(name: str | None = None, partials: bool = False) -> dict[str, Any]:
    """Remove model `name` (its registry entry, and its files when they live in the store), and/or with `partials`
    every unfinished download and conversion leftover no process is writing. Returns what was removed and the
    bytes freed."""
    from toolace.convert import store
    from toolace.convert.partials import sweep_partials

    if name is None and not partials:
        raise InputError("name a model to remove, or ask for partials (`toolace rm NAME`, `toolace rm --partials`)")
    removed: builtins.list[dict[str, Any]] = []
    if name is not None:
        removed.append(_remove_model(store, name))
    if partials:
        removed += sweep_partials()
    return {"removed": removed, "freed": sum(r["bytes"] for r in removed)}


def _remove_model(store: Any, name: str) -> dict[str, Any]:
    """Unregister `name`, then delete its files that live inside the store folder (a file registered from elsewhere
    is the user's: it stays) and the model's own folder when it is left empty."""
    entry = store.unregister(name)
    root = store.models_dir().resolve()
    freed, kept = 0, []
    for f in [Path(p) for p in entry.get("files") or [entry["path"]]]:
        if not f.resolve().is_relative_to(root):
            kept.append(str(f))
            continue
        if f.is_file():
            freed += f.stat().st_size
            f.unlink()
        folder = f.parent
        if folder != root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return {"kind": "model", "name": name, "path": entry["path"], "bytes": freed, "kept": kept,
            "source": entry.get("source")}
