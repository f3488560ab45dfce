"""OpenAI request parsing: bounded JSON bodies, refused fields, and sampling, stop and tool options checked into
library arguments (a ToolSet built once per request)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import Request

from toolace.grammars.json_schema import ResponseFormat
from toolace.limits import BODY_READ_SECONDS

from .errors import ApiError
from .request_model import EngineRequest, engine_request, max_tokens_of, sampling_of, stop_of
from .structured import chat_response_format

# Request fields that would let a client supply its own template or grammar: refused (docs/design.md, "Hostile
# input").
REFUSED_FIELDS = ("grammar", "gbnf", "ebnf", "regex", "json_schema", "chat_template", "chat_template_kwargs",
                  "template", "guided_json", "guided_regex", "guided_grammar", "guided_choice", "structured_outputs",
                  "functions", "function_call")


async def read_json(request: Request, max_body_bytes: int, timeout: float = BODY_READ_SECONDS) -> dict[str, Any]:
    """The body as a JSON object, at most `max_body_bytes` (413) and sent within `timeout` seconds (408: a client
    that stalls mid-body must not hold its queue place)."""
    try:
        async with asyncio.timeout(timeout):
            body = await _read_body(request, max_body_bytes)
    except TimeoutError:
        raise ApiError(408, f"request body not received within {timeout:g} s", "invalid_request_error",
                       "body_timeout") from None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"request body is not valid JSON: {str(e)[:200]}", "invalid_request_error",
                       "invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    return data


async def _read_body(request: Request, max_body_bytes: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise ApiError(400, "Content-Length is not an integer") from None
        if n > max_body_bytes:
            raise ApiError(413, f"request body is {n} bytes, the limit is {max_body_bytes}",
                           "invalid_request_error", "body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body_bytes:
            raise ApiError(413, f"request body exceeds the limit of {max_body_bytes} bytes",
                           "invalid_request_error", "body_too_large")
    return bytes(body)


def refuse_fields(body: dict[str, Any]) -> None:
    for name in REFUSED_FIELDS:
        if body.get(name) is not None:
            raise ApiError(400, f"field {name!r} is not accepted: templates and grammars are fixed by the server "
                                "(tools and tool_choice select the grammar)")
    if body.get("logprobs") or body.get("best_of") not in (None, 1) or body.get("echo"):
        raise ApiError(400, "logprobs, best_of and echo are not supported")


def max_tokens_in(body: dict[str, Any]) -> Any:
    """OpenAI's newer `max_completion_tokens`, else `max_tokens` (unchecked: the request model checks it)."""
    value = body.get("max_completion_tokens")
    return body.get("max_tokens") if value is None else value


def system_roles(messages: list[Any]) -> list[Any]:
    """OpenAI's `developer` role is the system role (its newer name)."""
    return [dict(m, role="system") if isinstance(m, dict) and m.get("role") == "developer" else m for m in messages]


def chat_request(body: dict[str, Any]) -> EngineRequest:
    """/v1/chat/completions → the request model."""
    messages = body.get("messages")
    fmt: ResponseFormat | None = chat_response_format(body.get("response_format"))
    req = engine_request(system_roles(messages) if isinstance(messages, list) else messages,
                         tools=body.get("tools") or None, tool_choice=body.get("tool_choice"),
                         parallel_tool_calls=body.get("parallel_tool_calls"), response_format=fmt,
                         max_tokens=max_tokens_in(body), stop=body.get("stop"), sampling=body,
                         stream=body.get("stream"), n=body.get("n"), stop_loops=body.get("stop_loops"),
                         speculative=body.get("speculative"))
    stream_opts = body.get("stream_options") or {}
    req.include_usage = isinstance(stream_opts, dict) and bool(stream_opts.get("include_usage"))
    return req


def completion_request(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A checked /v1/completions body: the prompt and the library options."""
    if body.get("stream"):
        raise ApiError(400, "stream is not supported on /v1/completions; use /v1/chat/completions")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "prompt must be a non-empty string")
    return prompt, dict(max_tokens=max_tokens_of(max_tokens_in(body)), stop=stop_of(body.get("stop")),
                        **sampling_of(body))
