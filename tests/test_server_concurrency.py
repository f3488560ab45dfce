"""Many clients at once against the real server: requests never mix, a full queue answers 429, and a client that
leaves mid-stream frees the model for the next one."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.helpers.server import (
    KEY,
    LOAD_TOOLS,
    TIMEOUT,
    Server,
    chat,
    healthy,
    queue_drained,
)
from toolace.limits import RETRY_AFTER_SECONDS


@pytest.mark.slow  # many concurrent clients on one server (~30 s): make test-slow
def test_concurrent_clients_do_not_mix(server: Server) -> None:
    def client_run(i: int) -> list[str]:
        client = server.client()
        outcomes = []
        for _ in range(5):
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

    with ThreadPoolExecutor(8) as pool:
        results = [o for outs in pool.map(client_run, range(8)) for o in outs]
    assert len(results) == 40 and results.count("ok") > 0
    healthy(server)


def test_queue_full_gives_429(small_server: Server) -> None:
    client = small_server.client(KEY)

    def one(_: int) -> str:
        try:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Count to fifty."}],
                                           max_tokens=24, temperature=0)
            return "ok"
        except openai.RateLimitError as e:
            assert "max_queue 1" in str(e)
            assert e.response.headers.get("retry-after") == str(RETRY_AFTER_SECONDS)
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
    r = chat(server.client(), weather_tools, "required", max_tokens=32)  # the lock was released
    assert r.choices[0].message.tool_calls
    queue_drained(server)

