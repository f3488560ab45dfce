"""The OpenAI-client cases tests_vllm/ runs against vLLM with the export, here against `toolace serve` (SmolLM2):
both servers must agree on what the cases check (valid calls for every tool_choice, dotted and spaced names,
negative numbers and nested literals, stream deltas). toolace serve has no logprobs, so the raw-text check is
replaced by the schema check. Also ToolACE.connect, the remote client, against toolace serve."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.helpers import openai_cases as cases
from tests.helpers.server import served
from toolace.api import ToolACE


@pytest.fixture(scope="module")
def url(smollm2_gguf: Path) -> Iterator[str]:
    with served(smollm2_gguf) as s:  # `server` here is the cases' target, so the factory is used directly
        yield s.base_url


@pytest.fixture(scope="module")
def server(url: str) -> cases.Target:
    # 600 s: the guard cases generate up to 400 tokens, minutes on a loaded 2-core machine
    return cases.Target(OpenAI(base_url=url, api_key="unused", timeout=600, max_retries=0), "smollm2",
                        logprobs=False)


class TestToolaceServe(cases.SharedCases):
    """The shared cases (tests/helpers/openai_cases.py) against this target."""


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
