"""OpenAI-compatible local server: one loaded model, many clients (docs/design.md, "Server").

Endpoints: POST /v1/chat/completions (tools, tool_choice, parallel_tool_calls, response_format, n, stream with
tool-call deltas), POST /v1/responses (serve/responses_route.py), POST /v1/completions (raw prompt, what BFCL's
local handlers send), GET /v1/models, GET /health. Any model name is answered by the one loaded model, as
llama-server does; the `model` field of every answer names that model.

Concurrency: a bounded slot counter (waiting + running requests, `max_queue`); over it → 429. Each generation runs in
its own worker thread (serve/worker.py) that iterates the library's generator; `--parallel N` slots decode up to N of
them together (runtime/batch.py, docs/parallel.md), the rest wait for a slot. GET /slots shows the slots."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from toolace.api import CallResult, StreamEvent, ToolACE
from toolace.errors import InputError
from toolace.limits import (
    BODY_READ_SECONDS,
    COMPILE_THREADS,
    DEFAULT_BATCHING,
    DEFAULT_MAX_QUEUE,
    DEFAULT_N_CTX,
    DEFAULT_REQUEST_TIMEOUT_SECONDS,
    DEFAULT_SERVE_PARALLEL,
    MAX_ALIASES,
    MAX_BODY_BYTES,
    MAX_REQUEST_TIMEOUT_SECONDS,
    SSE_PING_SECONDS,
    TOOL_CALL_SECONDS,
)
from toolace.runtime.kv_types import DEFAULT_KV_TYPE
from toolace.runtime.speculative import DEFAULT_SPECULATIVE

from . import responses
from .anthropic_route import AnthropicHandlers
from .boundary import Boundary, check_allowed_hosts, check_cors_origins, is_loopback, resolve_api_key
from .errors import ApiError, api_error, dialect_error, error_body, gone_response, install_error_handlers
from .ollama_route import OllamaHandlers
from .ollama_store import OllamaStoreHandlers
from .page_route import PageHandlers, page_routes
from .request_model import EngineRequest
from .requests import chat_request, completion_request, read_json, refuse_fields
from .responses_api import ResponseStore
from .responses_route import ResponsesHandlers
from .worker import Slots, Worker, watch_disconnect

access_log = logging.getLogger("uvicorn.access")


def _data(body: dict[str, Any]) -> dict[str, str]:
    return {"data": json.dumps(body, ensure_ascii=False)}


class App(ResponsesHandlers, OllamaHandlers, OllamaStoreHandlers, AnthropicHandlers, PageHandlers):
    """The handlers, one page each; request parsing and response shaping are plain functions in requests.py and
    responses.py."""

    def __init__(self, ta: ToolACE, api_key: str | None, max_queue: int, max_body_bytes: int, name: str,
                 aliases: Sequence[str] = (), body_timeout: float = BODY_READ_SECONDS,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS) -> None:
        self.ta, self.api_key, self.max_body_bytes, self.name = ta, api_key, max_body_bytes, name
        self.body_timeout, self.request_timeout = body_timeout, request_timeout
        self.compiling = asyncio.Semaphore(COMPILE_THREADS)
        self.parsing = 0  # requests whose body is being checked and compiled (or waiting for a compile thread)
        self.aliases = [a for a in dict.fromkeys(aliases) if a != name]
        self.slots = Slots(max_queue)
        self.created = int(time.time())
        self.store = ResponseStore()
        self.disconnects: list[dict[str, int]] = []  # per abandoned request: model tokens at disconnect and at exit
        self.refused: dict[str, int] = {}  # requests the browser boundary turned away, by reason
        self.live: set[Worker] = set()  # running generations, so a shutdown can cancel them all

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":  # Anthropic's clients send the key as x-api-key
            given = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY' or 'x-api-key: KEY')",
                           "invalid_request_error", "invalid_api_key")

    async def admit(self, request: Request, parse: Callable[[dict[str, Any]], Any]) -> tuple[Any, Callable[[], None]]:
        """Take a queue slot (429 when full), then read (within the body timeout) and check the body; tool sets and
        schemas compile in a worker thread, so a huge one never stalls the event loop. The slot is freed on any
        error."""
        release = self.slots.acquire()
        try:
            body = await read_json(request, self.max_body_bytes, self.body_timeout)
            refuse_fields(body)
            self.parsing += 1
            try:
                async with self.compiling:
                    return await asyncio.to_thread(parse, body), release
            finally:
                self.parsing -= 1
        except BaseException as e:
            release()
            raise api_error(e) from None

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.name, "queue": {"used": self.slots.used, "max": self.slots.limit},
                "compiling": self.parsing, "refused": self.refused}

    async def slot_state(self) -> dict[str, Any]:
        return self.ta.slot_state()

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": self.created,
                                            "owned_by": "toolace", "n_ctx": self.ta.model.n_ctx}
                                           for name in [self.name, *self.aliases]]}

    # --- abandoned requests -------------------------------------------------------------------------------------------
    def worker(self, make_iter: Callable[[Any], Any], release: Callable[[], None]) -> Worker:
        """A worker whose exit frees the slot and, if its client left, completes the disconnect record."""
        record: dict[str, int] = {}

        def on_exit() -> None:
            release()
            self.live.discard(w)
            if record:
                record["progress_at_exit"] = self.ta.decode_progress()

        w = Worker(make_iter, on_exit, self.request_timeout)
        w.record = record
        self.live.add(w)
        return w

    def cancel_all(self) -> None:
        """Stop every running generation before its next token (server shutdown). Called from a signal handler or
        a thread: it only sets events."""
        for w in list(self.live):
            w.stop.set()

    def gone(self, request: Request, worker: Worker) -> None:
        """The client of a running request hung up: stop its generation (before the next token) and log a 499."""
        if worker.stop.is_set():
            return
        worker.stop.set()  # the worker's generator checks it before each token; the pending read stays valid
        record = worker.record
        record["progress_at_disconnect"] = self.ta.decode_progress()
        self.disconnects.append(record)
        del self.disconnects[:-100]  # the last hundred are plenty to look at
        client = request.client
        access_log.info('%s - "%s %s HTTP/%s" %d', f"{client.host}:{client.port}" if client else "-",
                        request.method, request.url.path, request.scope.get("http_version", "1.1"), 499)

    async def collect(self, request: Request, worker: Worker,
                      pick: Callable[[Any], Any] = lambda v: _done_result(v)) -> list[Any] | None:
        """What `pick` keeps of every item of a non-stream request, in order; None when the client left first. The
        disconnect is watched as it happens (not polled), so the generation stops within one decode step; past the
        request's deadline the generation is stopped and the answer is a 504."""
        watcher = asyncio.ensure_future(watch_disconnect(request, lambda: self.gone(request, worker)))
        try:
            results: list[Any] = []
            item = await worker.first(request)
            while True:
                kind, value = item
                if kind == "error":
                    raise api_error(value, started=True)
                if kind == "timeout":
                    raise worker.timeout_error()
                if kind == "gone" or (kind == "end" and worker.stop.is_set()):
                    return None
                if kind == "end":
                    return results
                kept = pick(value)
                if kept is not None:
                    results.append(kept)
                item = await worker.next(request)
        finally:
            watcher.cancel()

    # --- chat ---------------------------------------------------------------------------------------------------------
    def _choices(self, req: EngineRequest) -> Callable[[Any], Iterator[tuple[int, StreamEvent]]]:
        """The `n` generations, one after another, as (choice index, event); a given seed is varied per choice."""
        def run(stop: Any) -> Iterator[tuple[int, StreamEvent]]:
            for i in range(req.n):
                opts = dict(req.options)
                if i and opts.get("seed") is not None:
                    opts["seed"] = (opts["seed"] + i) % 2**64
                for ev in self.ta.stream(req.messages, req.toolset, cancel=stop, **opts):
                    yield i, ev
        return run

    async def chat_completions(self, request: Request) -> Any:
        req, release = await self.admit(request, chat_request)
        worker = self.worker(self._choices(req), release)
        cid, now = "chatcmpl-" + secrets.token_hex(12), int(time.time())
        if not req.stream:
            results = await self.collect(request, worker)
            if results is None:
                return gone_response()
            return JSONResponse(responses.chat_completion(results, cid, now, self.name))
        first = await worker.first(request)
        if first[0] == "gone":
            return gone_response()
        streams = [responses.ChatStream(cid, now, self.name, self.ta.memory, index=i) for i in range(req.n)]
        return EventSourceResponse(self._sse(worker, request, first, streams, req), ping=SSE_PING_SECONDS, sep="\n")

    async def _sse(self, worker: Worker, request: Request, item: tuple[str, Any],
                   streams: list[responses.ChatStream], req: EngineRequest) -> AsyncIterator[dict[str, str]]:
        started: set[int] = set()
        done: list[CallResult] = []
        try:
            while True:
                kind, value = item
                if kind == "gone":
                    return
                if kind in ("error", "timeout"):
                    err = api_error(value, started=True) if kind == "error" else worker.timeout_error()
                    yield _data(error_body(err.message, err.type, err.code))
                    yield {"data": "[DONE]"}
                    return
                if kind == "end":
                    if req.include_usage and done:
                        yield _data(streams[0].usage_chunk(_summed(done)))
                    yield {"data": "[DONE]"}
                    return
                i, ev = value
                if i not in started:
                    started.add(i)
                    yield _data(streams[i].first(ev.kind.startswith("call")))
                for body in streams[i].chunks(ev):
                    yield _data(body)
                if ev.kind == "done" and ev.result is not None:
                    done.append(ev.result)
                if await request.is_disconnected():
                    worker.cancel()
                    return
                item = await worker.next(request)
        finally:
            worker.cancel()  # no-op if the worker already finished; else it stops before its next token

    async def completions(self, request: Request) -> Any:
        (prompt, opts), release = await self.admit(request, completion_request)
        worker = self.worker(lambda stop: [self.ta.complete(prompt, cancel=stop, **opts)], release)
        results = await self.collect(request, worker, pick=lambda v: v)
        if results is None:
            return gone_response()
        text, stats = results[0]
        return JSONResponse(responses.text_completion(text, stats, self.name, int(time.time())))


def _done_result(value: Any) -> CallResult | None:
    """The result a chat or Responses stream ends with: the `done` event's, from (choice, event) or an event."""
    ev = value[1] if isinstance(value, tuple) else value
    return ev.result if isinstance(ev, StreamEvent) and ev.kind == "done" else None


def _summed(results: list[CallResult]) -> Any:
    """The stats of `n` choices as one: the prompt once, every choice's completion tokens."""
    from dataclasses import replace

    return replace(results[0].stats, completion_tokens=sum(r.stats.completion_tokens for r in results))


def create_app(ta: ToolACE, api_key: str | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
               max_body_bytes: int = MAX_BODY_BYTES, model_id: str | None = None,
               aliases: Sequence[str] = (), host: str = "127.0.0.1", allowed_hosts: Sequence[str] = (),
               cors_origins: Sequence[str] = (), body_timeout: float = BODY_READ_SECONDS,
               request_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS, tool_groups: Sequence[Any] = (),
               auto_approve: bool = False, call_timeout: float = TOOL_CALL_SECONDS,
               tool_warnings: Sequence[str] = ()) -> FastAPI:
    """The FastAPI app serving `ta`. `api_key`: require `Authorization: Bearer KEY` on /v1/*. `aliases`: more
    names /v1/models lists for the model (every name is served by it anyway). `host`, `allowed_hosts`,
    `cors_origins`: the browser boundary (serve/boundary.py). `body_timeout`: seconds to send a body (408);
    `request_timeout`: seconds from admission to the last byte (504). `tool_groups`: (source label, ExecutableTools)
    the page's runs may call, each after the user's approval unless `auto_approve` (docs/page.md)."""
    if not isinstance(max_queue, int) or max_queue < 1:
        raise InputError(f"max_queue must be a positive integer, got {max_queue!r}")
    if not isinstance(max_body_bytes, int) or max_body_bytes < 1024:
        raise InputError(f"max_body_bytes must be an integer >= 1024, got {max_body_bytes!r}")
    if api_key is not None and not api_key:
        raise InputError("api_key must be a non-empty string (or None for no key)")
    if len(aliases) > MAX_ALIASES or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise InputError(f"aliases: at most {MAX_ALIASES} non-empty names")
    for name, seconds in (("body_timeout", body_timeout), ("request_timeout", request_timeout)):
        if not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_REQUEST_TIMEOUT_SECONDS:
            raise InputError(f"{name} must be a number of seconds in (0, {MAX_REQUEST_TIMEOUT_SECONDS:g}], "
                             f"got {seconds!r}")
    handlers = App(ta, api_key, max_queue, max_body_bytes, model_id or ta.model.path.stem, aliases,
                   float(body_timeout), float(request_timeout))
    handlers.init_page(tool_groups, auto_approve, call_timeout, list(tool_warnings))
    app = FastAPI(title="toolace", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Boundary, bind_host=host, allowed_hosts=allowed_hosts, cors_origins=cors_origins,
                       refused=handlers.refused, error_shape=dialect_error, own_only=("/ui/",))
    app.state.slots = handlers.slots
    app.state.handlers = handlers
    install_error_handlers(app)
    keyed = [Depends(handlers.check_key)]
    app.add_api_route("/health", handlers.health, methods=["GET"])
    app.add_api_route("/slots", handlers.slot_state, methods=["GET"], dependencies=keyed)
    app.add_api_route("/v1/models", handlers.models, methods=["GET"], dependencies=keyed)
    app.add_api_route("/v1/chat/completions", handlers.chat_completions, methods=["POST"], dependencies=keyed)
    app.add_api_route("/v1/responses", handlers.responses, methods=["POST"], dependencies=keyed)
    app.add_api_route("/v1/completions", handlers.completions, methods=["POST"], dependencies=keyed)
    _dialect_routes(app, handlers, keyed)
    page_routes(app, handlers, keyed)
    return app


def _dialect_routes(app: FastAPI, h: App, keyed: list[Any]) -> None:
    """Ollama's /api/* and Anthropic's /v1/messages on the same engine (docs/dialects.md)."""
    app.add_api_route("/api/version", h.ollama_version, methods=["GET"])
    for path, handler, method in (("/api/tags", h.ollama_tags, "GET"), ("/api/ps", h.ollama_ps, "GET"),
                                  ("/api/show", h.ollama_show, "POST"), ("/api/chat", h.ollama_chat, "POST"),
                                  ("/api/generate", h.ollama_generate, "POST"), ("/api/embed", h.ollama_embed, "POST"),
                                  ("/api/embeddings", h.ollama_embed, "POST"), ("/api/pull", h.ollama_pull, "POST"),
                                  ("/api/delete", h.ollama_delete, "DELETE"), ("/v1/messages", h.messages, "POST"),
                                  ("/v1/messages/count_tokens", h.count_tokens, "POST")):
        app.add_api_route(path, handler, methods=[method], dependencies=keyed)


def model_aliases(ref: str, ta: ToolACE, extra: Sequence[str] = ()) -> list[str]:
    """The names the loaded model goes by: the reference it was loaded by when that is a name (`demo`, a store
    name), every store name for the same file, then `--alias` names."""
    from toolace.convert.store import list_models

    path = ta.model.path.resolve()
    names = [ref] if ref != str(ta.model.path) and "/" not in ref else []
    names += [m["name"] for m in list_models() if m.get("size") is not None and _same(m["path"], path)]
    return list(dict.fromkeys([*names, *extra]))


def _same(path: str, other: Any) -> bool:
    from pathlib import Path

    try:
        return Path(path).resolve() == other
    except OSError:
        return False


def serve(model: str = "demo", host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          n_ctx: int = DEFAULT_N_CTX, max_queue: int = DEFAULT_MAX_QUEUE, n_gpu_layers: int | str = "auto",
          engine: str = "llguidance", aliases: Sequence[str] = (), parallel: int = DEFAULT_SERVE_PARALLEL,
          api_key_file: str | None = None, allowed_hosts: Sequence[str] = (), cors_origins: Sequence[str] = (),
          request_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS, ready_file: str | None = None,
          parent_pid: int | None = None, kv_type: str = DEFAULT_KV_TYPE, cache_max_bytes: int | None = None,
          tools_file: str | None = None, functions_file: str | None = None, mcp_config: str | None = None,
          yes: bool = False, call_timeout: float = TOOL_CALL_SECONDS, speculative: bool = DEFAULT_SPECULATIVE,
          batching: str = DEFAULT_BATCHING) -> None:
    """Load `model` and serve it until SIGTERM/Ctrl-C (or `parent_pid`'s exit). A non-loopback host needs an API
    key: `api_key`, else the first line of `api_key_file`, else $TOOLACE_API_KEY (a file or the environment keeps it
    out of `ps`). `port` 0 picks a free port; once ready, one JSON line `{"url", "pid", "model"}` is printed (and
    written to `ready_file`): docs/embedding.md. `aliases`: extra names /v1/models lists. `parallel`: requests
    decoded together, n_ctx tokens each; `batching`: exact or fast (docs/parallel.md). `allowed_hosts`,
    `cors_origins`, `request_timeout`: see create_app.
    `tools_file`, `functions_file`, `mcp_config`: the tools the page's runs call (MCP servers start once, before the
    model loads, and close on exit); `yes`: run every call without asking (docs/page.md). `speculative`: the
    default for requests that do not say (`"speculative"` in a body; docs/speculative.md)."""
    from toolace.agent.sources import tool_groups

    from .sidecar import bind, check_parent, run

    api_key = resolve_api_key(api_key, api_key_file)
    if not is_loopback(host) and not api_key:
        raise InputError(f"refusing to bind {host} without an API key: pass api_key (or bind 127.0.0.1)")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise InputError(f"port must be an integer in [0, 65535], got {port!r}")
    check_allowed_hosts(allowed_hosts), check_cors_origins(cors_origins)  # bad flags fail before the model loads
    check_parent(parent_pid)
    if (tools_file or functions_file or mcp_config) and not is_loopback(host):
        raise InputError(f"refusing to run tools for clients on {host}: tools act on this machine, serve them on a "
                         "loopback --host (127.0.0.1)")
    if not call_timeout > 0:
        raise InputError(f"call timeout must be a positive number of seconds, got {call_timeout!r}")
    sock = bind(host, port)
    try:
        with tool_groups(tools_file, functions_file, mcp_config) as (groups, warnings):
            for w in warnings:
                print(f"warning: {w}", file=sys.stderr, flush=True)  # a tool left out: said once, at start
            ta = ToolACE.load(model, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, engine=engine, parallel=parallel,
                              kv_type=kv_type, cache_max_bytes=cache_max_bytes, speculative=speculative,
                              batching=batching)
            names = model_aliases(str(model), ta, aliases)
            app = create_app(ta, api_key=api_key, max_queue=max_queue, aliases=names, host=host,
                             allowed_hosts=allowed_hosts, cors_origins=cors_origins, request_timeout=request_timeout,
                             tool_groups=groups, auto_approve=yes, call_timeout=call_timeout, tool_warnings=warnings)
            run(app, sock, app.state.handlers.name, app.state.handlers.cancel_all, ready_file, parent_pid)
    finally:
        sock.close()
