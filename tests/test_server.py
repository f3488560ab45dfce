"""The OpenAI-compatible server, for real: uvicorn on 127.0.0.1 (free port) serving SmolLM2, driven by the official
`openai` client. Loopback only. Limits and hostile requests: test_server_limits.py; concurrency and disconnects:
test_server_concurrency.py; structured outputs, the Responses API, agent frameworks: test_server_*.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import OpenAI

from tests.helpers.server import QUESTION, TWO_TOOLS, Server, chat, healthy
from toolace.errors import InputError
from toolace.grammars.schema import normalise_tools
from toolace.runtime.prompt import system_prompt
from toolace.serve.server import serve


# --- basics --------------------------------------------------------------------------------------------------------
def test_health_and_models(server: Server) -> None:
    healthy(server)
    models = server.client().models.list()
    assert [m.id for m in models.data] == [server.ta.model.path.stem]


def test_tool_call_non_stream(server: Server, weather_tools: list[dict]) -> None:
    r = chat(server.client(), weather_tools, "required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and calls[0].type == "function" and calls[0].function.name == "get_weather"
    assert calls[0].id.startswith("call_")
    args = json.loads(calls[0].function.arguments)
    assert isinstance(args["location"], str)
    assert calls[0].function.arguments == json.dumps(args, ensure_ascii=False)
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0


def _stream_calls(client: OpenAI, tools: list[dict], tool_choice: Any, **kw: Any) -> tuple[list[Any], dict]:
    chunks = list(chat(client, tools, tool_choice, stream=True, **kw))
    calls: dict[int, dict[str, Any]] = {}
    for ch in chunks:
        for tc in ch.choices[0].delta.tool_calls or [] if ch.choices else []:
            c = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.id:
                assert c["id"] is None, "id sent twice"
                c["id"] = tc.id
            if tc.function and tc.function.name:
                assert c["name"] is None, "name sent twice"
                c["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                c["arguments"] += tc.function.arguments
    return chunks, calls


def test_stream_arguments_concatenate_to_non_stream(server: Server, weather_tools: list[dict]) -> None:
    client = server.client()
    plain = chat(client, weather_tools, "required").choices[0].message.tool_calls
    chunks, calls = _stream_calls(client, weather_tools, "required")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert [(c["name"], c["arguments"]) for _, c in sorted(calls.items())] == \
        [(c.function.name, c.function.arguments) for c in plain]
    assert all(c["id"].startswith("call_") for c in calls.values())


def test_stream_text_content(server: Server) -> None:
    chunks = list(chat(server.client(), None, stream=True, max_tokens=8))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    plain = chat(server.client(), None, max_tokens=8).choices[0].message.content
    assert text == plain and text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stream_usage_chunk(server: Server) -> None:
    chunks = list(server.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
        stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens >= 1
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


# --- tool_choice -----------------------------------------------------------------------------------------------------

def test_tool_choice_modes(server: Server) -> None:
    client = server.client()
    none = chat(client, TWO_TOOLS, "none", max_tokens=8).choices[0]
    assert not none.message.tool_calls and none.message.content and none.finish_reason in ("stop", "length")
    named = chat(client, TWO_TOOLS, {"type": "function", "function": {"name": "get_time"}}).choices[0]
    assert named.finish_reason == "tool_calls"
    assert {c.function.name for c in named.message.tool_calls} == {"get_time"}
    required = chat(client, TWO_TOOLS, "required").choices[0]
    assert required.message.tool_calls and required.finish_reason == "tool_calls"
    auto = chat(client, TWO_TOOLS, "auto", max_tokens=16).choices[0]
    assert auto.message.tool_calls or auto.message.content is not None


def test_parallel_calls(server: Server) -> None:
    client = server.client()
    q = [{"role": "user", "content": "Weather in Paris and the time in Tokyo?"}]
    many = client.chat.completions.create(model="m", messages=q, tools=TWO_TOOLS, tool_choice="required",
                                          parallel_tool_calls=True, max_tokens=48, temperature=0)
    names = [c.function.name for c in many.choices[0].message.tool_calls]
    assert names and set(names) <= {"get_weather", "get_time"}
    one = client.chat.completions.create(model="m", messages=q, tools=TWO_TOOLS, tool_choice="required",
                                         parallel_tool_calls=False, max_tokens=64, temperature=0)
    assert len(one.choices[0].message.tool_calls) == 1


def test_tool_result_turn(server: Server, weather_tools: list[dict]) -> None:
    client = server.client()
    first = chat(client, weather_tools, "required").choices[0].message
    call = first.tool_calls[0]
    messages = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21, "sky": "sunny"})},
    ]
    r = client.chat.completions.create(model="m", messages=messages, tools=weather_tools, tool_choice="none",
                                       max_tokens=24, temperature=0)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls
    assert r.usage.prompt_tokens > chat(client, weather_tools, "none", max_tokens=1).usage.prompt_tokens


def test_plainchat(server: Server) -> None:
    r = server.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "Say hello."}],
                                                max_completion_tokens=12, temperature=0)
    assert r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 12


# --- BFCL's raw prompt path ----------------------------------------------------------------------------------------
def test_completions_raw_prompt(server: Server, weather_tools: list[dict]) -> None:
    ta = server.ta
    msgs = [{"role": "system", "content": system_prompt(normalise_tools(weather_tools))},
            {"role": "user", "content": QUESTION}]
    prompt = "".join(seg.text for seg in ta.template.render(msgs, add_generation_prompt=True))
    r = server.client().completions.create(model="m", prompt=prompt, max_tokens=16, temperature=0)
    text = r.choices[0].text
    assert isinstance(text, str) and text
    assert text == ta.complete(prompt, max_tokens=16, temperature=0.0)[0]
    assert r.usage.prompt_tokens == len(ta.model.tokenize(prompt, special=True))



def test_serve_refuses_public_host_without_key() -> None:
    with pytest.raises(InputError, match="API key"):
        serve(host="0.0.0.0", port=0)
    with pytest.raises(InputError, match="API key"):
        serve(host="192.168.1.10", port=0, api_key=None)

