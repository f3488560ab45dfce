"""Anthropic's routes (`/v1/messages`, `/v1/messages/count_tokens`), mixed into the server's App: parsing and
shaping are in anthropic_api.py; generation goes through the same admit → worker → events path as every dialect.
Streams send message_start, content_block_start/delta/stop (text_delta as the text comes; each tool_use block once
its call is complete and checked, its input as one input_json_delta), message_delta, message_stop."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from toolace.api import StreamEvent, ToolACE
from toolace.limits import SSE_PING_SECONDS

from . import anthropic_api as api
from .errors import anthropic_error_type, gone_response
from .worker import stream_items

if TYPE_CHECKING:
    from .worker import Worker


def _event(kind: str, **body: Any) -> dict[str, str]:
    return {"event": kind, "data": json.dumps({"type": kind, **body}, ensure_ascii=False)}


class AnthropicHandlers:
    """/v1/messages for the App (which provides admit, worker, collect and the model)."""

    ta: ToolACE
    name: str
    admit: Callable[..., Any]
    worker: Callable[..., Worker]
    collect: Callable[..., Any]

    async def messages(self, request: Request) -> Any:
        req, release = await self.admit(request, api.messages_request)
        worker = self.worker(lambda stop: self.ta.stream(req.messages, req.toolset, cancel=stop, **req.options),
                             release)
        mid = api.new_id()
        if not req.stream:
            results = await self.collect(request, worker)
            if results is None:
                return gone_response()
            return JSONResponse(api.message(mid, self.name, results[0]))
        first = await worker.first(request)
        if first[0] == "gone":
            return gone_response()
        prompt = len(self.ta.prompt_tokens(req.messages, req.toolset.tools if req.toolset else None))
        return EventSourceResponse(self._stream(worker, request, first, mid, prompt), ping=SSE_PING_SECONDS,
                                   sep="\n")

    async def count_tokens(self, request: Request) -> dict[str, int]:
        (messages, toolset), release = await self.admit(request, api.count_request)
        try:
            return {"input_tokens": len(self.ta.prompt_tokens(messages, toolset.tools if toolset else None))}
        finally:
            release()

    async def _stream(self, worker: Worker, request: Request, item: tuple[str, Any], mid: str,
                      prompt_tokens: int) -> AsyncIterator[dict[str, str]]:
        start = {"id": mid, "type": "message", "role": "assistant", "model": self.name, "content": [],
                 "stop_reason": None, "stop_sequence": None,
                 "usage": {"input_tokens": prompt_tokens, "output_tokens": 0}}
        yield _event("message_start", message=start)
        index, text_open = 0, False
        async for kind, value in stream_items(worker, request, item):
            if kind == "error":
                yield _event("error", error={"type": anthropic_error_type(value.status), "message": value.message})
                return
            ev: StreamEvent = value
            if ev.kind == "text" and ev.text:
                if not text_open:
                    yield _event("content_block_start", index=index, content_block={"type": "text", "text": ""})
                    text_open = True
                yield _event("content_block_delta", index=index, delta={"type": "text_delta", "text": ev.text})
            elif ev.kind == "done" and ev.result is not None:
                if text_open:
                    yield _event("content_block_stop", index=index)
                    index += 1
                for block in api.content_blocks(ev.result) if ev.result.calls else []:
                    yield _event("content_block_start", index=index, content_block={**block, "input": {}})
                    yield _event("content_block_delta", index=index, delta={
                        "type": "input_json_delta", "partial_json": json.dumps(block["input"], ensure_ascii=False)})
                    yield _event("content_block_stop", index=index)
                    index += 1
                reason, sequence = api.stop_reason(ev.result)
                yield _event("message_delta", delta={"stop_reason": reason, "stop_sequence": sequence},
                             usage={"output_tokens": ev.result.stats.completion_tokens})
                yield _event("message_stop")
