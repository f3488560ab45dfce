"""OpenAI request parsing and error mapping for the server: bounded JSON bodies, refused fields, sampling and stop
options checked into library arguments, and library exceptions mapped to OpenAI-style HTTP errors."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from toolace.errors import GenerationError, InputError, TemplateError, ToolaceError
from toolace.limits import DEFAULT_MAX_TOKENS

from ..grammars.compile import resolve_tool_choice
from ..grammars.schema import normalise_tools
from .generate import check_max_tokens
from .sampling import SamplingParams

if TYPE_CHECKING:
    from toolace.api import CallResult

log = logging.getLogger("toolace.server")

# --- request limits (name, unit, reason) ----------------------------------------------------------------------------
MAX_BODY_BYTES = 8 * 1024 * 1024  # bytes per request body; = MAX_TOOLS_FILE_BYTES, the largest legitimate tool list
MAX_STOP_SEQUENCES = 16  # stop strings per request (OpenAI allows 4); each is checked after every token
MAX_STOP_CHARS = 1024  # characters in one stop string

# Request fields that would let a client supply its own template or grammar: refused (DESIGN.md §7).
REFUSED_FIELDS = ("grammar", "gbnf", "ebnf", "regex", "json_schema", "chat_template", "chat_template_kwargs",
                  "template", "guided_json", "guided_regex", "guided_grammar", "guided_choice", "structured_outputs",
                  "functions", "function_call")


class ApiError(Exception):
    """An error answered as OpenAI-style JSON."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code


def error_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def api_error(exc: BaseException, started: bool = False) -> ApiError:
    """Map a library exception to an HTTP error. `started`: tokens were already produced."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, (InputError, TemplateError)):
        return ApiError(400, str(exc), "invalid_request_error", "invalid_request")
    if isinstance(exc, GenerationError) and not started:
        code = "context_length_exceeded" if "context" in str(exc) else "invalid_request"
        return ApiError(400, str(exc), "invalid_request_error", code)
    if isinstance(exc, ToolaceError):
        return ApiError(500, str(exc), "server_error", "generation_failed")
    log.error("internal error", exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}", "server_error", "internal_error")


# --- request parsing -----------------------------------------------------------------------------------------------
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
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise ApiError(400, "response_format is not supported (only {'type': 'text'}); use tools and tool_choice")
    n = body.get("n", 1)
    if n not in (1, None):
        raise ApiError(400, f"n must be 1, got {n!r}")
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
            "logit_bias": _logit_bias(body.get("logit_bias"))}
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


def usage(result_stats: Any) -> dict[str, int]:
    p, c = result_stats.prompt_tokens, result_stats.completion_tokens
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def arguments_json(args: dict[str, Any]) -> str:
    return json.dumps(args, ensure_ascii=False)


def content_of(result: CallResult) -> str | None:
    if result.calls:
        return None
    return result.text if result.text is not None else result.raw


@dataclass
class ChatRequest:
    """A checked /v1/chat/completions body, as library arguments."""

    messages: list[Any]
    tools: list[Any] | None
    tool_choice: Any
    options: dict[str, Any]
    stream: bool
    include_usage: bool


def chat_request(body: dict[str, Any]) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list")
    tools = body.get("tools") or None
    tool_choice = body.get("tool_choice")
    if tool_choice is None:
        tool_choice = "auto"
    if tools is not None:
        resolve_tool_choice(tool_choice, normalise_tools(tools))  # unknown tool → SchemaError → 400
    elif tool_choice not in ("auto", "none"):
        raise ApiError(400, f"tool_choice {tool_choice!r} needs tools")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise ApiError(400, "parallel_tool_calls must be a boolean")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be a boolean")
    options = dict(parallel_tool_calls=parallel, max_tokens=max_tokens_of(body), stop=stop_of(body),
                   **sampling_of(body))
    stream_opts = body.get("stream_options") or {}
    include_usage = isinstance(stream_opts, dict) and bool(stream_opts.get("include_usage"))
    return ChatRequest(messages, tools, tool_choice, options, stream, include_usage)


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
