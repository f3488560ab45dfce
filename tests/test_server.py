"""The OpenAI-compatible server, for real: uvicorn on 127.0.0.1 (free port) serving SmolLM2, driven by the official
`openai` client and raw httpx. Loopback only."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from openai import OpenAI

from toolace.api import ToolACE
from toolace.errors import InputError
from toolace.grammars.schema import normalise_tools
from toolace.runtime.prompt import system_prompt
from toolace.runtime.server import MAX_BODY_BYTES, create_app, serve

QUESTION = "What's the weather like in Paris in celsius?"
KEY = "test-key-123"
TIMEOUT = 120.0


@dataclass
class Server:
    url: str
    ta: ToolACE
    thread: threading.Thread
    uv: uvicorn.Server

    def client(self, api_key: str = "unused") -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, timeout=TIMEOUT, max_retries=0)


def _start(ta: ToolACE, **kwargs: Any) -> Server:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(create_app(ta, **kwargs), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    return Server(f"http://127.0.0.1:{port}", ta, thread, uv)


def _stop(server: Server) -> None:
    server.uv.should_exit = True
    server.thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(smollm2_gguf: Path) -> Iterator[Server]:
    s = _start(ToolACE.load(str(smollm2_gguf), n_ctx=2048))
    yield s
    _stop(s)


@pytest.fixture(scope="module")
def small_server(smollm2_gguf: Path) -> Iterator[Server]:
    """n_ctx 512, an API key and a queue of 1."""
    s = _start(ToolACE.load(str(smollm2_gguf), n_ctx=512), api_key=KEY, max_queue=1)
    yield s
    _stop(s)


def _healthy(server: Server) -> None:
    r = httpx.get(f"{server.url}/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def _chat(client: OpenAI, tools: list[dict] | None, tool_choice: Any = None, **kw: Any) -> Any:
    extra = {} if tools is None else {"tools": tools}
    if tool_choice is not None:
        extra["tool_choice"] = tool_choice
    kw.setdefault("max_tokens", 32)
    kw.setdefault("temperature", 0)
    kw.setdefault("seed", 0)
    return client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUESTION}],
                                          **extra, **kw)


# --- basics --------------------------------------------------------------------------------------------------------
def test_health_and_models(server: Server) -> None:
    _healthy(server)
    models = server.client().models.list()
    assert [m.id for m in models.data] == [server.ta.model.path.stem]


def test_tool_call_non_stream(server: Server, weather_tools: list[dict]) -> None:
    r = _chat(server.client(), weather_tools, "required")
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
    chunks = list(_chat(client, tools, tool_choice, stream=True, **kw))
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
    plain = _chat(client, weather_tools, "required").choices[0].message.tool_calls
    chunks, calls = _stream_calls(client, weather_tools, "required")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert [(c["name"], c["arguments"]) for _, c in sorted(calls.items())] == \
        [(c.function.name, c.function.arguments) for c in plain]
    assert all(c["id"].startswith("call_") for c in calls.values())


def test_stream_text_content(server: Server) -> None:
    chunks = list(_chat(server.client(), None, stream=True, max_tokens=8))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    plain = _chat(server.client(), None, max_tokens=8).choices[0].message.content
    assert text == plain and text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


# --- tool_choice -----------------------------------------------------------------------------------------------------
TWO_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Current local time in a city.",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
]


def test_tool_choice_modes(server: Server) -> None:
    client = server.client()
    none = _chat(client, TWO_TOOLS, "none", max_tokens=8).choices[0]
    assert not none.message.tool_calls and none.message.content and none.finish_reason in ("stop", "length")
    named = _chat(client, TWO_TOOLS, {"type": "function", "function": {"name": "get_time"}}).choices[0]
    assert named.finish_reason == "tool_calls"
    assert {c.function.name for c in named.message.tool_calls} == {"get_time"}
    required = _chat(client, TWO_TOOLS, "required").choices[0]
    assert required.message.tool_calls and required.finish_reason == "tool_calls"
    auto = _chat(client, TWO_TOOLS, "auto", max_tokens=16).choices[0]
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
    first = _chat(client, weather_tools, "required").choices[0].message
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
    assert r.usage.prompt_tokens > _chat(client, weather_tools, "none", max_tokens=1).usage.prompt_tokens


def test_plain_chat(server: Server) -> None:
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


# --- concurrency ---------------------------------------------------------------------------------------------------
LOAD_TOOLS = [{"type": "function", "function": {"name": f"tool_{i}", "description": f"Tool number {i}.",
                                                "parameters": {"type": "object", "properties": {}}}}
              for i in range(8)]


def test_concurrent_clients_do_not_mix(server: Server) -> None:
    def client_run(i: int) -> list[str]:
        client = server.client()
        outcomes = []
        for _ in range(10):
            try:
                r = client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "Go."}], tools=LOAD_TOOLS,
                    tool_choice={"type": "function", "function": {"name": f"tool_{i}"}}, max_tokens=16,
                    temperature=0)
            except openai.RateLimitError:
                outcomes.append("429")
                continue
            names = [c.function.name for c in r.choices[0].message.tool_calls]
            assert names and set(names) == {f"tool_{i}"}, (i, names)
            outcomes.append("ok")
        return outcomes

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = [o for outs in pool.map(client_run, range(8)) for o in outs]
    assert len(results) == 80 and results.count("ok") > 0
    assert time.monotonic() - t0 < 90
    _healthy(server)


def test_queue_full_gives_429(small_server: Server) -> None:
    client = small_server.client(KEY)

    def one(_: int) -> str:
        try:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Count to fifty."}],
                                           max_tokens=24, temperature=0)
            return "ok"
        except openai.RateLimitError as e:
            assert "max_queue 1" in str(e)
            return "429"

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(one, range(3)))
    assert "429" in results and "ok" in results


def test_client_disconnect_mid_stream(server: Server, weather_tools: list[dict]) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}],
            "max_tokens": 400, "stream": True, "temperature": 0}
    with httpx.Client(timeout=TIMEOUT) as http, \
            http.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                break
    t0 = time.monotonic()
    r = _chat(server.client(), weather_tools, "required", max_tokens=32)  # the lock was released
    assert r.choices[0].message.tool_calls
    assert time.monotonic() - t0 < 30
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}/health").json()["queue"]["used"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(f"{server.url}/health").json()["queue"]["used"] == 0


# --- hostile requests ----------------------------------------------------------------------------------------------
def _post(server: Server, content: bytes | str, path: str = "/v1/chat/completions", **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=content, timeout=TIMEOUT,
                      headers={"content-type": "application/json", **headers})


def _error(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    for w in words:
        assert w in err["message"], err["message"]


BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.mark.parametrize(("patch", "status", "words"), [
    ({"max_tokens": -5}, 400, ["max_tokens"]),
    ({"max_tokens": 10**9}, 400, ["max_tokens"]),
    ({"max_completion_tokens": 0}, 400, ["max_tokens"]),
    ({"temperature": 99}, 400, ["temperature"]),
    ({"top_p": -1}, 400, ["top_p"]),
    ({"tools": TWO_TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, 400, ["nope"]),
    ({"tool_choice": "required"}, 400, ["needs tools"]),
    ({"grammar": "root ::= \"x\""}, 400, ["grammar"]),
    ({"chat_template": "{{ messages }}"}, 400, ["chat_template"]),
    ({"response_format": {"type": "json_schema", "json_schema": {}}}, 400, ["response_format"]),
    ({"messages": []}, 400, ["messages"]),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, ["role"]),
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, 400, []),
])
def test_bad_requests(server: Server, patch: dict, status: int, words: list[str]) -> None:
    _error(_post(server, json.dumps({**BASE, **patch})), status, *words)
    _healthy(server)


def test_nan_temperature_and_non_json(server: Server) -> None:
    _error(_post(server, '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'), 400,
           "temperature")
    _error(_post(server, b"this is not json{"), 400, "JSON")
    _error(_post(server, b"\xff\xfe\x00garbage"), 400, "JSON")
    _error(_post(server, b"[1, 2]"), 400, "object")
    _error(_post(server, b"{}", "/v1/completions"), 400, "prompt")
    _healthy(server)


def test_body_over_limit(server: Server) -> None:
    big = json.dumps({**BASE, "messages": [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 2 * 1024 * 1024)}]})
    try:
        r = _post(server, big)
        _error(r, 413, str(MAX_BODY_BYTES))
    except httpx.TransportError:  # the server may close before the client finished sending: also a refusal
        pass
    r = httpx.post(f"{server.url}/v1/chat/completions", json=BASE, timeout=TIMEOUT)
    assert r.status_code == 200

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while read
        yield big.encode()

    try:
        r = httpx.post(f"{server.url}/v1/chat/completions", content=chunked(), timeout=TIMEOUT)
        _error(r, 413, str(MAX_BODY_BYTES))
    except httpx.TransportError:
        pass
    _healthy(server)


def test_prompt_over_context_and_api_key(small_server: Server) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    long = {**BASE, "messages": [{"role": "user", "content": "word " * 2000}]}
    r = _post(small_server, json.dumps(long), **auth)
    _error(r, 400, "512")
    assert r.json()["error"]["code"] == "context_length_exceeded"
    # a number for the prompt's length as well as the context's
    assert any(w.isdigit() and int(w) > 512 for w in r.json()["error"]["message"].split())
    r = _post(small_server, json.dumps({"prompt": "word " * 2000, "max_tokens": 4}), "/v1/completions", **auth)
    _error(r, 400, "512")
    stream = _post(small_server, json.dumps({**long, "stream": True}), **auth)
    _error(stream, 400, "512")
    _error(_post(small_server, json.dumps(BASE)), 401, "API key")
    _error(_post(small_server, json.dumps(BASE), authorization="Bearer wrong"), 401, "API key")
    with pytest.raises(openai.AuthenticationError):
        small_server.client("wrong").models.list()
    r = small_server.client(KEY).chat.completions.create(**BASE)
    assert r.choices[0].message.content is not None
    _healthy(small_server)


def test_serve_refuses_public_host_without_key() -> None:
    with pytest.raises(InputError, match="API key"):
        serve(host="0.0.0.0", port=0)
    with pytest.raises(InputError, match="API key"):
        serve(host="192.168.1.10", port=0, api_key=None)
