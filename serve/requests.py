"""OpenAI request parsing: bounded JSON bodies, refused fields, and sampling, stop and tool options checked into
library arguments (a ToolSet built once per request)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from toolace.api import ToolACE
from toolace.grammars.json_schema import ResponseFormat
from toolace.grammars.toolset import ToolSet
from toolace.limits import DEFAULT_MAX_TOKENS, MAX_N_CHOICES, MAX_STOP_CHARS, MAX_STOP_SEQUENCES
from toolace.runtime.generate import check_max_tokens
from toolace.runtime.sampling import SamplingParams

from .errors import ApiError
from .structured import chat_response_format

# Request fields that would let a client supply its own template or grammar: refused (docs/design.md, "Hostile
# input").
REFUSED_FIELDS = ("grammar", "gbnf", "ebnf", "regex", "json_schema", "chat_template", "chat_template_kwargs",
                  "template", "guided_json", "guided_regex", "guided_grammar", "guided_choice", "structured_outputs",
                  "functions", "function_call")


async def read_json(request: Request, max_body_bytes: int) -> dict[str, Any]:
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
    try:
        data = json.loads(bytes(body))
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"request body is not valid JSON: {str(e)[:200]}", "invalid_request_error",
                       "invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    return data


def refuse_fields(body: dict[str, Any]) -> None:
    for name in REFUSED_FIELDS:
        if body.get(name) is not None:
            raise ApiError(400, f"field {name!r} is not accepted: templates and grammars are fixed by the server "
                                "(tools and tool_choice select the grammar)")
    if body.get("logprobs") or body.get("best_of") not in (None, 1) or body.get("echo"):
        raise ApiError(400, "logprobs, best_of and echo are not supported")


def _number(body: dict[str, Any], name: str, default: Any) -> Any:
    value = body.get(name)
    return default if value is None else value


def max_tokens_of(body: dict[str, Any]) -> int:
    value = body.get("max_completion_tokens")
    if value is None:
        value = body.get("max_tokens")
    if value is None:
        return DEFAULT_MAX_TOKENS
    return check_max_tokens(value)


def stop_of(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "stop must be a string or a list of strings")
    if len(stop) > MAX_STOP_SEQUENCES or any(len(s) > MAX_STOP_CHARS for s in stop):
        raise ApiError(400, f"stop: at most {MAX_STOP_SEQUENCES} strings of at most {MAX_STOP_CHARS} characters")
    return stop


def sampling_of(body: dict[str, Any]) -> dict[str, Any]:
    opts = {"temperature": _number(body, "temperature", 0.0), "top_p": _number(body, "top_p", 1.0),
            "top_k": _number(body, "top_k", 0), "min_p": _number(body, "min_p", 0.0), "seed": body.get("seed"),
            "logit_bias": _logit_bias(body.get("logit_bias")),
            "frequency_penalty": _number(body, "frequency_penalty", 0.0),
            "presence_penalty": _number(body, "presence_penalty", 0.0)}
    SamplingParams(**opts)  # validates: NaN, out of range, wrong types → InputError → 400
    return opts


def _logit_bias(value: Any) -> dict[int, Any]:
    """OpenAI's {"token id as a string": bias}; ids beyond the vocabulary are refused once the model is known."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"logit_bias must be an object mapping token ids to biases, got {type(value).__name__}")
    out: dict[int, Any] = {}
    for key, bias in value.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 10):
            raise ApiError(400, f"logit_bias keys must be token ids (decimal integers), got {key!r}")
        out[int(key)] = bias
    return out


@dataclass
class ChatRequest:
    """A checked /v1/chat/completions body, as library arguments."""

    messages: list[Any]
    toolset: ToolSet | None  # normalised and compiled once, here
    options: dict[str, Any]  # ToolACE.stream keywords (response_format included)
    stream: bool
    include_usage: bool
    n: int = 1  # choices, generated one after another


def n_of(body: dict[str, Any]) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N_CHOICES:
        raise ApiError(400, f"n must be an integer in [1, {MAX_N_CHOICES}], got {n!r}")
    return n


def system_roles(messages: list[Any]) -> list[Any]:
    """OpenAI's `developer` role is the system role (its newer name)."""
    return [dict(m, role="system") if isinstance(m, dict) and m.get("role") == "developer" else m for m in messages]


def chat_request(body: dict[str, Any]) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list")
    tools = body.get("tools") or None
    tool_choice = body.get("tool_choice")
    if tool_choice is None:
        tool_choice = "auto"
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise ApiError(400, "parallel_tool_calls must be a boolean")
    if tools is None and tool_choice not in ("auto", "none"):
        raise ApiError(400, f"tool_choice {tool_choice!r} needs tools")
    toolset = ToolACE.toolset(tools, tool_choice, parallel) if tools is not None else None  # bad tools → 400
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be a boolean")
    fmt: ResponseFormat | None = chat_response_format(body.get("response_format"))
    options = dict(max_tokens=max_tokens_of(body), stop=stop_of(body), response_format=fmt, **sampling_of(body))
    stream_opts = body.get("stream_options") or {}
    include_usage = isinstance(stream_opts, dict) and bool(stream_opts.get("include_usage"))
    return ChatRequest(system_roles(messages), toolset, options, stream, include_usage, n_of(body))


def completion_request(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A checked /v1/completions body: the prompt and the library options."""
    if body.get("stream"):
        raise ApiError(400, "stream is not supported on /v1/completions; use /v1/chat/completions")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "prompt must be a non-empty string")
    return prompt, dict(max_tokens=max_tokens_of(body), stop=stop_of(body), **sampling_of(body))
