"""The queue bound and the per-request worker thread that runs the library's blocking generator for the event
loop. Once the client has gone the worker's stop event is set; the generator is handed that event (ToolACE.stream's
`cancel`), so it stops before its next token, and is closed, so the model lock is released and the slot freed."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from starlette.requests import Request

from toolace.limits import DISCONNECT_POLL_SECONDS, RETRY_AFTER_SECONDS

from .errors import ApiError, api_error


class Slots:
    """Waiting + running requests, bounded. Used only from the event loop thread."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def acquire(self) -> Callable[[], None]:
        """Take a slot (429 with Retry-After when full); returns the idempotent release."""
        if self.used >= self.limit:
            raise ApiError(429, f"server busy: {self.used} requests waiting or running (max_queue {self.limit}); "
                                "retry later", "rate_limit_error", "queue_full",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        self.used += 1
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self.used -= 1
        return release


class Worker:
    """Runs a (blocking) iterator in its own thread and hands its items to the event loop as (kind, value):
    ("item", x), ("end", None), ("error", exc), or ("gone", None) once the client disconnected."""

    def __init__(self, make_iter: Callable[[threading.Event], Iterable[Any]], on_exit: Callable[[], None],
                 timeout: float | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.deadline = None if timeout is None else self.loop.time() + timeout  # the request's, queue wait included
        self.timeout = timeout
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.stop = threading.Event()
        self.finished = threading.Event()  # the generator is closed (the model is free)
        self.record: dict[str, int] = {}  # what the server notes about an abandoned request
        self._make_iter, self._on_exit = make_iter, on_exit
        self._get: asyncio.Task[tuple[str, Any]] | None = None
        threading.Thread(target=self._run, name="toolace-generate", daemon=True).start()

    def _put(self, item: tuple[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # loop already closed (server shutting down)
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _run(self) -> None:
        it = None
        try:
            it = iter(self._make_iter(self.stop))
            for item in it:
                if self.stop.is_set():
                    self._put(("gone", None))
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
            self.finished.set()
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._on_exit)

    async def next(self, request: Request) -> tuple[str, Any]:
        """The next item; ("gone", None) once the client disconnected, ("timeout", None) once the request's deadline
        passed (either way the worker is told to stop)."""
        while True:
            if self._get is None:
                self._get = asyncio.ensure_future(self.queue.get())
            wait = DISCONNECT_POLL_SECONDS
            if self.deadline is not None:
                wait = min(wait, max(0.0, self.deadline - self.loop.time()))
            try:
                done, _ = await asyncio.wait({self._get}, timeout=wait)
            except asyncio.CancelledError:
                self.cancel()
                raise
            if done:
                task, self._get = self._get, None
                return task.result()
            if self.deadline is not None and self.loop.time() >= self.deadline:
                self.cancel()
                return ("timeout", None)
            if await request.is_disconnected():
                self.cancel()
                return ("gone", None)

    async def first(self, request: Request) -> tuple[str, Any]:
        """The first item: an error before any token is raised (an HTTP error); "gone" is left to the caller."""
        try:
            first = await self.next(request)
        except BaseException:
            self.cancel()
            raise
        if first[0] == "error":
            raise api_error(first[1])
        if first[0] == "timeout":
            raise self.timeout_error()
        return first

    def timeout_error(self) -> ApiError:
        return ApiError(504, f"the request ran past its deadline of {self.timeout:g} s (--request-timeout) and was "
                             "stopped", "server_error", "request_timeout")

    def cancel(self) -> None:
        self.stop.set()
        if self._get is not None:
            self._get.cancel()
            self._get = None


async def watch_disconnect(request: Request, on_gone: Callable[[], None]) -> None:
    """Call `on_gone` the moment the client hangs up. For a request whose body was read, the server's next receive
    message is http.disconnect: it arrives with the connection's loss, so no polling interval delays it. The
    caller cancels this task once its answer is ready (a finished response also reads as a disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            on_gone()
            return


async def stream_items(worker: Worker, request: Request, item: tuple[str, Any]) -> AsyncIterator[tuple[str, Any]]:
    """A streaming request's items from `item` on, as ("item", value), then ("error", ApiError) if the generation
    failed or passed its deadline; ends quietly when the client is gone or the generation ended. The worker is
    cancelled on the way out, however the stream ends (a no-op once it finished)."""
    try:
        while True:
            kind, value = item
            if kind in ("gone", "end"):
                return
            if kind in ("error", "timeout"):
                yield "error", api_error(value, started=True) if kind == "error" else worker.timeout_error()
                return
            yield "item", value
            item = await worker.next(request)
    finally:
        worker.cancel()
