"""The AST checker: every BFCL ground truth scores correct (as objects and through the call text), broken
variants score wrong, and the type/normalisation rules behave as BFCL's do."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from toolace.eval.ast_checker import check, source_literal, standardize_string
from toolace.eval.bfcl import Question, ground_truth_calls, load_questions
from toolace.grammars.gbnf import render_calls
from toolace.grammars.parser import parse_calls
from toolace.grammars.schema import Tool, normalise_tools

# Ground truths that contradict their own schema (see test_bfcl_grammar.py): no concrete rendering fits.
SCHEMA_QUIRKS = {"simple_python_307", "parallel_152", "parallel_multiple_21", "parallel_multiple_94"}

Case = tuple[Question, list[Tool], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def cases(bfcl_dir: Path) -> list[Case]:
    out = []
    for q in load_questions(bfcl_dir):
        if q.ground_truth is None:
            continue
        tools = normalise_tools(q.functions)
        calls = ground_truth_calls(q, tools)
        if calls is None:
            assert q.id in SCHEMA_QUIRKS
            continue
        out.append((q, tools, calls))
    assert len(out) == 1146
    return out


def test_every_ground_truth_scores_correct(cases: list[Case]) -> None:
    for q, tools, calls in cases:
        parsed = [c.as_dict() for c in parse_calls(render_calls(calls), tools)]  # as a model's output would arrive
        for variant in (calls, parsed, calls[::-1]):  # order never matters (one call, or parallel matching)
            verdict = check(q, variant, tools)
            assert verdict.correct, f"{q.id}: {verdict.reason}: {variant}"


# --- broken variants: each returns the mutated calls, or None where the kind does not apply -----------------------
def _wrong_value(q: Question, tools: list[Tool], calls: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    out = copy.deepcopy(calls)
    for key, value in out[0]["arguments"].items():
        if isinstance(value, str):
            out[0]["arguments"][key] = "zz not an answer"
            return out
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[0]["arguments"][key] = value + 12345
            return out
    return None


def _wrong_type(q: Question, tools: list[Tool], calls: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    out = copy.deepcopy(calls)
    for key, value in out[0]["arguments"].items():
        if isinstance(value, str):
            out[0]["arguments"][key] = 12345
            return out
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[0]["arguments"][key] = str(value) + "x"
            return out
    return None


def _missing_required(q: Question, tools: list[Tool], calls: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    out = copy.deepcopy(calls)
    tool = next(t for t in tools if t.name == out[0]["name"])
    present = [r for r in tool.parameters.get("required", []) if r in out[0]["arguments"]]
    if not present:
        return None
    del out[0]["arguments"][present[0]]
    return out


def _extra_call(q: Question, tools: list[Tool], calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return copy.deepcopy(calls) + [copy.deepcopy(calls[0])]


def _wrong_function(q: Question, tools: list[Tool], calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = copy.deepcopy(calls)
    others = [t.name for t in tools if t.name not in {c["name"] for c in calls}]
    out[0]["name"] = others[0] if others else out[0]["name"] + "_v2"
    return out


def _unknown_param(q: Question, tools: list[Tool], calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = copy.deepcopy(calls)
    out[0]["arguments"]["zz_not_a_param"] = 1
    return out


def _no_call(q: Question, tools: list[Tool], calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return []


Mutation = Callable[[Question, list[Tool], list[dict[str, Any]]], list[dict[str, Any]] | None]


@pytest.mark.parametrize(("kind", "mutate", "min_applied"), [
    ("wrong_value", _wrong_value, 1000),
    ("wrong_type", _wrong_type, 1000),
    ("missing_required", _missing_required, 1000),
    ("extra_call", _extra_call, 1146),
    ("wrong_function", _wrong_function, 1146),
    ("unknown_param", _unknown_param, 1146),
    ("no_call", _no_call, 1146),
])
def test_broken_variants_score_wrong(cases: list[Case], kind: str, mutate: Mutation, min_applied: int) -> None:
    applied = 0
    for q, tools, calls in cases:
        variant = mutate(q, tools, calls)
        if variant is None:
            continue
        applied += 1
        verdict = check(q, variant, tools)
        assert not verdict.correct, f"{q.id}: {kind} variant scored correct: {variant}"
        assert verdict.reason
    assert applied >= min_applied


# --- the rules one by one --------------------------------------------------------------------------------------
FN = {"name": "f", "parameters": {"type": "dict", "required": ["x"], "properties": {
    "x": {"type": "float"}, "n": {"type": "integer"}, "s": {"type": "string"},
    "l": {"type": "array", "items": {"type": "string"}}, "d": {"type": "dict", "properties": {}},
    "t": {"type": "tuple", "items": {"type": "integer"}}}}}


def _q(category: str, answer: list[dict[str, Any]], functions: list[dict[str, Any]] | None = None) -> Question:
    return Question("t_0", category, [{"role": "user", "content": "?"}], functions or [FN], answer)


def _call(**args: Any) -> dict[str, Any]:
    return {"name": "f", "arguments": args}


GT = {"f": {"x": [2.0], "n": ["", 3], "s": ["New York, NY"], "l": [["a b", "C"]], "d": [{"k": [1], "o": ["", 2]}],
            "t": ["", [1, 2]]}}
BASE = {"x": 2.0, "s": "New York, NY", "l": ["a b", "C"], "d": {"k": 1}}


@pytest.mark.parametrize(("change", "correct", "reason"), [
    ({}, True, "ok"),
    ({"x": 2}, True, "ok"),  # int where float is declared: BFCL allows it
    ({"n": 3.0}, False, "wrong type for n"),  # but not a float where an integer is declared
    ({"n": True}, False, "wrong type for n"),  # bool is not an int
    ({"s": "new york ny"}, True, "ok"),  # case, spaces and ,./-_*^ do not count
    ({"s": "New-York/NY."}, True, "ok"),
    ({"s": "Boston"}, False, "value of s not allowed"),
    ({"l": ["A-B", "c"]}, True, "ok"),  # list elements follow the string rule
    ({"l": ["a b"]}, False, "value of l not allowed"),
    ({"l": ["C", "a b"]}, False, "value of l not allowed"),  # lists are ordered
    ({"d": {"k": 1, "o": 2}}, True, "ok"),  # an optional key ("" allowed) may appear
    ({"d": {"o": 2}}, False, "value of d not allowed"),  # a key without "" must appear
    ({"d": {"k": 1, "z": 0}}, False, "value of d not allowed"),  # keys not in the answer are wrong
    ({"t": [1, 2]}, True, "ok"),
    ({"t": (1, 2)}, True, "ok"),  # tuples compare as lists
    ({"n": 4}, False, "value of n not allowed"),
    ({"q": 1}, False, "unknown param q"),
])
def test_rules(change: dict[str, Any], correct: bool, reason: str) -> None:
    verdict = check(_q("simple_python", [GT]), [_call(**{**BASE, **change})])
    assert (verdict.correct, verdict.reason.split(":")[0]) == (correct, reason), verdict.reason


def test_missing_and_omitted_params() -> None:
    assert check(_q("simple_python", [GT]), [_call(s="New York, NY", l=["a b", "C"], d={"k": 1})]).reason == \
        "missing required param x"
    answer = {"f": {"x": [2.0], "s": ["a"]}}  # s optional in the schema, but the answer has no "": it must appear
    assert check(_q("simple_python", [answer]), [_call(x=2.0)]).reason == "missing param s"
    assert check(_q("simple_python", [answer]), [_call(x=2.0, s="a", n=1)]).reason == "unexpected param n"


def test_parallel_matching_is_one_to_one() -> None:
    answer = [{"f": {"x": [1.0, 2.0]}}, {"f": {"x": [1.0]}}]
    q = _q("parallel", answer)
    assert check(q, [_call(x=1.0), _call(x=2.0)]).correct
    assert check(q, [_call(x=2.0), _call(x=1.0)]).correct  # greedy matching would pair x=1.0 with answer 0
    assert not check(q, [_call(x=2.0), _call(x=2.0)]).correct
    assert check(q, [_call(x=1.0)]).reason == "expected 2 calls, got 1"


def test_irrelevance_and_multiple() -> None:
    assert check(_q("irrelevance", None), []).correct  # type: ignore[arg-type]
    assert not check(_q("irrelevance", None), [_call(x=1.0)]).correct  # type: ignore[arg-type]
    g = {"name": "g", "parameters": {"type": "dict", "properties": {"x": {"type": "float"}}}}
    q = _q("multiple", [{"g": {"x": [1.0]}}], [FN, g])
    assert check(q, [{"name": "g", "arguments": {"x": 1.0}}]).correct
    assert check(q, [_call(x=1.0)]).reason.startswith("wrong function")


@pytest.mark.parametrize(("source", "expected", "correct"), [
    ("mapController", "mapController", True),
    ('"EmployeeView"', "EmployeeView", True),  # a Java string literal's quotes are source syntax
    ("true", True, True),
    ("false", True, False),
    ("50L", 50, True),
    ("30.0", 30.0, True),
    ("new int[]{101, 202, 303}", [101, 202, 303], True),
    ("Arrays.asList(101, 202)", [101, 202, 303], False),
    ("['completed', 'failed']", ["completed", "failed"], True),
    ('new HashMap<String, Object>() {{ put("limit", 50); put("schemaFilter", "public"); }}',
     {"limit": [50], "schemaFilter": ["public"]}, True),
    ("{method: 'GET'}", {"method": ["GET"]}, True),
    ("{method: 'POST'}", {"method": ["GET"]}, False),
])
def test_java_javascript_source_values(source: str, expected: Any, correct: bool) -> None:
    fn = {"name": "f", "parameters": {"type": "dict", "required": ["v"], "properties": {"v": {"type": "string"}}}}
    q = Question("simple_java_0", "simple_java", [], [fn], [{"f": {"v": [expected]}}])
    assert check(q, [{"name": "f", "arguments": {"v": source}}]).correct is correct


def test_helpers() -> None:
    assert standardize_string("April 1, 2024") == standardize_string("april 1 2024") == "april12024"
    assert standardize_string("it's") == 'it"s'
    assert source_literal("Map.of(\"a\", 1)") == {"a": 1}
    assert source_literal("new String[]{'a', `b`}") == ["a", "b"]
    assert source_literal("{a: [1, x.y], 'b': null}") == {"a": [1, "x.y"], "b": None}
