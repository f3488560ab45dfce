"""Sloppy tool schemas (docs/budget.md): each repair, and each "left out with a warning" case, as must-accept /
must-reject rows with near misses. Verdicts are cross-checked with jsonschema against the repaired schema (what
the validator checks), and the grammar is checked to agree with it."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from toolace.errors import SchemaError
from toolace.grammars.check import check_text
from toolace.grammars.compile import compile_grammar
from toolace.grammars.gbnf import py_literal
from toolace.grammars.parser import parse_calls
from toolace.grammars.toolset import build_toolset


def _tool(prop: dict[str, Any], required: bool, name: str = "f") -> dict[str, Any]:
    return {"name": name, "parameters": {"type": "dict", "properties": {"v": prop},
                                         "required": ["v"] if required else []}}


# name: (property schema, required?, repair text, must accept, [(must reject, near miss)])
REPAIRS: dict[str, tuple[dict[str, Any], bool, str, list[Any], list[tuple[Any, Any]]]] = {
    "array enum of item values moves to items": (
        {"type": "array", "items": {"type": "string"}, "enum": ["trust", "buzz", "value"]}, True,
        "f /properties/v: enum moved to items",
        [[], ["trust"], ["buzz", "value"]],
        [(["trusty"], ["trust"]), ("trust", ["trust"]), ([1], ["value"])],
    ),
    "enum contradicting type wins over it": (
        {"type": "integer", "enum": ["1", "2", "3", "dontcare"], "default": "dontcare"}, True,
        "f /properties/v: type 'integer' dropped",
        ["1", "dontcare"],
        [(1, "1"), ("4", "3"), ("care", "dontcare")],
    ),
    "const contradicting type wins over it": (
        {"type": "boolean", "const": "yes"}, True,
        "f /properties/v: type 'boolean' dropped",
        ["yes"],
        [(True, "yes"), ("no", "yes")],
    ),
    "optional default None accepted literally": (
        {"type": "string", "default": None}, False,
        "f /properties/v: also accepts its declared default None",
        [None, "x", ""],
        [(0, "0"), (["x"], "x")],
    ),
    "optional enum default outside the enum accepted literally": (
        {"type": "string", "enum": ["seconds", "milliseconds"], "default": "N/A"}, False,
        "f /properties/v: also accepts its declared default 'N/A'",
        ["seconds", "N/A"],
        [("n/a", "N/A"), ("minutes", "milliseconds"), (None, "seconds")],
    ),
}

# Near misses of the repairs: schemas already consistent, which must come out unchanged (no repair recorded).
UNREPAIRED: list[tuple[dict[str, Any], bool]] = [
    ({"type": "array", "items": {"type": "string"}, "enum": [["a", "b"], ["c"]]}, True),  # an enum of arrays
    ({"type": "integer", "enum": [1, 2, 3]}, True),  # values of the type
    ({"type": "string", "default": "x"}, False),  # a default the schema accepts
    ({"type": "string", "default": None}, True),  # required: a default says nothing about what to pass
]

# Contradictions with no obvious reading: the tool is left out with a warning naming the pointer.
LEFT_OUT: list[tuple[dict[str, Any], str]] = [
    ({"type": "array", "items": {"type": "integer"}, "enum": ["p", "q"]}, "does not fit the items' schema"),
    ({"type": "array", "items": {"enum": ["a"]}, "enum": ["a", "b"]}, "the items already have an enum"),
    ({"type": "string", "enum": ["ab", "cd"], "maxLength": 1}, "no enum/const value satisfies the schema"),
    ({"type": "complex"}, "unknown type 'complex'"),
]
GOOD = {"name": "g", "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}


def _call(value: Any) -> str:
    return f"[f(v={py_literal(value)})]"


@pytest.mark.parametrize("row", list(REPAIRS))
def test_repair_rows(row: str) -> None:
    prop, required, repair, accept, reject = REPAIRS[row]
    compiled = compile_grammar([_tool(prop, required)], "required")
    assert not compiled.warnings
    (tool,) = compiled.tools
    assert any(r.startswith(repair) for r in tool.repairs), tool.repairs
    assert f"# repaired: {tool.repairs[0]}" in compiled.annotated()
    schema = tool.parameters

    def verdicts(value: Any) -> tuple[bool, bool, bool]:
        text = _call(value)
        in_grammar = check_text(compiled.gbnf, text).ok
        valid = jsonschema.Draft202012Validator(schema).is_valid({"v": value})
        checked = in_grammar and not compiled.validator.errors(parse_calls(text, compiled.tools))
        return in_grammar, valid, checked

    for value in accept:
        assert verdicts(value) == (True, True, True), f"{row}: must accept {value!r}"
    for bad, near in reject:
        assert verdicts(bad)[:2] == (False, False), f"{row}: must reject {bad!r}"
        assert verdicts(near) == (True, True, True), f"{row}: near miss {near!r} must pass"


@pytest.mark.parametrize(("prop", "required"), UNREPAIRED)
def test_consistent_schemas_are_not_repaired(prop: dict[str, Any], required: bool) -> None:
    compiled = compile_grammar([_tool(prop, required)], "required")
    assert compiled.tools[0].repairs == () and not compiled.warnings
    assert "# repaired" not in compiled.annotated()


@pytest.mark.parametrize(("prop", "why"), LEFT_OUT)
def test_no_obvious_reading_leaves_the_tool_out(prop: dict[str, Any], why: str) -> None:
    compiled = compile_grammar([_tool(prop, True), GOOD], "auto")
    assert [t.name for t in compiled.tools] == ["g"]
    (warning,) = compiled.warnings
    assert "'f'" in warning and why in warning and "left out" in warning
    assert f"# left out: {warning}" in compiled.annotated()
    assert check_text(compiled.gbnf, "[g(x=1)]").ok
    assert not check_text(compiled.gbnf, "[f(v=1)]").ok  # near miss of the above: the left-out tool is not callable
    # The other tool keeps working in every mode; naming the left-out tool, or having no usable tool, is refused.
    assert compile_grammar([_tool(prop, True), GOOD], "required").tools[0].name == "g"
    with pytest.raises(SchemaError, match="tool_choice names 'f', which cannot be used"):
        compile_grammar([_tool(prop, True), GOOD], "f")
    with pytest.raises(SchemaError, match=why):
        compile_grammar([_tool(prop, True)], "auto")


def test_left_out_rules_leave_no_trace() -> None:
    """A tool dropped half-way through compiling leaves none of its rules behind."""
    bad = _tool({"type": "object", "properties": {"w": {"type": "string", "pattern": "^q+$"},
                                                  "z": {"type": "string", "enum": ["ab"], "maxLength": 1}}}, True)
    alone = compile_grammar([GOOD], "auto").gbnf
    assert compile_grammar([bad, GOOD], "auto").gbnf.replace("call-1", "call-0") == alone


def test_twenty_tools_with_one_sloppy_one_all_work() -> None:
    """The issue's case: a set with one such tool used to be a 400; now each repairable tool works, as written."""
    tools = [{"name": f"t{i}", "parameters": {"type": "dict", "properties": {"n": {"type": "integer"}}}}
             for i in range(18)]
    tools += [_tool(REPAIRS["enum contradicting type wins over it"][0], False, "sloppy"),
              _tool(REPAIRS["optional default None accepted literally"][0], False, "nullable")]
    toolset = build_toolset(tools, "required")
    assert len(toolset.tools) == 20 and not toolset.grammar.warnings
    text = "[sloppy(v='dontcare'), nullable(v=None), t3(n=1)]"
    assert check_text(toolset.grammar.gbnf, text).ok
    assert toolset.errors(parse_calls(text, toolset.tools)) == []


def test_toolace_grammar_prints_repairs_and_left_out_tools(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from toolace.cli import main

    path = tmp_path / "tools.json"
    path.write_text(json.dumps([_tool(REPAIRS["enum contradicting type wins over it"][0], False),
                                _tool(LEFT_OUT[0][0], True, "broken"), GOOD]))
    res = CliRunner().invoke(main, ["grammar", "--tools", str(path)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "# repaired: f /properties/v: type 'integer' dropped: the enum value '1' contradicts it, and the values " \
           "win as written" in lines
    assert [line for line in lines if line.startswith("# left out: ")] == [
        "# left out: tool 'broken': parameters/properties/v: array enum ['p', 'q'] holds item values, but 'p' does "
        "not fit the items' schema; the tool is left out of the grammar"]
