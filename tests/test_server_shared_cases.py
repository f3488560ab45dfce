"""The OpenAI-client cases tests_vllm/ runs against vLLM with the export, here against `toolace serve` (SmolLM2):
both servers must agree on what the cases check (valid calls for every tool_choice, dotted and spaced names,
negative numbers and nested literals, stream deltas). toolace serve has no logprobs, so the raw-text check is
replaced by the schema check. Also ToolACE.connect, the remote client, against toolace serve."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from openai import OpenAI

from tests.helpers import openai_cases as cases
from toolace.api import ToolACE
from toolace.serve.server import create_app


@pytest.fixture(scope="module")
def url(smollm2_gguf: Path) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(create_app(ToolACE.load(str(smollm2_gguf), n_ctx=2048)), log_level="warning",
                                       lifespan="off"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    uv.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(url: str) -> cases.Target:
    return cases.Target(OpenAI(base_url=url, api_key="unused", timeout=120, max_retries=0), "smollm2",
                        logprobs=False)


def test_every_tool_choice_mode_gives_valid_calls(server: cases.Target) -> None:
    assert cases.case_tool_choice_modes(server) == {
        "auto": [], "required": [], "none": [], f"named {cases.CALENDAR}": [], f"named {cases.WEATHER}": []}


def test_negative_numbers_nested_literals_and_tuples_round_trip(server: cases.Target) -> None:
    assert cases.case_round_trip(server) == []


def test_stream_deltas_concatenate_to_non_stream_arguments(server: cases.Target) -> None:
    assert cases.case_stream_matches(server) == {
        f"named {cases.CALENDAR}": [], "required": [], f"named {cases.WEATHER}": []}


def test_connect_gives_the_local_surface(url: str) -> None:
    remote = ToolACE.connect(url)
    result = remote.call(cases.QUESTION, cases.TOOLS, tool_choice=cases.CALENDAR, parallel_tool_calls=False,
                         max_tokens=128)
    assert result.valid and [c["name"] for c in result.calls] == [cases.CALENDAR]
    assert result.calls[0]["arguments"]["offset_days"] < 0 and result.raw.startswith("[calendar.create_event(")
    events = list(remote.stream([{"role": "user", "content": cases.QUESTION}], cases.TOOLS, cases.WEATHER,
                                parallel_tool_calls=False, max_tokens=64))
    assert [e.kind for e in events] == ["call_name", "argument", "call_end", "done"]
    assert events[1].key == "city" and events[-1].result.calls[0]["arguments"]["city"] == events[1].value
