"""Agent frameworks, unmodified, against the real server on the demo model: the OpenAI Agents SDK (its default
Responses model and OpenAIChatCompletionsModel), pydantic-ai and langchain-openai. Each completes its loop: a tool
is called, run and its result fed back until an answer (or a structured output) comes. Offline: tracing off."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from tests.helpers.server import Server

QUESTION = "What's the weather in Paris?"
# The 135M demo model answers in text once the tool's result is in under this system prompt (it may call again
# under others); a framework's first step forces the call through its own per-step tool_choice.
INSTRUCTIONS = "You are a weather assistant. Use the tool, then answer."


class City(BaseModel):
    name: str
    country: str


SERVER = {"load": {"n_ctx": 4096}, "model_id": "toolace-demo"}


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
    """The SDK's default loop: the first turn must call (required), the SDK resets tool_choice to auto after the
    call, runs the tool, sends its output back and the model answers."""
    from agents import Agent, ModelSettings, Runner, function_tool

    log: list[str] = []
    agent = Agent(name="weather", instructions=INSTRUCTIONS, tools=[function_tool(_weather(log))],
                  model=_agents_model(server, kind),
                  model_settings=ModelSettings(tool_choice="required", max_tokens=48, temperature=0))
    result = Runner.run_sync(agent, QUESTION, max_turns=4)
    assert len(log) == 1 and isinstance(log[0], str)  # the tool ran once, with the model's arguments
    assert [item.type for item in result.new_items] == ["tool_call_item", "tool_call_output_item",
                                                         "message_output_item"]
    assert isinstance(result.final_output, str) and result.final_output.strip()


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
    """pydantic-ai's loop: a capability forces a call on the first step only (its documented way to vary
    tool_choice per step), the tool runs, its return goes back in auto mode and the model answers in text."""
    from pydantic_ai import Agent, capture_run_messages
    from pydantic_ai.capabilities import AbstractCapability
    from pydantic_ai.usage import UsageLimits

    class CallFirst(AbstractCapability[None]):
        def get_model_settings(self) -> Any:
            return lambda ctx: {"tool_choice": "required"} if ctx.run_step <= 1 else {}

    log: list[str] = []
    agent = Agent(_pydantic_model(server), tools=[_weather(log)], instructions=INSTRUCTIONS,
                  model_settings={"max_tokens": 48, "temperature": 0}, capabilities=[CallFirst()])
    with capture_run_messages() as messages:
        result = agent.run_sync(QUESTION, usage_limits=UsageLimits(request_limit=4))
    assert len(log) == 1 and isinstance(log[0], str)  # the tool ran once, with the model's arguments
    sent = [part.part_kind for msg in messages for part in msg.parts]
    assert sent.count("tool-call") == 1 and "tool-return" in sent and sent[-1] == "text"
    assert isinstance(result.output, str) and result.output.strip()


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
    from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
    from langchain_core.tools import tool

    log: list[str] = []
    get_weather = tool(_weather(log))
    llm = _chat_openai(server, use_responses_api=responses_api)
    messages: list[Any] = [SystemMessage(INSTRUCTIONS), HumanMessage(QUESTION)]
    ai = llm.bind_tools([get_weather], tool_choice="required").invoke(messages)
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "get_weather"
    messages.append(ai)
    for call in ai.tool_calls:
        messages.append(ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]))
    answer = llm.bind_tools([get_weather]).invoke(messages)  # auto: the model may call again; it answers
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
