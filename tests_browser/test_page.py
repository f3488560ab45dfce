"""The built-in page in a real browser (Debian's Chromium through Playwright) against the real server with the demo
model, a real stdio MCP server and a Python function: ask, see the call card, approve, see the result and the end of
the run; deny and see the model told; reload and see the conversation; Stop mid-generation and /slots shows the slot
free; close the tab at an approval and the run is cancelled; export and clear. Every request the browser makes goes
to the server's origin. The tests run in file order on one page (each builds on the conversation before it); the
screenshot the README shows is saved on the way (build/artifacts/page.png; docs/page.png with
TOOLACE_UPDATE_DOCS=1)."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.helpers.page_client import wait_until_free
from tests.helpers.server import Server, served
from tests.helpers.weather import CALLED, get_weather
from toolace.agent import MCPServers, ServerConfig
from toolace.agent.functions import function_tool

REPO = Path(__file__).resolve().parent.parent
MCP_SERVER = str(REPO / "tests" / "helpers" / "mcp_server.py")
# Every run saves its screenshot as a test artefact (build/ is ignored by git); TOOLACE_UPDATE_DOCS=1 also
# replaces the README's picture, so a CI run leaves the checkout as it found it.
ARTEFACT = REPO / "build" / "artifacts" / "page.png"
README_PICTURE = REPO / "docs" / "page.png"
WAIT_MS = 180_000  # the demo model on two busy cores: generous, never asserted on


@pytest.fixture(scope="module")
def server(smollm2_gguf: Path) -> Iterator[Server]:
    with MCPServers([ServerConfig("weather", sys.executable, (MCP_SERVER,))]) as servers:
        groups = [("MCP server weather", servers.tools), ("Python file tools.py", [function_tool(get_weather)])]
        with served(smollm2_gguf, {"n_ctx": 4096}, tool_groups=groups) as s:
            yield s


@pytest.fixture(scope="module")
def requests() -> list[str]:
    return []


@pytest.fixture(scope="module")
def page(browser: Any, server: Server, requests: list[str]) -> Any:
    browser.on("request", lambda r: requests.append(r.url))
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{server.url}/")
    page.locator("#tools").get_by_text("get-weather").wait_for()
    return page


def set_options(page: Any, options: dict[str, Any]) -> None:
    if not page.locator("#options").is_visible():
        page.locator("#settings summary").click()
    page.fill("#options", json.dumps(options))


def ask(page: Any, question: str) -> None:
    page.fill("#input", question)
    page.press("#input", "Enter")


def run_over(page: Any) -> None:
    page.locator("#send:enabled").wait_for()  # locators, not wait_for_function: the page's CSP forbids eval


WEATHER = {"tool_choice": "get-weather", "max_steps": 2, "options": {"max_tokens": 48}}


def test_page_shows_model_and_tools_by_source(page: Any) -> None:
    assert page.locator("#model").inner_text() != "loading…"
    sources = page.locator("#tools .source h3").all_inner_texts()
    assert sources == ["MCP server weather", "Python file tools.py"]


def test_enter_sends_shift_enter_is_a_new_line(page: Any) -> None:
    page.fill("#input", "")
    page.locator("#input").press_sequentially("a")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("b")
    assert page.input_value("#input") == "a\nb"
    assert page.locator(".msg.user").count() == 0
    page.fill("#input", "")


def test_ask_approve_see_the_result_and_the_end_of_the_run(page: Any) -> None:
    set_options(page, WEATHER)
    ask(page, "What's the weather like in Paris?")
    card = page.locator(".card").first
    card.get_by_role("button", name="Approve").wait_for()
    assert card.locator(".name").inner_text() == "get-weather"
    assert card.locator(".valid").inner_text() == "✓ valid"
    assert "JSON Schema" in card.locator(".valid").get_attribute("title")
    assert "city" in card.locator("table.args th").all_inner_texts()
    card.get_by_role("button", name="Approve").click()
    card.locator(".result").get_by_text("Sunny").wait_for()
    while True:  # the model may call again (max_steps 2): approve each, until the run is over
        page.locator("#send:enabled, button.approve").first.wait_for()
        more = page.locator("button.approve")
        if not more.count():
            break
        more.first.click()
    run_over(page)
    last = page.locator("#log > *").last
    assert "assistant" in last.get_attribute("class") or "run ended" in last.inner_text()


def test_deny_and_the_model_is_told(page: Any) -> None:
    set_options(page, {**WEATHER, "tool_choice": "get_weather", "max_steps": 1})
    cards = page.locator(".card").count()
    ask(page, "And in Tokyo?")
    card = page.locator(".card").nth(cards)
    card.get_by_role("button", name="Deny").wait_for()
    ARTEFACT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACT))  # the README's picture: a conversation with a call waiting for approval
    if os.environ.get("TOOLACE_UPDATE_DOCS"):
        README_PICTURE.write_bytes(ARTEFACT.read_bytes())
    card.get_by_role("button", name="Deny").click()
    card.locator(".result").get_by_text("the user declined this call").wait_for()
    assert card.locator(".state").inner_text() == "denied"
    run_over(page)
    assert not CALLED


def test_reload_keeps_the_conversation(page: Any) -> None:
    before = page.locator("#log > *").all_inner_texts()
    page.reload()
    page.locator("#tools").get_by_text("get-weather").wait_for()
    assert page.locator("#log > *").all_inner_texts() == before
    assert page.locator(".card .result").get_by_text("the user declined this call").count() == 1


def test_stop_mid_generation_frees_the_slot(page: Any, server: Server) -> None:
    eos = {str(t): -100 for t in sorted(server.ta.model.eog_ids)}
    set_options(page, {"tool_choice": "none", "options": {"max_tokens": 3000, "stop_loops": False,
                                                          "logit_bias": eos}})
    bubbles = page.locator(".msg.assistant").count()
    ask(page, "Tell me a very long story.")
    expect(page.locator(".msg.assistant").nth(bubbles)).to_have_text(re.compile(r"\S.{20}", re.S), timeout=WAIT_MS)
    assert httpx.get(f"{server.url}/slots").json()["busy"]
    page.click("#stop")
    page.locator(".msg.note").get_by_text("run ended: stopped").last.wait_for()
    wait_until_free(server.url, server.app)
    assert httpx.get(f"{server.url}/slots").json()["busy"] is False


def test_closing_the_tab_at_an_approval_cancels_the_run(browser: Any, page: Any, server: Server) -> None:
    tab = browser.new_page()
    tab.set_default_timeout(WAIT_MS)
    tab.goto(f"{server.url}/")
    tab.click("#new")
    set_options(tab, {**WEATHER, "tool_choice": "get_weather"})
    ask(tab, "Weather in Oslo?")
    tab.get_by_role("button", name="Approve").wait_for()
    assert server.app.state.handlers.runs
    tab.close()
    wait_until_free(server.url, server.app)
    assert not CALLED


def test_narrow_window_has_no_sideways_scroll(page: Any) -> None:
    page.set_viewport_size({"width": 480, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 480
    page.set_viewport_size({"width": 1280, "height": 860})


def test_export_and_clear(page: Any, tmp_path: Path) -> None:
    page.reload()
    page.locator("#tools").get_by_text("get-weather").wait_for()
    page.locator("#conversations li", has_text="What's the weather").click()
    with page.expect_download() as download:
        page.click("#export")
    saved = tmp_path / "conversation.json"
    download.value.save_as(str(saved))
    exported = json.loads(saved.read_text())
    assert exported["messages"] and any(i["kind"] == "call" for i in exported["items"])
    page.once("dialog", lambda d: d.accept())
    page.click("#clear")
    assert page.locator("#log > *").count() == 0
    assert json.loads(page.evaluate("localStorage.getItem('toolace.conversations')"))[0]["items"] == []


def test_the_browser_talked_only_to_the_server(server: Server, requests: list[str]) -> None:
    assert requests
    foreign = [u for u in requests if not (u.startswith(server.url + "/") or u.startswith(f"blob:{server.url}/")
                                           or u.startswith("data:"))]
    assert foreign == []
