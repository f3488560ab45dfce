"""The export's middleware and notes without vLLM (serve/vllm/http.py, serve/vllm/meta.py): what it does to requests
(a nonce every time, a client's own toolace entry replaced, a JSON schema turned into toolace's grammar) and to
answers (finish_reason and `toolace.truncated` from the engine's note, JSON whole or SSE event by event). The same
pieces run inside a real vLLM in tests_vllm/."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from toolace.grammars.json_schema import compile_response_format
from toolace.limits import VLLM_NOTE_SECONDS
from toolace.serve.vllm.http import Rewriter, ToolaceMiddleware, rewrite_request
from toolace.serve.vllm.meta import NOTES_ENV, is_nonce, read_meta, take_note, tool_format, write_note

SCHEMA = {"type": "object", "properties": {"population": {"type": "integer"}}, "required": ["population"]}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
CHAT, RESPONSES = "/v1/chat/completions", "/v1/responses"


@pytest.fixture
def notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(NOTES_ENV, str(tmp_path))
    return tmp_path


def test_every_request_gets_a_fresh_nonce_and_a_clients_own_entry_is_replaced() -> None:
    body = {"messages": [], "vllm_xargs": {"toolace": json.dumps({"calls_only": False, "nonce": "../../etc/x"}),
                                           "other": 1}}
    out, nonce = rewrite_request(CHAT, json.loads(json.dumps(body)))
    again, second = rewrite_request(CHAT, json.loads(json.dumps(body)))
    assert is_nonce(nonce) and is_nonce(second) and nonce != second
    assert read_meta(out["vllm_xargs"]) == {"nonce": nonce} and out["vllm_xargs"]["other"] == 1
    bare, _ = rewrite_request(CHAT, {"messages": []})  # a request naming no toolace field is tagged the same way
    assert set(read_meta(bare["vllm_xargs"])) == {"nonce"}


@pytest.mark.parametrize("path", [CHAT, RESPONSES])
def test_a_json_schema_becomes_toolaces_grammar(path: str) -> None:
    body: dict[str, Any] = {"messages": []}
    if path == CHAT:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "out", "schema": SCHEMA}}
    else:
        body["text"] = {"format": {"type": "json_schema", "name": "out", "schema": SCHEMA}, "verbosity": "low"}
    out, _ = rewrite_request(path, body)
    assert out["structured_outputs"] == {"grammar": compile_response_format(SCHEMA, "out").gbnf}
    assert "response_format" not in out and out.get("text", {}) == ({} if path == CHAT else {"verbosity": "low"})
    meta = read_meta(out["vllm_xargs"])
    assert meta["calls_only"] is True and meta["json"] is True and meta["names"] == []


def test_beside_tools_the_schema_is_left_to_the_tool_parser() -> None:
    body = {"messages": [], "tools": TOOLS,
            "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": SCHEMA}}}
    out, _ = rewrite_request(CHAT, body)
    assert "structured_outputs" not in out and out["response_format"]["type"] == "json_schema"
    assert tool_format(out["vllm_xargs"]) is compile_response_format(SCHEMA, "out")
    plain, _ = rewrite_request(CHAT, {"messages": [], "tools": TOOLS, "response_format": {"type": "json_object"}})
    assert tool_format(plain["vllm_xargs"]) is compile_response_format(None)
    none, _ = rewrite_request(CHAT, {**body, "tool_choice": "none"})  # no calls possible: the JSON grammar itself
    assert "grammar" in none["structured_outputs"]


def _chat_body(finish: str, calls: bool) -> dict[str, Any]:
    message = {"role": "assistant", "content": None if calls else "x",
               "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
               if calls else []}
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}


def test_a_note_makes_the_answer_truncated_and_is_taken(notes: Path) -> None:
    nonce = rewrite_request(CHAT, {"messages": []})[1]
    assert write_note(nonce) and (notes / nonce).exists()
    body = Rewriter(CHAT, nonce, named=False).body(_chat_body("tool_calls", calls=True))
    assert body["choices"][0]["finish_reason"] == "length" and body["toolace"] == {"truncated": True}
    assert not (notes / nonce).exists()  # taken: a second look finds nothing
    clean = Rewriter(CHAT, nonce, named=False).body(_chat_body("stop", calls=False))
    assert clean["choices"][0]["finish_reason"] == "stop" and clean["toolace"] == {"truncated": False}


@pytest.mark.parametrize(("named", "finish"), [(False, "tool_calls"), (True, "stop")])
def test_complete_calls_that_end_on_the_last_token_untouched_are_calls(notes: Path, named: bool, finish: str) -> None:
    body = Rewriter(CHAT, rewrite_request(CHAT, {})[1], named).body(_chat_body("length", calls=True))
    assert body["choices"][0]["finish_reason"] == finish
    text = Rewriter(CHAT, rewrite_request(CHAT, {})[1], named).body(_chat_body("length", calls=False))
    assert text["choices"][0]["finish_reason"] == "length"  # text cut by max_tokens stays cut


def test_without_a_notes_folder_the_flag_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NOTES_ENV, raising=False)
    nonce = rewrite_request(CHAT, {})[1]
    assert not write_note(nonce) and take_note(nonce) is None
    assert Rewriter(CHAT, nonce, False).body(_chat_body("stop", False))["toolace"] == {"truncated": None}


def test_notes_are_never_paths_and_stale_ones_are_swept(notes: Path) -> None:
    assert not write_note("../escape") and not write_note("a" * 31) and not (notes.parent / "escape").exists()
    stale = notes / ("0" * 32)
    stale.touch()
    old = time.time() - VLLM_NOTE_SECONDS - 1
    os.utime(stale, (old, old))
    import toolace.serve.vllm.meta as meta

    meta._last_sweep[0] = 0.0
    assert take_note("1" * 32) is False and not stale.exists()


def _run(app: Any, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    """Drive the middleware as the ASGI server does, the whole request in one message; the answer collected."""
    sent: list[dict[str, Any]] = []
    raw = json.dumps(body).encode()
    messages = [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]}
    asyncio.run(ToolaceMiddleware(app)(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _engine(stream: bool, cut: bool) -> Any:
    """The server behind the middleware: reads the body it was given (the guard's side: a note for its nonce when
    `cut`) and answers a chat completion, whole or as SSE split mid-event."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = json.loads((await receive())["body"])
        assert dict(scope["headers"])[b"content-length"] == str(len(json.dumps(body, ensure_ascii=False))).encode()
        if cut:
            write_note(read_meta(body["vllm_xargs"])["nonce"])
        kind = b"text/event-stream" if stream else b"application/json"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
        if not stream:
            await send({"type": "http.response.body", "body": json.dumps(_chat_body("tool_calls", True)).encode()})
            return
        first = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}, "finish_reason": None}]}
        last = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
        events = f"data: {json.dumps(first)}\n\ndata: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode()
        for piece in (events[:30], events[30:-20], events[-20:]):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    return app


@pytest.mark.parametrize("cut", [True, False])
def test_middleware_end_to_end_json_and_sse(notes: Path, cut: bool) -> None:
    status, data = _run(_engine(False, cut), CHAT, {"messages": [], "tools": TOOLS})
    body = json.loads(data)
    assert status == 200 and body["toolace"] == {"truncated": cut}
    assert body["choices"][0]["finish_reason"] == ("length" if cut else "tool_calls")
    status, data = _run(_engine(True, cut), CHAT, {"messages": [], "tools": TOOLS, "stream": True})
    events = [json.loads(line[6:]) for line in data.decode().split("\n") if line.startswith("data: {")]
    assert [e["choices"][0]["finish_reason"] for e in events] == [None, "length" if cut else "tool_calls"]
    assert data.decode().endswith("data: [DONE]\n\n") and not list(notes.iterdir())


def test_a_schema_toolace_cannot_compile_is_a_400() -> None:
    status, data = _run(_engine(False, False), CHAT, {"messages": [], "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}}})
    assert status == 400 and "unknown type 'wat'" in json.loads(data)["error"]["message"]
