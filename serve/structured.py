"""Structured outputs: OpenAI's `response_format` (chat) and `text.format` (Responses API) → a compiled
ResponseFormat (grammars/json_schema.py), or None for plain text. Unknown keys are refused by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from toolace.grammars.json_schema import ResponseFormat, compile_response_format

from .errors import ApiError

_CHAT_SCHEMA_KEYS = {"name", "schema", "strict", "description"}


def _check_keys(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ApiError(400, f"{where}: unknown field {unknown[0]!r}", param=f"{where}.{unknown[0]}")


def _schema(spec: dict[str, Any], where: str) -> ResponseFormat:
    name = spec.get("name", "response")
    if not isinstance(name, str) or not name:
        raise ApiError(400, f"{where}.name must be a non-empty string")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise ApiError(400, f"{where}.strict must be a boolean")
    schema = spec.get("schema")
    if schema is None:
        raise ApiError(400, f"{where}.schema is required")
    # strict or not, the grammar follows the schema exactly; strict only adds OpenAI's own restrictions
    return compile_response_format(schema, name)


def _format(fmt: Any, where: str, json_schema: Callable[[dict[str, Any]], ResponseFormat]) -> ResponseFormat | None:
    """text → None (no grammar), json_object → any JSON object, json_schema → what `json_schema` makes of it."""
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise ApiError(400, f"{where} must be an object with a 'type'")
    kind = fmt["type"]
    if kind in ("text", "json_object"):
        _check_keys(fmt, {"type"}, where)
        return None if kind == "text" else compile_response_format(None)
    if kind == "json_schema":
        return json_schema(fmt)
    raise ApiError(400, f"{where} type {kind!r} is not supported (text, json_object, json_schema)")


def _chat_json_schema(value: dict[str, Any]) -> ResponseFormat:
    _check_keys(value, {"type", "json_schema"}, "response_format")
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise ApiError(400, "response_format.json_schema must be an object")
    _check_keys(spec, _CHAT_SCHEMA_KEYS, "response_format.json_schema")
    return _schema(spec, "response_format.json_schema")


def _text_json_schema(fmt: dict[str, Any]) -> ResponseFormat:
    _check_keys(fmt, {"type"} | _CHAT_SCHEMA_KEYS, "text.format")
    return _schema(fmt, "text.format")


def chat_response_format(value: Any) -> ResponseFormat | None:
    """`response_format` of /v1/chat/completions: text | json_object | json_schema {name, schema, strict}."""
    return None if value is None else _format(value, "response_format", _chat_json_schema)


def text_format(value: Any) -> ResponseFormat | None:
    """`text` of /v1/responses: {"format": {type: text | json_object | json_schema, name, schema, strict}}."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, "text must be an object")
    _check_keys(value, {"format", "verbosity"}, "text")
    fmt = value.get("format")
    return None if fmt is None else _format(fmt, "text.format", _text_json_schema)
