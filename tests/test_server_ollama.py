"""Ollama's API on the real server, driven by the official clients unmodified: `ollama` (PyPI) with Python-function
tools, streaming and a JSON-schema `format`, and LangChain's `ChatOllama` (bind_tools, with_structured_output).
Each asserts valid calls or schema-valid output, not just a 200; bad input gets Ollama's `{"error": ...}`."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import ollama
import pytest
from pydantic import BaseModel

from tests.helpers.fake_hub import FakeHub
from tests.helpers.gguf_bytes import model_gguf
from tests.helpers.server import QUESTION, Server, abandon_stream
from toolace import models

TOOL_QUESTION = "What's the weather like in Paris?"
# Ollama's clients have no tool_choice; `options` passes through them unmodified, and the server reads it there.
REQUIRED = {"temperature": 0, "num_predict": 48, "tool_choice": "required"}


def get_weather(city: str) -> str:
    """Current weather in a city.

    Args:
        city: The city name.
    """
    return f"Sunny in {city}"


def get_time(city: str) -> str:
    """Current local time in a city.

    Args:
        city: The city name.
    """
    return "12:00"


class City(BaseModel):
    city: str
    population: int


def _client(server: Server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


def test_model_listing_routes(server: Server) -> None:
    c = _client(server)
    names = [m.model for m in c.list().models]
    assert names and all(n.endswith(":latest") or ":" in n for n in names)
    shown = c.show(names[0])
    assert "tools" in shown.capabilities and "completion" in shown.capabilities
    assert shown.details.format == "gguf" and shown.details.quantization_level == "Q4_1"
    assert shown.details.family == "llama" and shown.template
    assert shown.modelinfo["toolace.n_ctx"] == server.ta.model.n_ctx
    running = c.ps().models
    assert running[0].model == names[0] and running[0].size > 0
    assert httpx.get(f"{server.url}/api/version").json()["version"].count(".") == 2


def test_chat_with_python_function_tools(server: Server) -> None:
    r = _client(server).chat(model="demo", messages=[{"role": "user", "content": TOOL_QUESTION}],
                             tools=[get_weather, get_time], options=REQUIRED)
    calls = r.message.tool_calls
    assert calls, r.message
    assert calls[0].function.name in ("get_weather", "get_time")
    assert set(calls[0].function.arguments) == {"city"} and isinstance(calls[0].function.arguments["city"], str)
    assert r.done and r.done_reason == "stop" and r.eval_count > 0 and r.prompt_eval_count > 0
    # the call goes back as Ollama sends it (arguments as an object, the result as a tool message)
    follow = _client(server).chat(model="demo", options={"temperature": 0, "num_predict": 24}, messages=[
        {"role": "user", "content": TOOL_QUESTION}, r.message,
        {"role": "tool", "content": get_weather(calls[0].function.arguments["city"]), "tool_name": "get_weather"}])
    assert follow.done and (follow.message.content or follow.message.tool_calls)


def test_tool_choice_is_enforced(server: Server) -> None:
    """Ollama itself cannot force a call; through the grammar a named tool_choice always gives that call."""
    body = {"model": "demo", "stream": False, "messages": [{"role": "user", "content": "Hi there!"}],
            "tools": [{"type": "function", "function": {"name": "get_time", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_time"}}, "options": {"num_predict": 32}}
    r = httpx.post(f"{server.url}/api/chat", json=body, timeout=120).json()
    assert [c["function"]["name"] for c in r["message"]["tool_calls"]] == ["get_time"]
    assert isinstance(r["message"]["tool_calls"][0]["function"]["arguments"]["city"], str)
    assert r["toolace"]["valid"] is True


def test_streaming_chat(server: Server) -> None:
    parts = list(_client(server).chat(model="demo", messages=[{"role": "user", "content": "Say hello."}],
                                      stream=True, options={"temperature": 0, "num_predict": 16}))
    assert len(parts) >= 2 and parts[-1].done and not any(p.done for p in parts[:-1])
    text = "".join(p.message.content or "" for p in parts)
    whole = _client(server).chat(model="demo", messages=[{"role": "user", "content": "Say hello."}],
                                 options={"temperature": 0, "num_predict": 16})
    assert text == whole.message.content and text  # streamed pieces join to the non-streamed answer
    streamed_calls = [p.message.tool_calls for p in _client(server).chat(
        model="demo", messages=[{"role": "user", "content": TOOL_QUESTION}], tools=[get_weather], stream=True,
        options=REQUIRED) if p.message.tool_calls]
    assert streamed_calls and streamed_calls[0][0].function.name == "get_weather"


def test_format_json_schema_and_json(server: Server) -> None:
    r = _client(server).chat(model="demo", messages=[{"role": "user", "content": "Describe Lisbon."}],
                             format=City.model_json_schema(), options={"temperature": 0, "num_predict": 64})
    City.model_validate_json(r.message.content)  # decoded under the schema's grammar
    g = _client(server).generate(model="demo", prompt="Give me a JSON object about Paris.", format="json",
                                 options={"temperature": 0, "num_predict": 48})
    assert isinstance(json.loads(g.response), dict)
    assert _client(server).generate(model="demo", prompt="").done_reason == "load"  # a client's "load the model"


def test_langchain_chat_ollama(server: Server) -> None:
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model="demo", base_url=server.url, temperature=0, num_predict=48)
    msg = llm.bind_tools([get_weather]).invoke(TOOL_QUESTION, options=REQUIRED)
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"
    assert isinstance(msg.tool_calls[0]["args"]["city"], str)
    city = ChatOllama(model="demo", base_url=server.url, temperature=0, num_predict=64) \
        .with_structured_output(City).invoke("Describe Lisbon.")
    assert isinstance(city, City)


BAD = [  # (body change, error words, near miss)
    ({"options": {"mirostat": 2}}, "options.mirostat is not supported", {"options": {"mirostat": 0}}),
    ({"options": {"num_ctx": 10 ** 6}}, "exceeds this server's context", {"options": {"num_ctx": 512}}),
    ({"options": {"warp": 1}}, "unknown option 'warp'", {"options": {"num_thread": 2}}),
    ({"options": {"num_predict": 0}}, "options.num_predict must be an integer", {"options": {"num_predict": 3}}),
    ({"format": "yaml"}, "format must be", {"format": ""}),
    ({"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "images are not supported",
     {"messages": [{"role": "user", "content": "x", "images": []}]}),
    ({"tool_choice": "required"}, "tool_choice 'required' needs tools", {"tool_choice": "none"}),
    ({"frobnicate": True}, "unknown field 'frobnicate'", {"keep_alive": "5m"}),
    ({"options": {"tool_choice": "sometimes"}, "tools": [{"type": "function", "function": {"name": "f"}}]},
     "tool_choice", {"options": {"tool_choice": "auto"}}),
    ({"logprobs": True}, "logprobs", {"logprobs": False}),
]


@pytest.mark.parametrize(("bad", "words", "near"), BAD)
def test_bad_input_in_ollama_shape(server: Server, bad: dict, words: str, near: dict) -> None:
    base = {"model": "demo", "stream": False, "messages": [{"role": "user", "content": QUESTION}],
            "options": {"num_predict": 2}}
    r = httpx.post(f"{server.url}/api/chat", json={**base, **bad}, timeout=120)
    assert r.status_code == 400 and set(r.json()) == {"error"} and words in r.json()["error"], r.text
    near = {**near, "options": {"num_predict": 2, **near.get("options", {})}}  # a short answer
    ok = httpx.post(f"{server.url}/api/chat", json={**base, **near}, timeout=120)
    assert ok.status_code == 200, ok.text


def test_client_raises_its_own_error(server: Server) -> None:
    with pytest.raises(ollama.ResponseError) as e:  # the client's own typed error, carrying our message
        _client(server).chat(model="demo", messages=[{"role": "user", "content": "x"}], options={"mirostat": 2})
    assert e.value.status_code == 400 and "options.mirostat is not supported" in e.value.error


def test_embed_is_a_clear_501(server: Server) -> None:
    r = httpx.post(f"{server.url}/api/embed", json={"model": "demo", "input": "hi"})
    assert r.status_code == 501 and "embeddings are not supported" in r.json()["error"]


def test_stream_disconnect_frees_the_slot(server: Server) -> None:
    body = {"model": "demo", "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "options": {"num_predict": 2000, "temperature": 0}}
    abandon_stream(server, "/api/chat", body, 2)


def test_pull_and_delete_onto_the_model_store(server: Server, hub: FakeHub, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`ollama pull` streams Ollama's progress lines onto toolace's store (from the fake hub on 127.0.0.1), and
    `ollama delete` removes the model."""
    monkeypatch.setenv("TOOLACE_HOME", str(tmp_path / "home"))
    data = model_gguf(7, fill=2)
    hub.repos["Team-ACE/Tiny-GGUF"] = {"tiny.Q8_0.gguf": data, "tiny.Q4_K_M.gguf": model_gguf(15, fill=1)}
    parts = list(_client(server).pull("hf.co/Team-ACE/Tiny-GGUF:Q8_0", stream=True))
    assert parts[0].status == "pulling manifest" and parts[-1].status == "success"
    progress = [p for p in parts if p.total]
    assert progress and progress[-1].completed == progress[-1].total == len(data)
    assert [(m["name"], m["quant"]) for m in models.list()] == [("tiny-gguf", "Q8_0")]
    assert _client(server).delete("tiny-gguf").status == "success"
    assert models.list() == []
    with pytest.raises(ollama.ResponseError) as e:  # Ollama's registry names cannot be pulled here
        _client(server).pull("llama3.2")
    assert e.value.status_code == 400 and "hf.co/USER/REPO" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        _client(server).delete("tiny-gguf")
    assert e.value.status_code == 404
