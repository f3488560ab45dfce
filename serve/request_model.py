"""The one request model every wire dialect maps onto (docs/dialects.md): messages in the library's chat form, the
tools as one compiled ToolSet, the output format, sampling and limits. Chat Completions, Responses, Ollama and
Anthropic adapters each turn their own field names into `engine_request`'s arguments; each field is checked here, in
one place, under the name the client used (`where`), so an error names the field the client sent."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from toolace.api import ToolACE
from toolace.errors import InputError
from toolace.grammars.json_schema import ResponseFormat
from toolace.grammars.toolset import ToolSet
from toolace.limits import DEFAULT_MAX_TOKENS, MAX_N_CHOICES, MAX_STOP_CHARS, MAX_STOP_SEQUENCES
from toolace.runtime.generate import check_max_tokens
from toolace.runtime.sampling import SamplingParams

from .errors import ApiError

SAMPLING_DEFAULTS: dict[str, Any] = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "seed": None,
                                     "frequency_penalty": 0.0, "presence_penalty": 0.0}


@dataclass
class EngineRequest:
    """A checked request, as the library's arguments: what ToolACE.stream runs, whichever dialect sent it."""

    messages: list[dict[str, Any]]
    toolset: ToolSet | None  # normalised and compiled once, here
    options: dict[str, Any]  # ToolACE.stream keywords: max_tokens, stop, sampling, response_format
    stream: bool = False
    n: int = 1  # choices, generated one after another
    include_usage: bool = False
    echo: dict[str, Any] = field(default_factory=dict)  # request fields a dialect's answer repeats
    keep: dict[str, Any] = field(default_factory=dict)  # what a dialect holds on to (e.g. the history it stores)


def engine_request(messages: Any, *, tools: list[dict[str, Any]] | None = None, tool_choice: Any = None,
                   parallel_tool_calls: Any = None, response_format: ResponseFormat | None = None,
                   max_tokens: Any = None, stop: Any = None, sampling: dict[str, Any] | None = None,
                   stream: Any = None, n: Any = None, where: dict[str, str] | None = None,
                   stop_loops: Any = None, speculative: Any = None) -> EngineRequest:
    """Check every field once and build the request. `tools` in the chat form; `where` renames fields in error
    messages to the dialect's own (e.g. {"max_tokens": "options.num_predict"}). `stop_loops` (toolace's own,
    default true): a text answer that goes round ends there (docs/budget.md, "Looping answers"). `speculative`
    (toolace's own, default the server's): drafts verified several tokens per decode (docs/speculative.md)."""
    names = {"messages": "messages", "tool_choice": "tool_choice", "parallel_tool_calls": "parallel_tool_calls",
             "max_tokens": "max_tokens", "stop": "stop", "stream": "stream", "n": "n", **(where or {})}
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, f"{names['messages']} must be a non-empty list", param=names["messages"])
    choice = "auto" if tool_choice is None else tool_choice
    parallel = flag(parallel_tool_calls, names["parallel_tool_calls"], True)
    if not tools and choice not in ("auto", "none"):
        raise ApiError(400, f"{names['tool_choice']} {choice!r} needs tools", param=names["tool_choice"])
    toolset = ToolACE.toolset(tools, choice, parallel) if tools else None  # bad tools → InputError → 400
    options = dict(max_tokens=max_tokens_of(max_tokens, names["max_tokens"]), stop=stop_of(stop, names["stop"]),
                   response_format=response_format, **sampling_of(sampling or {}))
    if stop_loops is not None:  # else ToolACE.stream's default (on); raw completions never take it
        options["stop_loops"] = flag(stop_loops, "stop_loops", True)
    if speculative is not None:  # else the server's default (`toolace serve --no-speculative`)
        options["speculative"] = flag(speculative, "speculative", True)
    return EngineRequest(messages, toolset, options, flag(stream, names["stream"], False), n_of(n, names["n"]))


def check_fields(body: dict[str, Any], accepted: Collection[str], neutral: Mapping[str, tuple[Any, ...]],
                 unknown: str, unsupported: str) -> None:
    """Every field of `body` is accepted, or neutral (absent, null or one of its neutral values), or refused by
    name. `unknown` and `unsupported` are the dialect's messages, formatted with {name} (and {value})."""
    for name, value in body.items():
        if name in accepted:
            continue
        if name not in neutral:
            raise ApiError(400, unknown.format(name=name), param=name)
        if value is not None and value not in neutral[name]:
            raise ApiError(400, unsupported.format(name=name, value=json.dumps(value)[:80]), param=name)


def flag(value: Any, name: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be a boolean", param=name)
    return value


def max_tokens_of(value: Any, name: str = "max_tokens") -> int:
    if value is None:
        return DEFAULT_MAX_TOKENS
    try:
        return check_max_tokens(value)
    except InputError as e:  # it names max_tokens: say the client's name for it
        raise ApiError(400, str(e).replace("max_tokens", name, 1), param=name) from None


def stop_of(stop: Any, name: str = "stop") -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, f"{name} must be a string or a list of strings", param=name)
    if len(stop) > MAX_STOP_SEQUENCES or any(len(s) > MAX_STOP_CHARS for s in stop):
        raise ApiError(400, f"{name}: at most {MAX_STOP_SEQUENCES} strings of at most {MAX_STOP_CHARS} characters",
                       param=name)
    return stop


def n_of(n: Any, name: str = "n") -> int:
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N_CHOICES:
        raise ApiError(400, f"{name} must be an integer in [1, {MAX_N_CHOICES}], got {n!r}", param=name)
    return n


def sampling_of(body: dict[str, Any]) -> dict[str, Any]:
    """Sampling fields (the same names in every dialect) with their defaults; range and type checked by
    SamplingParams (NaN, out of range, wrong types → InputError → 400)."""
    opts = {k: default if body.get(k) is None else body[k] for k, default in SAMPLING_DEFAULTS.items()}
    opts["logit_bias"] = _logit_bias(body.get("logit_bias"))
    SamplingParams(**opts)
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
