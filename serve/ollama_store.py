"""Ollama's /api/pull and /api/delete onto toolace's model store (toolace.models, docs/models.md): a pull streams
Ollama's NDJSON progress (`status`, `digest`, `total`, `completed`) and ends with `success`; a client that hangs up
cancels the download, which leaves a resumable partial. Only Hugging Face references can be pulled
(`hf.co/USER/REPO:QUANT` or `USER/REPO:QUANT`): Ollama's own registry is not reachable from here."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from toolace.errors import DownloadError, InputError, ToolaceError

from .errors import ApiError
from .requests import read_json


def _ref(body: dict[str, Any]) -> str:
    ref = body.get("model") or body.get("name")
    if not isinstance(ref, str) or not ref:
        raise ApiError(400, "model is required")
    if "/" not in ref.removeprefix("hf.co/"):
        raise ApiError(400, f"cannot pull {ref!r}: Ollama's registry is not reachable here; pull a Hugging Face "
                            "repo instead, e.g. hf.co/USER/REPO:Q4_K_M")
    return ref


def _line(body: dict[str, Any]) -> bytes:
    return (json.dumps(body) + "\n").encode()


class OllamaStoreHandlers:
    """/api/pull and /api/delete for the App (which provides the body limits)."""

    max_body_bytes: int
    body_timeout: float

    async def ollama_pull(self, request: Request) -> Any:
        body = await read_json(request, self.max_body_bytes, self.body_timeout)
        ref = _ref(body)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()
        cancel = threading.Event()

        def progress(p: Any) -> None:
            line = {"status": f"pulling {p.file}", "digest": p.file, "total": p.total, "completed": p.done}
            loop.call_soon_threadsafe(queue.put_nowait, line)

        def work() -> None:
            from toolace import models

            try:
                entry = models.pull(ref, progress=progress, cancel=cancel)
                loop.call_soon_threadsafe(queue.put_nowait, {"status": "verifying sha256 digest",
                                                             "digest": entry.get("sha256")})
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except BaseException as e:  # noqa: BLE001 - handed to the response
                loop.call_soon_threadsafe(queue.put_nowait, e)

        threading.Thread(target=work, name="toolace-pull", daemon=True).start()
        if body.get("stream") is False:
            return await self._pull_whole(queue, cancel)
        return StreamingResponse(self._pull_lines(queue, cancel), media_type="application/x-ndjson")

    async def _pull_whole(self, queue: asyncio.Queue[Any], cancel: threading.Event) -> Any:
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return {"status": "success"}
                if isinstance(item, BaseException):
                    raise _pull_error(item)
        finally:
            cancel.set()

    async def _pull_lines(self, queue: asyncio.Queue[Any], cancel: threading.Event) -> AsyncIterator[bytes]:
        yield _line({"status": "pulling manifest"})
        try:
            while True:
                item = await queue.get()
                if item is None:
                    yield _line({"status": "success"})
                    return
                if isinstance(item, BaseException):
                    yield _line({"error": _pull_error(item).message})
                    return
                yield _line(item)
        finally:
            cancel.set()  # the client left (or the pull ended): stop the download, keep the resumable partial

    async def ollama_delete(self, request: Request) -> Any:
        from toolace import models

        body = await read_json(request, self.max_body_bytes, self.body_timeout)
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "model is required")
        try:
            removed = await asyncio.to_thread(models.remove, name.removesuffix(":latest"))
        except InputError as e:
            raise ApiError(404, str(e)) from None
        return JSONResponse({"status": "success", "freed": removed["freed"]})


def _pull_error(e: BaseException) -> ApiError:
    if isinstance(e, InputError):
        return ApiError(400, str(e))
    if isinstance(e, (DownloadError, ToolaceError)):
        return ApiError(500, str(e), "server_error")
    return ApiError(500, f"pull failed: {type(e).__name__}", "server_error")
