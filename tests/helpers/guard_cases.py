"""The budget-guard cases shared by `toolace serve` and vLLM with `toolace export vllm` (docs/budget.md; issue #27):
complete calls at any budget (the issue's calendar question, on which the demo model runs away), the refusal below
the shortest call and the call at it, and structured outputs whose values run away. Each case returns its problems
(empty: it holds) and what it saw, so a test can require the one and record the other."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx
import jsonschema
from openai import APIStatusError

from tests.conftest import EXAMPLES
from toolace.grammars.parser import Call
from toolace.grammars.toolset import build_toolset

if TYPE_CHECKING:
    from tests.helpers.openai_cases import Target

SCHEDULE = "Schedule Budget review on 2026-12-01 at 14:00 for 45 minutes"
CALENDAR_TOOLS = [{"type": "function", "function": f} for f in json.loads((EXAMPLES / "calendar_weather.json")
                                                                          .read_text())]
EVENT = "calendar.create_event"
BUDGETS = (48, 96, 160, 400)
CHOICES = {"required": "required", f"named {EVENT}": {"type": "function", "function": {"name": EVENT}}}
CLIENTS = 1  # one request at a time: vLLM's CPU kernels round differently in a larger batch, and greedy outputs
# must not depend on what else runs (the streamed request is compared with the non-streamed one)

# (label, question, schema): structured outputs whose values ran away under greedy decoding on the demo model, one
# per JSON type. The Lisbon request is the issue's: unguarded, "population" was ~480 digits of "1"; the URL and the
# cities repeat a cycle (cut on vLLM: "-2018-2018-2018", the same city three times); the coordinates' digits go on
# ("41.111111111111111"). Which engine runs away where depends on its tokens; every answer must end early, valid.
# (A list that counts, 1, 2, 3, ..., is no cycle: the budget closes it, as it closes any long answer.)
STRUCTURED = [
    ("lisbon (integer)", "Describe Lisbon",
     {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
      "required": ["city", "population"]}),
    ("url (string)", "What is the URL of Lisbon's website?",
     {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}),
    ("cities (array)", "List Lisbon's neighbouring cities",
     {"type": "object", "properties": {"cities": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
      "required": ["cities"]}),
    ("coordinates (number)", "Give the coordinates of Lisbon",
     {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
      "required": ["lat", "lon"]}),
]
STRUCTURED_BUDGET = 400
WELL_BEFORE = STRUCTURED_BUDGET // 2  # "ends well before the budget": in at most half of it
RUNAWAY_BUDGETS = (160, 400)  # unguarded vLLM ran to exactly these with no call (the issue)
SEEN: dict[str, Any] = {}  # what each case saw, by model and case, for a report (tests_vllm records it)


def toolace_field(response: Any) -> dict[str, Any]:
    """The `toolace` object of a response (validity, truncation), where `toolace serve` puts it."""
    return (getattr(response, "model_extra", None) or {}).get("toolace") or {}


def _create(t: Target, **kw: Any) -> Any:
    return t.client.chat.completions.create(model=t.model, temperature=0, seed=0, **kw)


def _call_problems(calls: list[tuple[str, str]], choice: Any) -> list[str]:
    if not calls:
        return ["no call"]
    problems = []
    parsed = []
    for name, args in calls:
        try:
            parsed.append(Call(name, json.loads(args)))
        except ValueError:
            problems.append(f"arguments are not JSON: {args!r}")
    toolset = build_toolset(CALENDAR_TOOLS, choice, True)
    return problems + [f"schema: {e}" for e in toolset.validator.errors(parsed)]


def _streamed(t: Target, **kw: Any) -> tuple[list[tuple[str, str]], str | None]:
    calls: dict[int, list[str]] = {}
    finish = None
    for chunk in _create(t, stream=True, **kw):
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, ["", ""])
                entry[0] += (tc.function.name or "") if tc.function else ""
                entry[1] += (tc.function.arguments or "") if tc.function else ""
            finish = choice.finish_reason or finish
    return [(calls[i][0], calls[i][1]) for i in sorted(calls)], finish


def _one_budget(t: Target, label: str, budget: int) -> tuple[str, list[str], dict[str, Any]]:
    choice = CHOICES[label]
    kw = dict(messages=[{"role": "user", "content": SCHEDULE}], tools=CALENDAR_TOOLS, tool_choice=choice,
              parallel_tool_calls=False, max_tokens=budget)
    plain = _create(t, **kw)
    first = plain.choices[0]
    calls = [(c.function.name, c.function.arguments) for c in first.message.tool_calls or []]
    problems = _call_problems(calls, choice)
    truncated = toolace_field(plain).get("truncated")
    if (first.finish_reason == "length") != bool(truncated):
        problems.append(f"finish_reason {first.finish_reason!r} but toolace.truncated {truncated!r}")
    if plain.usage.completion_tokens > budget:
        problems.append(f"{plain.usage.completion_tokens} tokens for max_tokens {budget}")
    if budget in RUNAWAY_BUDGETS and plain.usage.completion_tokens >= budget:
        problems.append(f"ran to the budget of {budget}: the runaway was not cut")
    streamed, finish = _streamed(t, **kw)
    if streamed != calls:
        problems.append(f"stream {streamed} != non-stream {calls}")
    if finish != first.finish_reason:
        problems.append(f"stream finish_reason {finish!r} != {first.finish_reason!r}")
    seen = {"finish_reason": first.finish_reason, "truncated": truncated, "tokens": plain.usage.completion_tokens,
            "calls": calls}
    return f"{label} @{budget}", problems, seen


def _warm(t: Target) -> None:
    """One token of the question first: vLLM's CPU kernels give slightly different logits for a prompt read afresh
    and one whose prefix comes from its cache, so greedy answers are compared only once the prefix is cached."""
    _create(t, messages=[{"role": "user", "content": SCHEDULE}], tools=CALENDAR_TOOLS, tool_choice="none",
            max_tokens=1)


def case_complete_at_every_budget(t: Target) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The issue's calendar question at max_tokens 48, 96, 160 and 400, required and named, streamed and not: complete
    schema-valid calls every time, the streamed arguments joining to the non-streamed ones, finish_reason "length"
    exactly when `toolace.truncated` says a value was closed early, and at 160 and 400 an answer that ends before
    the budget (the runaway cut, where unguarded vLLM ran to the budget without a call)."""
    jobs = [(label, budget) for label in CHOICES for budget in BUDGETS]
    _warm(t)
    with ThreadPoolExecutor(CLIENTS) as pool:
        rows = list(pool.map(lambda job: _one_budget(t, *job), jobs))
    SEEN[f"{t.model}: calendar"] = {key: seen for key, _, seen in rows}
    return {key: problems for key, problems, _ in rows}, SEEN[f"{t.model}: calendar"]


_MINIMUM = re.compile(r"raise max_tokens to at least (\d+)")


def case_tiny_budget(t: Target) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Below the shortest complete call a calls-only request is refused with HTTP 400 naming the minimum; at the
    minimum it gets a complete, schema-valid call."""
    problems: dict[str, list[str]] = {}
    minimums: dict[str, int] = {}
    for label, choice in CHOICES.items():
        kw = dict(messages=[{"role": "user", "content": SCHEDULE}], tools=CALENDAR_TOOLS, tool_choice=choice,
                  parallel_tool_calls=False)
        out = problems[label] = []
        try:
            _create(t, max_tokens=1, **kw)
            out.append("max_tokens 1 was not refused")
            continue
        except APIStatusError as e:
            found = _MINIMUM.search(str(e.message))
            if e.status_code != 400 or found is None:
                out.append(f"HTTP {e.status_code}: {e.message}")
                continue
        minimum = minimums[label] = int(found.group(1))
        try:
            _create(t, max_tokens=minimum - 1, **kw)
            out.append(f"max_tokens {minimum - 1} was not refused")
        except APIStatusError as e:
            if e.status_code != 400:
                out.append(f"max_tokens {minimum - 1}: HTTP {e.status_code}")
        at = _create(t, max_tokens=minimum, **kw)
        out += _call_problems([(c.function.name, c.function.arguments)
                               for c in at.choices[0].message.tool_calls or []], choice)
        if at.usage.completion_tokens > minimum:
            out.append(f"{at.usage.completion_tokens} tokens for max_tokens {minimum}")
    SEEN[f"{t.model}: minimum"] = minimums
    return problems, minimums


def _json_problems(text: str | None, schema: dict[str, Any]) -> list[str]:
    try:
        value = json.loads(text or "")
    except ValueError:
        return [f"not JSON: {(text or '')[:80]!r}"]
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(value)]


def _structured_one(t: Target, label: str, question: str, schema: dict[str, Any]) -> tuple[list[str], dict]:
    r = _create(t, messages=[{"role": "user", "content": question}], max_tokens=STRUCTURED_BUDGET,
                response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": schema}})
    content = r.choices[0].message.content
    problems = _json_problems(content, schema)
    if r.usage.completion_tokens > WELL_BEFORE:
        problems.append(f"{r.usage.completion_tokens} tokens: not well before the budget of {STRUCTURED_BUDGET}")
    truncated = toolace_field(r).get("truncated")
    if (r.choices[0].finish_reason == "length") != bool(truncated):
        problems.append(f"finish_reason {r.choices[0].finish_reason!r} but toolace.truncated {truncated!r}")
    return problems, {"content": content, "tokens": r.usage.completion_tokens, "truncated": truncated}


def case_structured_runaways(t: Target) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Each runaway structured output ends well before the budget with a complete, schema-valid object, truncated
    when a value was cut; the Lisbon integer fits in 64 bits."""
    with ThreadPoolExecutor(CLIENTS) as pool:
        rows = list(pool.map(lambda case: _structured_one(t, *case), STRUCTURED))
    problems = {case[0]: row[0] for case, row in zip(STRUCTURED, rows, strict=True)}
    seen = SEEN[f"{t.model}: structured"] = {case[0]: row[1] for case, row in zip(STRUCTURED, rows, strict=True)}
    lisbon = seen[STRUCTURED[0][0]]["content"]
    population = json.loads(lisbon).get("population") if not problems[STRUCTURED[0][0]] else None
    if isinstance(population, int) and not -(2**63) <= population < 2**63:
        problems[STRUCTURED[0][0]].append(f"population {population} does not fit in 64 bits")
    return problems, seen


def case_responses_text_format(t: Target) -> list[str]:
    """The Lisbon request through the Responses API's text.format: the same complete, schema-valid object."""
    _, question, schema = STRUCTURED[0]
    r = t.client.responses.create(model=t.model, input=question, max_output_tokens=STRUCTURED_BUDGET, temperature=0,
                                  text={"format": {"type": "json_schema", "name": "out", "schema": schema}})
    problems = _json_problems(r.output_text, schema)
    if r.usage.output_tokens > WELL_BEFORE:
        problems.append(f"{r.usage.output_tokens} tokens: not well before the budget")
    return problems


def case_guard_without_toolace_fields(t: Target, extra: dict[str, Any] | None = None) -> list[str]:
    """A bare HTTP request that names no toolace field (or, with `extra`, one that tries to switch the guard off)
    still gets a complete call at a budget that needs cutting, reported as truncated."""
    body = {"model": t.model, "messages": [{"role": "user", "content": SCHEDULE}], "tools": CALENDAR_TOOLS,
            "tool_choice": "required", "max_tokens": BUDGETS[0], "temperature": 0, **(extra or {})}
    r = httpx.post(f"{str(t.client.base_url).rstrip('/')}/chat/completions", json=body, timeout=300,
                   headers={"Authorization": "Bearer unused"})
    if r.status_code != 200:
        return [f"HTTP {r.status_code}: {r.text[:200]}"]
    data = r.json()
    choice = data["choices"][0]
    calls = [(c["function"]["name"], c["function"]["arguments"]) for c in choice["message"].get("tool_calls") or []]
    problems = _call_problems(calls, "required")
    if choice["finish_reason"] != "length" or not (data.get("toolace") or {}).get("truncated"):
        problems.append(f"not reported as cut: {choice['finish_reason']!r}, {data.get('toolace')!r}")
    return problems
