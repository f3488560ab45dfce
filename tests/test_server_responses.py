"""/v1/responses on the real server, driven by the `openai` SDK: text, function calls and their results, structured
output, streaming events, previous_response_id with its store, and unknown fields refused by name."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests.helpers.server import Server, error_exact, post, queue_drained

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}, "strict": True}


SERVER = {"model_id": "toolace-demo", "aliases": ["demo"]}


def _create(server: Server, **kw: Any) -> Any:
    kw.setdefault("max_output_tokens", 32)
    kw.setdefault("temperature", 0)
    return server.client().responses.create(model=kw.pop("model", "gpt-4.1"), **kw)


def test_text_response(server: Server) -> None:
    r = _create(server, input="Say hello.", instructions="You are terse.")
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "toolace-demo"
    assert r.status in ("completed", "incomplete") and r.output_text
    [item] = r.output
    assert item.type == "message" and item.role == "assistant" and item.content[0].type == "output_text"
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 32
    assert r.instructions == "You are terse." and r.max_output_tokens == 32


def test_function_call_and_result_turn(server: Server) -> None:
    question = {"role": "user", "content": "What's the weather in Paris?"}
    r = _create(server, input=[question], tools=[WEATHER], tool_choice="required")
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and all(c.name == "get_weather" and c.call_id.startswith("call_") for c in calls)
    assert len({c.call_id for c in calls}) == len(calls)
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    follow = [question, *[c.model_dump(exclude_none=True) for c in calls],
              *[{"type": "function_call_output", "call_id": c.call_id, "output": "sunny, 21 C"} for c in calls]]
    answer = _create(server, input=follow, tools=[WEATHER], tool_choice="none")
    assert answer.output[0].type == "message" and answer.output_text
    assert answer.usage.input_tokens > r.usage.input_tokens  # the call and its result are in the prompt


def test_same_tool_same_prompt_on_both_endpoints(server: Server) -> None:
    """A tool in the Responses flat form renders the prompt its chat form does, field for field (`strict` too), so
    a framework behaves the same on either endpoint; a near miss without `strict` renders a shorter prompt."""
    flat = {k: v for k, v in WEATHER.items() if k != "type"}
    chat = server.client().chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "Hi"}], tools=[{"type": "function", "function": flat}],
        max_tokens=1, temperature=0)
    resp = _create(server, input="Hi", tools=[WEATHER], max_output_tokens=16)
    assert resp.usage.input_tokens == chat.usage.prompt_tokens
    loose = _create(server, input="Hi", tools=[{k: v for k, v in WEATHER.items() if k != "strict"}],
                    max_output_tokens=16)
    assert loose.usage.input_tokens < resp.usage.input_tokens


def test_previous_response_id_and_store(server: Server) -> None:
    first = _create(server, input="What's the weather in Paris?", tools=[WEATHER], tool_choice="required")
    call = next(o for o in first.output if o.type == "function_call")
    nxt = _create(server, previous_response_id=first.id, tools=[WEATHER], tool_choice="none",
                  input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert nxt.previous_response_id == first.id and nxt.output_text
    assert nxt.usage.input_tokens > first.usage.input_tokens
    unstored = _create(server, input="Hi.", store=False, max_output_tokens=4)
    assert unstored.store is False
    with pytest.raises(openai.BadRequestError, match="is not stored on this server") as e:
        _create(server, input="And then?", previous_response_id=unstored.id)
    assert e.value.code == "previous_response_not_found" and e.value.param == "previous_response_id"


class Verdict(BaseModel):
    city: str
    sunny: bool


def test_structured_text_format(server: Server) -> None:
    r = server.client().responses.parse(model="demo", input="Is it sunny in Rome?", text_format=Verdict,
                                        max_output_tokens=64, temperature=0)
    assert isinstance(r.output_parsed, Verdict)
    assert Verdict.model_validate_json(r.output_text) == r.output_parsed


def _events(server: Server, **kw: Any) -> list[Any]:
    kw.setdefault("max_output_tokens", 32)
    with server.client().responses.create(model="m", stream=True, temperature=0, **kw) as stream:
        return list(stream)


def test_stream_function_call_events(server: Server) -> None:
    events = _events(server, input="Weather in Oslo?", tools=[WEATHER], tool_choice="required")
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for kind in ("response.output_item.added", "response.function_call_arguments.delta",
                 "response.function_call_arguments.done", "response.output_item.done"):
        assert kind in kinds, kind
    final = events[-1].response
    calls = [o for o in final.output if o.type == "function_call"]
    streamed = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert streamed == "".join(c.arguments for c in calls)
    assert [e.arguments for e in events if e.type == "response.function_call_arguments.done"] == \
        [c.arguments for c in calls]
    plain = _create(server, input="Weather in Oslo?", tools=[WEATHER], tool_choice="required")
    assert [(c.name, c.arguments) for c in calls] == [(o.name, o.arguments) for o in plain.output]
    assert {c.call_id for c in calls}.isdisjoint({o.call_id for o in plain.output})


def test_stream_text_events(server: Server) -> None:
    events = _events(server, input="Say hello.")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = [e for e in events if e.type == "response.output_text.done"]
    assert text and done and done[0].text == text == events[-1].response.output_text
    assert text == _create(server, input="Say hello.").output_text


@pytest.mark.parametrize(("body", "message"), [
    ({"input": "hi", "frobnicate": 1}, "unknown field 'frobnicate' for /v1/responses"),
    ({"input": "hi", "background": True}, "field 'background' is not supported (got true)"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0]: tool type 'web_search' is not supported "
                                                         "(function only)"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0]: content part type 'input_image' is not supported (text only)"),
    ({"input": [{"type": "item_reference", "id": "x"}]},
     "input[0]: input item type 'item_reference' is not supported (message, function_call, function_call_output)"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {}, "strict": True,
                                          "extra": 1}}}, "text.format: unknown field 'extra'"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens must be an integer in [1, 32768], got 0"),
    ({"input": []}, "input must be a non-empty string or a non-empty list of items"),
])
def test_refused_requests(server: Server, body: dict[str, Any], message: str) -> None:
    error_exact(post(server, json.dumps({"model": "m", **body}), "/v1/responses"), 400, message)
    ok = post(server, json.dumps({"model": "m", "input": "hi", "max_output_tokens": 2, "metadata": {"k": "v"},
                                  "user": "u1", "store": False, "truncation": "disabled", "include": []}),
              "/v1/responses")
    assert ok.status_code == 200 and ok.json()["metadata"] == {"k": "v"}
    queue_drained(server)
