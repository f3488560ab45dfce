"""POST /v1/responses, the subset the OpenAI Agents SDK and LangChain (`use_responses_api=True`) use: request
checking, input items → chat messages, and the bounded store behind `previous_response_id`.

Every field OpenAI defines is either honoured, accepted because it cannot change the answer (metadata, user, cache
keys), or refused with a 400 naming it when set; a field OpenAI does not define is refused by name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from toolace.limits import MAX_STORED_RESPONSES
from toolace.lru import LRU

from .errors import ApiError
from .request_model import EngineRequest, engine_request, flag
from .request_model import check_fields as request_fields
from .structured import text_format

HONOURED = {"model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text",
            "max_output_tokens", "temperature", "top_p", "previous_response_id", "store", "stream",
            "stop_loops",  # toolace's own: false keeps a looping text answer going (docs/budget.md)
            "speculative"}  # toolace's own: false decodes without drafts (docs/speculative.md)
# Fields that cannot change the answer: accepted, echoed where the Response object has a place for them.
IGNORED = {"metadata", "user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "service_tier",
           "stream_options"}
# OpenAI fields refused unless absent, null or their neutral value (what each would need is not built).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "background": (False,), "conversation": (), "include": ([],), "max_tool_calls": (), "prompt": (),
    "reasoning": ({},), "top_logprobs": (0,), "truncation": ("disabled",), "context_management": (),
    "access_programs": (), "background_options": (), "image": (), "moderation": (), "prompt_cache_options": (),
}
MESSAGE_ROLES = ("user", "system", "developer", "assistant")
TEXT_PARTS = ("input_text", "output_text", "text")


def check_fields(body: dict[str, Any]) -> None:
    request_fields(body, HONOURED | IGNORED, NEUTRAL, "unknown field {name!r} for /v1/responses",
                   "field {name!r} is not supported (got {value})")


@dataclass
class Stored:
    """One stored response: the conversation up to and including its output, as chat messages."""

    messages: list[dict[str, Any]]


class ResponseStore(LRU[str, Stored]):
    """Responses kept for `previous_response_id`, least recently used dropped beyond MAX_STORED_RESPONSES."""

    def __init__(self, size: int = MAX_STORED_RESPONSES) -> None:
        super().__init__(size)


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or a list of content parts")
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind not in TEXT_PARTS:
            raise ApiError(400, f"{where}.content[{i}]: content part type {kind!r} is not supported (text only)")
        if not isinstance(part.get("text"), str):
            raise ApiError(400, f"{where}.content[{i}].text must be a string")
        texts.append(part["text"])
    return "".join(texts)


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    for key in ("call_id", "name", "arguments"):
        if not isinstance(item.get(key), str):
            raise ApiError(400, f"{where}.{key} must be a string")
    return {"id": item["call_id"], "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]}}


def input_messages(value: Any) -> list[dict[str, Any]]:
    """`input` (a string, or a list of message / function_call / function_call_output items) → chat messages;
    consecutive function calls become one assistant turn, as they were made."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise ApiError(400, "input must be a non-empty string or a non-empty list of items", param="input")
    out: list[dict[str, Any]] = []
    for n, item in enumerate(value):
        where = f"input[{n}]"
        if not isinstance(item, dict):
            raise ApiError(400, f"{where} must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in MESSAGE_ROLES:
                raise ApiError(400, f"{where}.role must be one of {', '.join(MESSAGE_ROLES)}, got {role!r}")
            out.append({"role": "system" if role == "developer" else role,
                        "content": _text_of(item.get("content"), where)})
        elif kind == "function_call":
            call = _function_call(item, where)
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") is not None:
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise ApiError(400, f"{where}.call_id must be a string")
            output = item.get("output")
            text = output if isinstance(output, str) else _text_of(output, where)
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        else:
            raise ApiError(400, f"{where}: input item type {kind!r} is not supported "
                                "(message, function_call, function_call_output)")
    return out


def _tools(value: Any) -> list[dict[str, Any]] | None:
    """Flat function tools ({"type": "function", "name", "parameters"}) → the chat form the library reads, field for
    field (`strict` too): the same tool sent to either endpoint renders the same prompt."""
    if not value:
        return None
    if not isinstance(value, list):
        raise ApiError(400, "tools must be a list", param="tools")
    out = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise ApiError(400, f"tools[{i}]: tool type {kind!r} is not supported (function only)", param="tools")
        unknown = sorted(set(tool) - {"type", "name", "description", "parameters", "strict"})
        if unknown:
            raise ApiError(400, f"tools[{i}]: unknown field {unknown[0]!r}", param="tools")
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(value: Any) -> Any:
    if value is None:
        return "auto"
    if isinstance(value, dict):
        if value.get("type") != "function" or not isinstance(value.get("name"), str):
            raise ApiError(400, f"tool_choice {json.dumps(value)[:80]} is not supported "
                                "(auto, none, required or {'type': 'function', 'name': ...})", param="tool_choice")
        return {"type": "function", "function": {"name": value["name"]}}
    return value


def _history(body: dict[str, Any], store: ResponseStore) -> list[dict[str, Any]]:
    prev = body.get("previous_response_id")
    if prev is None:
        return []
    hit = store.get(prev) if isinstance(prev, str) else None
    if hit is None:
        raise ApiError(400, f"previous_response_id {prev!r} is not stored on this server (created with store: "
                            "false, evicted, or never made here); send the whole conversation as input instead",
                       param="previous_response_id", code="previous_response_not_found")
    return [dict(m) for m in hit.messages]


def responses_request(body: dict[str, Any], store: ResponseStore) -> EngineRequest:
    """/v1/responses → the request model; `echo` holds what the Response object repeats, `history` (in echo) the
    conversation a stored response keeps."""
    check_fields(body)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ApiError(400, "instructions must be a string", param="instructions")
    history = _history(body, store) + input_messages(body.get("input"))
    messages = ([{"role": "system", "content": instructions}] if instructions else []) + history
    limit = body.get("max_output_tokens")
    req = engine_request(messages, tools=_tools(body.get("tools")), tool_choice=_tool_choice(body.get("tool_choice")),
                         parallel_tool_calls=body.get("parallel_tool_calls"),
                         response_format=text_format(body.get("text")), max_tokens=limit,
                         sampling={"temperature": body.get("temperature"), "top_p": body.get("top_p")},
                         stream=body.get("stream"), where={"max_tokens": "max_output_tokens"},
                         stop_loops=body.get("stop_loops"), speculative=body.get("speculative"))
    req.echo = {"instructions": instructions, "tools": body.get("tools") or [], "tool_choice": body.get("tool_choice")
                or "auto", "parallel_tool_calls": flag(body.get("parallel_tool_calls"), "parallel_tool_calls", True),
                "temperature": req.options["temperature"], "top_p": req.options["top_p"], "max_output_tokens": limit,
                "metadata": body.get("metadata") or {}, "previous_response_id": body.get("previous_response_id"),
                "user": body.get("user"), "text": body.get("text") or {"format": {"type": "text"}}}
    req.keep = {"history": history, "store": flag(body.get("store"), "store", True)}
    return req
