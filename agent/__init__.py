"""toolace.agent: the tool loop above the API. Python functions and MCP servers become tools; `run` asks the model,
runs its calls, feeds the results back, until it answers. The engine never imports this package.

The names below are loaded on first use (PEP 562), so `toolace run --help` and the other commands do not pay for
pydantic and the MCP SDK until a loop actually runs."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .executable import ExecutableTool, ToolOutput
    from .functions import function_tool
    from .loop import RunResult, Step, run
    from .mcp import MCPServers, ServerConfig, read_config

_HOMES = {"ExecutableTool": "executable", "ToolOutput": "executable", "function_tool": "functions",
          "RunResult": "loop", "Step": "loop", "run": "loop", "MCPServers": "mcp", "ServerConfig": "mcp",
          "read_config": "mcp"}
__all__ = ["ExecutableTool", "MCPServers", "RunResult", "ServerConfig", "Step", "ToolOutput", "function_tool",
           "read_config", "run"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
