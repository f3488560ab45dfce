"""Server-side tool runs (docs/page.md): the agent loop (toolace.agent.run, the same path as `toolace run`) on a
thread of its own, its events handed to the event loop for one SSE stream, its approvals answered over HTTP.

A run is a question → calls → approval → results → answer. The loop calls `approve(call)` from its thread; here
that hook announces the call (an `approval` event) and blocks on an event that the approve/deny endpoint, a Stop,
a client that hung up or a server shutdown sets. Nothing polls: every wake-up is an event being set."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from toolace.agent.loop import DECLINED, Approval, RunResult, stream_turn
from toolace.agent.loop import run as run_loop
from toolace.agent.tools import ExecutableTool

from .errors import api_error, error_body

DECISIONS = ("approve", "deny", "result")


class _Stop(threading.Event):
    """The run's stop flag; setting it also wakes every approval the run is waiting on."""

    def __init__(self, on_set: Callable[[], None]) -> None:
        super().__init__()
        self._on_set = on_set

    def set(self) -> None:
        super().set()
        self._on_set()


@dataclass
class _Pending:
    """One call waiting for the user: approval, or (a tool with no code) its result typed in."""

    name: str
    ask: bool
    woken: threading.Event = field(default_factory=threading.Event)
    decision: str | None = None
    content: str = ""


class Run:
    """One run: its thread, its event queue (drained by the SSE response), its pending approvals."""

    def __init__(self, tools: list[ExecutableTool], auto_approve: bool, allowed: set[str],
                 on_exit: Callable[[], None]) -> None:
        self.id = "run_" + secrets.token_hex(8)
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()
        self.tools, self.auto_approve, self.allowed = tools, auto_approve, allowed
        self.pending: dict[str, _Pending] = {}
        self.lock = threading.Lock()
        self.stop = _Stop(self._wake_all)
        self.finished = threading.Event()
        self._on_exit = on_exit

    # --- the event side --------------------------------------------------------------------------------------------
    def emit(self, kind: str, data: dict[str, Any] | None) -> None:
        item = None if data is None else (kind, data)
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        self.emit(kind, {k: v for k, v in event.items() if k != "type"})

    # --- the approval side (called on the run's thread) ------------------------------------------------------------
    def _wait(self, call: dict[str, Any], ask: bool) -> _Pending | None:
        """Announce the call and wait for the user; None when the run was stopped first."""
        pending = _Pending(call["name"], ask)
        with self.lock:
            if self.stop.is_set():
                return None
            self.pending[call["id"]] = pending
        self.emit("approval", {"id": call["id"], "name": call["name"], "ask": ask})
        pending.woken.wait()
        with self.lock:
            self.pending.pop(call["id"], None)
        return None if pending.decision is None else pending

    def approve(self, call: dict[str, Any]) -> Approval:
        tool = next((t for t in self.tools if t.name == call["name"]), None)
        if tool is not None and tool.execute is None:
            return True  # no code: the user types its result (ask), which is the approval
        if self.auto_approve or call["name"] in self.allowed:
            self.emit("approval", {"id": call["id"], "name": call["name"], "ask": False,
                                   "auto": "--yes" if self.auto_approve else "allowed for this conversation"})
            return True
        pending = self._wait(call, ask=False)
        if pending is None:
            return "stop"
        return pending.decision == "approve"

    def ask(self, call: dict[str, Any]) -> str:
        pending = self._wait(call, ask=True)
        if pending is None:
            return "error: the user stopped the run; no result was given"
        return pending.content if pending.decision == "result" else DECLINED

    def decide(self, call_id: str, decision: str, content: str, allow: bool) -> bool:
        """The user's answer for a waiting call (from the endpoint); False when no such call is waiting."""
        with self.lock:
            pending = self.pending.get(call_id)
            if pending is None or (decision == "result") != pending.ask:
                return False
            if allow and decision == "approve":
                self.allowed.add(pending.name)
            pending.decision, pending.content = decision, content
            pending.woken.set()
        return True

    def _wake_all(self) -> None:
        with self.lock:
            for pending in self.pending.values():
                pending.woken.set()

    # --- the thread --------------------------------------------------------------------------------------------------
    def start(self, ta: Any, messages: list[dict[str, Any]], params: dict[str, Any]) -> None:
        threading.Thread(target=self._main, args=(ta, messages, params), daemon=True,
                         name=f"toolace-{self.id}").start()

    def _main(self, ta: Any, messages: list[dict[str, Any]], params: dict[str, Any]) -> None:
        try:
            if self.tools:
                result = run_loop(ta, messages, self.tools, params["tool_choice"], params["max_steps"],
                                  self.approve, ask=self.ask, on_event=self.on_event, cancel=self.stop,
                                  call_timeout=params["call_timeout"], **params["options"])
            else:
                result = _plain_turn(ta, messages, params["options"], self.on_event, self.stop)
            self.emit("done", {"answer": result.answer, "finish_reason": result.finish_reason,
                               "messages": result.messages})
        except Exception as e:  # a decoding fault (prompt past the context, ...): the stream says so and ends
            err = api_error(e, started=True)
            self.emit("error", error_body(err.message, err.type, err.code))
        finally:
            self.finished.set()
            self.emit("end", None)
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._on_exit)


def _plain_turn(ta: Any, messages: list[dict[str, Any]], options: dict[str, Any],
                on_event: Callable[[dict[str, Any]], None], cancel: threading.Event) -> RunResult:
    """A server without tools: the page is a plain chat, one streamed turn per question."""
    history = [dict(m) for m in messages]
    result = stream_turn(ta, history, None, options, on_event, cancel)
    if result is None:
        return RunResult(None, [], history, "cancelled")
    history.append({"role": "assistant", "content": result.text or ""})
    return RunResult(result.text or "", [], history, "length" if result.finish_reason == "length" else "answer")
