"""Ollama's API (docs/dialects.md): /api/chat and /api/generate bodies → the request model, results → Ollama's JSON
and NDJSON lines, and the model descriptions /api/tags, /api/show and /api/ps give. No I/O here.

Ollama cannot enforce a tool choice; here `tool_choice` (OpenAI's values), top-level or inside `options` (the one
field an unmodified Ollama client passes through as it is), is honoured through the grammar. `options` a local
model cannot change (threads, GPU layers, mmap) are accepted and have no effect; sampling options toolace does not
implement are refused unless they hold their neutral value."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone
from typing import Any

from toolace.grammars.json_schema import ResponseFormat, compile_response_format

from .errors import ApiError
from .request_model import EngineRequest, check_fields, engine_request

OLLAMA_VERSION = "0.12.6"  # the Ollama API level these routes follow (clients check a minimum, e.g. 0.6.4)
SAMPLING_OPTIONS = ("temperature", "top_p", "top_k", "min_p", "seed", "frequency_penalty", "presence_penalty")
# Options about where and how the model runs, fixed when the server started: accepted, without effect.
RUNTIME_OPTIONS = frozenset({"num_thread", "num_gpu", "main_gpu", "use_mmap", "use_mlock", "num_batch", "numa",
                             "low_vram", "f16_kv", "vocab_only", "num_keep", "logits_all", "embedding_only"})
# Sampling options toolace does not implement, with the value that leaves sampling unchanged.
NEUTRAL_OPTIONS: dict[str, Any] = {"repeat_penalty": 1.0, "repeat_last_n": 64, "typical_p": 1.0, "tfs_z": 1.0,
                                   "mirostat": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1,
                                   "penalize_newline": False}
CHAT_FIELDS = frozenset({"model", "messages", "tools", "format", "options", "stream", "keep_alive", "tool_choice"})
NEUTRAL_FIELDS: dict[str, tuple[Any, ...]] = {"think": (False,), "logprobs": (False,), "top_logprobs": (0,)}
GENERATE_FIELDS = frozenset({"model", "prompt", "system", "format", "options", "stream", "keep_alive", "raw",
                             "suffix", "images", "template", "context"})
ROLES = ("system", "user", "assistant", "tool")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _check_fields(body: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    check_fields(body, allowed, NEUTRAL_FIELDS, "unknown field {name!r} for " + where, "{name} is not supported")


def options_of(options: Any, n_ctx: int) -> tuple[dict[str, Any], Any, Any]:
    """`options` → (sampling fields, num_predict, stop); num_ctx above the server's context is refused."""
    if options is None:
        return {}, None, None
    if not isinstance(options, dict):
        raise ApiError(400, "options must be an object", param="options")
    sampling: dict[str, Any] = {}
    for key, value in options.items():
        if value is None or key in RUNTIME_OPTIONS or key in ("num_predict", "stop", "tool_choice"):
            continue
        if key in SAMPLING_OPTIONS:
            sampling[key] = value
        elif key == "num_ctx":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ApiError(400, f"options.num_ctx must be a positive integer, got {value!r}")
            if value > n_ctx:
                raise ApiError(400, f"options.num_ctx {value} exceeds this server's context of {n_ctx} tokens; "
                                    "restart `toolace serve` with a larger --n-ctx", param="options.num_ctx")
        elif key in NEUTRAL_OPTIONS:
            if value != NEUTRAL_OPTIONS[key]:
                raise ApiError(400, f"options.{key} is not supported (only its neutral value "
                                    f"{NEUTRAL_OPTIONS[key]!r})", param=f"options.{key}")
        else:
            raise ApiError(400, f"unknown option {key!r}", param=f"options.{key}")
    num_predict = options.get("num_predict")
    if isinstance(num_predict, int) and not isinstance(num_predict, bool) and num_predict < 0:
        num_predict = None  # Ollama's -1: "until the model stops", here the server's default budget
    return sampling, num_predict, options.get("stop")


def format_of(value: Any) -> ResponseFormat | None:
    """`format`: "json" (any JSON object) or a JSON schema, decoded under a grammar; "" or absent: text."""
    if value is None or value == "":
        return None
    if value == "json":
        return compile_response_format(None)
    if isinstance(value, dict):
        return compile_response_format(value, "response")
    raise ApiError(400, "format must be \"json\" or a JSON schema object", param="format")


def _message(msg: Any, n: int) -> dict[str, Any]:
    where = f"messages[{n}]"
    if not isinstance(msg, dict) or msg.get("role") not in ROLES:
        raise ApiError(400, f"{where}.role must be one of {', '.join(ROLES)}", param="messages")
    if msg.get("images"):
        raise ApiError(400, f"{where}.images: this is a text model; images are not supported", param="messages")
    content = msg.get("content")
    if content is not None and not isinstance(content, str):
        raise ApiError(400, f"{where}.content must be a string", param="messages")
    out: dict[str, Any] = {"role": msg["role"], "content": content or ""}
    calls = msg.get("tool_calls")
    if calls:
        if msg["role"] != "assistant" or not isinstance(calls, list):
            raise ApiError(400, f"{where}.tool_calls: only an assistant message carries a list of them")
        out["tool_calls"] = [{"type": "function", **({"id": c["id"]} if isinstance(c, dict) and c.get("id") else {}),
                              "function": c.get("function") if isinstance(c, dict) else None} for c in calls]
        out["content"] = content or None
    return out


def chat_request(body: dict[str, Any], n_ctx: int) -> EngineRequest:
    """/api/chat → the request model. Ollama streams unless told not to."""
    _check_fields(body, CHAT_FIELDS, "/api/chat")
    messages = body.get("messages")
    if isinstance(messages, list):
        messages = [_message(m, i) for i, m in enumerate(messages)]
    sampling, num_predict, stop = options_of(body.get("options"), n_ctx)
    choice = body.get("tool_choice")
    if choice is None and isinstance(body.get("options"), dict):
        choice = body["options"].get("tool_choice")
    return engine_request(messages, tools=body.get("tools") or None, tool_choice=choice,
                          response_format=format_of(body.get("format")), max_tokens=num_predict, stop=stop,
                          sampling=sampling, stream=True if body.get("stream") is None else body.get("stream"),
                          where={"max_tokens": "options.num_predict", "stop": "options.stop"})


def generate_request(body: dict[str, Any], n_ctx: int) -> EngineRequest | None:
    """/api/generate → the request model (system + prompt as a chat), or None for the empty prompt a client sends
    to load the model. `raw` prompts bypass the template (`keep["raw"]`)."""
    _check_fields(body, GENERATE_FIELDS, "/api/generate")
    for name in ("images", "context", "template", "suffix"):
        if body.get(name):
            raise ApiError(400, f"{name} is not supported on /api/generate (the template is fixed by the model)",
                           param=name)
    prompt, system = body.get("prompt") or "", body.get("system")
    if not isinstance(prompt, str) or (system is not None and not isinstance(system, str)):
        raise ApiError(400, "prompt and system must be strings")
    if not prompt:
        return None
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    sampling, num_predict, stop = options_of(body.get("options"), n_ctx)
    req = engine_request(messages, response_format=format_of(body.get("format")), max_tokens=num_predict, stop=stop,
                         sampling=sampling, stream=True if body.get("stream") is None else body.get("stream"),
                         where={"max_tokens": "options.num_predict", "stop": "options.stop"})
    if body.get("raw") and req.options["response_format"] is not None:
        raise ApiError(400, "format cannot be combined with raw (a raw prompt is decoded without a grammar)")
    req.keep = {"raw": prompt if body.get("raw") else None}
    return req


def done_reason(finish_reason: str, truncated: bool) -> str:
    return "length" if truncated or finish_reason == "length" else "stop"


def durations(stats: Any, started: float) -> dict[str, int]:
    """Ollama's counters, durations in nanoseconds."""
    ns = 1_000_000_000
    return {"total_duration": int((time.perf_counter() - started) * ns), "load_duration": 0,
            "prompt_eval_count": stats.prompt_tokens, "prompt_eval_duration": int(stats.prefill_seconds * ns),
            "eval_count": stats.completion_tokens, "eval_duration": int(stats.decode_seconds * ns)}


def ollama_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Calls with their arguments as objects, as Ollama's clients read them."""
    return [{"function": {"index": i, "name": c["name"], "arguments": c["arguments"]}} for i, c in enumerate(calls)]


def model_entry(name: str, info: dict[str, Any]) -> dict[str, Any]:
    """One model as /api/tags and /api/ps list it."""
    return {"name": name, "model": name, "modified_at": info["modified_at"], "size": info["file_size"],
            "digest": info["digest"], "details": details(info)}


def details(info: dict[str, Any]) -> dict[str, Any]:
    arch = info.get("architecture") or "unknown"
    return {"parent_model": "", "format": "gguf", "family": arch, "families": [arch],
            "parameter_size": parameter_size(info.get("parameter_count") or 0),
            "quantization_level": info.get("file_type") or "unknown"}


def parameter_size(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}".replace(".0", "")
    return str(n)


def file_digest(path: str) -> str:
    """A stable digest for the model file without hashing gigabytes: its path, size and modification time."""
    from pathlib import Path

    st = Path(path).stat()
    return hashlib.sha256(f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
