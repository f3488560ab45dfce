"""The budget guarantee through the real server and the real `openai` client (docs/budget.md): the Lisbon request
that used to loop inside an open string returns a complete, schema-valid call list, non-stream and stream, at 512
tokens and at the documented minimum; stream deltas concatenate to the non-stream arguments; a cut value is
reported (`finish_reason` "length", `toolace.truncated`)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.conftest import EXAMPLES
from tests.helpers.server import Server
from toolace.api import ToolACE
from toolace.runtime.budget import minimum_tokens

LISBON = "What's the weather in Lisbon in fahrenheit?"
TOOLS = json.loads((EXAMPLES / "calendar_weather.json").read_text())


SERVER = {"load": {"kv_cache": False}}


def _minimum(server: Server) -> int:
    ts = ToolACE.toolset(TOOLS, "required")
    return minimum_tokens(server.ta.model, ts.grammar.gbnf, [t.name for t in ts.tools])


def _openai_tools() -> list[dict[str, Any]]:
    return [{"type": "function", "function": t} for t in TOOLS]


def _assert_valid(calls: list[tuple[str, dict[str, Any]]]) -> None:
    assert calls, "no call"
    schemas = {t.name: t.parameters for t in ToolACE.toolset(TOOLS, "required").tools}
    for name, args in calls:
        jsonschema.validate(args, schemas[name])


@pytest.mark.parametrize("which", ["512", "minimum"])
def test_lisbon_non_stream_and_stream_agree(server: Server, which: str) -> None:
    budget = 512 if which == "512" else _minimum(server)
    client = server.client()
    kwargs = dict(model="any", messages=[{"role": "user", "content": LISBON}], tools=_openai_tools(),
                  tool_choice="required", max_tokens=budget)
    done = client.chat.completions.create(**kwargs)
    choice = done.choices[0]
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []]
    _assert_valid(calls)
    extension = done.model_extra["toolace"]
    assert extension["valid"] is True
    assert choice.finish_reason == ("length" if extension["truncated"] else "tool_calls")
    assert choice.message.content is None  # never half a call as content

    names: dict[int, str] = {}
    args: dict[int, str] = {}
    finish = None
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            if delta.function and delta.function.name:
                names[delta.index] = delta.function.name
            args[delta.index] = args.get(delta.index, "") + ((delta.function and delta.function.arguments) or "")
        assert not (chunk.choices and chunk.choices[0].delta.content)  # no call text leaks as content
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    streamed = [(names[i], json.loads(args[i])) for i in sorted(names)]
    assert all(a for a in args.values())  # never an empty-arguments call
    assert streamed == calls and finish == choice.finish_reason


def test_below_the_minimum_is_a_400_naming_both_numbers(server: Server) -> None:
    low = _minimum(server)
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(model="any", messages=[{"role": "user", "content": LISBON}],
                                                tools=_openai_tools(), tool_choice="required", max_tokens=low - 1)
    assert f"max_tokens {low - 1}" in str(err.value) and str(low) in str(err.value)
