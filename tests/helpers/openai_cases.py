"""OpenAI-client cases shared by the servers that speak toolace's call language (vLLM with `toolace export vllm`;
stock vLLM is measured against them in tests_vllm/). Each case returns the problems it found (empty: it holds), so
one server can be required to pass and another's failures recorded.

The raw model text comes from the response's logprobs (one entry per generated token): it must be a sentence of
toolace's grammar for the request's tools and tool_choice, and parse to exactly the tool_calls the server returned."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openai import APIStatusError, OpenAI

from tests.helpers import guard_cases
from toolace.grammars.check import check_text
from toolace.grammars.parser import Call, CallParseError, parse_calls
from toolace.grammars.toolset import build_toolset

QUESTION = "Create the standup event 3 days ago with two matrices, and tell me the weather in Paris."
CALENDAR = "calendar.create_event"
WEATHER = "Weather Lookup API"
NEGATIVE = {"type": "number", "enum": [-1.5, -0.25]}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": CALENDAR, "description": "Create a calendar event relative to today.",
        "parameters": {"type": "object", "properties": {
            "title": {"type": "string", "enum": ["standup", "retro"]},
            "offset_days": {"type": "integer", "maximum": -1, "minimum": -9, "description": "Days from today."},
            "matrix": {"type": "array", "minItems": 1, "maxItems": 2,
                       "items": {"type": "array", "items": NEGATIVE, "minItems": 1, "maxItems": 2}},
            "meta": {"type": "object", "additionalProperties": False, "required": ["k"], "properties": {
                "k": {"type": "array", "items": {"type": "integer", "enum": [-7, -3]}, "minItems": 1,
                      "maxItems": 2}}},
            "span": {"type": "tuple", "items": {"type": "integer", "enum": [-2, 5]}, "minItems": 2, "maxItems": 2}},
            "required": ["title", "offset_days", "matrix", "meta", "span"]}}},
    {"type": "function", "function": {
        "name": WEATHER, "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                       "required": ["city"]}}},
]
# The same tools without the tuple parameter (a ToolACE/BFCL dialect type some servers refuse in JSON Schema).
NO_TUPLE: list[dict[str, Any]] = [TOOLS[0] | {"function": TOOLS[0]["function"] | {"parameters": {
    **TOOLS[0]["function"]["parameters"],
    "properties": {k: v for k, v in TOOLS[0]["function"]["parameters"]["properties"].items() if k != "span"},
    "required": ["title", "offset_days", "matrix", "meta"]}}}, TOOLS[1]]
MAX_TOKENS = 96


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


@dataclass
class Target:
    """A server under test: its client, its model id, and request fields it needs beyond the cases' own."""

    client: OpenAI
    model: str
    tools: list[dict[str, Any]] = field(default_factory=lambda: TOOLS)
    logprobs: bool = True  # the raw text comes from logprobs; a server without them gets the schema checks only
    extra: Callable[[Any, bool], dict[str, Any]] = lambda choice, parallel: {}

    def chat(self, tool_choice: Any, parallel: bool = True, stream: bool = False,
             messages: list[dict[str, Any]] | None = None, **kw: Any) -> Any:
        kw.setdefault("max_tokens", MAX_TOKENS)
        kw.setdefault("logprobs", self.logprobs and not stream)
        extra = {**self.extra(tool_choice, parallel), **kw.pop("extra_body", {})}
        return self.client.chat.completions.create(
            model=self.model, messages=messages or [{"role": "user", "content": QUESTION}], tools=self.tools,
            tool_choice=tool_choice, parallel_tool_calls=parallel, temperature=0, seed=0, stream=stream,
            extra_body=extra or None, **kw)


def raw_text(choice: Any) -> str:
    """The generated text, without the end-of-turn special token a stopped generation ends with."""
    tokens = [t.token for t in (choice.logprobs.content if choice.logprobs else None) or []]
    if tokens and choice.finish_reason != "length" and tokens[-1].startswith("<|") and tokens[-1].endswith("|>"):
        tokens.pop()
    return "".join(tokens)


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {"<not JSON>": text}
    return value if isinstance(value, dict) else {"<not an object>": value}


def _calls(choice: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(c.function.name, _arguments(c.function.arguments)) for c in choice.message.tool_calls or []]


def language_problems(t: Target, choice: Any, tool_choice: Any, parallel: bool = True) -> list[str]:
    """The raw text is in toolace's language for this request and parses to the returned tool_calls."""
    raw, calls = raw_text(choice), _calls(choice)
    toolset = build_toolset(t.tools, tool_choice, parallel)
    if choice.logprobs is None:  # no raw text: the calls must still be known tools with schema-valid arguments
        return [f"schema: {e}" for e in toolset.validator.errors([Call(n, a) for n, a in calls])]
    if toolset.tool_choice == "auto" and not raw.startswith("["):  # auto may answer in text
        return [] if not calls else [f"text output but tool_calls {calls}"]
    if choice.finish_reason == "length":
        return [f"cut by max_tokens: {raw[-60:]!r}"]
    verdict = check_text(toolset.grammar.gbnf, raw)
    if not verdict.ok:
        return [f"output not in ToolACE's language ({verdict.where(raw)}): {raw[:80]!r}"]
    try:
        parsed = [(c.name, c.arguments) for c in parse_calls(raw, toolset.tools)]
    except CallParseError as e:
        return [f"toolace cannot parse {raw!r}: {e}"]
    if parsed != calls:
        return [f"server parsed {calls} from {raw!r}, toolace parses {parsed}"]
    return [f"schema: {e}" for e in toolset.validator.errors(parse_calls(raw, toolset.tools))]


def case_tool_choice_modes(t: Target) -> dict[str, list[str]]:
    """auto / required / none / each named tool: valid calls in ToolACE's language (or text where allowed)."""
    out: dict[str, list[str]] = {}
    for label, choice in [("auto", "auto"), ("required", "required"), ("none", "none"),
                          (f"named {CALENDAR}", named(CALENDAR)), (f"named {WEATHER}", named(WEATHER))]:
        try:
            first = t.chat(choice).choices[0]
        except APIStatusError as e:
            out[label] = [f"HTTP {e.status_code}: {e.message}"]
            continue
        problems = []
        if choice == "none":
            if first.message.tool_calls or not isinstance(first.message.content, str):
                problems.append(f"tool_choice none returned {first.message}")
        else:
            problems += language_problems(t, first, choice)
            if choice != "auto" and not first.message.tool_calls:
                problems.append(f"no tool call for tool_choice {label}: {first.message.content!r}")
        if isinstance(choice, dict) and first.message.tool_calls and \
                {c.function.name for c in first.message.tool_calls} != {choice["function"]["name"]}:
            problems.append(f"named {choice['function']['name']} but called "
                            f"{[c.function.name for c in first.message.tool_calls]}")
        out[label] = problems
    return out


def case_round_trip(t: Target) -> list[str]:
    """Negative numbers, nested lists and dicts and a tuple come back as the JSON values the model wrote."""
    try:
        choice = t.chat(named(CALENDAR), parallel=False, max_tokens=128).choices[0]
    except APIStatusError as e:
        return [f"HTTP {e.status_code}: {e.message}"]
    problems = language_problems(t, choice, named(CALENDAR), parallel=False)
    calls = _calls(choice)
    if not calls:
        return problems + [f"no call: {choice.message.content!r}"]
    args = calls[0][1]
    if not (isinstance(args.get("offset_days"), int) and args["offset_days"] < 0):
        problems.append(f"offset_days not a negative integer: {args.get('offset_days')!r}")
    matrix = args.get("matrix")
    if not (isinstance(matrix, list) and matrix and all(isinstance(r, list) and r and
                                                         all(isinstance(x, float) and x < 0 for x in r)
                                                         for r in matrix)):
        problems.append(f"matrix not a nested list of negative numbers: {matrix!r}")
    meta = args.get("meta")
    if not (isinstance(meta, dict) and isinstance(meta.get("k"), list) and all(x in (-7, -3) for x in meta["k"])):
        problems.append(f"meta not {{'k': [negative ints]}}: {meta!r}")
    if t.tools is TOOLS and not (isinstance(args.get("span"), list) and len(args["span"]) == 2):
        problems.append(f"span (a tuple) not a 2-item list: {args.get('span')!r}")
    return problems


def stream_calls(t: Target, tool_choice: Any, parallel: bool) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """(name, concatenated arguments) per streamed call, the ids, and protocol problems."""
    calls: dict[int, dict[str, Any]] = {}
    problems: list[str] = []
    for ch in t.chat(tool_choice, parallel=parallel, stream=True, max_tokens=128):
        for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            c = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.id:
                if c["id"] is not None:
                    problems.append(f"call {tc.index}: id sent twice")
                c["id"] = tc.id
            if tc.function and tc.function.name:
                if c["name"] is not None:
                    problems.append(f"call {tc.index}: name sent twice")
                c["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                c["arguments"] += tc.function.arguments
    ordered = [calls[i] for i in sorted(calls)]
    return [(c["name"], c["arguments"]) for c in ordered], [c["id"] or "" for c in ordered], problems


def case_stream_matches(t: Target) -> dict[str, list[str]]:
    """Streamed argument deltas concatenate to exactly the non-streamed arguments string."""
    out: dict[str, list[str]] = {}
    for label, choice, parallel in [(f"named {CALENDAR}", named(CALENDAR), False), ("required", "required", True),
                                    (f"named {WEATHER}", named(WEATHER), False)]:
        try:
            plain = t.chat(choice, parallel=parallel, max_tokens=128).choices[0].message.tool_calls or []
            streamed, ids, problems = stream_calls(t, choice, parallel)
        except APIStatusError as e:
            out[label] = [f"HTTP {e.status_code}: {e.message}"]
            continue
        expected = [(c.function.name, c.function.arguments) for c in plain]
        if not expected:
            problems.append("no call without streaming")
        if streamed != expected:
            problems.append(f"stream {streamed} != non-stream {expected}")
        if not all(ids):
            problems.append(f"streamed calls without ids: {ids}")
        out[label] = problems
    return out


def case_parallel_and_result_turn(t: Target) -> list[str]:
    """parallel_tool_calls=False gives one call; a tool-result turn with tool_choice none answers in text."""
    problems = []
    one = t.chat("required", parallel=False).choices[0]
    if len(one.message.tool_calls or []) != 1:
        problems.append(f"parallel_tool_calls=False gave {len(one.message.tool_calls or [])} calls")
    problems += language_problems(t, one, "required", parallel=False)
    call = (t.chat(named(WEATHER), parallel=False).choices[0].message.tool_calls or [None])[0]
    if call is None:
        return problems + ["no weather call"]
    messages = [{"role": "user", "content": QUESTION},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": call.id, "type": "function",
                     "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21})}]
    answer = t.chat("none", messages=messages, max_tokens=24).choices[0].message
    if answer.tool_calls or not answer.content:
        problems.append(f"tool-result turn did not answer in text: {answer}")
    return problems


class SharedCases:
    """The cases every OpenAI-compatible target must pass, as test methods: a test module subclasses this as
    `TestSomething` and provides a `server` fixture returning its Target (toolace serve, vLLM with the export)."""

    def test_every_tool_choice_mode_gives_valid_calls(self, server: Target) -> None:
        assert case_tool_choice_modes(server) == {
            "auto": [], "required": [], "none": [], f"named {CALENDAR}": [], f"named {WEATHER}": []}

    def test_negative_numbers_nested_literals_and_tuples_round_trip(self, server: Target) -> None:
        assert case_round_trip(server) == []

    def test_stream_deltas_concatenate_to_non_stream_arguments(self, server: Target) -> None:
        assert case_stream_matches(server) == {f"named {CALENDAR}": [], "required": [], f"named {WEATHER}": []}

    # The budget guard and the runaway cut (tests/helpers/guard_cases.py, issue #27)
    def test_complete_calls_at_every_budget_streamed_or_not(self, server: Target) -> None:
        problems, seen = guard_cases.case_complete_at_every_budget(server)
        bad = {k: (v, seen[k]) for k, v in problems.items() if v}
        assert not bad, bad  # (helper modules get no assertion rewriting: the message says what failed)

    def test_tiny_budget_refused_below_the_shortest_call_and_complete_at_it(self, server: Target) -> None:
        problems, minimums = guard_cases.case_tiny_budget(server)
        bad = {k: v for k, v in problems.items() if v}
        assert not bad and len(minimums) == len(guard_cases.CHOICES), (bad, minimums)

    def test_structured_runaways_end_early_complete_and_valid(self, server: Target) -> None:
        problems, seen = guard_cases.case_structured_runaways(server)
        bad = {k: (v, seen[k]) for k, v in problems.items() if v}
        assert not bad, bad

    def test_responses_text_format_gets_the_same_guard(self, server: Target) -> None:
        problems = guard_cases.case_responses_text_format(server)
        assert not problems, problems

    def test_a_request_naming_no_toolace_field_is_guarded(self, server: Target) -> None:
        problems = guard_cases.case_guard_without_toolace_fields(server)
        assert not problems, problems
