"""The JSON-syntax grammar for structured outputs (grammars/json_schema.py), on the same keyword table as the call
grammar: every must-accept value is accepted as JSON, every must-reject value refused with its near miss accepted,
and random walks of each grammar give JSON that parses and validates, 100%. No model needed."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from tests.test_grammar_keywords import TABLE
from toolace.errors import SchemaError
from toolace.grammars.check import check_text, sample_text
from toolace.grammars.json_schema import compile_response_format, response_grammar
from toolace.grammars.toolset import build_toolset

WALKS = 40
# Sane numbers (docs/budget.md): a JSON integer without bounds (or with one bound) is an int64, so the call
# grammar's 21-digit and 10**30 examples are refused in JSON, and their int64 near misses accepted.
SANE_NUMBERS = {"integer": (123456789012345678901, 2**63 - 1), "exclusiveMinimum": (10**30, 2**63 - 1)}


@pytest.mark.parametrize("keyword", list(TABLE))
def test_keyword_table_as_json(keyword: str) -> None:
    schema, accept, reject = TABLE[keyword]
    if keyword in SANE_NUMBERS:
        too_long, near = SANE_NUMBERS[keyword]
        accept, reject = [v for v in accept if v != too_long], [*reject, (too_long, near)]
    fmt = compile_response_format(schema, "t")
    for value in accept:
        text = json.dumps(value, ensure_ascii=False)
        assert check_text(fmt.gbnf, text).ok, (keyword, text)
        assert fmt.errors(text) == []
    for bad, near in reject:
        assert not check_text(fmt.gbnf, json.dumps(bad)).ok, (keyword, bad)
        assert check_text(fmt.gbnf, json.dumps(near)).ok, (keyword, near)


@pytest.mark.parametrize("keyword", list(TABLE))
def test_random_walks_parse_and_validate(keyword: str) -> None:
    fmt = compile_response_format(TABLE[keyword][0], "t")
    rng = np.random.default_rng(7)
    texts = [t for t in (sample_text(fmt.gbnf, rng) for _ in range(WALKS)) if t is not None]
    assert texts  # a walk may run past its byte bound inside a long free string; most end
    failures = [(t, fmt.errors(t)) for t in texts if fmt.errors(t)]
    if fmt.post_checks:  # a keyword the grammar only approximates: violations are reported, never silent
        assert all(errs for _, errs in failures)
    else:
        assert failures == []


# Python-literal forms the call grammar takes, and JSON must not
PYTHON_ONLY = [
    ({"type": "boolean"}, "True", "true"),
    ({"type": "null"}, "None", "null"),
    ({"type": "string"}, "'x'", '"x"'),
    ({"type": "string"}, r'"\x41"', r'"\u0041"'),
    ({"type": "array", "items": {"type": "integer"}}, "(1, 2)", "[1, 2]"),
    ({"type": "object", "properties": {"a": {"type": "integer"}}}, "{'a': 1}", '{"a": 1}'),
    ({"enum": ["a", True]}, "True", "true"),
    ({"type": "string", "pattern": "^[\\x01-\\x03]$"}, r'"\x01"', r'"\u0001"'),
    ({"type": "array", "prefixItems": [{"type": "integer"}], "items": False, "x-toolace-tuple": True}, "(1)", "[1]"),
]


@pytest.mark.parametrize(("schema", "python", "json_text"), PYTHON_ONLY)
def test_json_literals_not_python(schema: dict[str, Any], python: str, json_text: str) -> None:
    fmt = compile_response_format(schema, "t")
    assert not check_text(fmt.gbnf, python).ok
    assert check_text(fmt.gbnf, json_text).ok and fmt.errors(json_text) == []


def test_json_object_mode_and_cache() -> None:
    fmt = compile_response_format(None)
    assert check_text(fmt.gbnf, '{"a": [1, {"b": null}]}').ok
    assert not check_text(fmt.gbnf, "[1]").ok and not check_text(fmt.gbnf, '"x"').ok
    assert compile_response_format({"type": "integer"}, "n") is compile_response_format({"type": "integer"}, "n")


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ANSWER = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
          "additionalProperties": False}


def test_joined_with_tools() -> None:
    fmt = compile_response_format(ANSWER, "a")
    auto = response_grammar(build_toolset(TOOLS, "auto"), fmt)
    for text in ('[get_weather(city="Paris")]', '{"answer": "hi"}'):
        assert check_text(auto, text).ok, text
    for text in ("free text", '{"answer": 1}', '[get_weather(town="x")]'):
        assert not check_text(auto, text).ok, text
    required = response_grammar(build_toolset(TOOLS, "required"), fmt)
    assert check_text(required, '[get_weather(city="x")]').ok and not check_text(required, '{"answer": "x"}').ok
    none = response_grammar(build_toolset(TOOLS, "none"), fmt)
    assert check_text(none, '{"answer": "x"}').ok and not check_text(none, '[get_weather(city="x")]').ok
    with pytest.raises(SchemaError, match="must have type object"):
        response_grammar(build_toolset(TOOLS, "auto"), compile_response_format({"type": "array"}, "l"))


@pytest.mark.parametrize(("schema", "message"), [
    ({"type": "wat"}, "unknown type 'wat'"),
    ({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}, "required": ["a"]}, "does not resolve"),
    ("not a schema", "must be a JSON Schema object"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "no integer in [5, 1]"),
])
def test_bad_response_schemas(schema: Any, message: str) -> None:
    with pytest.raises(SchemaError, match=message.replace("[", r"\[").replace("]", r"\]")):
        compile_response_format(schema, "bad")


# Sane numbers (docs/budget.md): (schema, accepted JSON texts, refused JSON texts), each refusal beside its near miss.
SANE = [
    ({"type": "integer"}, [str(2**63 - 1), str(-(2**63))], [str(2**63), str(-(2**63) - 1), "1" * 480]),
    ({"type": "integer", "minimum": 0}, ["0", str(2**63 - 1)], ["-1", str(2**63)]),  # the other side filled
    ({"type": "integer", "maximum": -5}, ["-5", str(-(2**63))], ["-4", str(-(2**63) - 1)]),
    ({"type": "integer", "minimum": 10**30}, [str(10**30), str(10**40)], []),  # the schema's own bound wins
    ({"type": "number"}, ["1." + "1" * 17, "9" * 19 + ".5", "1e300", "1.7976931348623157e308"],
     ["1." + "1" * 18, "9" * 20 + ".5", "1" * 480]),
    ({"type": "array", "items": {"type": "number"}}, ["[0.1, 2]"], ["[0." + "3" * 40 + "]"]),
]


@pytest.mark.parametrize(("schema", "accept", "reject"), SANE)
def test_numbers_a_sane_length(schema: dict[str, Any], accept: list[str], reject: list[str]) -> None:
    """An integer without bounds fits in 64 bits, one bound gets the other from int64, a schema's own bounds win;
    a number has at most 19 digits before its point and 17 after (larger magnitudes take the exponent)."""
    fmt = compile_response_format(schema, "n")
    for text in accept:
        assert check_text(fmt.gbnf, text).ok and fmt.errors(text) == [], text
    for text in reject:
        assert not check_text(fmt.gbnf, text).ok, text


def test_bounds_beyond_int64_are_the_schemas_and_post_checked() -> None:
    fmt = compile_response_format({"type": "integer", "minimum": 10**30}, "big")
    assert check_text(fmt.gbnf, str(10**30 - 1)).ok and fmt.errors(str(10**30 - 1))  # reported, not narrowed
    assert [str(p) for p in fmt.post_checks] == ["response_format 'big': /: minimum/maximum"]


def test_call_grammar_numbers_are_unchanged() -> None:
    """Sane numbers are for JSON answers; a Python call argument keeps Python's unbounded int."""
    toolset = build_toolset([{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}], "required")
    assert check_text(toolset.grammar.gbnf, f"[f(n={10**30})]").ok
