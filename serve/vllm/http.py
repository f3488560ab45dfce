"""toolace's ASGI middleware for vLLM's OpenAI server (`--middleware toolace_vllm_http.ToolaceMiddleware`, set by
serve.sh; docs/scale-out.md, "The guarantee inside vLLM").

Requests (/v1/chat/completions, /v1/responses): every one gets a fresh nonce in `vllm_xargs["toolace"]` (a client's
own toolace entry is dropped), which the logits processor (guard.py) reads; a `response_format` (chat) or
`text.format` (Responses) JSON schema becomes toolace's JSON grammar for it (grammars/json_schema.py: the same
grammar `toolace serve` decodes with, sane numbers included), so the guard can plan on it. Beside tools it is left
for the tool parser (plugin.py), which joins it with the call grammar as `toolace serve` does.

Responses: when the guard changed the output (its note for the nonce, serve/vllm/meta.py) the choice's
`finish_reason` is "length", as `toolace serve` says of a cut call, and the body carries `toolace.truncated`
where `toolace serve` puts it. A complete call list that ended exactly on the budget untouched is reported as calls.
Everything else passes through unchanged."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from toolace.errors import SchemaError
from toolace.grammars.json_schema import ResponseFormat, compile_response_format
from toolace.serve.vllm.meta import META_KEY, new_nonce, take_note, with_meta

ROUTES = ("/v1/chat/completions", "/v1/responses")
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _schema_format(fmt: Any) -> ResponseFormat | None:
    """A chat `response_format` or Responses `text.format` as toolace's compiled format (None: plain text)."""
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return compile_response_format(None)
    if fmt.get("type") != "json_schema":
        return None
    spec = fmt.get("json_schema", fmt)  # chat nests {name, schema}; Responses puts them beside "type"
    if not isinstance(spec, dict) or "schema" not in spec:
        raise SchemaError("response_format json_schema needs a 'schema'")
    return compile_response_format(spec["schema"], spec.get("name") or "response")


def rewrite_request(path: str, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The request with toolace's tag and grammar, and its nonce. SchemaError: a schema toolace cannot compile."""
    nonce = new_nonce()
    meta: dict[str, Any] = {"nonce": nonce}
    chat = path == ROUTES[0]
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
    raw_format = body.get("response_format") if chat else text.get("format")
    fmt = _schema_format(raw_format)
    tools = bool(body.get("tools")) and body.get("tool_choice", "auto") != "none"
    if fmt is not None and tools:  # the tool parser joins the two grammars, as toolace serve does
        meta["schema"] = {"name": fmt.name, "schema": _given_schema(raw_format)}
    elif fmt is not None and body.get("structured_outputs") is None:
        body["structured_outputs"] = {"grammar": fmt.gbnf}
        meta.update(names=[], calls_only=True, json=True)
        if chat:
            del body["response_format"]
        else:
            body["text"] = {k: v for k, v in text.items() if k != "format"}
    extra = {k: v for k, v in (body.get("vllm_xargs") or {}).items() if k != META_KEY} \
        if isinstance(body.get("vllm_xargs"), dict) else body.get("vllm_xargs")
    body["vllm_xargs"] = with_meta(extra, meta)
    return body, nonce


def _given_schema(fmt: dict[str, Any]) -> Any:
    if fmt.get("type") == "json_object":
        return None
    return fmt.get("json_schema", fmt).get("schema")


def _finish(choice: dict[str, Any], truncated: bool | None, called: bool, named: bool) -> None:
    if truncated:
        choice["finish_reason"] = "length"  # toolace serve's word for a value the budget or a loop cut short
    elif choice.get("finish_reason") == "length" and called:
        choice["finish_reason"] = "stop" if named else "tool_calls"  # complete calls, closed on the last token


class Rewriter:
    """What one response needs: its nonce, its kind, and which choices streamed calls."""

    def __init__(self, path: str, nonce: str, named: bool) -> None:
        self.chat, self.nonce, self.named = path == ROUTES[0], nonce, named
        self.truncated: bool | None = None
        self.taken = False
        self.called: set[int] = set()

    def _take(self) -> bool | None:
        if not self.taken:
            self.taken, self.truncated = True, take_note(self.nonce)
        return self.truncated

    def body(self, data: dict[str, Any]) -> dict[str, Any]:
        """A whole JSON response (no streaming)."""
        truncated = self._take()
        if self.chat:
            for choice in data.get("choices") or []:
                _finish(choice, truncated, bool((choice.get("message") or {}).get("tool_calls")), self.named)
        data["toolace"] = {"truncated": truncated}
        return data

    def event(self, data: dict[str, Any]) -> dict[str, Any]:
        """One streamed event: a chat chunk, or a Responses event (the final response object gets the flag)."""
        if self.chat:
            for choice in data.get("choices") or []:
                if (choice.get("delta") or {}).get("tool_calls"):
                    self.called.add(choice.get("index", 0))
                if choice.get("finish_reason") is not None:
                    _finish(choice, self._take(), choice.get("index", 0) in self.called, self.named)
        elif isinstance(data.get("response"), dict) and data.get("type") in ("response.completed",
                                                                               "response.incomplete"):
            data["response"]["toolace"] = {"truncated": self._take()}
        return data

    def sse(self, chunk: bytes) -> bytes:
        """Rewrite the `data: {...}` lines of a chunk of whole SSE events."""
        out = []
        for line in chunk.split(b"\n"):
            if line.startswith(b"data: {"):
                with contextlib.suppress(ValueError):  # not JSON after all: passed on as it came
                    line = b"data: " + json.dumps(self.event(json.loads(line[6:])), ensure_ascii=False).encode()
            out.append(line)
        return b"\n".join(out)


async def _read_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return bytes(body)
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)


def _error(message: str) -> tuple[int, bytes]:
    return 400, json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                      "code": None}}).encode()


class ToolaceMiddleware:
    """Pure ASGI (no buffering of other routes; SSE chunks are rewritten as they pass)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in ROUTES:
            await self.app(scope, receive, send)
            return
        raw = await _read_body(receive)
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            await self.app(scope, _replay(raw, receive), send)  # vLLM answers it with its own 400
            return
        try:
            body, nonce = rewrite_request(scope["path"], body)
        except SchemaError as e:
            await _answer(send, *_error(str(e)))
            return
        named = isinstance(body.get("tool_choice"), dict)
        rewriter = Rewriter(scope["path"], nonce, named)
        data = json.dumps(body, ensure_ascii=False).encode()
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(data)).encode())]}
        await self.app(scope, _replay(data, receive), _Responder(send, rewriter).send)


def _replay(data: bytes, receive: Receive) -> Receive:
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}
        return await receive()  # the disconnect vLLM waits for

    return again


async def _answer(send: Send, status: int, data: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class _Responder:
    """Passes the response on: a JSON body whole and rewritten, an event stream event by event, anything else (an
    error, another type) as it comes."""

    def __init__(self, send: Send, rewriter: Rewriter) -> None:
        self.out, self.rewriter = send, rewriter
        self.mode = "pass"
        self.start: Message | None = None
        self.body = bytearray()
        self.pending = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            kind = dict(message.get("headers", [])).get(b"content-type", b"")
            if message.get("status") == 200 and kind.startswith(b"text/event-stream"):
                self.mode = "stream"
            elif message.get("status") == 200 and kind.startswith(b"application/json"):
                self.mode, self.start = "json", message
                return  # sent with the rewritten body's length
            await self.out(message)
            return
        if message["type"] != "http.response.body" or self.mode == "pass":
            await self.out(message)
            return
        if self.mode == "stream":
            body = self._events(message.get("body", b""), bool(message.get("more_body")))
            await self.out({**message, "body": body})
            return
        self.body += message.get("body", b"")
        if not message.get("more_body"):
            await self._flush()

    async def _flush(self) -> None:
        assert self.start is not None
        try:
            data = json.dumps(self.rewriter.body(json.loads(bytes(self.body))), ensure_ascii=False).encode()
        except ValueError:
            data = bytes(self.body)
        headers = [(k, v) for k, v in self.start.get("headers", []) if k.lower() != b"content-length"]
        await self.out({**self.start, "headers": [*headers, (b"content-length", str(len(data)).encode())]})
        await self.out({"type": "http.response.body", "body": data})

    def _events(self, chunk: bytes, more: bool) -> bytes:
        """The whole events of what came so far, rewritten; a partial event waits for the rest."""
        data = self.pending + chunk
        end = data.rfind(b"\n\n")
        cut = len(data) if not more else (end + 2 if end >= 0 else 0)
        self.pending = data[cut:]
        return self.rewriter.sse(data[:cut]) if cut else b""
