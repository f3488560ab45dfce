"""The browser boundary and the server's time bounds (docs/security.md), on the real server with the demo model:
foreign Host names (DNS rebinding) and foreign Origins (any web page) refused before anything runs, CORS only when
asked for, JSON-only bodies, the API key kept out of `ps`, slow bodies and long requests cut off with their queue
place freed, abandoned /v1/completions cancelled, and tool-set compilation off the event loop. Tables pair each
refusal with a near miss that must still pass."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.helpers.server import (
    QUESTION,
    Server,
    error_has,
    hang_up_mid_decode,
    healthy,
    queue_drained,
    start_server,
    stop_server,
)
from toolace.cli import main
from toolace.serve.boundary import API_KEY_ENV, resolve_api_key

CHAT = {"model": "m", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 2, "temperature": 0}
ALLOWED_ORIGIN = "http://app.test:3000"
JSON = "application/json"


SERVER = {"load": {"n_ctx": 1024, "kv_cache": False}, "allowed_hosts": ["myhost.lan"],
          "cors_origins": [ALLOWED_ORIGIN], "body_timeout": 1.0, "max_queue": 4}


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _send(server: Server, method: str, path: str, body: Any = None, **headers: str) -> httpx.Response:
    content = None if body is None else (body if isinstance(body, (bytes, str)) else json.dumps(body))
    return httpx.request(method, f"{server.url}{path}", content=content, headers=headers, timeout=120)


HOSTS = [  # (refused Host, near miss that passes; {port} is the server's)
    ("evil.test:{port}", "localhost:{port}"),
    ("evil.test", "127.0.0.1:{port}"),
    ("127.0.0.1.evil.test:{port}", "[::1]:{port}"),
    ("localhost.evil.test", "app.localhost:{port}"),
    ("myhost.lan.evil.test", "myhost.lan:{port}"),  # --allowed-host
    ("notmyhost.lan", "192.168.1.20:{port}"),  # an IP literal: no DNS name to rebind
]


@pytest.mark.parametrize(("bad", "good"), HOSTS)
def test_foreign_host_refused(server: Server, bad: str, good: str) -> None:
    before = server.ta.decode_progress()
    for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/chat/completions", CHAT)):
        r = _send(server, method, path, body, host=bad.format(port=_port(server)), **{"content-type": JSON})
        assert error_has(r, 403, "Host", "not allowed")["code"] == "host_not_allowed"
    assert server.ta.decode_progress() == before  # nothing ran
    r = _send(server, "GET", "/v1/models", host=good.format(port=_port(server)))
    assert r.status_code == 200, r.text


ORIGINS = [  # (refused Origin, its content type, near miss that passes)
    ("http://evil.test", "text/plain", "own"),
    ("http://evil.test", JSON, "own"),
    ("null", JSON, ALLOWED_ORIGIN),  # a sandboxed frame or file:// page
    ("http://app.test:3001", JSON, ALLOWED_ORIGIN),  # another port is another origin
    ("https://app.test:3000", JSON, ALLOWED_ORIGIN),  # ... and so is another scheme
    ("http://localhost:1", JSON, "own"),  # another local app's page is a foreign site too
]


@pytest.mark.parametrize(("bad", "content_type", "good"), ORIGINS)
def test_foreign_origin_refused_before_anything_runs(server: Server, bad: str, content_type: str, good: str) -> None:
    before = server.ta.decode_progress()
    refused = httpx.get(f"{server.url}/health").json()["refused"]["origin"]
    r = _send(server, "POST", "/v1/chat/completions", CHAT, origin=bad, **{"content-type": content_type})
    assert error_has(r, 403, "Origin", "not allowed")["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in r.headers
    assert server.ta.decode_progress() == before  # refused before any token
    assert httpx.get(f"{server.url}/health").json()["refused"]["origin"] == refused + 1
    origin = server.url if good == "own" else good
    ok = _send(server, "POST", "/v1/chat/completions", CHAT, origin=origin, **{"content-type": JSON})
    assert ok.status_code == 200, ok.text
    assert ok.headers.get("access-control-allow-origin") == (None if good == "own" else good)


def test_cors_preflight_only_for_allowed_origin(server: Server) -> None:
    ask = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
    r = _send(server, "OPTIONS", "/v1/chat/completions", origin=ALLOWED_ORIGIN, **ask)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "content-type" in r.headers["access-control-allow-headers"]
    r = _send(server, "OPTIONS", "/v1/chat/completions", origin="http://evil.test", **ask)
    assert error_has(r, 403, "Origin")["code"] == "origin_not_allowed"


CONTENT_TYPES = [  # (refused Content-Type or None for none, near miss)
    ("text/plain", "application/json; charset=utf-8"),
    (None, "application/json"),
    ("application/x-www-form-urlencoded", "Application/JSON"),
    ("multipart/form-data; boundary=x", "application/merge-patch+json"),
    ("application/jsonx", "application/json;charset=UTF-8"),
]


@pytest.mark.parametrize(("bad", "good"), CONTENT_TYPES)
def test_json_endpoints_refuse_other_content_types(server: Server, bad: str | None, good: str) -> None:
    headers = {} if bad is None else {"content-type": bad}
    r = _send(server, "POST", "/v1/chat/completions", json.dumps(CHAT).encode(), **headers)
    assert error_has(r, 415, "Content-Type must be application/json")["code"] == "unsupported_media_type"
    ok = _send(server, "POST", "/v1/chat/completions", CHAT, **{"content-type": good})
    assert ok.status_code == 200, ok.text


def test_api_key_from_file_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n# a comment line is not part of the key\n")
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert resolve_api_key(None, str(key_file)) == "s3cret"
    assert resolve_api_key("flag", None) == "flag"
    assert resolve_api_key(None, None) == "from-env"
    monkeypatch.delenv(API_KEY_ENV)
    assert resolve_api_key(None, None) is None
    empty = tmp_path / "empty"
    empty.write_text("\n  \n")
    runner = CliRunner()
    for args, message in ((["--api-key-file", str(empty)], f"Error: the API key file {empty} is empty\n"),
                          (["--api-key", "k", "--api-key-file", str(key_file)],
                           "Error: give --api-key or --api-key-file, not both\n"),
                          (["--allowed-host", "http://x"], "Error: allowed host 'http://x': give a bare host name "
                           "such as 'myhost.lan' (no scheme or port)\n"),
                          (["--cors-origin", "evil.test"], "Error: CORS origin 'evil.test': give scheme://host[:port]"
                           " (e.g. http://localhost:3000) or '*'\n"),
                          (["--host", "0.0.0.0"], "Error: refusing to bind 0.0.0.0 without an API key: pass api_key "
                           "(or bind 127.0.0.1)\n")):
        result = runner.invoke(main, ["serve", "--model", "/nonexistent.gguf", *args])
        assert (result.exit_code, result.output) == (2, message), result.output


def _stall(server: Server) -> socket.socket:
    """A request that promises 1,000 body bytes, sends one, then stalls."""
    sock = socket.create_connection(("127.0.0.1", _port(server)))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{")
    return sock


def _answer(sock: socket.socket) -> tuple[int, Any]:
    """Read one HTTP answer off a raw socket: status and JSON body."""
    sock.settimeout(60)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(4096)
    return int(head.split()[1]), json.loads(body)


def test_slow_body_times_out_and_frees_its_place(server: Server) -> None:
    socks = [_stall(server) for _ in range(4)]  # the whole queue (max_queue 4)
    try:
        for sock in socks:
            status, body = _answer(sock)
            assert status == 408, body
            assert body["error"]["code"] == "body_timeout"
    finally:
        for sock in socks:
            sock.close()
    queue_drained(server)
    assert _send(server, "POST", "/v1/chat/completions", CHAT, **{"content-type": JSON}).status_code == 200


# A generation that outlasts the deadline however fast the machine is: no end of turn (_no_eos), and a looping
# story is not ended early (stop_loops off: on a quiet machine the loop stop ended it before the 3 s deadline).
LONG = {"model": "m", "messages": [{"role": "user", "content": "Tell me a very long story."}], "max_tokens": 3000,
        "temperature": 0, "stop_loops": False}


def _no_eos(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "logit_bias": {str(t): -100 for t in sorted(server.ta.model.eog_ids)}}


def _drained(server: Server) -> None:
    """The stopped generation gave its slot back. It stops at its next token; the prompt's one decode cannot be
    interrupted, and on a loaded machine that alone can take seconds, so this waits longer than queue_drained."""
    deadline = time.monotonic() + 120
    while server.app.state.slots.used:
        assert time.monotonic() < deadline, "the timed-out request kept its slot"
        time.sleep(0.1)


@pytest.fixture
def deadline_server(server: Server) -> Iterator[Server]:
    """The same loaded model behind a second app whose requests have 3 seconds."""
    s = start_server(server.ta, request_timeout=3.0)
    yield s
    stop_server(s)


def test_request_deadline_gives_504_and_frees_the_slot(deadline_server: Server) -> None:
    server = deadline_server
    body = _no_eos(server, LONG)
    r = _send(server, "POST", "/v1/chat/completions", body, **{"content-type": JSON})
    err = error_has(r, 504, "deadline of 3 s")
    assert (err["code"], err["type"]) == ("request_timeout", "server_error")
    _drained(server)
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True},
                      timeout=120) as s:
        if s.status_code == 504:  # the deadline passed before the first token: a plain error answer
            s.read()
            lines = [s.json()]
        else:  # after it: the stream ends with an error event
            lines = [json.loads(x[6:]) for x in s.iter_lines() if x.startswith("data: {")]
    assert lines[-1]["error"]["code"] == "request_timeout"
    _drained(server)
    completion = _no_eos(server, {"prompt": "Once upon a time", "max_tokens": 3000})
    r = _send(server, "POST", "/v1/completions", completion, **{"content-type": JSON})
    assert error_has(r, 504, "deadline")["code"] == "request_timeout"
    _drained(server)
    healthy(server)


def test_abandoned_completion_is_cancelled(server: Server) -> None:
    body = _no_eos(server, {"prompt": "Once upon a time", "max_tokens": 2000})
    record = hang_up_mid_decode(server, "/v1/completions", body, tokens=10)
    assert record["progress_at_exit"] < record["progress_at_disconnect"] + 2000


def _huge_tools(n_tools: int, n_values: int) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {
        "name": f"tool_{i}", "description": "d",
        "parameters": {"type": "object", "required": ["v"],
                       "properties": {"v": {"type": "string", "enum": [f"v{i}_{j}" for j in range(n_values)]}}}}}
        for i in range(n_tools)]


@pytest.mark.slow  # compiles a large tool list while probing the server (~20 s): make test-slow
def test_compilation_runs_off_the_event_loop(server: Server) -> None:
    """While a huge tool set compiles, /health answers and says so (before, the loop was blocked until the compile
    ended, so no /health could ever report one in progress)."""
    body = json.dumps({**CHAT, "tools": _huge_tools(512, 400), "tool_choice": "required"})
    answer: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: answer.append(_send(server, "POST", "/v1/chat/completions", body,
                                                                 **{"content-type": JSON})))
    sender.start()
    seen = []
    while sender.is_alive():
        seen.append(httpx.get(f"{server.url}/health", timeout=120).json()["compiling"])
    sender.join()
    assert max(seen) == 1, seen
    assert answer[0].status_code in (200, 400), answer[0].text  # compiled, then answered (or over the context)
    queue_drained(server)
