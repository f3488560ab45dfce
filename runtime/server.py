"""OpenAI-compatible local server: one loaded model, many clients (DESIGN.md §6–§7).

Endpoints: POST /v1/chat/completions (tools, tool_choice, parallel_tool_calls, stream with tool-call deltas),
POST /v1/completions (raw prompt, what BFCL's local handlers send), GET /v1/models, GET /health.

Concurrency: a bounded slot counter (waiting + running requests, `max_queue`); over it → 429. Each generation runs in
its own worker thread that iterates the library's generator (ToolACE.lock serialises model use); the worker stops at
the next event once the client has gone, closing the generator so the lock is released and the slot freed."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from toolace.errors import InputError
from toolace.limits import DEFAULT_N_CTX

from .openai_io import (
    MAX_BODY_BYTES,
    ApiError,
    api_error,
    arguments_json,
    chat_request,
    completion_request,
    content_of,
    error_body,
    read_json,
    refuse_fields,
    usage,
)

if TYPE_CHECKING:
    from toolace.api import CallResult, StreamEvent, ToolACE

log = logging.getLogger("toolace.server")

# --- server limits (name, unit, reason); request limits live in openai_io -----------------------------------------
DEFAULT_MAX_QUEUE = 8  # requests waiting + running; one model serves one at a time, more only adds latency
DISCONNECT_POLL_SECONDS = 0.5  # seconds between client-disconnect checks while a request waits for the model
SSE_PING_SECONDS = 15  # seconds between SSE keep-alive comments while the first token is awaited

class _Slots:
    """Waiting + running requests, bounded. Used only from the event loop thread."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def acquire(self) -> Callable[[], None]:
        if self.used >= self.limit:
            raise ApiError(429, f"server busy: {self.used} requests waiting or running (max_queue {self.limit}); "
                                "retry later", "rate_limit_error", "queue_full")
        self.used += 1
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self.used -= 1
        return release


class _Worker:
    """Runs a (blocking) iterator in its own thread and hands its items to the event loop."""

    def __init__(self, make_iter: Callable[[], Iterable[Any]], on_exit: Callable[[], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.stop = threading.Event()
        self._make_iter, self._on_exit = make_iter, on_exit
        self._get: asyncio.Task[tuple[str, Any]] | None = None
        threading.Thread(target=self._run, name="toolace-generate", daemon=True).start()

    def _put(self, item: tuple[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # loop already closed (server shutting down)
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _run(self) -> None:
        it = None
        try:
            it = iter(self._make_iter())
            for item in it:
                if self.stop.is_set():
                    break
                self._put(("item", item))
            else:
                self._put(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the request, which answers it
            self._put(("error", e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()  # GeneratorExit inside ToolACE.stream: its `with lock` releases the model
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._on_exit)

    async def next(self, request: Request) -> tuple[str, Any]:
        """The next item; ("gone", None) once the client disconnected (the worker is told to stop)."""
        while True:
            if self._get is None:
                self._get = asyncio.ensure_future(self.queue.get())
            try:
                done, _ = await asyncio.wait({self._get}, timeout=DISCONNECT_POLL_SECONDS)
            except asyncio.CancelledError:
                self.cancel()
                raise
            if done:
                task, self._get = self._get, None
                return task.result()
            if await request.is_disconnected():
                self.cancel()
                return ("gone", None)

    def cancel(self) -> None:
        self.stop.set()
        if self._get is not None:
            self._get.cancel()
            self._get = None


# --- the app -------------------------------------------------------------------------------------------------------
def create_app(ta: ToolACE, api_key: str | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
               max_body_bytes: int = MAX_BODY_BYTES, model_id: str | None = None) -> FastAPI:
    """The FastAPI app serving `ta`. `api_key`: require `Authorization: Bearer KEY` on /v1/*."""
    if not isinstance(max_queue, int) or max_queue < 1:
        raise InputError(f"max_queue must be a positive integer, got {max_queue!r}")
    if not isinstance(max_body_bytes, int) or max_body_bytes < 1024:
        raise InputError(f"max_body_bytes must be an integer >= 1024, got {max_body_bytes!r}")
    if api_key is not None and not api_key:
        raise InputError("api_key must be a non-empty string (or None for no key)")
    name = model_id or ta.model.path.stem
    created = int(time.time())
    slots = _Slots(max_queue)
    app = FastAPI(title="toolace", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.slots = slots

    @app.exception_handler(ApiError)
    async def _api_error_handler(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.type, exc.code), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error_handler(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error_handler(_: Request, exc: Exception) -> JSONResponse:
        err = api_error(exc)
        return JSONResponse(error_body(err.message, err.type, err.code), status_code=err.status)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                           "invalid_request_error", "invalid_api_key")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "queue": {"used": slots.used, "max": slots.limit}}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "toolace", "n_ctx": ta.model.n_ctx}]}

    async def admit(request: Request, parse: Callable[[dict[str, Any]], Any]) -> tuple[Any, Callable[[], None]]:
        """Take a queue slot (429 when full), then read and check the body; the slot is freed on any error."""
        release = slots.acquire()
        try:
            body = await read_json(request, max_body_bytes)
            refuse_fields(body)
            return parse(body), release
        except BaseException as e:
            release()
            raise api_error(e) from None

    async def first_event(worker: _Worker, request: Request) -> tuple[str, Any]:
        """The worker's first event: an error before any token is an HTTP error; "gone" is left to the caller."""
        try:
            first = await worker.next(request)
        except BaseException:
            worker.cancel()
            raise
        if first[0] == "error":
            raise api_error(first[1])
        return first

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(request: Request) -> Any:
        req, release = await admit(request, chat_request)
        worker = _Worker(lambda: ta.stream(req.messages, req.tools, req.tool_choice, **req.options), release)
        cid = "chatcmpl-" + secrets.token_hex(12)
        now = int(time.time())
        first = await first_event(worker, request)
        if first[0] == "gone":
            return _gone()
        if not req.stream:
            return await _collect(worker, request, first, cid, now)
        return EventSourceResponse(_sse(worker, request, first, cid, now, req.include_usage),
                                   ping=SSE_PING_SECONDS, sep="\n")

    async def _collect(worker: _Worker, request: Request, item: tuple[str, Any], cid: str,
                       now: int) -> JSONResponse:
        result: CallResult | None = None
        while True:
            kind, value = item
            if kind == "error":
                raise api_error(value, started=True)
            if kind == "gone":
                return _gone()
            if kind == "end":
                break
            if value.kind == "done":
                result = value.result
            item = await worker.next(request)
        assert result is not None
        message: dict[str, Any] = {"role": "assistant", "content": content_of(result)}
        if result.calls:
            message["tool_calls"] = [
                {"id": cid_, "type": "function",
                 "function": {"name": c["name"], "arguments": arguments_json(c["arguments"])}}
                for cid_, c in zip(result.call_ids, result.calls, strict=False)]
        finish = "tool_calls" if result.calls else result.finish_reason
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": now, "model": name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": usage(result.stats), "system_fingerprint": None,
            "toolace": {"valid": result.valid, "errors": result.errors},
        })

    def _chunk(cid: str, now: int, delta: dict[str, Any], finish: str | None = None) -> str:
        return json.dumps({"id": cid, "object": "chat.completion.chunk", "created": now, "model": name,
                           "system_fingerprint": None,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]},
                          ensure_ascii=False)

    async def _sse(worker: _Worker, request: Request, item: tuple[str, Any], cid: str, now: int,
                   include_usage: bool) -> AsyncIterator[dict[str, str]]:
        first_is_call = item[0] == "item" and item[1].kind.startswith("call")
        yield {"data": _chunk(cid, now, {"role": "assistant", "content": None if first_is_call else ""})}
        ids: list[str] = []
        has_args: dict[int, bool] = {}
        streamed_text = ""
        try:
            while True:
                kind, ev = item
                if kind == "gone":
                    return
                if kind == "error":
                    err = api_error(ev, started=True)
                    yield {"data": json.dumps(error_body(err.message, err.type, err.code))}
                    yield {"data": "[DONE]"}
                    return
                if kind == "end":
                    yield {"data": "[DONE]"}
                    return
                for delta, finish in _deltas(ev, ids, has_args, streamed_text):
                    if "content" in delta:
                        streamed_text += delta["content"]
                    yield {"data": _chunk(cid, now, delta, finish)}
                if ev.kind == "done" and include_usage:
                    last = json.loads(_chunk(cid, now, {}))
                    last["choices"], last["usage"] = [], usage(ev.result.stats)
                    yield {"data": json.dumps(last)}
                if await request.is_disconnected():
                    worker.cancel()
                    return
                item = await worker.next(request)
        finally:
            worker.cancel()  # no-op if the worker already finished; else it stops at its next event

    def _deltas(ev: StreamEvent, ids: list[str], has_args: dict[int, bool],
                streamed_text: str) -> list[tuple[dict[str, Any], str | None]]:
        if ev.kind == "text":
            return [({"content": ev.text}, None)] if ev.text else []
        if ev.kind == "call_name":
            while len(ids) <= ev.index:
                ids.append("call_" + secrets.token_hex(12))
            return [({"tool_calls": [{"index": ev.index, "id": ids[ev.index], "type": "function",
                                      "function": {"name": ev.name, "arguments": ""}}]}, None)]
        if ev.kind == "argument":
            piece = ("{" if not has_args.get(ev.index) else ", ") + json.dumps(ev.key, ensure_ascii=False) + ": " \
                + json.dumps(ev.value, ensure_ascii=False)
            has_args[ev.index] = True
            return [({"tool_calls": [{"index": ev.index, "function": {"arguments": piece}}]}, None)]
        if ev.kind == "call_end":
            piece = "}" if has_args.get(ev.index) else "{}"
            return [({"tool_calls": [{"index": ev.index, "function": {"arguments": piece}}]}, None)]
        # done
        result = ev.result
        out: list[tuple[dict[str, Any], str | None]] = []
        if result.calls and ids:
            # the ids streamed are ours; remember them too so a later turn re-renders the calls exactly
            ta.memory.remember(ids, result.raw)
        content = content_of(result)
        if content and content != streamed_text:
            rest = content[len(streamed_text):] if content.startswith(streamed_text) else content
            out.append(({"content": rest}, None))
        finish = "tool_calls" if result.calls else result.finish_reason
        out.append(({}, finish))
        return out

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(request: Request) -> Any:
        (prompt, opts), release = await admit(request, completion_request)
        worker = _Worker(lambda: [ta.complete(prompt, **opts)], release)
        kind, value = await first_event(worker, request)
        if kind == "gone":
            return _gone()
        text, stats = value
        return JSONResponse({
            "id": "cmpl-" + secrets.token_hex(12), "object": "text_completion", "created": int(time.time()),
            "model": name, "choices": [{"index": 0, "text": text, "finish_reason": stats.finish_reason,
                                        "logprobs": None}],
            "usage": usage(stats), "system_fingerprint": None,
        })

    return app


def _gone() -> JSONResponse:
    """The answer to a request whose client went away (nginx's 499: nobody reads it, the log shows why)."""
    return JSONResponse(error_body("client disconnected", "invalid_request_error", None), status_code=499)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model: str = "demo", host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          n_ctx: int = DEFAULT_N_CTX, max_queue: int = DEFAULT_MAX_QUEUE, n_gpu_layers: int | str = "auto",
          engine: str = "llguidance") -> None:
    """Load `model` and serve it until interrupted. A non-loopback host needs an api_key."""
    if not is_loopback(host) and not api_key:
        raise InputError(f"refusing to bind {host} without an API key: pass api_key (or bind 127.0.0.1)")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise InputError(f"port must be an integer in [0, 65535], got {port!r}")
    import uvicorn

    from toolace.api import ToolACE

    ta = ToolACE.load(model, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, engine=engine)
    app = create_app(ta, api_key=api_key, max_queue=max_queue)
    uvicorn.run(app, host=host, port=port, log_level="info")
