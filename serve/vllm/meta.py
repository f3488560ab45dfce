"""What the export's three vLLM pieces share (docs/scale-out.md, "The guarantee inside vLLM"): the middleware
(http.py) tags each request, the tool parser (plugin.py) adds what its tools are, the logits processor (guard.py)
reads both from the request's sampling `extra_args` and leaves a note when it changed the output, which the
middleware turns into `finish_reason` "length" and `toolace.truncated`. Pure Python: no vLLM, no llama.cpp, so the
API server, the engine and `make test` all import it."""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from toolace.errors import ToolaceError
from toolace.grammars.json_schema import ResponseFormat, compile_response_format
from toolace.grammars.plan import Guard, Vocab
from toolace.limits import VLLM_NOTE_SECONDS
from toolace.paths import atomic_output

META_KEY = "toolace"  # the `vllm_xargs` / `extra_args` key; a client's own value is replaced by the middleware
NOTES_ENV = "TOOLACE_VLLM_NOTES"  # the folder the engine's notes go to (serve.sh makes one per server)
GUARD_CLOCK_ENV = "TOOLACE_VLLM_GUARD_CLOCK"  # set (by the benchmark): the guard leaves its own time in the notes
GUARD_TIME_PREFIX = "guard-time-"  # + the engine's pid + ".json": the guard's own time (never a nonce's name)
GUARD_CLOCK_KEYS = ("seconds", "setup_seconds", "steps", "rows", "requests")  # what the guard's clock counts
NONCE_HEX_CHARS = 32  # a note's file name: 128 random bits, unguessable, so one request never reads another's


class LLVocab:
    """A Hugging Face tokenizer as a grammars.plan.Vocab, through llguidance's tokenizer (the one vLLM's guidance
    backend builds from it): canonical tokens of bytes, and each token's bytes."""

    def __init__(self, lltok: Any) -> None:
        self.lltok = lltok

    def encode(self, data: bytes) -> list[int]:
        return list(self.lltok.tokenize_bytes(data)) if data else []

    def piece(self, token: int) -> bytes:
        return bytes(self.lltok.decode_bytes([token]))


_VOCABS: WeakKeyDictionary[Any, LLVocab] = WeakKeyDictionary()
_VOCABS_LOCK = threading.Lock()


def hf_vocab(tokenizer: Any, vocab_size: int | None = None) -> LLVocab:
    """The Vocab of a fast Hugging Face tokenizer, built once per tokenizer (~1 s) and kept while it lives."""
    import llguidance.hf

    with _VOCABS_LOCK:
        found = _VOCABS.get(tokenizer)
        if found is None:
            n = max(vocab_size or 0, len(tokenizer))
            found = _VOCABS[tokenizer] = LLVocab(llguidance.hf.from_tokenizer(tokenizer, n))
        return found


def new_nonce() -> str:
    return secrets.token_hex(NONCE_HEX_CHARS // 2)


def is_nonce(value: Any) -> bool:
    """Only the middleware's nonces name notes: hex of the fixed length, never a path."""
    return isinstance(value, str) and len(value) == NONCE_HEX_CHARS and all(c in "0123456789abcdef" for c in value)


def read_meta(extra: Any) -> dict[str, Any]:
    """The toolace entry of a request's extra arguments (`vllm_xargs`), as a dict (empty when absent or bad)."""
    raw = extra.get(META_KEY) if isinstance(extra, dict) else None
    try:
        meta = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        meta = None
    return meta if isinstance(meta, dict) else {}


def with_meta(extra: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """`extra` (a request's `vllm_xargs`) with the toolace entry set to `meta` (vLLM takes strings there)."""
    out = dict(extra) if isinstance(extra, dict) else {}
    out[META_KEY] = json.dumps(meta, ensure_ascii=False)
    return out


def tool_format(extra: Any) -> ResponseFormat | None:
    """The response format the middleware left for the tool parser (a JSON schema beside tools)."""
    given = read_meta(extra).get("schema")
    if not isinstance(given, dict):
        return None
    return compile_response_format(given.get("schema"), given.get("name") or "response")


def check_budget(vocab: Vocab, gbnf: str, names: list[str], calls_only: bool, max_tokens: int | None) -> None:
    """Refuse (InputError) a calls-only request whose max_tokens is below the shortest complete call, as `toolace
    serve` does; the same planner on the served tokenizer gives the same minimum."""
    if calls_only and max_tokens:
        Guard(vocab, gbnf, names, True, max_tokens, max_tokens)


# --- notes: the engine tells the API server that the guard changed a request's output ---------------------------------
def write_note(nonce: Any) -> bool:
    """Leave the note for `nonce` (engine side); False when there is nowhere to leave it."""
    folder = os.environ.get(NOTES_ENV)
    if not folder or not is_nonce(nonce):
        return False
    Path(folder, nonce).touch()
    return True


_last_sweep = [0.0]


def take_note(nonce: str) -> bool | None:
    """Whether the guard changed this request's output (API side; the note is removed). None: no notes folder, so
    the server cannot tell. Notes of requests whose client left are swept after VLLM_NOTE_SECONDS."""
    folder = os.environ.get(NOTES_ENV)
    if not folder or not is_nonce(nonce):
        return None
    path = Path(folder, nonce)
    try:
        path.unlink()
        found = True
    except FileNotFoundError:
        found = False
    now = time.time()
    if now - _last_sweep[0] > VLLM_NOTE_SECONDS:
        _last_sweep[0] = now
        for old in Path(folder).iterdir():
            try:
                if is_nonce(old.name) and now - old.stat().st_mtime > VLLM_NOTE_SECONDS:
                    old.unlink()
            except OSError:
                continue  # taken by its request meanwhile
    return found


# --- the guard's own time: what it adds to the engine's steps, read by `toolace bench serve --vllm-export` -----------
class GuardClock:
    """Seconds the guard spent (per step and setting up requests), kept by the engine. Only when a benchmark asks
    ($GUARD_CLOCK_ENV set) are the totals left in the notes folder, replaced after every step, so the benchmark
    reads the guard's share of the wall time directly, free of run-to-run noise; a served engine writes nothing."""

    def __init__(self) -> None:
        self.totals = dict.fromkeys(GUARD_CLOCK_KEYS, 0)
        folder = os.environ.get(NOTES_ENV)
        self.path = Path(folder, f"{GUARD_TIME_PREFIX}{os.getpid()}.json") \
            if folder and os.environ.get(GUARD_CLOCK_ENV) else None

    def add(self, seconds: float, steps: int = 0, rows: int = 0, requests: int = 0) -> None:
        t = self.totals
        t["seconds"] += seconds
        t["steps"] += steps
        t["rows"] += rows
        t["requests"] += requests
        if requests:
            t["setup_seconds"] += seconds
        if self.path is not None:
            try:
                with atomic_output(self.path) as temp:  # a reader never sees half a file
                    temp.write_text(json.dumps(t), encoding="utf-8")
            except ToolaceError:
                self.path = None  # only the benchmark's reading is lost


def read_guard_time(folder: str | Path) -> dict[str, float]:
    """The guard's time so far, summed over the server's engines (one file each)."""
    out = dict.fromkeys(GUARD_CLOCK_KEYS, 0)
    for path in Path(folder).glob(f"{GUARD_TIME_PREFIX}*.json"):
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in out:
            out[key] += found.get(key, 0)
    return out
