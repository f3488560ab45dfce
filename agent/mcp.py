"""MCP servers as tools, through the official `mcp` SDK over stdio.

The tool loop is synchronous; the SDK is async. So the servers live on one background thread with its own event
loop: each server is one task that enters the SDK's `Client` (which spawns the process), lists the tools, then
waits for `close()`. Calls are submitted to that loop from the loop's worker threads. Leaving the `Client` context
is what shuts a server down (close stdin, wait, SIGTERM, SIGKILL: the SDK bounds each wait), and it runs on every
exit path: `close()`, `with`, Ctrl-C (KeyboardInterrupt unwinds through `with`) and interpreter exit (atexit)."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolace.errors import InputError, SchemaError, ToolServerError
from toolace.grammars.schema import check_name, normalise_tool
from toolace.limits import (
    MAX_MCP_CONFIG_BYTES,
    MAX_MCP_SERVERS,
    MAX_MCP_STDERR_CHARS,
    MAX_MCP_TOOL_PAGES,
    MCP_CLOSE_SECONDS,
    MCP_START_SECONDS,
)
from toolace.paths import read_json_file

from .tools import ExecutableTool, ToolOutput, error_text

_KEYS = ("command", "args", "env", "cwd", "type")


@dataclass(frozen=True)
class ServerConfig:
    """One entry of a Claude-Desktop-style `mcpServers` config."""

    name: str
    command: str
    args: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    cwd: str | None = None


def _string_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where} must be a list of strings")
    return tuple(value)


def _server(name: str, entry: Any, where: str, base: Path | None) -> ServerConfig:
    where = f"{where}: server {name!r}"
    if not isinstance(entry, dict):
        raise InputError(f"{where} must be an object with a 'command'")
    unknown = sorted(set(entry) - set(_KEYS))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(_KEYS)})")
    if entry.get("type", "stdio") != "stdio":
        raise InputError(f"{where}: only stdio servers are supported, got type {entry['type']!r}")
    command = entry.get("command")
    if not isinstance(command, str) or not command.strip():
        raise InputError(f"{where}: missing 'command' (the program that starts the server)")
    env = entry.get("env")
    if env is not None and (not isinstance(env, dict) or
                            not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise InputError(f"{where}: 'env' must map names to strings")
    cwd = entry.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise InputError(f"{where}: 'cwd' must be a string")
    if cwd is not None and base is not None and not Path(cwd).is_absolute():
        cwd = str(base / cwd)  # relative to the config file, not to wherever toolace was started
    return ServerConfig(name, command, _string_list(entry.get("args", []), f"{where}: 'args'"), env, cwd)


def parse_config(data: Any, where: str = "mcp config", base: Path | None = None) -> list[ServerConfig]:
    """Validate `{"mcpServers": {name: {command, args, env, cwd}}}`; any fault is one InputError naming it."""
    if not isinstance(data, dict) or not isinstance(data.get("mcpServers"), dict):
        raise InputError(f"{where}: expected an object with an 'mcpServers' object")
    extra = sorted(set(data) - {"mcpServers"})
    if extra:
        raise InputError(f"{where}: unknown top-level key(s) {', '.join(map(repr, extra))}")
    servers = data["mcpServers"]
    if not servers:
        raise InputError(f"{where}: 'mcpServers' is empty")
    if len(servers) > MAX_MCP_SERVERS:
        raise InputError(f"{where}: {len(servers)} servers, the limit is {MAX_MCP_SERVERS}")
    out = []
    for name, entry in servers.items():
        try:
            check_name(name, "server name")
        except SchemaError as e:
            raise InputError(f"{where}: {e}") from None
        out.append(_server(name, entry, where, base))
    return out


def read_config(path: str | Path) -> list[ServerConfig]:
    p = Path(path)
    what = f"mcp config {str(p)!r}"
    return parse_config(read_json_file(p, MAX_MCP_CONFIG_BYTES, InputError, what), what, p.resolve().parent)


def result_text(result: Any) -> str:
    """A CallToolResult as text: the text blocks joined; structured content as JSON when there is no text."""
    parts: list[str] = []
    for block in result.content or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource" and isinstance(getattr(block.resource, "text", None), str):
            parts.append(block.resource.text)
        elif kind == "resource_link":
            parts.append(f"[resource link: {block.uri}]")
        else:
            parts.append(f"[{kind or 'unknown'} content not shown]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups, which anyio task groups raise."""
    while isinstance(getattr(exc, "exceptions", None), tuple) and exc.exceptions:  # type: ignore[attr-defined]
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc


@dataclass
class _Connection:
    """One server: its config, the SDK client while it runs, and why it stopped."""

    config: ServerConfig
    ready: concurrent.futures.Future[list[Any]] = field(default_factory=concurrent.futures.Future)
    client: Any = None
    stop: asyncio.Event | None = None
    future: concurrent.futures.Future[None] | None = None
    task: asyncio.Task[None] | None = None
    done: threading.Event = field(default_factory=threading.Event)  # set once the SDK has shut the server down
    ended: str | None = None  # why the server is gone, once it is
    # The server's stderr: a real file (the SDK hands it to the child), quoted when the server fails.
    stderr: Any = field(default_factory=lambda: tempfile.TemporaryFile(  # noqa: SIM115 - closed by close()
        "w+", encoding="utf-8", errors="replace"))

    def stderr_tail(self) -> str:
        try:
            self.stderr.flush()
            self.stderr.seek(0)
            text = self.stderr.read()[-MAX_MCP_STDERR_CHARS:].strip()
        except (OSError, ValueError):
            return ""
        return f"; its stderr ends: {text}" if text else ""

    async def main(self) -> None:
        from mcp import Client, StdioServerParameters, stdio_client

        self.stop = asyncio.Event()
        self.task = asyncio.current_task()
        cfg = self.config
        params = StdioServerParameters(command=cfg.command, args=list(cfg.args), env=cfg.env, cwd=cfg.cwd)
        try:
            async with Client(stdio_client(params, errlog=self.stderr)) as client:
                tools = await _list_tools(client)
                self.client = client
                self.ready.set_result(tools)
                await self.stop.wait()
        except BaseException as e:  # recorded for the caller, re-raised when it is a cancel
            leaf = _leaf(e)
            self.ended = f"{type(leaf).__name__}: {leaf}" if str(leaf) else type(leaf).__name__
            if not self.ready.done():
                self.ready.set_exception(leaf)
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            self.client = None
            self.ended = self.ended or "closed"
            self.done.set()

    def shut(self, loop: asyncio.AbstractEventLoop) -> None:
        """Ask the server task to end: a running server is told to stop, one still starting is cancelled (the
        SDK's shutdown sequence runs either way). Returns at once; wait on `done`."""
        if self.task is None:  # scheduled but not started: it never spawns anything
            if self.future is not None and self.future.cancel():
                self.done.set()
            return
        if self.ready.done() and self.stop is not None:
            loop.call_soon_threadsafe(self.stop.set)
        else:
            loop.call_soon_threadsafe(self.task.cancel)


async def _list_tools(client: Any) -> list[Any]:
    tools: list[Any] = []
    cursor = None
    for _ in range(MAX_MCP_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


class MCPServers:
    """MCP servers started from a config, their tools as ExecutableTools. Use as a context manager (or call
    `start()` and `close()`): servers start once, and every exit path closes them."""

    def __init__(self, servers: Sequence[ServerConfig] | str | Path,
                 start_timeout: float = MCP_START_SECONDS) -> None:
        self.configs = read_config(servers) if isinstance(servers, (str, Path)) else list(servers)
        self.start_timeout = start_timeout
        self.tools: list[ExecutableTool] = []
        self.warnings: list[str] = []  # tools left out (bad names or schemas), one line each
        self._conns = [_Connection(c) for c in self.configs]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MCPServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> MCPServers:
        """Start every server, wait for each to initialize and list its tools (all within `start_timeout`)."""
        if self._loop is not None:
            return self
        self.tools, self.warnings = [], []  # a closed set can start again: fresh processes, fresh tools
        self._conns = [_Connection(c) for c in self.configs]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="toolace-mcp", daemon=True)
        self._thread.start()
        atexit.register(self.close)
        try:
            for conn in self._conns:
                conn.future = asyncio.run_coroutine_threadsafe(conn.main(), self._loop)
            deadline = time.monotonic() + self.start_timeout
            listed = [(conn, self._wait_ready(conn, deadline)) for conn in self._conns]
        except BaseException:
            self.close()
            raise
        self._expose(listed)
        return self

    def _wait_ready(self, conn: _Connection, deadline: float) -> list[Any]:
        name = conn.config.name
        try:
            return conn.ready.result(timeout=max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            raise ToolServerError(f"MCP server {name!r} did not initialize and list its tools within "
                                  f"{self.start_timeout:g} s{conn.stderr_tail()}") from None
        except OSError as e:
            raise ToolServerError(f"MCP server {name!r}: cannot start {conn.config.command!r}: "
                                  f"{e.strerror or e}") from None
        except Exception as e:  # whatever the SDK raised, as one line
            raise ToolServerError(f"MCP server {name!r} failed to start: {type(e).__name__}: {e}"
                                  f"{conn.stderr_tail()}") from None

    def _expose(self, listed: list[tuple[_Connection, list[Any]]]) -> None:
        """Names verbatim; a name two servers share becomes `server.tool` for both."""
        counts = Counter(t.name for _, tools in listed for t in tools)
        for conn, tools in listed:
            for t in tools:
                name = t.name if counts[t.name] == 1 else f"{conn.config.name}.{t.name}"
                spec = {"type": "function", "function": {
                    "name": name, "description": t.description or "",
                    "parameters": t.input_schema or {"type": "object", "properties": {}}}}
                try:
                    normalise_tool(spec)
                except SchemaError as e:
                    self.warnings.append(f"MCP server {conn.config.name!r}: tool left out: {e}")
                    continue
                self.tools.append(ExecutableTool(spec, self._executor(conn, t.name), concurrent=True,
                                                 source=f"mcp:{conn.config.name}"))

    def _executor(self, conn: _Connection, tool_name: str) -> Any:
        def execute(arguments: dict[str, Any], timeout: float) -> ToolOutput:
            return self.call(conn, tool_name, arguments, timeout)

        return execute

    def call(self, conn: _Connection, tool_name: str, arguments: dict[str, Any], timeout: float) -> ToolOutput:
        """One tools/call; every failure (server gone, timeout, protocol error) is an error result."""
        from mcp import MCPError

        client, loop, who = conn.client, self._loop, f"MCP server {conn.config.name!r}"
        if client is None or loop is None or loop.is_closed():
            return ToolOutput(f"error: {who} is not running ({conn.ended or 'not started'})", True)
        fut = asyncio.run_coroutine_threadsafe(client.call_tool(tool_name, arguments), loop)
        try:
            result = fut.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()  # the SDK tells the server the request is cancelled
            return ToolOutput(f"error: {who} did not answer {tool_name!r} within {timeout:g} s", True)
        except MCPError as e:
            return ToolOutput(f"error: {who}: {e.message}", True)
        except Exception as e:  # a dead pipe, a closed session: the model is told, the loop goes on
            return ToolOutput(f"{error_text(_leaf(e))} ({who}{', ' + conn.ended if conn.ended else ''})", True)
        return ToolOutput(result_text(result), bool(result.is_error))

    def close(self) -> None:
        """Stop every server and the loop thread; bounded by MCP_CLOSE_SECONDS. Safe to call twice."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        atexit.unregister(self.close)
        for conn in self._conns:
            conn.shut(loop)
        deadline = time.monotonic() + MCP_CLOSE_SECONDS
        for conn in self._conns:
            if conn.future is not None and not conn.done.wait(max(0.0, deadline - time.monotonic())) \
                    and conn.task is not None:
                loop.call_soon_threadsafe(conn.task.cancel)  # stop asked politely and it did not end: cancel
                conn.done.wait(max(0.1, deadline - time.monotonic()))
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(MCP_CLOSE_SECONDS)
        if not loop.is_running():
            loop.close()
        for conn in self._conns:
            conn.stderr.close()
