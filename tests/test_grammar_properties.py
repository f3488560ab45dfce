"""Property tests over random schemas of the supported subset.

Completeness: every instance jsonschema accepts, rendered as a Python literal, is in the grammar's language and
round-trips through the parser. Soundness: every string the grammar produces (random walks) parses and validates.
Example counts: TOOLACE_STRESS=1 (make stress) runs 25x more."""

from __future__ import annotations

import datetime
import os
from typing import Any

import jsonschema
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolace.grammars.check import check_text, sample_text
from toolace.grammars.compile import compile_grammar
from toolace.grammars.gbnf import py_literal
from toolace.grammars.parser import parse_calls
from toolace.grammars.validate import CallValidator
from toolace.grammars.values import FORMAT_PATTERNS

SCALE = 25 if os.environ.get("TOOLACE_STRESS") else 1
EXAMPLES = 120 * SCALE
PATTERNS = ["^[a-z]{2,5}$", "^[A-Z][a-z]*( [A-Z][a-z]*)?$", "^(yes|no|maybe)$", "^[0-9]{3}-[0-9]{4}$", "^#[0-9a-f]{6}$"]
FORMATS = ["date", "uuid", "ipv4", "email", "date-time"]
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)

leaf_schemas = st.one_of(
    st.just({"type": "string"}),
    st.builds(lambda lo, extra: {"type": "string", "minLength": lo, "maxLength": lo + extra},
              st.integers(0, 3), st.integers(0, 4)),
    st.sampled_from(PATTERNS).map(lambda p: {"type": "string", "pattern": p}),
    st.sampled_from(FORMATS).map(lambda f: {"type": "string", "format": f}),
    st.lists(TEXT, min_size=1, max_size=4, unique=True).map(lambda e: {"type": "string", "enum": e}),
    st.just({"type": "integer"}),
    st.builds(lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
              st.integers(-10**6, 10**6), st.integers(0, 10**4)),
    st.integers(-1000, 1000).map(lambda lo: {"type": "integer", "minimum": lo}),
    st.just({"type": "number"}),
    st.just({"type": "boolean"}),
    st.just({"type": ["string", "null"]}),
)


def _composite(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    array = st.builds(lambda s, lo, extra: {"type": "array", "items": s, "minItems": lo, "maxItems": lo + extra},
                      children, st.integers(0, 2), st.integers(0, 3))
    obj = st.dictionaries(st.from_regex(r"[a-z][a-z_]{0,6}", fullmatch=True), children, min_size=1, max_size=3) \
        .flatmap(lambda props: st.lists(st.sampled_from(sorted(props)), unique=True).map(
            lambda req: {"type": "object", "properties": props, "required": req, "additionalProperties": False}))
    any_of = st.lists(children, min_size=2, max_size=3).map(lambda bs: {"anyOf": bs})
    return st.one_of(array, obj, any_of)


schemas = st.recursive(leaf_schemas, _composite, max_leaves=6)


def instances(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "anyOf" in schema:
        return st.one_of([instances(b) for b in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    t = schema["type"]
    if t == ["string", "null"]:
        return st.one_of(TEXT, st.none())
    if t == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        if schema.get("format") == "date":
            return st.dates(datetime.date(1, 1, 1)).map(lambda d: d.isoformat())
        if "format" in schema:
            return st.from_regex(FORMAT_PATTERNS[schema["format"]], fullmatch=True).filter(
                lambda s: jsonschema.Draft202012Validator.FORMAT_CHECKER.conforms(s, schema["format"]))
        return st.text(st.characters(blacklist_categories=("Cs",)), min_size=schema.get("minLength", 0),
                       max_size=schema.get("maxLength", 12))
    if t == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if t == "number":
        return st.one_of(st.integers(-10**9, 10**9), st.floats(allow_nan=False, allow_infinity=False))
    if t == "boolean":
        return st.booleans()
    if t == "array":
        return st.lists(instances(schema["items"]), min_size=schema["minItems"], max_size=schema["maxItems"])
    props = schema["properties"]
    return st.fixed_dictionaries({k: instances(props[k]) for k in props if k in schema["required"]},
                                 optional={k: instances(props[k]) for k in props if k not in schema["required"]}) \
        .map(lambda d: {k: d[k] for k in props if k in d})  # schema order, as the grammar requires


def _tool(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": "f", "parameters": {"type": "object", "properties": {"v": schema}, "required": ["v"]}}]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_completeness_valid_instances_are_in_the_language(data: st.DataObject) -> None:
    schema = data.draw(schemas, label="schema")
    value = data.draw(instances(schema), label="value")
    assert jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER) \
        .is_valid(value)
    compiled = compile_grammar(_tool(schema), "required")
    text = f"[f(v={py_literal(value)})]"
    verdict = check_text(compiled.gbnf, text)
    assert verdict.ok, verdict.where(text)
    calls = parse_calls(text, compiled.tools)
    assert calls[0].arguments["v"] == value
    assert CallValidator(compiled.tools).errors(calls) == []


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(schemas, st.integers(0, 2**32 - 1))
def test_soundness_grammar_outputs_parse_and_validate(schema: dict[str, Any], seed: int) -> None:
    compiled = compile_grammar(_tool(schema), "required")
    text = sample_text(compiled.gbnf, np.random.default_rng(seed))
    if text is None:  # the walk did not close within its byte budget; nothing to judge
        return
    calls = parse_calls(text, compiled.tools)
    assert CallValidator(compiled.tools).errors(calls) == [], text
