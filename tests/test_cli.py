"""The CLI's contract: exit codes, exact one-line errors, no tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import EXAMPLES
from toolace.cli import main

WEATHER = str(EXAMPLES / "weather.json")


@pytest.mark.parametrize(("content", "message"), [
    ("{", "not valid JSON"),
    ("[]", "tools list is empty"),
    ('[{"description": "no name"}]', "tool #0: no 'name'"),
    ('[{"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "quaternion"}}}}]',
     "unknown type 'quaternion'"),
    ('[{"name": "f"}, {"name": "f"}]', "duplicate tool name 'f'"),
    ('[{"name": "f(x"}]', "contains '('"),
])
def test_bad_tools_file_exit_2_one_line(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "tools.json"
    bad.write_text(content)
    for args in (["call", "hi", "--tools", str(bad)], ["grammar", "--tools", str(bad)]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, res.output
        assert message in res.output and res.output.startswith("Error: ")
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_missing_tools_file() -> None:
    res = CliRunner().invoke(main, ["grammar", "--tools", "/nonexistent/tools.json"])
    assert res.exit_code == 2 and "tools file '/nonexistent/tools.json': cannot read" in res.output


def test_grammar_check_exit_codes() -> None:
    ok = CliRunner().invoke(main, ["grammar", "--tools", WEATHER, "--check", "[get_weather(location='Paris')]"])
    assert ok.exit_code == 0
    assert ok.output == '[{"name": "get_weather", "arguments": {"location": "Paris"}}]\n'
    bad = CliRunner().invoke(main, ["grammar", "--tools", WEATHER, "--check", "[get_weather(city='Paris')]"])
    assert bad.exit_code == 1
    assert bad.output == ("not in the language: stops matching at character 13 (after '[get_weather('): "
                          "'c' is not allowed there\n")
    unknown = CliRunner().invoke(main, ["grammar", "--tools", WEATHER, "--tool-choice", "nope"])
    assert unknown.exit_code == 2 and "unknown tool 'nope'" in unknown.output


def test_grammar_prints_gbnf() -> None:
    res = CliRunner().invoke(main, ["grammar", "--tools", WEATHER, "--tool-choice", "required"])
    assert res.exit_code == 0
    assert res.output.splitlines()[0] == "# tool_choice: required; parallel calls: yes"
    assert 'root ::= "[" call (sep call)* "]"' in res.output
