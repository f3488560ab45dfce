"""The real server for tests: uvicorn on 127.0.0.1 (a free port) in a thread, serving a loaded ToolACE, plus the
small checks every server test uses. Loopback only; nothing here touches the network."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from openai import OpenAI

from toolace.api import ToolACE
from toolace.serve.server import create_app

TIMEOUT = 120.0
QUESTION = "What's the weather like in Paris in celsius?"

TWO_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Current local time in a city.",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
]

LOAD_TOOLS = [{"type": "function", "function": {"name": f"tool_{i}", "description": f"Tool number {i}.",
                                                "parameters": {"type": "object", "properties": {}}}}
              for i in range(8)]

# Agent frameworks must never reach for the network: no tracing exports, no telemetry.
OFFLINE_ENV = {"OPENAI_AGENTS_DISABLE_TRACING": "1", "OPENAI_AGENTS_DONT_LOG_MODEL_DATA": "1",
               "LANGCHAIN_TRACING_V2": "false", "LANGSMITH_TRACING": "false", "OTEL_SDK_DISABLED": "true",
               "OPENAI_API_KEY": "unused"}
os.environ.update(OFFLINE_ENV)


@dataclass
class Server:
    url: str
    ta: ToolACE
    thread: threading.Thread
    uv: uvicorn.Server
    app: FastAPI

    def client(self, api_key: str = "unused") -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, timeout=TIMEOUT, max_retries=0)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


def start_server(ta: ToolACE, **kwargs: Any) -> Server:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(ta, **kwargs)
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    return Server(f"http://127.0.0.1:{port}", ta, thread, uv, app)


def stop_server(server: Server) -> None:
    server.uv.should_exit = True
    server.thread.join(timeout=30)


def healthy(server: Server) -> None:
    r = httpx.get(f"{server.url}/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def queue_drained(server: Server) -> None:
    """No request slot is left taken (a leaked slot or worker would keep `used` above 0 for good)."""
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}/health", timeout=10).json()["queue"]["used"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(f"{server.url}/health", timeout=10).json()["queue"]["used"] == 0


def abandon_stream(server: Server, path: str, body: dict[str, Any], lines: int) -> None:
    """Start a streamed request, read `lines` lines, hang up; then the model must be free again (checked on /slots)
    and no queue place left taken."""
    with httpx.stream("POST", f"{server.url}{path}", json=body, timeout=TIMEOUT) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= lines:
                break
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.url}/slots", timeout=10).json()["busy"]:
        assert time.monotonic() < deadline, "the abandoned stream kept the model"
        time.sleep(0.1)
    queue_drained(server)


def send_raw(server: Server, path: str, body: dict[str, Any]) -> socket.socket:
    """A JSON POST on a raw socket, so a test can hang up without reading the answer."""
    data = json.dumps(body).encode()
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode()
                 + b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return sock


def hang_up_mid_decode(server: Server, path: str, body: dict[str, Any], tokens: int = 20) -> dict[str, int]:
    """Send `body`, hang up once the model has decoded `tokens` more tokens, and wait until the server noted the
    disconnect and the worker exited; the request must have stopped within one decode step. Returns the record."""
    handlers = server.app.state.handlers
    before, start = len(handlers.disconnects), server.ta.decode_progress()
    sock = send_raw(server, path, body)
    deadline = time.monotonic() + 60
    while server.ta.decode_progress() < start + tokens:  # it is decoding
        assert time.monotonic() < deadline, "the request never started decoding"
        time.sleep(0.01)
    sock.close()
    while server.app.state.slots.used or len(handlers.disconnects) == before or \
            "progress_at_exit" not in handlers.disconnects[-1]:
        assert time.monotonic() < deadline, "the abandoned request kept its slot"
        time.sleep(0.01)
    record = handlers.disconnects[-1]
    assert record["progress_at_exit"] - record["progress_at_disconnect"] <= 1  # stopped within one decode step
    return record


def post(server: Server, content: bytes | str, path: str = "/v1/chat/completions", **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=content, timeout=TIMEOUT,
                      headers={"content-type": "application/json", **headers})


def error_exact(r: httpx.Response, status: int, message: str) -> dict[str, Any]:
    """The response is an OpenAI-style error with exactly this status and message; returns the error object."""
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] == message
    assert err["type"] == "invalid_request_error"
    return err


def error_has(r: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    for w in words:
        assert w in err["message"], err["message"]
    return err


def chat(client: OpenAI, tools: list[dict] | None, tool_choice: Any = None, **kw: Any) -> Any:
    extra = {} if tools is None else {"tools": tools}
    if tool_choice is not None:
        extra["tool_choice"] = tool_choice
    kw.setdefault("max_tokens", 32)
    kw.setdefault("temperature", 0)
    kw.setdefault("seed", 0)
    return client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUESTION}],
                                          **extra, **kw)


KEY = "test-key-123"


@contextmanager
def served(gguf: Path, load: dict[str, Any] | None = None, **app: Any) -> Iterator[Server]:
    """The one way tests serve a model: ToolACE.load(gguf, **load) behind create_app(**app) on a free port."""
    s = start_server(ToolACE.load(str(gguf), **{"n_ctx": 2048, **(load or {})}), **app)
    try:
        yield s
    finally:
        stop_server(s)


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, smollm2_gguf: Path) -> Iterator[Server]:
    """The demo model served on a free loopback port, once per test module. A module tunes it with a module-level
    `SERVER = {"load": {ToolACE.load keywords}, **create_app keywords}`."""
    opts = dict(getattr(request.module, "SERVER", {}))
    with served(smollm2_gguf, opts.pop("load", None), **opts) as s:
        yield s


@pytest.fixture(scope="module")
def small_server(smollm2_gguf: Path) -> Iterator[Server]:
    """n_ctx 512, an API key and a queue of 1."""
    with served(smollm2_gguf, {"n_ctx": 512}, api_key=KEY, max_queue=1) as s:
        yield s
