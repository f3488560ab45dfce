"""The built-in page at `/` and the HTTP surface it drives (docs/page.md): the tools the server runs, server-side
runs streamed as SSE events, approve/deny per call, Stop.

Only the page may drive it. The Host allow-list and the Origin check are the browser boundary's (serve/boundary.py),
which refuses any other origin on /ui/ even when --cors-origin allows it; on top of that every /ui/api/ request
carries the per-start token that only a page served by this process can read (it sits in the page's HTML; another
site's page cannot read our answers). The page itself may not be framed (clickjacking an Approve button)."""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from sse_starlette import EventSourceResponse

from toolace.agent.tools import ExecutableTool
from toolace.api import ToolACE
from toolace.errors import InputError
from toolace.limits import DEFAULT_MAX_STEPS, DISCONNECT_POLL_SECONDS, MAX_STEPS, SSE_PING_SECONDS

from .errors import ApiError
from .ollama_api import details
from .request_model import flag, max_tokens_of, sampling_of
from .requests import read_json
from .tool_runs import DECISIONS, Run

UI = Path(__file__).parent / "ui"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
TOKEN_HEADER = "x-toolace-token"
RUN_FIELDS = frozenset({"messages", "tool_choice", "allowed_tools", "options", "max_steps"})
OPTION_FIELDS = frozenset({"max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "logit_bias",
                           "frequency_penalty", "presence_penalty", "stop_loops", "speculative"})
ROLES = frozenset({"system", "user", "assistant", "tool"})
# The page loads nothing but its own files and talks to nothing but this server; it may not be framed.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                "frame-ancestors 'none'", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


class PageHandlers:
    """Mixed into the server's App: uses its model (`ta`), queue (`slots`, `admit`), live set and model info."""

    ta: ToolACE
    name: str
    live: set[Any]
    max_body_bytes: int
    body_timeout: float

    def init_page(self, tool_groups: Any, auto_approve: bool, call_timeout: float, warnings: list[str]) -> None:
        self.page_token = secrets.token_urlsafe(32)
        self.tool_groups: list[tuple[str, list[ExecutableTool]]] = [(label, list(t)) for label, t in tool_groups]
        self.auto_approve, self.call_timeout, self.tool_warnings = auto_approve, call_timeout, list(warnings)
        self.runs: dict[str, Run] = {}

    @property
    def run_tools(self) -> list[ExecutableTool]:
        return [t for _, tools in self.tool_groups for t in tools]

    def check_token(self, request: Request) -> None:
        given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.page_token.encode()):
            raise ApiError(403, "missing or wrong page token: only the page this server serves at / may use /ui/api/ "
                                f"(send its token as {TOKEN_HEADER})", "invalid_request_error", "page_token")

    async def page(self) -> HTMLResponse:
        html = (UI / "index.html").read_text(encoding="utf-8").replace("{{TOKEN}}", self.page_token)
        return HTMLResponse(html, headers=PAGE_HEADERS)

    async def asset(self, name: str) -> Response:
        if name not in ASSETS:
            raise ApiError(404, f"no page file {name!r}", "invalid_request_error", "not_found")
        return Response((UI / name).read_bytes(), media_type=ASSETS[name], headers=PAGE_HEADERS)

    async def page_info(self) -> dict[str, Any]:
        info = self.model_info()  # type: ignore[attr-defined]
        return {"model": self.name, "quant": details(info)["quantization_level"], "n_ctx": self.ta.model.n_ctx,
                "auto_approve": self.auto_approve, "call_timeout": self.call_timeout, "warnings": self.tool_warnings,
                "sources": [{"source": label, "tools": [
                    {"name": t.name, "description": t.spec.get("function", t.spec).get("description", ""),
                     "runs": t.execute is not None} for t in tools]} for label, tools in self.tool_groups]}

    # --- runs -------------------------------------------------------------------------------------------------------
    def _run_params(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any], set[str]]:
        """The run request checked (each fault one 400 naming its field), the messages rendered once."""
        unknown = sorted(set(body) - RUN_FIELDS)
        if unknown:
            raise ApiError(400, f"unknown field(s) {', '.join(map(repr, unknown))} (known: "
                                f"{', '.join(sorted(RUN_FIELDS))})", param=unknown[0])
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and m.get("role") in ROLES for m in messages):
            raise ApiError(400, "messages must be a non-empty list of {role, content} objects (role: "
                                f"{', '.join(sorted(ROLES))})", param="messages")
        opts = body.get("options") or {}
        if not isinstance(opts, dict) or set(opts) - OPTION_FIELDS:
            raise ApiError(400, f"options must be an object with fields among {', '.join(sorted(OPTION_FIELDS))}",
                           param="options")
        options = {"max_tokens": max_tokens_of(opts.get("max_tokens"), "options.max_tokens"), **sampling_of(opts)}
        if opts.get("stop_loops") is not None:
            options["stop_loops"] = flag(opts["stop_loops"], "options.stop_loops", True)
        if opts.get("speculative") is not None:
            options["speculative"] = flag(opts["speculative"], "options.speculative", True)
        steps = body.get("max_steps", DEFAULT_MAX_STEPS)
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
            raise ApiError(400, f"max_steps must be an integer from 1 to {MAX_STEPS}", param="max_steps")
        allowed = body.get("allowed_tools") or []
        if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
            raise ApiError(400, "allowed_tools must be a list of tool names", param="allowed_tools")
        choice = body.get("tool_choice") or "auto"
        tools = self.run_tools
        if not tools and choice not in ("auto", "none"):
            raise ApiError(400, "tool_choice needs tools: this server was started without any", param="tool_choice")
        toolset = ToolACE.toolset([t.spec for t in tools], choice) if tools else None  # a bad choice: 400
        try:
            self.ta.prompt_tokens(messages, toolset.tools if toolset else None)  # bad messages: 400 before a run
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"messages cannot be rendered: {e}") from None
        return messages, {"tool_choice": choice, "max_steps": steps, "call_timeout": self.call_timeout,
                          "options": options}, set(allowed)

    async def start_run(self, request: Request) -> EventSourceResponse:
        (messages, params, allowed), release = await self.admit(request, self._run_params)  # type: ignore[attr-defined]

        def on_exit() -> None:
            release()
            self.live.discard(run)
            self.runs.pop(run.id, None)

        run = Run(self.run_tools, self.auto_approve, allowed, on_exit)
        self.runs[run.id] = run
        self.live.add(run)  # a server shutdown stops it (cancel_all)
        run.start(self.ta, messages, params)
        return EventSourceResponse(_events(request, run), ping=SSE_PING_SECONDS, sep="\n")

    def _run(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise ApiError(404, f"no run {run_id!r} is going on", "invalid_request_error", "run_not_found")
        return run

    async def decide(self, request: Request, run_id: str, call_id: str) -> dict[str, Any]:
        body = await read_json(request, self.max_body_bytes, self.body_timeout)
        decision, content, allow = body.get("decision"), body.get("content", ""), body.get("allow_tool", False)
        if set(body) - {"decision", "content", "allow_tool"} or decision not in DECISIONS \
                or not isinstance(content, str) or not isinstance(allow, bool):
            raise ApiError(400, "the body must be {\"decision\": \"approve\" | \"deny\" | \"result\", \"content\": "
                                "text (for result), \"allow_tool\": bool (with approve)}", param="decision")
        if not self._run(run_id).decide(call_id, decision, content, allow):
            raise ApiError(409, f"call {call_id!r} of run {run_id!r} is not waiting for a {decision!r} decision",
                           "invalid_request_error", "not_waiting")
        return {"id": call_id, "decision": decision}

    async def stop_run(self, run_id: str) -> dict[str, Any]:
        self._run(run_id).stop.set()
        return {"id": run_id, "stopped": True}


async def _events(request: Request, run: Run) -> Any:
    """The run's events as SSE, the run's id first; leaving early (the client hung up, the response was cancelled)
    stops the run: the generation before its next token, a pending approval at once."""
    try:
        yield {"event": "run", "data": json.dumps({"id": run.id})}
        while True:
            try:
                item = await asyncio.wait_for(run.queue.get(), DISCONNECT_POLL_SECONDS)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            if item is None:
                return
            kind, data = item
            yield {"event": kind, "data": json.dumps(data, ensure_ascii=False)}
    finally:
        run.stop.set()  # a no-op for a run that already ended


def page_routes(app: FastAPI, h: Any, keyed: list[Any]) -> None:
    from fastapi import Depends

    page = [*keyed, Depends(h.check_token)]
    app.add_api_route("/", h.page, methods=["GET"], dependencies=keyed, response_class=HTMLResponse)
    app.add_api_route("/ui/{name}", h.asset, methods=["GET"], dependencies=keyed)
    app.add_api_route("/ui/api/info", h.page_info, methods=["GET"], dependencies=page)
    app.add_api_route("/ui/api/runs", h.start_run, methods=["POST"], dependencies=page)
    app.add_api_route("/ui/api/runs/{run_id}/calls/{call_id}", h.decide, methods=["POST"], dependencies=page)
    app.add_api_route("/ui/api/runs/{run_id}/stop", h.stop_run, methods=["POST"], dependencies=page)
