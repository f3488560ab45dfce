"""Conversation history in OpenAI message form → the messages the chat template sees.

Past assistant calls are re-rendered exactly as the model wrote them when we produced them (looked up by tool-call
id), else in the canonical call syntax; tool results go under the configured role."""

from __future__ import annotations

import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from toolace.errors import InputError
from toolace.limits import MAX_LITERAL_DEPTH, MAX_REMEMBERED_CALLS

from ..grammars.gbnf import render_calls
from ..grammars.schema import json_depth

ROLES = ("system", "developer", "user", "assistant", "tool", "ipython")  # developer: OpenAI's new name for system


def call_id() -> str:
    """A fresh random tool-call id: the same call made twice (or by two clients) must get two ids, since clients
    key results on them; CallMemory maps each id back to the raw text."""
    return "call_" + secrets.token_hex(12)


class CallMemory:
    """Remembers the raw assistant text behind each tool-call id we handed out."""

    def __init__(self) -> None:
        self._raw: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()  # the server remembers ids from its event loop while a worker decodes

    def remember(self, ids: Sequence[str], raw: str) -> None:
        with self._lock:
            for i in ids:
                self._raw[i] = raw
                self._raw.move_to_end(i)
            while len(self._raw) > MAX_REMEMBERED_CALLS:
                self._raw.popitem(last=False)

    def lookup(self, ids: Sequence[str]) -> str | None:
        with self._lock:
            raws = {self._raw.get(i) for i in ids}
        return raws.pop() if len(raws) == 1 and None not in raws else None


def _tool_calls(msg: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for tc in msg.get("tool_calls") or []:
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InputError("assistant tool_calls entries need function.name")
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args or "{}")
            except RecursionError:
                raise InputError(f"tool call {fn['name']!r}: arguments nest too deep") from None
            except ValueError as e:  # not JSON, or an integer past Python's digit limit
                raise InputError(f"tool call {fn['name']!r}: arguments are not JSON ({e})") from None
        if not isinstance(args, dict):
            raise InputError(f"tool call {fn['name']!r}: arguments must be an object")
        if json_depth(args, MAX_LITERAL_DEPTH + 1) - 1 > MAX_LITERAL_DEPTH:  # values the parser would not read
            raise InputError(f"tool call {fn['name']!r}: arguments nest deeper than {MAX_LITERAL_DEPTH} levels")
        out.append({"name": fn["name"], "arguments": args})
    return out


def to_template_messages(messages: Sequence[dict[str, Any]], tool_role: str,
                         memory: CallMemory | None = None) -> list[dict[str, Any]]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError("messages must be a non-empty list")
    out: list[dict[str, Any]] = []
    for n, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            raise InputError(f"message {n}: role must be one of {', '.join(ROLES)}")
        role, content = msg["role"], msg.get("content")
        if isinstance(content, list):  # OpenAI content parts: text only; an image or audio part is refused, not dropped
            kinds = [p.get("type") if isinstance(p, dict) else type(p).__name__ for p in content]
            other = [k for k in kinds if k != "text"]
            if other:
                raise InputError(f"message {n}: content part type {other[0]!r} is not supported (text only)")
            texts = [p.get("text") for p in content]
            if not all(isinstance(t, str) for t in texts):
                raise InputError(f"message {n}: content part text must be a string")
            content = "".join(texts)
        if content is not None and not isinstance(content, str):
            raise InputError(f"message {n}: content must be a string")
        calls = msg.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise InputError(f"message {n}: tool_calls must be a list")
        if role == "assistant" and calls:
            ids = [tc.get("id", "") for tc in calls if isinstance(tc, dict)]
            if not all(isinstance(i, str) for i in ids):
                raise InputError(f"message {n}: tool call ids must be strings")
            content = (memory.lookup(ids) if memory else None) or render_calls(_tool_calls(msg))
        if role in ("tool", "ipython"):
            role = tool_role
        elif role == "developer":
            role = "system"
        out.append({"role": role, "content": content or ""})
    return out


def default_tool_role(template_source: str) -> str:
    """What the chat template supports: 'ipython' for Llama-3.1-style templates, else 'tool'."""
    return "ipython" if "ipython" in template_source and "'tool'" not in template_source else "tool"
