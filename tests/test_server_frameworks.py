"""Agent frameworks, unmodified, against the real server on the demo model: the OpenAI Agents SDK (its default
Responses model and OpenAIChatCompletionsModel), pydantic-ai and langchain-openai. Each completes its loop: a tool
is called, run and its result fed back until an answer (or a structured output) comes. Offline: tracing off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tests.helpers.server import Server, start_server, stop_server
from toolace.api import ToolACE

QUESTION = "What's the weather in Paris?"


class City(BaseModel):
    name: str
    country: str


@pytest.fixture(scope="module")
def server(smollm2_gguf: Path) -> Iterator[Server]:
    s = start_server(ToolACE.load(str(smollm2_gguf), n_ctx=4096), model_id="toolace-demo")
    yield s
    stop_server(s)


def _weather(log: list[str]) -> Any:
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        log.append(city)
        return f"Sunny and 21 C in {city}."
    return get_weather


# --- OpenAI Agents SDK -------------------------------------------------------------------------------------------
def _agents_model(server: Server, kind: str) -> Any:
    from agents import OpenAIChatCompletionsModel, OpenAIResponsesModel, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    return OpenAIResponsesModel("demo", client) if kind == "responses" else OpenAIChatCompletionsModel("demo", client)


@pytest.mark.parametrize("kind", ["responses", "chat"])
def test_agents_sdk_tool_loop(server: Server, kind: str) -> None:
    from agents import Agent, ModelSettings, Runner, function_tool

    log: list[str] = []
    # The SDK resets tool_choice to auto after a call, and the 135M demo model then calls the tool again rather
    # than answer; the SDK's own "stop_on_first_tool" ends the loop with the tool's result as the final output.
    agent = Agent(name="weather", instructions="Use the tool, then answer.", tools=[function_tool(_weather(log))],
                  model=_agents_model(server, kind), tool_use_behavior="stop_on_first_tool",
                  model_settings=ModelSettings(tool_choice="required", max_tokens=48, temperature=0))
    result = Runner.run_sync(agent, QUESTION, max_turns=6)
    assert log and isinstance(log[0], str)  # the tool ran with the model's arguments
    assert isinstance(result.final_output, str) and result.final_output
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"]


@pytest.mark.parametrize("kind", ["responses", "chat"])
def test_agents_sdk_output_type(server: Server, kind: str) -> None:
    from agents import Agent, ModelSettings, Runner

    agent = Agent(name="geo", instructions="Answer with the city and its country.", output_type=City,
                  model=_agents_model(server, kind), model_settings=ModelSettings(max_tokens=64, temperature=0))
    result = Runner.run_sync(agent, "Where is Lisbon?", max_turns=2)
    assert isinstance(result.final_output, City)


# --- pydantic-ai ------------------------------------------------------------------------------------------------
def _pydantic_model(server: Server) -> Any:
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    return OpenAIChatModel("demo", provider=OpenAIProvider(base_url=server.base_url, api_key="unused"))


def test_pydantic_ai_tool(server: Server) -> None:
    """pydantic-ai's tool round trip: its call reaches the tool and the tool's return goes back to the server. In
    auto mode the 135M demo model answers in text, so the first turn is forced (required, through the request
    body); forced again, it would call again, so the run is capped at two requests (the SDK's own limit)."""
    from pydantic_ai import Agent, capture_run_messages
    from pydantic_ai.exceptions import UsageLimitExceeded
    from pydantic_ai.usage import UsageLimits

    log: list[str] = []
    agent = Agent(_pydantic_model(server), tools=[_weather(log)],
                  model_settings={"max_tokens": 48, "temperature": 0, "extra_body": {"tool_choice": "required"}})
    with capture_run_messages() as messages, pytest.raises(UsageLimitExceeded):
        agent.run_sync(QUESTION, usage_limits=UsageLimits(request_limit=2))
    assert log and isinstance(log[0], str)  # the tool ran with the model's arguments
    sent = [part.part_kind for msg in messages for part in msg.parts]
    assert sent.count("tool-call") >= 2 and "tool-return" in sent  # the return went back; the model called again


@pytest.mark.parametrize("mode", ["native", "tool"])
def test_pydantic_ai_structured(server: Server, mode: str) -> None:
    from pydantic_ai import Agent, NativeOutput, ToolOutput

    output = NativeOutput(City) if mode == "native" else ToolOutput(City)
    agent = Agent(_pydantic_model(server), output_type=output, model_settings={"max_tokens": 64, "temperature": 0})
    assert isinstance(agent.run_sync("Where is Lisbon?").output, City)


# --- langchain-openai -------------------------------------------------------------------------------------------
def _chat_openai(server: Server, **kw: Any) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model="demo", base_url=server.base_url, api_key="unused", temperature=0, max_tokens=48,
                      max_retries=0, **kw)


@pytest.mark.parametrize("responses_api", [False, True])
def test_langchain_tool_loop(server: Server, responses_api: bool) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    log: list[str] = []
    get_weather = tool(_weather(log))
    llm = _chat_openai(server, use_responses_api=responses_api)
    messages: list[Any] = [HumanMessage(QUESTION)]
    ai = llm.bind_tools([get_weather], tool_choice="required").invoke(messages)
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "get_weather"
    messages.append(ai)
    for call in ai.tool_calls:
        messages.append(ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]))
    answer = llm.bind_tools([get_weather], tool_choice="none").invoke(messages)
    assert log and isinstance(answer.content, (str, list)) and answer.text and not answer.tool_calls


@pytest.mark.parametrize("responses_api", [False, True])
def test_langchain_stream_and_structured(server: Server, responses_api: bool) -> None:
    from langchain_core.tools import tool

    llm = _chat_openai(server, use_responses_api=responses_api)
    get_weather = tool(_weather([]))
    chunks = list(llm.bind_tools([get_weather], tool_choice="required").stream(QUESTION))
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    assert len(chunks) > 1 and merged.tool_calls and merged.tool_calls[0]["name"] == "get_weather"
    assert isinstance(json.loads(json.dumps(merged.tool_calls[0]["args"])), dict)
    text = "".join(c.text for c in llm.stream("Say hello."))
    assert text
    city = llm.with_structured_output(City).invoke("Where is Lisbon?")
    assert isinstance(city, City)
