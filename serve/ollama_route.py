"""Ollama's routes (`/api/*`), mixed into the server's App: parsing and shaping are in ollama_api.py; generation
goes through the same admit → worker → events path as the OpenAI routes, so limits, cancellation and deadlines
are the same. Errors are Ollama's `{"error": "..."}` (serve/errors.py picks the shape by path)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from toolace.api import CallResult, StreamEvent, ToolACE

from . import ollama_api as api
from .errors import ApiError, gone_response
from .request_model import EngineRequest
from .requests import read_json
from .worker import stream_items

if TYPE_CHECKING:
    from .worker import Worker

NDJSON = "application/x-ndjson"


class OllamaHandlers:
    """/api/* for the App (which provides admit, worker, collect, the model and its names)."""

    ta: ToolACE
    name: str
    aliases: list[str]
    max_body_bytes: int
    body_timeout: float
    admit: Callable[..., Any]
    worker: Callable[..., Worker]
    collect: Callable[..., Any]
    _model_info: dict[str, Any] | None = None

    def model_info(self) -> dict[str, Any]:
        """The loaded file's header summary (read once; no tensor data), with its Ollama digest and date."""
        if self._model_info is None:
            from toolace.convert.info import info

            path = self.ta.model.path
            self._model_info = {**info(path), "digest": api.file_digest(str(path)),
                                "modified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                             time.gmtime(path.stat().st_mtime))}
        return self._model_info

    def ollama_names(self) -> list[str]:
        return [n if ":" in n else f"{n}:latest" for n in [self.name, *self.aliases]]

    async def ollama_version(self) -> dict[str, str]:
        return {"version": api.OLLAMA_VERSION}

    async def ollama_tags(self) -> dict[str, Any]:
        info = self.model_info()
        return {"models": [api.model_entry(n, info) for n in self.ollama_names()]}

    async def ollama_ps(self) -> dict[str, Any]:
        info = self.model_info()
        entry = {**api.model_entry(self.ollama_names()[0], info), "expires_at": "9999-12-31T23:59:59Z",
                 "size_vram": info["file_size"] if self.ta.model.n_gpu_layers else 0,
                 "context_length": self.ta.model.n_ctx}
        return {"models": [entry]}

    async def ollama_show(self, request: Request) -> dict[str, Any]:
        body = await read_json(request, self.max_body_bytes, self.body_timeout)
        if not isinstance(body.get("model") or body.get("name"), str):
            raise ApiError(400, "model is required")
        info = self.model_info()
        arch = info.get("architecture") or "unknown"
        template = self.ta.model.metadata.get("tokenizer.chat_template") or ""
        return {"modelfile": f"FROM {info['path']}\n", "parameters": "", "template": template,
                "details": api.details(info), "capabilities": ["completion", "tools"],
                "modified_at": info["modified_at"],
                "model_info": {"general.architecture": arch, "general.parameter_count": info.get("parameter_count"),
                               f"{arch}.context_length": info.get("context_length") or self.ta.model.n_ctx,
                               "toolace.n_ctx": self.ta.model.n_ctx}}

    async def ollama_embed(self) -> JSONResponse:
        return JSONResponse({"error": "embeddings are not supported: toolace serves a chat model for function "
                                      "calling"}, status_code=501)

    # --- generation ---------------------------------------------------------------------------------------------
    async def ollama_chat(self, request: Request) -> Any:
        req, release = await self.admit(request, lambda b: api.chat_request(b, self.ta.model.n_ctx))
        return await self._ollama_run(request, req, release, chat=True)

    async def ollama_generate(self, request: Request) -> Any:
        req, release = await self.admit(request, lambda b: api.generate_request(b, self.ta.model.n_ctx))
        if req is None:  # an empty prompt: "load the model", which is loaded already
            release()
            return {"model": self.name, "created_at": api.now_iso(), "response": "", "done": True,
                    "done_reason": "load"}
        return await self._ollama_run(request, req, release, chat=False)

    def _events(self, req: EngineRequest) -> Callable[[Any], Any]:
        if req.keep.get("raw") is not None:  # raw: the prompt as given, no template, no grammar
            def raw(stop: Any) -> Any:
                opts = {k: v for k, v in req.options.items() if k != "response_format"}
                text, stats = self.ta.complete(req.keep["raw"], cancel=stop, **opts)
                yield StreamEvent("text", text=text)
                yield StreamEvent("done", result=CallResult([], text, text, stats.finish_reason, stats=stats))
            return raw
        return lambda stop: self.ta.stream(req.messages, req.toolset, cancel=stop, **req.options)

    async def _ollama_run(self, request: Request, req: EngineRequest, release: Callable[[], None], chat: bool) -> Any:
        started = time.perf_counter()
        worker = self.worker(self._events(req), release)
        if not req.stream:
            results = await self.collect(request, worker)
            if results is None:
                return gone_response()
            return JSONResponse(self._final(results[0], chat, started, include_text=True))
        first = await worker.first(request)
        if first[0] == "gone":
            return gone_response()
        return StreamingResponse(self._ndjson(worker, request, first, chat, started), media_type=NDJSON)

    def _line(self, chat: bool, text: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.name, "created_at": api.now_iso(), "done": False}
        if chat:
            body["message"] = {"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}
        else:
            body["response"] = text
        return body

    def _final(self, result: CallResult, chat: bool, started: float, include_text: bool) -> dict[str, Any]:
        text = (result.text if result.text is not None else "") if include_text and not result.calls else ""
        calls = api.ollama_calls(result.calls) if include_text and result.calls else None
        return {**self._line(chat, text, calls), "done": True,
                "done_reason": api.done_reason(result.finish_reason, result.truncated),
                **api.durations(result.stats, started), "toolace": {"valid": result.valid, "errors": result.errors,
                                                                    "truncated": result.truncated}}

    async def _ndjson(self, worker: Worker, request: Request, item: tuple[str, Any], chat: bool,
                      started: float) -> AsyncIterator[bytes]:
        async for kind, value in stream_items(worker, request, item):
            if kind == "error":
                yield (json.dumps({"error": value.message}) + "\n").encode()
                return
            ev: StreamEvent = value
            if ev.kind == "text" and ev.text:
                yield (json.dumps(self._line(chat, ev.text), ensure_ascii=False) + "\n").encode()
            elif ev.kind == "done" and ev.result is not None:
                if ev.result.calls:  # the calls once complete and checked, arguments as objects
                    line = self._line(chat, "", api.ollama_calls(ev.result.calls))
                    yield (json.dumps(line, ensure_ascii=False) + "\n").encode()
                yield (json.dumps(self._final(ev.result, chat, started, include_text=False)) + "\n").encode()
