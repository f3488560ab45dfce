"""Anthropic's Messages API (docs/dialects.md): /v1/messages bodies → the request model, results → Message objects
and stream events. No I/O here.

tool_choice maps onto the grammar's modes, so `any` and `tool` are guaranteed calls: auto → auto, any → required,
tool → that function, none → none; `disable_parallel_tool_use` → one call per turn."""

from __future__ import annotations

import secrets
from typing import Any

from .errors import ApiError
from .request_model import EngineRequest, check_fields, engine_request

HONOURED = frozenset({"model", "max_tokens", "messages", "system", "tools", "tool_choice", "stop_sequences",
                      "temperature", "top_p", "top_k", "stream"})
IGNORED = frozenset({"metadata", "service_tier"})  # cannot change the answer
# Fields refused unless absent or neutral: what each would need is not built.
NEUTRAL: dict[str, tuple[Any, ...]] = {"thinking": ({"type": "disabled"},), "mcp_servers": ([],), "container": (),
                                       "context_management": ()}
COUNT_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking"})
CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def _check_fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    check_fields(body, allowed | IGNORED, NEUTRAL, "{name}: Extra inputs are not permitted",
                 "{name} is not supported (got {value})")


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{where}: content must be a string or a list of text blocks")
    parts = []
    for i, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ApiError(400, f"{where}.{i}: block type {kind!r} is not supported here (text only)")
        parts.append(block["text"])
    return "".join(parts)


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or a list of content blocks")
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in ("text", "tool_use", "tool_result"):
            raise ApiError(400, f"{where}.content.{i}: block type {kind!r} is not supported (text, tool_use, "
                                "tool_result; this is a text model)")
    return content


def _assistant(blocks: list[dict[str, Any]], where: str) -> dict[str, Any]:
    text = "".join(b.get("text") or "" for b in blocks if b["type"] == "text")
    calls = []
    for b in blocks:
        if b["type"] == "tool_result":
            raise ApiError(400, f"{where}: tool_result blocks belong in a user message")
        if b["type"] == "tool_use":
            if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
                raise ApiError(400, f"{where}: tool_use blocks need an id and a name")
            calls.append({"id": b["id"], "type": "function",
                          "function": {"name": b["name"], "arguments": b.get("input") or {}}})
    if calls:
        return {"role": "assistant", "content": text or None, "tool_calls": calls}
    return {"role": "assistant", "content": text}


def _user(blocks: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Tool results first, as tool messages (by tool_use_id), then the user's text, if any."""
    out = []
    for i, b in enumerate(blocks):
        if b["type"] == "tool_use":
            raise ApiError(400, f"{where}: tool_use blocks belong in an assistant message")
        if b["type"] == "tool_result":
            if not isinstance(b.get("tool_use_id"), str):
                raise ApiError(400, f"{where}.content.{i}.tool_use_id must be a string")
            result = _text(b.get("content") or "", f"{where}.content.{i}.content")
            if b.get("is_error"):
                result = f"Error: {result}"
            out.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": result})
    text = "".join(b.get("text") or "" for b in blocks if b["type"] == "text")
    if text or not out:
        out.append({"role": "user", "content": text})
    return out


def messages_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages: must be a non-empty list", param="messages")
    system = body.get("system")
    out = [{"role": "system", "content": _text(system, "system")}] if system else []
    for n, msg in enumerate(raw):
        where = f"messages.{n}"
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            raise ApiError(400, f"{where}.role: must be 'user' or 'assistant'", param="messages")
        blocks = _blocks(msg.get("content"), where)
        out += [_assistant(blocks, where)] if msg["role"] == "assistant" else _user(blocks, where)
    return out


def tools_of(value: Any) -> list[dict[str, Any]] | None:
    if not value:
        return None
    if not isinstance(value, list):
        raise ApiError(400, "tools: must be a list", param="tools")
    out = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise ApiError(400, f"tools.{i}: tool type {kind!r} is not supported (custom tools only)")
        unknown = sorted(set(tool) - {"type", "name", "description", "input_schema", "cache_control"})
        if unknown:
            raise ApiError(400, f"tools.{i}.{unknown[0]}: Extra inputs are not permitted")
        fn = {"name": tool.get("name"), "parameters": tool.get("input_schema") or {"type": "object"}}
        if tool.get("description") is not None:
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def tool_choice_of(value: Any) -> tuple[Any, bool | None]:
    """Anthropic's tool_choice → (our tool_choice, parallel_tool_calls)."""
    if value is None:
        return "auto", None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in (*CHOICES, "tool"):
        raise ApiError(400, "tool_choice: type must be auto, any, tool or none", param="tool_choice")
    if kind == "tool" and not isinstance(value.get("name"), str):
        raise ApiError(400, "tool_choice: type tool needs a name", param="tool_choice")
    disable = value.get("disable_parallel_tool_use")
    parallel = None if disable is None else not disable if isinstance(disable, bool) else disable
    choice = CHOICES.get(kind) or {"type": "function", "function": {"name": value["name"]}}
    return choice, parallel


def messages_request(body: dict[str, Any]) -> EngineRequest:
    """/v1/messages → the request model. max_tokens is required, as Anthropic's API has it."""
    _check_fields(body, HONOURED)
    if body.get("max_tokens") is None:
        raise ApiError(400, "max_tokens: Field required", param="max_tokens")
    choice, parallel = tool_choice_of(body.get("tool_choice"))
    sampling = {k: body.get(k) for k in ("temperature", "top_p", "top_k")}
    return engine_request(messages_of(body), tools=tools_of(body.get("tools")), tool_choice=choice,
                          parallel_tool_calls=parallel, max_tokens=body.get("max_tokens"),
                          stop=body.get("stop_sequences"), sampling=sampling, stream=body.get("stream"),
                          where={"stop": "stop_sequences",
                                 "parallel_tool_calls": "tool_choice.disable_parallel_tool_use"})


def count_request(body: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """/v1/messages/count_tokens → (messages, the tool set or None)."""
    _check_fields(body, COUNT_FIELDS)
    choice, parallel = tool_choice_of(body.get("tool_choice"))
    req = engine_request(messages_of(body), tools=tools_of(body.get("tools")), tool_choice=choice,
                         parallel_tool_calls=parallel)
    return req.messages, req.toolset


def new_id() -> str:
    return "msg_" + secrets.token_hex(12)


def stop_reason(result: Any) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a result."""
    if result.truncated or result.finish_reason == "length":
        return "max_tokens", None
    if result.calls:
        return "tool_use", None
    if result.stats.stop_sequence:
        return "stop_sequence", result.stats.stop_sequence
    return "end_turn", None


def content_blocks(result: Any) -> list[dict[str, Any]]:
    if result.calls:
        return [{"type": "tool_use", "id": cid, "name": c["name"], "input": c["arguments"]}
                for cid, c in zip(result.call_ids, result.calls, strict=False)]
    text = result.text if result.text is not None else result.raw
    return [{"type": "text", "text": text}] if text else []


def message(mid: str, model: str, result: Any) -> dict[str, Any]:
    reason, sequence = stop_reason(result)
    return {"id": mid, "type": "message", "role": "assistant", "model": model, "content": content_blocks(result),
            "stop_reason": reason, "stop_sequence": sequence,
            "usage": {"input_tokens": result.stats.prompt_tokens, "output_tokens": result.stats.completion_tokens},
            "toolace": {"valid": result.valid, "errors": result.errors, "truncated": result.truncated}}
