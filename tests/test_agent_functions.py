"""Python functions as tools: one row per hint kind, signature → the exact JSON Schema, compiled into a grammar
that must accept a call of the function and reject a near miss; then the arguments the model writes are validated
and converted back into the hinted Python types before the call. No model: pure Python and llguidance."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Optional

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from toolace.agent.functions import function_tool
from toolace.agent.sources import load_functions
from toolace.agent.tools import ExecutableTool, as_tools, to_text
from toolace.cli import main
from toolace.errors import InputError, SchemaError
from toolace.grammars.check import check_text
from toolace.grammars.gbnf import render_calls
from toolace.grammars.toolset import build_toolset


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Point:
    x: float
    y: float = 0.0


class Address(BaseModel):
    street: str
    zip_code: int | None = None


class Tree(BaseModel):
    label: str
    children: list[Tree] = []


def f_str(city: str) -> None: ...
def f_int(n: int) -> None: ...
def f_float(x: float) -> None: ...
def f_bool(flag: bool) -> None: ...
def f_none(nothing: None) -> None: ...
def f_optional(limit: Optional[int] = None) -> None: ...  # noqa: UP045 - the spelling under test
def f_union_none(limit: int | None) -> None: ...
def f_literal(mode: Literal["fast", "slow"]) -> None: ...
def f_enum(unit: Unit = Unit.C) -> None: ...
def f_int_enum(level: Level) -> None: ...
def f_list(ids: list[int]) -> None: ...
def f_tuple(pair: tuple[int, str]) -> None: ...
def f_tuple_var(xs: tuple[float, ...]) -> None: ...
def f_dict(scores: dict[str, float]) -> None: ...
def f_dataclass(at: Point) -> None: ...
def f_model(address: Address) -> None: ...
def f_recursive(tree: Tree) -> None: ...
def f_defaults(q: str, k: int = 3, exact: bool = False) -> None: ...
def f_untyped(anything) -> None: ...  # noqa: ANN001 - no hint: any JSON value
def f_private(_secret: str, schema: str) -> None: ...


OBJ = {"type": "object", "additionalProperties": False}
POINT = {"type": "object", "additionalProperties": False, "properties": {"x": {"type": "number"},
         "y": {"type": "number", "default": 0.0}}, "required": ["x"]}
ADDRESS = {"type": "object", "properties": {  # a pydantic model keeps its own config: extra keys ignored
    "street": {"type": "string"}, "zip_code": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}},
    "required": ["street"]}
TREE = {"type": "object", "properties": {"label": {"type": "string"},
        "children": {"type": "array", "items": {"$ref": "#/$defs/Tree"}, "default": []}}, "required": ["label"]}


def props(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    out = {**OBJ, "properties": properties, **extra}
    if required:
        out["required"] = required
    return out


# function: (expected parameters schema, arguments the grammar must accept, near miss it must reject)
TABLE: list[tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    (f_str, props({"city": {"type": "string"}}, ["city"]), {"city": "Paris"}, {"city": 5}),
    (f_int, props({"n": {"type": "integer"}}, ["n"]), {"n": -3}, {"n": 1.5}),
    (f_float, props({"x": {"type": "number"}}, ["x"]), {"x": 2.5}, {"x": "2.5"}),
    (f_bool, props({"flag": {"type": "boolean"}}, ["flag"]), {"flag": True}, {"flag": "yes"}),
    (f_none, props({"nothing": {"type": "null"}}, ["nothing"]), {"nothing": None}, {"nothing": 0}),
    (f_optional, props({"limit": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}}),
     {"limit": None}, {"limit": "none"}),
    (f_union_none, props({"limit": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}, ["limit"]),
     {"limit": 4}, {"limit": 4.5}),
    (f_literal, props({"mode": {"type": "string", "enum": ["fast", "slow"]}}, ["mode"]),
     {"mode": "slow"}, {"mode": "medium"}),
    (f_enum, props({"unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}}),
     {"unit": "fahrenheit"}, {"unit": "F"}),
    (f_int_enum, props({"level": {"type": "integer", "enum": [1, 2]}}, ["level"]), {"level": 2}, {"level": 3}),
    (f_list, props({"ids": {"type": "array", "items": {"type": "integer"}}}, ["ids"]), {"ids": [1, 2]},
     {"ids": [1, "2"]}),
    (f_tuple, props({"pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                              "minItems": 2, "maxItems": 2}}, ["pair"]), {"pair": [1, "a"]}, {"pair": [1]}),
    (f_tuple_var, props({"xs": {"type": "array", "items": {"type": "number"}}}, ["xs"]), {"xs": [1.5]},
     {"xs": ["a"]}),
    (f_dict, props({"scores": {"type": "object", "additionalProperties": {"type": "number"}}}, ["scores"]),
     {"scores": {"a": 1.5}}, {"scores": {"a": "x"}}),
    (f_dataclass, props({"at": POINT}, ["at"]), {"at": {"x": 1.0}}, {"at": {"y": 1.0}}),
    (f_model, props({"address": ADDRESS}, ["address"]), {"address": {"street": "Main", "zip_code": 1}},
     {"address": {"zip_code": 1}}),
    (f_recursive, props({"tree": TREE}, ["tree"], **{"$defs": {"Tree": TREE}}),
     {"tree": {"label": "a", "children": [{"label": "b"}]}}, {"tree": {"children": []}}),
    (f_defaults, props({"q": {"type": "string"}, "k": {"type": "integer", "default": 3},
                        "exact": {"type": "boolean", "default": False}}, ["q"]), {"q": "x", "k": 5}, {"k": 5}),
    (f_untyped, props({"anything": {}}, ["anything"]), {"anything": [1, {"a": None}]}, {}),
    (f_private, props({"_secret": {"type": "string"}, "schema": {"type": "string"}}, ["_secret", "schema"]),
     {"_secret": "s", "schema": "t"}, {"secret": "s", "schema": "t"}),
]


@pytest.mark.parametrize("fn, expected, accept, reject", TABLE, ids=[row[0].__name__ for row in TABLE])
def test_signature_to_schema_and_grammar(fn: Any, expected: dict[str, Any], accept: dict[str, Any],
                                         reject: dict[str, Any]) -> None:
    tool = function_tool(fn)
    assert tool.spec["function"]["parameters"] == expected
    gbnf = build_toolset([tool.spec], "required").grammar.gbnf
    name = fn.__name__
    assert check_text(gbnf, render_calls([{"name": name, "arguments": accept}])).ok
    assert not check_text(gbnf, render_calls([{"name": name, "arguments": reject}])).ok


def google(city: str, days: int = 1) -> str:
    """Forecast for a city.

    Uses the local station.

    Args:
        city: The city, e.g. Paris.
        days: How many days ahead.
    """
    return city


def numpy_style(city: str) -> str:
    """Forecast for a city.

    Parameters
    ----------
    city : str
        The city, numpy style.
    """
    return city


def rest_style(city: str) -> str:
    """Forecast for a city.

    :param city: The city, reST style.
    """
    return city


@pytest.mark.parametrize("fn, description, city_doc", [
    (google, "Forecast for a city.\n\nUses the local station.", "The city, e.g. Paris."),
    (numpy_style, "Forecast for a city.", "The city, numpy style."),
    (rest_style, "Forecast for a city.", "The city, reST style."),
])
def test_docstring_styles(fn: Any, description: str, city_doc: str) -> None:
    spec = function_tool(fn).spec["function"]
    assert spec["name"] == fn.__name__
    assert spec["description"] == description
    assert spec["parameters"]["properties"]["city"]["description"] == city_doc


def convert(at: Point, unit: Unit, address: Address, pair: tuple[int, str], level: Level = Level.LOW) -> dict:
    return {"at": type(at).__name__, "x": at.x, "unit": unit.name, "address": type(address).__name__,
            "pair": type(pair).__name__, "level": level.name}


async def fetch(city: str, delay: float = 0.0) -> str:
    """An async tool."""
    await asyncio.sleep(delay)
    return f"fetched {city}"


def test_arguments_are_validated_and_converted_before_the_call() -> None:
    tool = function_tool(convert)
    out = tool.execute({"at": {"x": 1}, "unit": "fahrenheit", "address": {"street": "Main"}, "pair": [1, "a"]}, 5)
    assert not out.is_error
    assert out.content == ('{"at":"Point","x":1.0,"unit":"F","address":"Address","pair":"tuple",'
                           '"level":"LOW"}')
    bad = tool.execute({"at": {"x": "far"}, "unit": "kelvin", "address": {}, "pair": [1, "a"], "extra": 1}, 5)
    assert bad.is_error and bad.content.startswith("error: invalid arguments: ")
    for where in ("at.x", "unit", "address.street", "extra"):
        assert where in bad.content, bad.content


def test_async_function_runs_and_its_timeout_is_enforced() -> None:
    tool = function_tool(fetch)
    assert tool.execute({"city": "Oslo"}, 5).content == "fetched Oslo"
    with pytest.raises(TimeoutError):
        tool.execute({"city": "Oslo", "delay": 30}, 0.05)


def test_positional_only_and_keyword_only_parameters() -> None:
    def f(a: int, /, b: int, *, c: int = 1) -> int:
        return a * 100 + b * 10 + c

    tool = function_tool(f)
    assert tool.spec["function"]["parameters"]["required"] == ["a", "b"]
    assert tool.execute({"a": 1, "b": 2, "c": 3}, 5).content == "123"


@pytest.mark.parametrize("value, text", [
    ("plain", "plain"), (None, "null"), (3, "3"), ({"a": [1, 2]}, '{"a":[1,2]}'),
    (Point(1.0, 2.5), '{"x":1.0,"y":2.5}'), (Address(street="s"), '{"street":"s","zip_code":null}'),
    (Unit.C, '"celsius"'),
])
def test_return_values_become_text(value: Any, text: str) -> None:
    assert to_text(value) == text


def variadic(*names: str) -> None: ...
def kwargs_only(**options: int) -> None: ...
class Handle:
    """Any Python class pydantic knows nothing about."""


def no_schema(handle: Handle) -> None: ...
def no_json_form(callback: Callable[[int], int]) -> None: ...


@pytest.mark.parametrize("fn, message", [
    (variadic, "*names parameters cannot be described"),
    (kwargs_only, "*options parameters cannot be described"),
    (lambda x: x, "has no name a tool can use"),
    (no_schema, "has no JSON Schema"),
    (no_json_form, "has no JSON Schema"),
])
def test_functions_that_cannot_be_tools(fn: Any, message: str) -> None:
    with pytest.raises(SchemaError) as e:
        function_tool(fn)
    assert message in str(e.value), str(e.value)


def test_mixed_tool_list() -> None:
    spec = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}
    tools = as_tools([google, (spec, lambda q: q.upper()), {"name": "ask_me", "parameters": {}}])
    assert [t.name for t in tools] == ["google", "lookup", "ask_me"]
    assert isinstance(tools[1], ExecutableTool) and tools[1].execute is not None
    assert tools[1].execute({"q": "abc"}, 5).content == "ABC"
    assert tools[2].execute is None  # no code: the loop's `ask` hook supplies the result
    with pytest.raises(SchemaError, match="expected a function"):
        as_tools([42])


@pytest.mark.parametrize("source, names, arguments, content", [
    ("def a(x: int) -> int:\n    return x\n\ndef _private(): ...\n\nfrom os import getcwd\n", ["a"], {"x": 1}, "1"),
    ("def a(x: int) -> int:\n    return x\n\ndef b(y: str) -> str:\n    return y\n\nTOOLS = [b]\n", ["b"],
     {"y": "z"}, "z"),
    ("from dataclasses import dataclass\n\n@dataclass\nclass P:\n    x: int\n\ndef move(p: P) -> int:\n"
     "    return p.x\n", ["move"], {"p": {"x": 7}}, "7"),
])
def test_functions_file(tmp_path: Path, source: str, names: list[str], arguments: dict[str, Any],
                        content: str) -> None:
    """A file's TOOLS list, else its own public functions (not imported ones); its types resolve."""
    path = tmp_path / "tools.py"
    path.write_text(source)
    tools = load_functions(path)
    assert [t.name for t in tools] == names
    assert tools[0].execute(arguments, 5).content == content


@pytest.mark.parametrize("source, message", [
    ("def broken(:\n", "failed to load: SyntaxError"),
    ("raise RuntimeError('no')\n", "failed to load: RuntimeError: no"),
    ("X = 1\n", "defines no public function"),
    ("TOOLS = 3\n", "TOOLS must be a list"),
])
def test_bad_functions_file(tmp_path: Path, source: str, message: str) -> None:
    path = tmp_path / "tools.py"
    path.write_text(source)
    with pytest.raises(InputError, match=message):
        load_functions(path)
    res = CliRunner().invoke(main, ["run", "hi", "--functions", str(path), "--yes"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and message.split(":")[0] in res.output
