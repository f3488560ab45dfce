"""The POST /v1/responses handler (non-stream and stream), mixed into the server's App: parsing is in
responses_api.py, shaping in responses_output.py."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from toolace.api import CallResult, ToolACE
from toolace.limits import SSE_PING_SECONDS

from .errors import api_error, error_body, gone_response
from .request_model import EngineRequest
from .responses_api import ResponseStore, Stored, responses_request
from .responses_output import ResponseShape, ResponsesStream, conversation, new_id, output_items

if TYPE_CHECKING:
    from .worker import Worker


class ResponsesHandlers:
    """/v1/responses for the App (which provides admit, worker, collect, the store and the model)."""

    ta: ToolACE
    name: str
    store: ResponseStore
    admit: Callable[..., Any]
    worker: Callable[..., Worker]
    collect: Callable[..., Any]

    async def responses(self, request: Request) -> Any:
        req, release = await self.admit(request, lambda body: responses_request(body, self.store))
        worker = self.worker(lambda stop: self.ta.stream(req.messages, req.toolset, cancel=stop, **req.options),
                             release)
        shape = ResponseShape(new_id("resp"), int(time.time()), self.name, req)
        if not req.stream:
            results: list[CallResult] | None = await self.collect(request, worker)
            if results is None:
                return gone_response()
            output = output_items(results[0])
            self._keep(shape.rid, req, output)
            return JSONResponse(shape.body(output, "completed", results[0]))
        first = await worker.first(request)
        if first[0] == "gone":
            return gone_response()
        stream = ResponsesStream(shape, self.ta.memory)
        return EventSourceResponse(self._responses_sse(worker, request, first, stream), ping=SSE_PING_SECONDS,
                                   sep="\n")

    def _keep(self, rid: str, req: EngineRequest, output: list[dict[str, Any]]) -> None:
        if req.keep["store"]:
            self.store.put(rid, Stored(conversation(req, output)))

    async def _responses_sse(self, worker: Worker, request: Request, item: tuple[str, Any],
                             stream: ResponsesStream) -> AsyncIterator[dict[str, str]]:
        for ev in stream.start():
            yield _event(ev)
        try:
            while True:
                kind, value = item
                if kind in ("gone", "end"):
                    return
                if kind == "error":
                    err = api_error(value, started=True)
                    body = error_body(err.message, err.type, err.code)["error"]
                    yield _event(stream.event("error", **body))
                    return
                for ev in stream.events(value):
                    yield _event(ev)
                if value.kind == "done":
                    self._keep(stream.shape.rid, stream.shape.req, stream.output)
                if await request.is_disconnected():
                    worker.cancel()
                    return
                item = await worker.next(request)
        finally:
            worker.cancel()


def _event(ev: dict[str, Any]) -> dict[str, str]:
    return {"event": ev["type"], "data": json.dumps(ev, ensure_ascii=False)}
