"""The OpenAI-compatible server, for real: uvicorn on 127.0.0.1 (free port) serving SmolLM2, driven by the official
`openai` client and raw httpx. Loopback only."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
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
from toolace.limits import MAX_MAX_TOKENS, MAX_TEMPERATURE
from toolace.runtime.openai_io import MAX_STOP_CHARS, MAX_STOP_SEQUENCES
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


def _queue_drained(server: Server) -> None:
    """No request slot is left taken (a leaked slot or worker would keep `used` above 0 for good)."""
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}/health", timeout=10).json()["queue"]["used"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(f"{server.url}/health", timeout=10).json()["queue"]["used"] == 0


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


def test_stream_usage_chunk(server: Server) -> None:
    chunks = list(server.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
        stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens >= 1
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


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
    _queue_drained(server)


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


def _error_exact(r: httpx.Response, status: int, message: str) -> dict[str, Any]:
    """The response is an OpenAI-style error with exactly this status and message; returns the error object."""
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] == message
    assert err["type"] == "invalid_request_error"
    return err


BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
TOOL_0 = LOAD_TOOLS[0]
NAMED_0 = {"type": "function", "function": {"name": "tool_0"}}
REFUSED = "is not accepted: templates and grammars are fixed by the server (tools and tool_choice select the grammar)"
ROLES = "system, user, assistant, tool, ipython"


def _max_tokens(got: str) -> str:
    return f"max_tokens must be an integer in [1, {MAX_MAX_TOKENS}], got {got}"


def _in_range(name: str, hi: float, got: str) -> str:
    return f"{name} must be a number in [0.0, {hi}], got {got}"


_STOP_LIMIT = f"stop: at most {MAX_STOP_SEQUENCES} strings of at most {MAX_STOP_CHARS} characters"

# (must be refused, its exact 400 message, the near miss that must be answered 200)
BAD_REQUESTS = [
    pytest.param({"max_tokens": 0}, _max_tokens("0"), {"max_tokens": 1}, id="max_tokens=0"),
    pytest.param({"max_tokens": -5}, _max_tokens("-5"), {"max_tokens": 1}, id="max_tokens<0"),
    pytest.param({"max_tokens": MAX_MAX_TOKENS + 1, "tools": [TOOL_0], "tool_choice": NAMED_0,
                  "parallel_tool_calls": False}, _max_tokens(str(MAX_MAX_TOKENS + 1)),
                 {"max_tokens": MAX_MAX_TOKENS, "tools": [TOOL_0], "tool_choice": NAMED_0,
                  "parallel_tool_calls": False}, id="max_tokens=MAX+1"),  # one no-argument call, then end of turn
    pytest.param({"max_tokens": 10**9}, _max_tokens("1000000000"), {"max_tokens": 4}, id="max_tokens=1e9"),
    pytest.param({"max_tokens": "4"}, _max_tokens("'4'"), {"max_tokens": 4}, id="max_tokens-str"),
    pytest.param({"max_tokens": True}, _max_tokens("True"), {"max_tokens": 1}, id="max_tokens-bool"),
    pytest.param({"max_completion_tokens": 0}, _max_tokens("0"), {"max_completion_tokens": 1},
                 id="max_completion_tokens=0"),
    pytest.param({"temperature": -0.1}, _in_range("temperature", MAX_TEMPERATURE, "-0.1"), {"temperature": 2.0},
                 id="temperature<0"),
    pytest.param({"temperature": MAX_TEMPERATURE + 0.5}, _in_range("temperature", MAX_TEMPERATURE,
                                                                 repr(MAX_TEMPERATURE + 0.5)),
                 {"temperature": MAX_TEMPERATURE}, id="temperature>MAX"),
    pytest.param({"temperature": "0"}, _in_range("temperature", MAX_TEMPERATURE, "'0'"), {"temperature": 0},
                 id="temperature-str"),
    pytest.param({"temperature": 1.0, "top_p": -1}, _in_range("top_p", 1.0, "-1"), {"temperature": 1.0, "top_p": 1},
                 id="top_p<0"),
    pytest.param({"temperature": 1.0, "top_p": 1.01}, _in_range("top_p", 1.0, "1.01"),
                 {"temperature": 1.0, "top_p": 1.0}, id="top_p>1"),
    pytest.param({"temperature": 1.0, "top_p": 0}, "top_p must be greater than 0", {"temperature": 1.0, "top_p": 0.01},
                 id="top_p=0"),
    pytest.param({"temperature": 1.0, "top_k": -1}, "top_k must be a non-negative integer, got -1",
                 {"temperature": 1.0, "top_k": 0}, id="top_k<0"),
    pytest.param({"temperature": 1.0, "top_k": 1.5}, "top_k must be a non-negative integer, got 1.5",
                 {"temperature": 1.0, "top_k": 2}, id="top_k-float"),
    pytest.param({"temperature": 1.0, "min_p": 1.5}, _in_range("min_p", 1.0, "1.5"),
                 {"temperature": 1.0, "min_p": 1.0}, id="min_p>1"),
    pytest.param({"seed": "7"}, "seed must be an integer in [0, 2**64), got '7'", {"seed": 7}, id="seed-str"),
    pytest.param({"seed": -1}, "seed must be an integer in [0, 2**64), got -1", {"seed": 0}, id="seed<0"),
    pytest.param({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
                 "message 0: content part text must be a string",
                 {"messages": [{"role": "user", "content": [{"type": "text", "text": "5"}]}]}, id="content-part"),
    pytest.param({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": 5},
                               {"role": "user", "content": "x"}]}, "message 1: tool_calls must be a list",
                 {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": []},
                               {"role": "user", "content": "x"}]}, id="tool_calls-type"),
    pytest.param({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": [], "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": "x"}]}, "message 1: tool call ids must be strings",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "user", "content": "x"}]}, id="tool_call-id"),
    pytest.param({"stop": [f"<s{i}>" for i in range(MAX_STOP_SEQUENCES + 1)]}, _STOP_LIMIT,
                 {"stop": [f"<s{i}>" for i in range(MAX_STOP_SEQUENCES)]}, id="stop-count"),
    pytest.param({"stop": ["#" * (MAX_STOP_CHARS + 1)]}, _STOP_LIMIT, {"stop": ["#" * MAX_STOP_CHARS]},
                 id="stop-length"),
    pytest.param({"stop": [1]}, "stop must be a string or a list of strings", {"stop": ["1"]}, id="stop-type"),
    pytest.param({"n": 2}, "n must be 1, got 2", {"n": 1}, id="n=2"),
    pytest.param({"logprobs": True}, "logprobs, best_of and echo are not supported", {"logprobs": False},
                 id="logprobs"),
    pytest.param({"stream": "yes"}, "stream must be a boolean", {"stream": False}, id="stream-type"),
    pytest.param({"tools": [TOOL_0], "parallel_tool_calls": "no"}, "parallel_tool_calls must be a boolean",
                 {"tools": [TOOL_0], "parallel_tool_calls": False}, id="parallel-type"),
    pytest.param({"tools": TWO_TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
                 "tool_choice names unknown tool 'nope'; known: get_weather, get_time",
                 {"tools": TWO_TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
                 id="tool_choice-unknown"),
    pytest.param({"tool_choice": "required"}, "tool_choice 'required' needs tools", {"tool_choice": "none"},
                 id="tool_choice-no-tools"),
    pytest.param({"tools": [{"type": "function", "function": {"name": ""}}]},
                 "tool #0 name must be a non-empty string, got ''",
                 {"tools": [{"type": "function", "function": {"name": "a"}}]}, id="tool-name-empty"),
    pytest.param({"grammar": 'root ::= "x"'}, f"field 'grammar' {REFUSED}", {"grammar": None}, id="grammar"),
    pytest.param({"chat_template": "{{ messages }}"}, f"field 'chat_template' {REFUSED}", {"chat_template": None},
                 id="chat_template"),
    pytest.param({"response_format": {"type": "json_schema", "json_schema": {}}},
                 "response_format is not supported (only {'type': 'text'}); use tools and tool_choice",
                 {"response_format": {"type": "text"}}, id="response_format"),
    pytest.param({"messages": []}, "messages must be a non-empty list",
                 {"messages": [{"role": "user", "content": "x"}]}, id="messages-empty"),
    pytest.param({"messages": [{"role": "wizard", "content": "x"}]}, f"message 0: role must be one of {ROLES}",
                 {"messages": [{"role": "user", "content": "x"}]}, id="role"),
    pytest.param({"messages": [{"role": "user", "content": 5}]}, "message 0: content must be a string",
                 {"messages": [{"role": "user", "content": "5"}]}, id="content-type"),
]


@pytest.mark.parametrize(("bad", "message", "near_miss"), BAD_REQUESTS)
def test_bad_requests(server: Server, bad: dict, message: str, near_miss: dict) -> None:
    _error_exact(_post(server, json.dumps({**BASE, **bad})), 400, message)
    ok = _post(server, json.dumps({**BASE, **near_miss}))
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
    _healthy(server)


def test_nan_temperature_and_non_json(server: Server) -> None:
    _error_exact(_post(server, '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'), 400,
                 _in_range("temperature", MAX_TEMPERATURE, "nan"))
    for junk in (b"this is not json{", b"\xff\xfe\x00garbage"):
        r = _post(server, junk)
        assert r.status_code == 400, r.text
        err = r.json()["error"]  # the rest of the message is json's own diagnosis
        assert err["message"].startswith("request body is not valid JSON: ") and err["code"] == "invalid_json"
    _error_exact(_post(server, b"[1, 2]"), 400, "request body must be a JSON object")
    _error_exact(_post(server, b"{}", "/v1/completions"), 400, "prompt must be a non-empty string")
    _healthy(server)


# --- bodies over the limit -----------------------------------------------------------------------------------------
# a valid chat request padded by a field the server ignores (OpenAI's end-user id), so any size is still answerable
BODY_HEAD = b'{"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], "user": "'
BODY_TAIL = b'"}'
STREAM_LIMIT = f"request body exceeds the limit of {MAX_BODY_BYTES} bytes"
# the server hanging up mid-upload (reset, broken pipe, no response); a timeout is not one of these
CLOSED_BY_SERVER = (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError)


def _declared_limit(n: int) -> str:
    return f"request body is {n} bytes, the limit is {MAX_BODY_BYTES}"


def _body_chunks(total: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A valid chat request of exactly `total` bytes, made as it is sent (never held whole)."""
    yield BODY_HEAD
    left = total - len(BODY_HEAD) - len(BODY_TAIL)
    block = b"x" * chunk
    while left > 0:
        yield block if left >= chunk else block[:left]
        left -= chunk
    yield BODY_TAIL


def _refused_for_size(server: Server, send: Callable[[], httpx.Response], message: str) -> str:
    """`send` gets a 413 with exactly `message` (naming the limit in bytes), or the server closes the connection;
    either way the server answers /health afterwards and no request slot is left taken."""
    try:
        r = send()
    except CLOSED_BY_SERVER:
        outcome = "closed"
    else:
        assert _error_exact(r, 413, message)["code"] == "body_too_large"
        outcome = "413"
    _healthy(server)
    _queue_drained(server)
    return outcome


def test_body_over_limit(server: Server) -> None:
    url = f"{server.url}/v1/chat/completions"
    over = MAX_BODY_BYTES + 2 * 1024 * 1024
    big = b"".join(_body_chunks(over))
    # Content-Length given: refused from the header, before the body is read
    _refused_for_size(server, lambda: _post(server, big), _declared_limit(over))
    # chunked, no Content-Length: counted while read
    _refused_for_size(server, lambda: httpx.post(url, content=iter([big]), timeout=60), STREAM_LIMIT)
    huge = 100 * 1024 * 1024
    _refused_for_size(server, lambda: httpx.post(url, content=_body_chunks(huge), timeout=60), STREAM_LIMIT)
    _refused_for_size(server, lambda: httpx.post(url, content=_body_chunks(huge), timeout=60,
                                                 headers={"content-length": str(huge)}), _declared_limit(huge))
    # one byte over, either way; exactly at the limit is read and answered
    _refused_for_size(server, lambda: httpx.post(url, content=_body_chunks(MAX_BODY_BYTES + 1), timeout=60),
                      STREAM_LIMIT)
    at_limit = b"".join(_body_chunks(MAX_BODY_BYTES))
    _refused_for_size(server, lambda: _post(server, at_limit + b" "), _declared_limit(MAX_BODY_BYTES + 1))
    r = _post(server, at_limit)
    assert r.status_code == 200, r.text
    r = httpx.post(url, content=iter([at_limit]), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    _queue_drained(server)


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
