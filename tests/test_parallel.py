"""Parallel slots (runtime/batch.py, docs/parallel.md) on the demo model: concurrent requests share decode steps,
never mix, join and leave between steps, and share tool prompts across slots. Asserted from the batcher's own
counters and slot state, never from timing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.server import Server, start_server, stop_server
from toolace.api import ToolACE
from toolace.grammars.parser import Call
from toolace.grammars.toolset import build_toolset

TIMEOUT = 300


def _tool(name: str, param: str, kind: str = "string", **extra: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": f"{name.replace('_', ' ')}.",
                                             "parameters": {"type": "object", "properties": {param: {"type": kind,
                                                                                                     **extra}},
                                                            "required": [param]}}}


# Eight requests, each with its own tool set and tool_choice mode: a call from one must never carry another's names.
CASES: list[tuple[str, list[dict[str, Any]], Any]] = [
    ("What's the weather in Paris?", [_tool("get_weather", "city")], "required"),
    ("What time is it in Tokyo?", [_tool("get_time", "city"), _tool("get_date", "city")], "required"),
    ("Convert 12 dollars to euros.", [_tool("convert_currency", "amount", "number")], "required"),
    ("Book a table for 4.", [_tool("book_table", "people", "integer")], {"type": "function",
                                                                        "function": {"name": "book_table"}}),
    ("Play some jazz.", [_tool("play_music", "genre", enum=["jazz", "rock", "pop"])], "required"),
    ("Find flights to Rome.", [_tool("search_flights", "destination"), _tool("cancel_flight", "code")], "auto"),
    ("Turn on the kitchen lights.", [_tool("lights.on", "room")], "required"),
    ("Send an email to Bob.", [_tool("Send Mail", "to")], {"type": "function", "function": {"name": "Send Mail"}}),
]


@pytest.fixture(scope="module")
def pta(smollm2_gguf: Path) -> Iterator[ToolACE]:
    ta = ToolACE.load(str(smollm2_gguf), n_ctx=1024, parallel=4, kv_cache=False)
    yield ta
    assert ta.batcher is not None
    ta.batcher.close()


def _names(tools: list[dict[str, Any]]) -> set[str]:
    return {t["function"]["name"] for t in tools}


def test_concurrent_calls_share_steps_and_never_mix(pta: ToolACE) -> None:
    assert pta.batcher is not None
    steps_before = pta.batcher.steps

    def one(case: tuple[str, list[dict[str, Any]], Any]) -> Any:
        question, tools, choice = case
        return pta.call(question, tools, choice, max_tokens=48)

    with ThreadPoolExecutor(len(CASES)) as pool:
        results = list(pool.map(one, CASES))
    for (question, tools, choice), r in zip(CASES, results, strict=True):
        assert r.valid, (question, r.raw, r.errors)
        assert {c["name"] for c in r.calls} <= _names(tools), (question, r.raw)
        if choice != "auto":
            assert r.calls, (question, r.raw)
    state = pta.slot_state()
    assert state["max_sequences_per_step"] >= 2  # sequences really shared llama_decode calls
    assert state["steps"] > steps_before
    assert not any(s["busy"] for s in state["slots"])  # every slot freed


def test_batched_call_equals_alone(pta: ToolACE, smollm2_gguf: Path) -> None:
    """The same request through a slot (alone) and through the one-context path: the same greedy calls."""
    single = ToolACE.load(str(smollm2_gguf), n_ctx=1024, kv_cache=False)
    question, tools, choice = CASES[0]
    a = single.call(question, tools, choice, max_tokens=48)
    b = pta.call(question, tools, choice, max_tokens=48)
    assert a.calls == b.calls and a.raw == b.raw


def test_tool_prompt_is_copied_from_another_slot(pta: ToolACE) -> None:
    """A slot that never saw a tool set starts from another slot's copy of its prompt (llama_memory_seq_cp)."""
    assert pta.batcher is not None
    tools = [_tool(f"tool_{i}", "x") for i in range(6)]  # a tool list long enough for several prompt chunks
    ask = "Use tool 4 with x = 2."
    prompt = pta.prompt_tokens([{"role": "user", "content": ask}], build_toolset(tools, "required").tools)
    pta.call("Use tool 3 with x = 1.", tools, "required", max_tokens=24)
    taken = [pta.batcher.slot() for _ in range(pta.batcher.n_slots)]
    held = [cm.__enter__() for cm in taken]  # every slot; then all but the one holding the tool prompt go back
    keep = next(i for i, m in enumerate(held) if m.tokens[:128] == prompt[:128])
    for i, cm in enumerate(taken):
        if i != keep:
            cm.__exit__(None, None, None)
    try:
        second = pta.call(ask, tools, "required", max_tokens=24)
    finally:
        taken[keep].__exit__(None, None, None)
    assert len(prompt) >= 192
    assert second.stats.reused_tokens >= 128  # whole chunks of the shared tool prompt came from the held slot
    assert second.valid and second.calls


def test_late_request_joins_running_batch(pta: ToolACE) -> None:
    """A request admitted while another decodes shares its steps: its first decode comes after the other's start
    and some of its steps carried both sequences (read from the batcher's slot state)."""
    eos = {t: -100.0 for t in pta.model.eog_ids}
    done = threading.Event()
    long = threading.Thread(target=lambda: (pta.complete("Once upon a time", max_tokens=160, logit_bias=eos),
                                            done.set()))
    long.start()
    deadline = time.monotonic() + TIMEOUT
    while not any(s["busy"] and s["steps"] > 5 for s in pta.slot_state()["slots"]):
        assert time.monotonic() < deadline and not done.is_set(), "the long request never started decoding"
        time.sleep(0.01)
    before = pta.slot_state()["slots"]
    running = next(s for s in before if s["busy"])
    late = pta.call(*CASES[2][:2], CASES[2][2], max_tokens=32)
    after = pta.slot_state()["slots"]
    long.join()
    assert late.valid and late.calls
    assert done.is_set()
    [mine] = [a for a, b in zip(after, before, strict=True) if a["id"] != running["id"] and a != b]
    assert mine["joined_at_step"] > running["joined_at_step"] + 5  # it joined while the other was decoding
    assert mine["shared_steps"] > 0  # and rode along in the same llama_decode calls


# --- through the real server --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pserver(pta: ToolACE) -> Iterator[Server]:
    s = start_server(pta)
    yield s
    stop_server(s)


def _stream(server: Server, question: str, tools: list[dict[str, Any]], choice: Any,
            stop_after: int | None = None) -> dict[int, dict[str, str]]:
    """Tool-call deltas of one streamed request, joined per index; with `stop_after`, hang up after that many."""
    body = {"model": "m", "messages": [{"role": "user", "content": question}], "tools": tools,
            "tool_choice": choice, "max_tokens": 48, "temperature": 0, "stream": True}
    calls: dict[int, dict[str, str]] = {}
    seen = 0
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=TIMEOUT) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            seen += 1
            if stop_after is not None and seen >= stop_after:
                return calls  # leaving the block closes the connection mid-stream
            for choice_ in json.loads(line[6:])["choices"]:
                for tc in choice_["delta"].get("tool_calls") or []:
                    c = calls.setdefault(tc["index"], {"name": "", "arguments": ""})
                    c["name"] += tc["function"].get("name") or ""
                    c["arguments"] += tc["function"].get("arguments") or ""
    return calls


def test_eight_concurrent_streams_do_not_mix(pserver: Server) -> None:
    with ThreadPoolExecutor(len(CASES)) as pool:
        outs = list(pool.map(lambda c: _stream(pserver, *c), CASES))
    for (question, tools, choice), calls in zip(CASES, outs, strict=True):
        toolset = build_toolset(tools, choice)
        for c in calls.values():
            assert c["name"] in _names(tools), (question, calls)
            args = json.loads(c["arguments"])
            assert not toolset.errors([Call(c["name"], args)]), (question, calls)
        if choice != "auto":
            assert calls, question


def test_disconnect_mid_stream_leaves_others_untouched(pserver: Server) -> None:
    with ThreadPoolExecutor(3) as pool:
        quitter = pool.submit(_stream, pserver, "Tell me a long story about dragons.", [_tool("x", "y")], "none",
                              3)
        others = [pool.submit(_stream, pserver, *CASES[i]) for i in (0, 6)]
        quitter.result()
        outs = [f.result() for f in others]
    for i, calls in zip((0, 6), outs, strict=True):
        assert [c["name"] for c in calls.values()] == [CASES[i][1][0]["function"]["name"]], calls
        json.loads(calls[0]["arguments"])
    deadline = time.monotonic() + 30
    while any(s["busy"] for s in httpx.get(f"{pserver.url}/slots", timeout=10).json()["slots"]):
        assert time.monotonic() < deadline, "a slot stayed busy after its client left"
        time.sleep(0.05)


@pytest.mark.slow  # a thousand requests through the slots (~80 s): make test-slow
def test_thousand_ids_distinct(pserver: Server) -> None:
    """The same call a thousand times over conversations decoded four at a time: every id differs (ids are random,
    not a hash of the output). "]" is banned so each answer holds many calls (the budget guard closes the list)."""
    model = pserver.ta.model
    closers = {str(t): -100 for t in range(model.n_vocab) if b"]" in model.token_text(t, special=False)}
    go = [{"type": "function", "function": {"name": "go", "parameters": {"type": "object", "properties": {}}}}]

    def conversation(k: int) -> list[str]:
        body = {"model": "m", "messages": [{"role": "user", "content": f"Go {k}."}], "tools": go,
                "tool_choice": "required", "max_tokens": 400, "temperature": 0, "logit_bias": closers}
        r = httpx.post(f"{pserver.url}/v1/chat/completions", json=body, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        calls = r.json()["choices"][0]["message"]["tool_calls"]
        assert calls and {c["function"]["name"] for c in calls} == {"go"}
        return [c["id"] for c in calls]

    ids: list[str] = []
    with ThreadPoolExecutor(4) as pool:
        while len(ids) < 1000:  # rounds of four conversations decoded together
            ids += [i for batch in pool.map(conversation, range(len(ids), len(ids) + 4)) for i in batch]
    assert len(set(ids)) == len(ids) >= 1000
    assert all(i.startswith("call_") for i in ids)


def test_greedy_reproducible_on_slots(pserver: Server) -> None:
    """The reproducibility check of the one-context server, on slots: the same greedy request after five different
    ones (other prompts held in other slots, other KV cells) gives byte-identical output."""
    from tests.test_server_fidelity import test_greedy_reproducible_whatever_the_cache_held as check

    check(pserver)


def test_slots_endpoint_reports_state(pserver: Server) -> None:
    state = httpx.get(f"{pserver.url}/slots", timeout=10).json()
    assert state["parallel"] == 4 and len(state["slots"]) == 4
    assert state["n_ctx_per_slot"] == 1024
    assert {"id", "busy", "n_tokens", "steps", "shared_steps", "joined_at_step"} <= set(state["slots"][0])


def test_parallel_bounds() -> None:
    from toolace.errors import InputError
    from toolace.runtime.batch import check_parallel

    for bad in (0, -1, 65, True, 2.0):
        with pytest.raises(InputError, match="parallel must be an integer"):
            check_parallel(bad)  # type: ignore[arg-type]
    for good in (1, 4, 64):
        assert check_parallel(good) == good


def test_batching_ceiling_is_measured(pta: ToolACE) -> None:
    """`toolace bench serve`'s ceiling: one decode of N tokens against N decodes of one, on its own context."""
    from toolace.eval.bench_batching import batching_ceiling

    ceiling = batching_ceiling(pta, levels=(1, 2, 4), steps=2)
    assert set(ceiling) == {"1", "2", "4"} and ceiling["1"] == 1.0
    assert all(x > 0 for x in ceiling.values())


def test_serve_refuses_bad_parallel_before_loading(smollm2_gguf: Path) -> None:
    from click.testing import CliRunner

    from toolace.cli import main

    res = CliRunner().invoke(main, ["serve", "--model", str(smollm2_gguf), "--parallel", "0"])
    assert res.exit_code == 2, res.output
    assert res.output == "Error: parallel must be an integer in [1, 64], got 0\n"
