"""Looping text answers end early (docs/budget.md, "Looping answers"; issue #27), with the real demo model. The
issue's Tokyo chat: a time server (tests/helpers/mcp_time_server.py, mcp-server-time's tools) fails the call, and the
model's answer repeats one sentence. `toolace chat --mcp` ends it within a few repeats; the same answer without
`stop_loops` runs on to max_tokens, and the stopped one is its prefix. The server takes `stop_loops: false` per
request."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.helpers.server import start_server, stop_server
from toolace.agent import MCPServers, ServerConfig, run
from toolace.api import ToolACE
from toolace.cli import main
from toolace.grammars.loops import _UNIT_END
from toolace.limits import PROSE_LOOP_REPEATS

SERVER = str(Path(__file__).parent / "helpers" / "mcp_time_server.py")
QUESTION = "What time is it in Tokyo?"
CHOICE = "get_current_time"  # the first turn calls the clock (the model did; auto answers from memory)
MAX_TOKENS = 300
N_CTX = 4096


@pytest.fixture(scope="module")
def ta(smollm2_gguf: Path) -> ToolACE:
    return ToolACE.load(str(smollm2_gguf), n_ctx=N_CTX, kv_cache=False)


def _servers() -> MCPServers:
    return MCPServers([ServerConfig("time", sys.executable, (SERVER,))])


def _repeats(text: str) -> tuple[str, int]:
    """The answer's most repeated line or sentence, and how often it occurs."""
    units = Counter(u.strip() for u in _UNIT_END.split(text) if len(u.strip()) > 20)
    return units.most_common(1)[0] if units else ("", 0)


@pytest.fixture(scope="module")
def unguarded(ta: ToolACE) -> Any:
    with _servers() as servers:
        return run(ta, QUESTION, [servers], tool_choice=CHOICE, max_steps=2, max_tokens=MAX_TOKENS, stop_loops=False)


def test_tokyo_chat_ends_its_looping_answer(ta: ToolACE, unguarded: Any, smollm2_gguf: Path,
                                            tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"time": {"command": sys.executable, "args": [SERVER]}}}))
    result = CliRunner().invoke(main, ["chat", "--mcp", str(config), "--model", str(smollm2_gguf), "--n-ctx",
                                       str(N_CTX), "--tool-choice", CHOICE, "--max-tokens", str(MAX_TOKENS), "--yes"],
                                input=f"{QUESTION}\n\n")
    assert result.exit_code == 0, result.output
    assert "call get_current_time(" in result.output and "error: Invalid timezone" in result.output
    answer = re.split(r"\n\(no complete answer|\nyou", result.output.split("assistant> ", 1)[1])[0].strip()
    sentence, copies = _repeats(answer)
    assert unguarded.steps and unguarded.steps[0].results[0]["is_error"]
    free, free_copies = _repeats(unguarded.answer)
    assert unguarded.finish_reason == "length" and free_copies > PROSE_LOOP_REPEATS  # it loops to max_tokens
    assert sentence == free and 2 <= copies <= PROSE_LOOP_REPEATS  # ended within a few copies of the sentence
    assert unguarded.answer.startswith(answer) and len(answer) < len(unguarded.answer)


def test_server_stops_loops_unless_the_request_says_not_to(ta: ToolACE, unguarded: Any) -> None:
    """The looping turn replayed through the server: stopped by default (truncated, finish_reason "length", fewer
    tokens), left to run with `"stop_loops": false`, the stopped answer a prefix of the other."""
    messages = [m for m in unguarded.messages if m["role"] != "assistant" or m.get("tool_calls")]
    with _servers() as servers:
        tools = [t.spec for t in servers.tools]
    served = start_server(ta)
    try:
        body = {"model": "m", "messages": messages, "tools": tools, "max_tokens": MAX_TOKENS, "temperature": 0}
        on = httpx.post(f"{served.base_url}/chat/completions", json=body, timeout=600).json()
        off = httpx.post(f"{served.base_url}/chat/completions", json={**body, "stop_loops": False}, timeout=600).json()
        bad = httpx.post(f"{served.base_url}/chat/completions", json={**body, "stop_loops": "no"}, timeout=60)
    finally:
        stop_server(served)
    assert on["toolace"]["truncated"] and on["choices"][0]["finish_reason"] == "length"
    assert not off["toolace"]["truncated"] and off["usage"]["completion_tokens"] == MAX_TOKENS
    assert on["usage"]["completion_tokens"] < MAX_TOKENS
    assert off["choices"][0]["message"]["content"].startswith(on["choices"][0]["message"]["content"])
    assert bad.status_code == 400 and "stop_loops must be a boolean" in bad.json()["error"]["message"]
