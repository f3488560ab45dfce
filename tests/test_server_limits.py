"""Hostile and malformed requests against the real server: every refusal is a 400/401/413 with its exact message
in OpenAI's error shape, each beside a near miss that is answered."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from tests.helpers.server import (
    KEY,
    LOAD_TOOLS,
    TIMEOUT,
    TWO_TOOLS,
    Server,
    error_exact,
    error_has,
    healthy,
    post,
    queue_drained,
)
from toolace.limits import (
    MAX_BODY_BYTES,
    MAX_MAX_TOKENS,
    MAX_N_CHOICES,
    MAX_STOP_CHARS,
    MAX_STOP_SEQUENCES,
    MAX_TEMPERATURE,
)

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
TOOL_0 = LOAD_TOOLS[0]
NAMED_0 = {"type": "function", "function": {"name": "tool_0"}}
REFUSED = "is not accepted: templates and grammars are fixed by the server (tools and tool_choice select the grammar)"
ROLES = "system, developer, user, assistant, tool, ipython"


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
    pytest.param({"n": MAX_N_CHOICES + 1}, f"n must be an integer in [1, {MAX_N_CHOICES}], got {MAX_N_CHOICES + 1}",
                 {"n": 2}, id="n>MAX"),
    pytest.param({"n": 0}, f"n must be an integer in [1, {MAX_N_CHOICES}], got 0", {"n": 1}, id="n=0"),
    pytest.param({"frequency_penalty": 2.5}, "frequency_penalty must be a number in [-2.0, 2.0], got 2.5",
                 {"frequency_penalty": 2.0}, id="frequency_penalty>2"),
    pytest.param({"presence_penalty": "1"}, "presence_penalty must be a number in [-2.0, 2.0], got '1'",
                 {"presence_penalty": -2}, id="presence_penalty-str"),
    pytest.param({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
                 "message 0: content part type 'image_url' is not supported (text only)",
                 {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}, id="image-part"),
    pytest.param({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                            {"type": "input_audio", "input_audio": {}}]}]},
                 "message 0: content part type 'input_audio' is not supported (text only)",
                 {"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "x"}]},
                 id="audio-part"),
    pytest.param({"logprobs": True}, "logprobs, best_of and echo are not supported", {"logprobs": False},
                 id="logprobs"),
    pytest.param({"stream": "yes"}, "stream must be a boolean", {"stream": False}, id="stream-type"),
    pytest.param({"tools": [TOOL_0], "parallel_tool_calls": "no"}, "parallel_tool_calls must be a boolean",
                 {"tools": [TOOL_0], "parallel_tool_calls": False}, id="parallel-type"),
    pytest.param({"tools": TWO_TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
                 "tool_choice names unknown tool 'nope'; known: get_weather, get_time",
                 {"tools": TWO_TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"}},
                  "max_tokens": 16},  # a named call needs room for the shortest complete call (docs/budget.md)
                 id="tool_choice-unknown"),
    pytest.param({"tool_choice": "required"}, "tool_choice 'required' needs tools", {"tool_choice": "none"},
                 id="tool_choice-no-tools"),
    pytest.param({"tools": [{"type": "function", "function": {"name": ""}}]},
                 "tool #0 name must be a non-empty string, got ''",
                 {"tools": [{"type": "function", "function": {"name": "a"}}]}, id="tool-name-empty"),
    pytest.param({"grammar": 'root ::= "x"'}, f"field 'grammar' {REFUSED}", {"grammar": None}, id="grammar"),
    pytest.param({"chat_template": "{{ messages }}"}, f"field 'chat_template' {REFUSED}", {"chat_template": None},
                 id="chat_template"),
    pytest.param({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
                 "response_format.json_schema.schema is required",
                 {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                     "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}},
                  "max_tokens": 16}, id="response_format-no-schema"),
    pytest.param({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {},
                                                                             "strictly": True}}},
                 "response_format.json_schema: unknown field 'strictly'",
                 {"response_format": {"type": "json_object"}, "max_tokens": 16}, id="response_format-unknown-key"),
    pytest.param({"response_format": {"type": "yaml"}},
                 "response_format type 'yaml' is not supported (text, json_object, json_schema)",
                 {"response_format": {"type": "text"}}, id="response_format-type"),
    pytest.param({"messages": []}, "messages must be a non-empty list",
                 {"messages": [{"role": "user", "content": "x"}]}, id="messages-empty"),
    pytest.param({"messages": [{"role": "wizard", "content": "x"}]}, f"message 0: role must be one of {ROLES}",
                 {"messages": [{"role": "user", "content": "x"}]}, id="role"),
    pytest.param({"messages": [{"role": "user", "content": 5}]}, "message 0: content must be a string",
                 {"messages": [{"role": "user", "content": "5"}]}, id="content-type"),
]


@pytest.mark.parametrize(("bad", "message", "near_miss"), BAD_REQUESTS)
def test_bad_requests(server: Server, bad: dict, message: str, near_miss: dict) -> None:
    error_exact(post(server, json.dumps({**BASE, **bad})), 400, message)
    ok = post(server, json.dumps({**BASE, **near_miss}))
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
    healthy(server)


def test_nan_temperature_and_non_json(server: Server) -> None:
    error_exact(post(server, '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'), 400,
                 _in_range("temperature", MAX_TEMPERATURE, "nan"))
    for junk in (b"this is not json{", b"\xff\xfe\x00garbage"):
        r = post(server, junk)
        assert r.status_code == 400, r.text
        err = r.json()["error"]  # the rest of the message is json's own diagnosis
        assert err["message"].startswith("request body is not valid JSON: ") and err["code"] == "invalid_json"
    error_exact(post(server, b"[1, 2]"), 400, "request body must be a JSON object")
    error_exact(post(server, b"{}", "/v1/completions"), 400, "prompt must be a non-empty string")
    healthy(server)


# --- bodies over the limit -----------------------------------------------------------------------------------------
# a valid chat request padded by a field the server ignores (OpenAI's end-user id), so any size is still answerable
BODY_HEAD = b'{"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], "user": "'
BODY_TAIL = b'"}'
JSON = {"content-type": "application/json"}
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
        assert error_exact(r, 413, message)["code"] == "body_too_large"
        outcome = "413"
    healthy(server)
    queue_drained(server)
    return outcome


def test_body_over_limit(server: Server) -> None:
    url = f"{server.url}/v1/chat/completions"
    over = MAX_BODY_BYTES + 2 * 1024 * 1024
    big = b"".join(_body_chunks(over))
    # Content-Length given: refused from the header, before the body is read
    _refused_for_size(server, lambda: post(server, big), _declared_limit(over))
    # chunked, no Content-Length: counted while read
    _refused_for_size(server, lambda: httpx.post(url, content=iter([big]), timeout=60, headers=JSON), STREAM_LIMIT)
    huge = 100 * 1024 * 1024
    _refused_for_size(server, lambda: httpx.post(url, content=_body_chunks(huge), timeout=60, headers=JSON),
                      STREAM_LIMIT)
    _refused_for_size(server, lambda: httpx.post(url, content=_body_chunks(huge), timeout=60,
                                                 headers={**JSON, "content-length": str(huge)}), _declared_limit(huge))
    # one byte over, either way; exactly at the limit is read and answered
    _refused_for_size(server, lambda: httpx.post(url, content=_body_chunks(MAX_BODY_BYTES + 1), timeout=60,
                                                 headers=JSON),
                      STREAM_LIMIT)
    at_limit = b"".join(_body_chunks(MAX_BODY_BYTES))
    _refused_for_size(server, lambda: post(server, at_limit + b" "), _declared_limit(MAX_BODY_BYTES + 1))
    r = post(server, at_limit)
    assert r.status_code == 200, r.text
    r = httpx.post(url, content=iter([at_limit]), timeout=TIMEOUT, headers=JSON)
    assert r.status_code == 200, r.text
    queue_drained(server)


def test_prompt_over_context_and_api_key(small_server: Server) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    long = {**BASE, "messages": [{"role": "user", "content": "word " * 2000}]}
    r = post(small_server, json.dumps(long), **auth)
    error_has(r, 400, "512")
    assert r.json()["error"]["code"] == "context_length_exceeded"
    # a number for the prompt's length as well as the context's
    assert any(w.isdigit() and int(w) > 512 for w in r.json()["error"]["message"].split())
    r = post(small_server, json.dumps({"prompt": "word " * 2000, "max_tokens": 4}), "/v1/completions", **auth)
    error_has(r, 400, "512")
    stream = post(small_server, json.dumps({**long, "stream": True}), **auth)
    error_has(stream, 400, "512")
    error_has(post(small_server, json.dumps(BASE)), 401, "API key")
    error_has(post(small_server, json.dumps(BASE), authorization="Bearer wrong"), 401, "API key")
    with pytest.raises(openai.AuthenticationError):
        small_server.client("wrong").models.list()
    r = small_server.client(KEY).chat.completions.create(**BASE)
    assert r.choices[0].message.content is not None
    healthy(small_server)


