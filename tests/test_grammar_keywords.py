"""Per keyword: a schema, values the grammar must accept, values it must reject (each paired with a near miss that
must pass). Every verdict is cross-checked with jsonschema, so the grammar is neither looser nor stricter than
the schema on these values."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest

from toolace.errors import SchemaError
from toolace.grammars.check import check_text
from toolace.grammars.compile import compile_grammar
from toolace.grammars.gbnf import py_literal

# keyword: (schema, must accept, [(must reject, near miss)])
TABLE: dict[str, tuple[dict[str, Any], list[Any], list[tuple[Any, Any]]]] = {
    "string": ({"type": "string"}, ["", "a'b\"c", "tab\there", "ünï", "line\nbreak"], [(5, "5"), (None, "None")]),
    "minLength/maxLength": (
        {"type": "string", "minLength": 2, "maxLength": 4},
        ["ab", "abcd", "\n\t"],
        [("a", "ab"), ("abcde", "abcd")],
    ),
    "pattern": (
        {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"},
        ["ABC-1", "XYZ-0042"],
        [("AB-1", "ABC-1"), ("ABC-", "ABC-9"), ("abc-1", "ABC-1")],
    ),
    "pattern unanchored": ({"type": "string", "pattern": "id[0-9]"}, ["id7", "my id3 x"], [("idx", "id0")]),
    "format date": (
        {"type": "string", "format": "date"},
        ["2024-02-29", "1999-12-31"],
        [("2024-13-01", "2024-12-01"), ("24-01-01", "2024-01-01")],
    ),
    "format time": (
        {"type": "string", "format": "time"},
        ["23:59:59Z", "08:00:00+02:00"],
        [("24:00:00Z", "23:00:00Z")],
    ),
    "format date-time": (
        {"type": "string", "format": "date-time"},
        ["2024-01-02T03:04:05Z"],
        [("2024-01-02 03:04:05", "2024-01-02T03:04:05Z")],
    ),
    "format uuid": (
        {"type": "string", "format": "uuid"},
        ["123e4567-e89b-12d3-a456-426614174000"],
        [("123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-426614174000")],
    ),
    "format email": ({"type": "string", "format": "email"}, ["a.b@example.com"], [("no-at-sign", "x@example.com")]),
    "format ipv4": (
        {"type": "string", "format": "ipv4"},
        ["192.168.0.1", "0.0.0.0"],
        [("256.1.1.1", "255.1.1.1"), ("1.2.3", "1.2.3.4")],
    ),
    "integer": ({"type": "integer"}, [0, -7, 123456789012345678901], [(1.5, 1), ("3", 3), (True, 1)]),
    "minimum/maximum": (
        {"type": "integer", "minimum": -5, "maximum": 120},
        [-5, 0, 99, 120],
        [(-6, -5), (121, 120), (1000, 100)],
    ),
    "exclusiveMinimum": ({"type": "integer", "exclusiveMinimum": 0}, [1, 10**30], [(0, 1), (-1, 1)]),
    "number": ({"type": "number"},
               [0, -1.5, 2.5e-3, 7, 1e308, 1.79e308, -1.7976931348623157e308, 5e-324, 1e-310, 9.99e307],
               [("1.0", 1.0), (None, 0)]),
    "number minimum 0": ({"type": "number", "minimum": 0}, [0, 0.5, 3], [(-0.5, 0.5)]),
    "boolean": ({"type": "boolean"}, [True, False], [(1, True), ("True", True)]),
    "null": ({"type": "null"}, [None], [("None", None)]),
    "type list": ({"type": ["string", "null"]}, ["x", None], [(1, "1")]),
    "enum": ({"enum": ["red", "green", 3, None]}, ["red", 3, None], [("blue", "green"), (4, 3)]),
    "const": ({"const": {"k": [1, 2]}}, [{"k": [1, 2]}], [({"k": [2, 1]}, {"k": [1, 2]})]),
    "array items": ({"type": "array", "items": {"type": "integer"}}, [[], [1, 2, 3]], [([1, "2"], [1, 2])]),
    "minItems/maxItems": (
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
        [["a"], ["a", "b"]],
        [([], ["a"]), (["a", "b", "c"], ["a", "b"])],
    ),
    "prefixItems": (
        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
        [["a", 1]],
        [([1, "a"], ["a", 1]), (["a", 1, 2], ["a", 1])],
    ),
    "object": (
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
            "required": ["a"],
            "additionalProperties": False,
        },
        [{"a": 1}, {"a": 1, "b": "x"}],
        [({"b": "x"}, {"a": 0, "b": "x"}), ({"a": 1, "c": 2}, {"a": 1})],
    ),
    "required without properties": (
        {"type": "object", "required": ["adults", "children"]},
        [{"adults": 2, "children": [1]}, {"adults": "x", "children": None, "pets": 1}],
        [({"adults": 2}, {"adults": 2, "children": 0}), ({",": 20}, {"adults": 20, "children": 20})],
    ),
    "required undeclared, additionalProperties schema": (
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "n"],
         "additionalProperties": {"type": "integer"}},
        [{"a": "x", "n": 1}, {"a": "x", "n": 1, "m": 2}],
        [({"a": "x", "n": "1"}, {"a": "x", "n": 1}), ({"a": "x"}, {"a": "x", "n": 0})],
    ),
    "additionalProperties schema": (
        {"type": "object", "additionalProperties": {"type": "number"}},
        [{}, {"x": 1.5, "y": 2}],
        [({"x": "1"}, {"x": 1})],
    ),
    "anyOf": (
        {"anyOf": [{"type": "integer", "minimum": 10}, {"type": "string", "maxLength": 1}]},
        [10, "a"],
        [(9, 10), ("ab", "a")],
    ),
    "$ref/$defs recursion": (
        {
            "$ref": "#/$defs/node",
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {
                        "v": {"type": "integer"},
                        "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                    },
                    "required": ["v"],
                    "additionalProperties": False,
                }
            },
        },
        [{"v": 1}, {"v": 1, "kids": [{"v": 2, "kids": []}]}],
        [({"v": 1, "kids": [{}]}, {"v": 1, "kids": [{"v": 0}]})],
    ),
    "any": ({}, [1, "x", None, [1, {"a": True}], {"k": -2.5}], []),
}


def _grammar_for(schema: dict[str, Any]) -> str:
    params = {"type": "object", "properties": {"v": schema}, "required": ["v"]}
    if "$defs" in schema:  # refs are resolved against the parameters object
        params["$defs"] = schema["$defs"]
        schema = {k: v for k, v in schema.items() if k != "$defs"}
        params["properties"] = {"v": {"$ref": schema["$ref"].replace("#/$defs", "#/$defs")}}
    return compile_grammar([{"name": "f", "parameters": params}], "required").gbnf


def _text(value: Any) -> str:
    return f"[f(v={py_literal(value)})]"


def _valid(schema: dict[str, Any], value: Any) -> bool:
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).is_valid(value)


@pytest.mark.parametrize("keyword", list(TABLE))
def test_keyword_table(keyword: str) -> None:
    schema, accept, reject = TABLE[keyword]
    gbnf = _grammar_for(schema)
    for value in accept:
        assert _valid(schema, value), f"table error: {value!r} is not valid"
        assert check_text(gbnf, _text(value)).ok, f"{keyword}: rejected valid {value!r}"
    for bad, near in reject:
        assert not _valid(schema, bad), f"table error: {bad!r} is valid"
        assert _valid(schema, near), f"table error: near miss {near!r} is not valid"
        assert not check_text(gbnf, _text(bad)).ok, f"{keyword}: accepted invalid {bad!r}"
        assert check_text(gbnf, _text(near)).ok, f"{keyword}: rejected near miss {near!r}"


def test_double_quoted_rendering_also_accepted() -> None:
    gbnf = _grammar_for(TABLE["enum"][0])
    assert check_text(gbnf, '[f(v="red")]').ok and not check_text(gbnf, "[f(v=\"red')]").ok


def test_tuple_dialect_accepts_parentheses() -> None:
    gbnf = compile_grammar(
        [
            {
                "name": "f",
                "parameters": {
                    "type": "dict",
                    "properties": {"t": {"type": "tuple", "items": {"type": "integer"}}},
                    "required": ["t"],
                },
            }
        ],
        "required",
    ).gbnf
    assert check_text(gbnf, "[f(t=(1, 2))]").ok and check_text(gbnf, "[f(t=[1, 2])]").ok
    assert not check_text(gbnf, "[f(t=(1, 'a'))]").ok


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "number", "multipleOf": 0.5}, "multipleOf"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": "string", "pattern": "(?=x)x"}, "pattern (look-around"),
        ({"type": "string", "format": "hostname"}, "format hostname"),
        ({"type": "number", "maximum": 10}, "minimum/maximum (number)"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
    ],
)
def test_post_checked_keywords_are_recorded(schema: dict[str, Any], keyword: str) -> None:
    compiled = compile_grammar([{"name": "f", "parameters": {"type": "object", "properties": {"v": schema}}}])
    assert any(p.keyword.startswith(keyword) for p in compiled.post_checks), compiled.post_checks


# Names holding a quote or a bracket of the call language (tool or parameter name): refused, naming the character.
QUOTE_NAMES = [("it's", "'"), ('say"hi', '"'), ("a[0]", "["), ("f)", ")"), ("get_weather'", "'"), ("a.b[", "[")]
# Their near misses: the same names without the delimiter, plus dots, dashes and inner spaces, all of which pass.
NEAR_MISS_NAMES = ["its", "sayhi", "a0", "f", "get_weather", "a.b", "from-date", "Market Trends API", "über"]


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        (
            [
                {
                    "name": "f",
                    "parameters": {"type": "object", "properties": {"v": {"type": "string", "minLength": "x"}}},
                }
            ],
            "invalid JSON Schema",
        ),
        (
            [{"name": "f", "parameters": {"type": "object", "properties": {"v": {"type": "complex"}}}}],
            "unknown type 'complex'",
        ),
        (
            [
                {
                    "name": "f",
                    "parameters": {
                        "type": "object",
                        "properties": {"v": {"$ref": "#/$defs/a"}},
                        "required": ["v"],
                        "$defs": {
                            "a": {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}, "required": ["x"]}
                        },
                    },
                }
            ],
            "no finite value",
        ),
        (
            [
                {
                    "name": "f",
                    "parameters": {
                        "type": "object",
                        "properties": {"v": {"$ref": "#/$defs/a"}},
                        "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "string"}]}},
                    },
                }
            ],
            "left-recursive",
        ),
        (
            [{"name": "f", "parameters": {"type": "object", "properties": {"v": {"$ref": "#/$defs/missing"}}}}],
            "does not resolve",
        ),
        (
            [{"name": "f", "parameters": {"type": "object", "properties": {"v": {"enum": list(range(100_000))}}}}],
            "enum has 100000 values",
        ),
        (
            [
                {
                    "name": "f",
                    "parameters": {
                        "type": "object",
                        "properties": {"v": {"type": "integer", "minimum": 5, "maximum": 4}},
                    },
                }
            ],
            "no integer in",
        ),
        ([{"name": ""}], "non-empty string"),
        ([{"name": "a\nb"}], "delimits the call language"),
        ([{"name": "f", "parameters": {"type": "object", "properties": {"a]": {"type": "string"}}}}], "contains ']'"),
        *[
            (tools, "^" + re.escape(f"{where} {name!r} contains {char!r}, which delimits the call language") + "$")
            for name, char in QUOTE_NAMES
            for tools, where in (
                ([{"name": name}], "tool #0 name"),
                ([{"name": "f", "parameters": {"type": "object", "properties": {name: {}}}}],
                 "tool 'f': parameter name"),
            )
        ],
    ],
)
def test_bad_schemas_fail_with_one_clear_error(tools: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        compile_grammar(tools)


def test_deep_schema_refused_quickly() -> None:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(1000):
        node = {"type": "object", "properties": {"x": node}}
    with pytest.raises(SchemaError, match="deeper than"):
        compile_grammar([{"name": "f", "parameters": {"type": "object", "properties": {"v": node}}}])


def test_python_keyword_and_dotted_names_are_exact() -> None:
    tools = [
        {
            "name": "Market Trends API",
            "parameters": {
                "type": "object",
                "properties": {
                    "class": {"type": "string"},
                    "from-date": {"type": "string"},
                    "a.b": {"type": "integer"},
                },
            },
        }
    ]
    gbnf = compile_grammar(tools, "required").gbnf
    assert check_text(gbnf, "[Market Trends API(class='x', from-date='y', a.b=1)]").ok
    assert not check_text(gbnf, "[Market Trends API(klass='x')]").ok


@pytest.mark.parametrize("name", NEAR_MISS_NAMES)
def test_near_miss_names_pass(name: str) -> None:
    as_tool = compile_grammar([{"name": name, "parameters": {"type": "object", "properties": {"v": {}}}}], "required")
    assert check_text(as_tool.gbnf, f"[{name}(v=1)]").ok
    as_param = compile_grammar([{"name": "f", "parameters": {"type": "object", "properties": {name: {}}}}], "required")
    assert check_text(as_param.gbnf, f"[f({name}=1)]").ok
