"""The page's server side (docs/page.md) on the real server with the demo model, a real stdio MCP server and
Python functions: the page and its files load nothing from outside; only the page may drive a run (token, own
origin, allowed Host: anything else is a 403 and runs nothing); approve runs the call and the result goes back to
the model, deny tells the model the user declined; tool faults are error results and the run goes on; Stop and a
client that hangs up end the run and free the slot. The browser itself is driven in tests_browser/."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.helpers.page_client import decide, drive, events, headers, page_token, started, wait_until_free
from tests.helpers.procs import with_marker
from tests.helpers.server import Server, healthy, served, start_server, stop_server
from tests.helpers.weather import CALLED, get_weather
from toolace.agent import MCPServers, ServerConfig
from toolace.agent.functions import function_tool
from toolace.agent.loop import DECLINED
from toolace.cli import main

pytestmark = pytest.mark.slow  # whole agent loops on the demo model (~2.5 min): `make test-slow`

MCP_SERVER = str(Path(__file__).parent / "helpers" / "mcp_server.py")
ALLOWED_ORIGIN = "http://app.test:3000"
QUESTION = [{"role": "user", "content": "What's the weather like in Paris?"}]


def sleepy(city: str) -> str:
    """Look up a city very slowly."""
    time.sleep(30)
    return "too late"


def flood(city: str) -> str:
    """Return ten megabytes of text."""
    return "x" * 10_000_000


def ask(tool: str, **more: Any) -> dict[str, Any]:
    return {"messages": QUESTION, "tool_choice": tool, "max_steps": 2, "options": {"max_tokens": 48}, **more}


@pytest.fixture(scope="module")
def page(smollm2_gguf: Path) -> Iterator[tuple[Server, str]]:
    with MCPServers([ServerConfig("weather", sys.executable, (MCP_SERVER,))]) as servers:
        groups = [("MCP server weather", servers.tools), ("Python file tools.py", [function_tool(get_weather)])]
        with served(smollm2_gguf, {"n_ctx": 4096}, tool_groups=groups, cors_origins=[ALLOWED_ORIGIN],
                    call_timeout=1.0) as s:
            yield s, page_token(s.url)


EXTERNAL = re.compile(r"""(https?:)?//[a-z0-9]|@import|(?<![a-z])url\(\s*['"]?(?!data:)""", re.I)


def test_page_and_its_files_reference_nothing_outside(page: tuple[Server, str]) -> None:
    server, token = page
    html = httpx.get(f"{server.url}/")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in html.headers["content-security-policy"]
    assert html.headers["x-frame-options"] == "DENY"
    assert token in html.text and "{{TOKEN}}" not in html.text
    for path, kind in (("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")):
        r = httpx.get(f"{server.url}{path}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert not EXTERNAL.search(r.text), EXTERNAL.search(r.text)
    assert not EXTERNAL.search(html.text), EXTERNAL.search(html.text)
    assert set(re.findall(r'(?:src|href)="([^"]+)"', html.text)) == {"/ui/app.css", "/ui/app.js", "data:,"}
    missing = httpx.get(f"{server.url}/ui/other.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_info_lists_the_tools_by_source_and_the_model(page: tuple[Server, str]) -> None:
    server, token = page
    info = httpx.get(f"{server.url}/ui/api/info", headers=headers(token)).json()
    assert info["model"] and info["quant"] and info["auto_approve"] is False
    sources = {s["source"]: [t["name"] for t in s["tools"]] for s in info["sources"]}
    assert "get-weather" in sources["MCP server weather"] and sources["Python file tools.py"] == ["get_weather"]


# (headers beyond the JSON content type, the status, the error code): each would start a run
REFUSED = [
    ({}, 403, "page_token"),  # no token: not the page
    ({"x-toolace-token": "guess"}, 403, "page_token"),
    ({"origin": "http://evil.test"}, 403, "origin_not_allowed"),
    ({"origin": ALLOWED_ORIGIN}, 403, "origin_not_allowed"),  # CORS lets it use /v1, never the page's endpoints
    ({"origin": "null"}, 403, "origin_not_allowed"),
    ({"host": "evil.test"}, 403, "host_not_allowed"),  # DNS rebinding
    ({"content-type": "text/plain"}, 415, "unsupported_media_type"),
]


@pytest.mark.parametrize(("extra", "status", "code"), REFUSED, ids=[c for *_, c in REFUSED])
def test_foreign_requests_run_nothing(page: tuple[Server, str], extra: dict[str, str], status: int,
                                      code: str) -> None:
    server, token = page
    before, CALLED[:] = server.ta.decode_progress(), []
    sent = {**headers(token), **extra}
    if not extra:
        del sent["x-toolace-token"]
    r = httpx.post(f"{server.url}/ui/api/runs", json=ask("get_weather"), headers=sent, timeout=60)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    assert server.ta.decode_progress() == before and not CALLED and not server.app.state.handlers.runs


def test_the_pages_own_request_passes(page: tuple[Server, str]) -> None:
    """The near miss of the table above: its own origin, its token, a loopback name."""
    server, token = page
    port = server.url.rsplit(":", 1)[1]
    with started(server.url, token, ask("get_weather", max_steps=1), origin=f"http://localhost:{port}",
                 host=f"localhost:{port}") as ok:
        assert ok.status_code == 200
        assert next(events(ok))[0] == "run"
    wait_until_free(server.url, server.app)


def test_approved_call_runs_and_its_result_goes_back(page: tuple[Server, str]) -> None:
    server, token = page
    seen = drive(server.url, token, ask("get-weather"))
    kinds = [k for k, _ in seen]
    assert kinds[0] == "run" and kinds[-1] == "done" and "turn" in kinds
    call = next(d for k, d in seen if k == "call")
    assert call["name"] == "get-weather" and call["valid"] and call["source"] == "mcp:weather"
    assert "JSON Schema" in call["checked"] and isinstance(call["arguments"]["city"], str)
    assert kinds.index("approval") < kinds.index("result")
    result = next(d for k, d in seen if k == "result")
    assert result["id"] == call["id"] and not result["is_error"] and result["content"].startswith("Sunny")
    done = seen[-1][1]
    assert done["finish_reason"] in ("answer", "max_steps", "length")
    tool_msg = next(m for m in done["messages"] if m["role"] == "tool")
    assert tool_msg == {"role": "tool", "tool_call_id": call["id"], "name": "get-weather",
                        "content": result["content"]}
    wait_until_free(server.url, server.app)


def test_denied_call_is_not_run_and_the_model_is_told(page: tuple[Server, str]) -> None:
    server, token = page
    CALLED.clear()
    seen = drive(server.url, token, ask("get_weather", max_steps=1), decision="deny")
    results = [d for k, d in seen if k == "result"]
    assert results and all(r["content"] == DECLINED and r["is_error"] for r in results)
    assert not CALLED
    assert any(m["role"] == "tool" and m["content"] == DECLINED for m in seen[-1][1]["messages"])


def test_allowed_tool_runs_without_asking(page: tuple[Server, str]) -> None:
    server, token = page
    CALLED.clear()
    seen = drive(server.url, token, ask("get_weather", max_steps=1, allowed_tools=["get_weather"]), decision="deny")
    approvals = [d for k, d in seen if k == "approval"]
    assert approvals and all(a["auto"] == "allowed for this conversation" for a in approvals) and CALLED


@pytest.fixture
def faulty(page: tuple[Server, str]) -> Iterator[tuple[Server, str]]:
    """The same model behind a second app started with --yes, whose tools fail: a server that dies mid-call, a
    function past its time limit, one returning ten megabytes."""
    with MCPServers([ServerConfig("doomed", sys.executable, (MCP_SERVER,))]) as servers:
        crash = [t for t in servers.tools if t.name == "crash"]
        s = start_server(page[0].ta, tool_groups=[("MCP server doomed", crash),
                                                  ("Python file faults.py", [function_tool(sleepy),
                                                                             function_tool(flood)])],
                         auto_approve=True, call_timeout=1.0)
        try:
            yield s, page_token(s.url)
        finally:
            stop_server(s)


@pytest.mark.parametrize(("tool", "told"), [("crash", "MCP server 'doomed'"), ("sleepy", "did not finish within 1 s"),
                                            ("flood", "[toolace: result cut to its first 8000 of 10000000")])
def test_tool_faults_are_error_results_and_the_run_goes_on(faulty: tuple[Server, str], tool: str, told: str) -> None:
    server, token = faulty
    seen = drive(server.url, token, ask(tool, max_steps=1))
    result = next(d for k, d in seen if k == "result")
    assert told in result["content"], result["content"][-300:]
    assert seen[-1][0] == "done" and seen[-1][1]["finish_reason"] in ("max_steps", "answer", "length")
    approvals = [d for k, d in seen if k == "approval"]
    assert approvals and approvals[0]["auto"] == "--yes"
    healthy(server)
    wait_until_free(server.url, server.app)


def _no_eos(server: Server) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "Tell me a very long story."}], "tool_choice": "none",
            "options": {"max_tokens": 3000, "stop_loops": False,
                        "logit_bias": {str(t): -100 for t in sorted(server.ta.model.eog_ids)}}}


def test_stop_cancels_generation_and_frees_the_slot(page: tuple[Server, str]) -> None:
    server, token = page
    with started(server.url, token, _no_eos(server)) as r:
        stream = events(r)
        run_id = next(stream)[1]["id"]
        texts = 0
        for kind, data in stream:
            if kind == "done":
                assert data["finish_reason"] == "cancelled"
                break
            texts += kind == "text"
            if kind == "text" and texts == 5:  # mid-generation (3,000 tokens, no end of sequence allowed)
                stopped = httpx.post(f"{server.url}/ui/api/runs/{run_id}/stop", json={}, headers=headers(token))
                assert stopped.json() == {"id": run_id, "stopped": True}
    wait_until_free(server.url, server.app)


def test_hanging_up_at_an_approval_cancels_the_run(page: tuple[Server, str]) -> None:
    server, token = page
    CALLED.clear()
    with started(server.url, token, ask("get_weather")) as r:
        for kind, _ in events(r):
            if kind == "approval":
                break  # the tab closes while the card waits
    wait_until_free(server.url, server.app)
    assert not CALLED
    healthy(server)


def test_bad_requests_are_one_clear_4xx(page: tuple[Server, str]) -> None:
    server, token = page
    url = f"{server.url}/ui/api/runs"
    for body, status, words in (({"messages": []}, 400, "messages must be"), ({**ask("x"), "stream": True}, 400,
                                "unknown field(s) 'stream'"), (ask("get_weather", options={"n": 2}), 400, "options"),
                                (ask("no_such_tool"), 400, "no_such_tool"), (ask("get_weather", max_steps=0), 400,
                                "max_steps")):
        r = httpx.post(url, json=body, headers=headers(token))
        assert r.status_code == status and words in r.json()["error"]["message"], r.text
    assert decide(server.url, token, "run_x", "call_1", "approve").status_code == 404
    assert decide(server.url, token, "run_x", "call_1", "maybe").status_code == 400
    with started(server.url, token, ask("get_weather")) as r:
        stream = events(r)
        run_id = next(stream)[1]["id"]
        call_id = next(d for k, d in stream if k == "approval")["id"]
        wrong = decide(server.url, token, run_id, "call_nope", "approve")
        assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "not_waiting"
        assert decide(server.url, token, run_id, call_id, "result", content="x").status_code == 409
        assert decide(server.url, token, run_id, call_id, "deny").status_code == 200
    wait_until_free(server.url, server.app)


def test_cli_refuses_tools_on_a_non_loopback_host() -> None:
    res = CliRunner().invoke(main, ["serve", "--model", "/nonexistent.gguf", "--host", "0.0.0.0", "--api-key", "k",
                                    "--mcp", "mcp.json"])
    assert res.exit_code == 2 and res.output.startswith("Error: refusing to run tools for clients on 0.0.0.0")


def test_cli_serve_runs_tools_from_all_three_sources_and_closes_them(smollm2_gguf: Path, tmp_path: Path) -> None:
    """`toolace serve --mcp --functions --tools` as a user starts it: the tools listed by source, a tools-file tool
    answered from the page (its result typed in), and SIGTERM closes the MCP server with the process."""
    marker = f"--marker=page-{uuid.uuid4().hex[:8]}"
    (tmp_path / "mcp.json").write_text(json.dumps({"mcpServers": {"weather": {"command": sys.executable,
                                                                             "args": [MCP_SERVER, marker]}}}))
    (tmp_path / "tools.py").write_text("def shout(text: str) -> str:\n    \"\"\"Say it loud.\"\"\"\n"
                                       "    return text.upper()\n")
    (tmp_path / "tools.json").write_text(json.dumps([{"type": "function", "function": {
        "name": "weather_report", "description": "Today's weather report for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]))
    proc = subprocess.Popen([str(Path(sys.executable).parent / "toolace"), "serve", "--model", str(smollm2_gguf),
                             "--port", "0", "--n-ctx", "2048", "--mcp", str(tmp_path / "mcp.json"), "--functions",
                             str(tmp_path / "tools.py"), "--tools", str(tmp_path / "tools.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["url"]
        token = page_token(url)
        assert len(with_marker(marker)) == 1  # the MCP server, started once
        info = httpx.get(f"{url}/ui/api/info", headers=headers(token)).json()
        assert [s["source"] for s in info["sources"]] == ["tools file tools.json", "Python file tools.py",
                                                         "MCP server weather"]
        with started(url, token, ask("weather_report", max_steps=1)) as r:
            stream = events(r)
            run_id = next(stream)[1]["id"]
            waiting = next(d for k, d in stream if k == "approval")
            assert waiting["ask"] is True and waiting["name"] == "weather_report"
            assert decide(url, token, run_id, waiting["id"], "result", content="Rain all day").status_code == 200
            result = next(d for k, d in stream if k == "result")
            assert (result["content"], result["is_error"]) == ("Rain all day", False)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert with_marker(marker) == set()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
