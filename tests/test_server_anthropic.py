"""Anthropic's Messages API on the real server, driven by the official `anthropic` client unmodified: tools with
tool_choice `any` and `tool` (guaranteed calls through the grammar), `messages.stream` (events joined into the same
message), a tool_result round trip to a text answer, count_tokens, and errors in Anthropic's shape."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest

from tests.helpers.server import Server, abandon_stream

TOOLS = [{"name": "get_weather", "description": "Current weather in a city.",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
         {"name": "get_time", "description": "Current local time in a city.",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
ASK = [{"role": "user", "content": "What's the weather like in Paris?"}]


def _client(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", timeout=120, max_retries=0)


def _create(server: Server, **kw: Any) -> Any:
    kw.setdefault("max_tokens", 48)  # greedy: the server's default temperature is 0 (this SDK sends none)
    return _client(server).messages.create(model="demo", messages=kw.pop("messages", ASK), **kw)


def _valid_use(block: Any, names: set[str]) -> None:
    assert block.type == "tool_use" and block.name in names
    assert set(block.input) == {"city"} and isinstance(block.input["city"], str) and block.id


def test_tool_choice_any_and_tool(server: Server) -> None:
    msg = _create(server, tools=TOOLS, tool_choice={"type": "any"})
    assert msg.stop_reason == "tool_use" and msg.content
    for block in msg.content:
        _valid_use(block, {"get_weather", "get_time"})
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    named = _create(server, tools=TOOLS, tool_choice={"type": "tool", "name": "get_time"},
                    messages=[{"role": "user", "content": "Hello!"}])
    assert [b.name for b in named.content] == ["get_time"]
    _valid_use(named.content[0], {"get_time"})
    one = _create(server, tools=TOOLS, tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert len(one.content) == 1
    text = _create(server, tools=TOOLS, tool_choice={"type": "none"}, max_tokens=12)
    assert [b.type for b in text.content] == ["text"] and text.stop_reason in ("end_turn", "max_tokens")


def test_stream_joins_to_the_same_message(server: Server) -> None:
    kw = dict(model="demo", messages=ASK, tools=TOOLS, tool_choice={"type": "any"}, max_tokens=48)
    with _client(server).messages.stream(**kw) as stream:
        kinds = [ev.type for ev in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "message_delta" in kinds
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    whole = _client(server).messages.create(**kw)
    assert [(b.name, b.input) for b in final.content] == [(b.name, b.input) for b in whole.content]
    assert final.stop_reason == "tool_use"
    with _client(server).messages.stream(model="demo", messages=[{"role": "user", "content": "Say hello."}],
                                         max_tokens=16) as stream:
        text = "".join(stream.text_stream)
    plain = _create(server, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16)
    assert text == plain.content[0].text and text


def test_tool_result_round_trip(server: Server) -> None:
    first = _create(server, tools=TOOLS, tool_choice={"type": "tool", "name": "get_weather"})
    use = first.content[0]
    answer = _create(server, tools=TOOLS, max_tokens=32, messages=[
        *ASK, {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 24 C"}]}],
        tool_choice={"type": "none"})
    assert answer.content[0].type == "text" and answer.content[0].text
    assert answer.stop_reason in ("end_turn", "max_tokens")


def test_count_tokens(server: Server) -> None:
    n = _client(server).messages.count_tokens(model="demo", messages=ASK, tools=TOOLS).input_tokens
    tools = [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                               "parameters": t["input_schema"]}} for t in TOOLS]
    assert n == len(server.ta.prompt_tokens(ASK, server.ta.toolset(tools).tools))
    assert n > _client(server).messages.count_tokens(model="demo", messages=ASK).input_tokens


BAD = [  # (body change, words, near miss)
    ({"max_tokens": None}, "max_tokens: Field required", {"max_tokens": 4}),
    ({"tool_choice": {"type": "any"}}, "tool_choice 'required' needs tools", {"tool_choice": {"type": "auto"}}),
    ({"tool_choice": {"type": "tool"}, "tools": TOOLS}, "type tool needs a name",
     {"tool_choice": {"type": "tool", "name": "get_time"}, "tools": TOOLS, "max_tokens": 32}),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "block type 'image'",
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking is not supported",
     {"thinking": {"type": "disabled"}}),
    ({"stop_sequences": "x" * 2000}, "stop_sequences", {"stop_sequences": ["\n\n"]}),
    ({"frobnicate": 1}, "frobnicate: Extra inputs are not permitted", {"metadata": {"user_id": "u1"}}),
]


@pytest.mark.parametrize(("bad", "words", "near"), BAD)
def test_bad_input_in_anthropic_shape(server: Server, bad: dict, words: str, near: dict) -> None:
    base = {"model": "demo", "max_tokens": 4, "messages": ASK}
    body = {k: v for k, v in {**base, **bad}.items() if v is not None}
    r = httpx.post(f"{server.url}/v1/messages", json=body, timeout=120)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert words in err["error"]["message"], err
    ok = httpx.post(f"{server.url}/v1/messages", json={**base, **near}, timeout=120)
    assert ok.status_code == 200, ok.text


def test_client_raises_its_own_errors(server: Server) -> None:
    with pytest.raises(anthropic.BadRequestError) as e:
        _create(server, tools=TOOLS, tool_choice={"type": "tool", "name": "nope"})
    assert "nope" in str(e.value)
    with pytest.raises(anthropic.NotFoundError):
        _client(server).models.retrieve("demo")  # no such route: a 404 in Anthropic's shape


def test_stream_disconnect_frees_the_slot(server: Server) -> None:
    body = {"model": "demo", "max_tokens": 2000, "stream": True,
            "messages": [{"role": "user", "content": "Tell me a very long story."}]}
    abandon_stream(server, "/v1/messages", body, 8)
