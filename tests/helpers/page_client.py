"""A script driving the page's HTTP surface (docs/page.md) the way the page does: the token read from the HTML at
/, runs as SSE events, approvals posted back. Loopback only."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

TIMEOUT = 120.0


def page_token(url: str) -> str:
    html = httpx.get(f"{url}/", timeout=TIMEOUT).text
    match = re.search(r'<meta name="toolace-token" content="([^"]+)">', html)
    assert match, html[:500]
    return match.group(1)


def headers(token: str, **more: str) -> dict[str, str]:
    return {"content-type": "application/json", "x-toolace-token": token, **more}


def events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, data) from an SSE response, as the page parses them."""
    kind, data = "message", ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line and data:
            yield kind, json.loads(data)
            kind, data = "message", ""


@contextmanager
def started(url: str, token: str, body: dict[str, Any], **more: str) -> Iterator[httpx.Response]:
    with httpx.stream("POST", f"{url}/ui/api/runs", json=body, headers=headers(token, **more),
                      timeout=TIMEOUT) as r:
        yield r


def decide(url: str, token: str, run_id: str, call_id: str, decision: str, **extra: Any) -> httpx.Response:
    return httpx.post(f"{url}/ui/api/runs/{run_id}/calls/{call_id}", json={"decision": decision, **extra},
                      headers=headers(token), timeout=TIMEOUT)


def drive(url: str, token: str, body: dict[str, Any], decision: str = "approve") -> list[tuple[str, dict[str, Any]]]:
    """A whole run: every approval answered with `decision`; all events, in order."""
    seen: list[tuple[str, dict[str, Any]]] = []
    with started(url, token, body) as r:
        assert r.status_code == 200, r.read()
        run_id = ""
        for kind, data in events(r):
            seen.append((kind, data))
            if kind == "run":
                run_id = data["id"]
            elif kind == "approval" and not data.get("auto"):
                answer = decide(url, token, run_id, data["id"], decision)
                assert answer.status_code == 200, answer.text
    return seen


def wait_until_free(url: str, app: Any) -> None:
    """The run is over and gave everything back: no run listed, no queue place taken, the model not busy."""
    handlers = app.state.handlers
    deadline = time.monotonic() + 120
    while handlers.runs or handlers.slots.used or httpx.get(f"{url}/slots", timeout=TIMEOUT).json()["busy"]:
        assert time.monotonic() < deadline, (handlers.runs, handlers.slots.used)
        time.sleep(0.05)
