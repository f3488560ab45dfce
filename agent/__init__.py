"""toolace.agent: the tool loop above the API. Python functions and MCP servers become tools; `run` asks the model,
runs its calls, feeds the results back, until it answers. The engine never imports this package."""

from __future__ import annotations

from .functions import function_tool
from .loop import RunResult, Step, run
from .mcp import MCPServers, ServerConfig, read_config
from .tools import ExecutableTool, ToolOutput

__all__ = ["ExecutableTool", "MCPServers", "RunResult", "ServerConfig", "Step", "ToolOutput", "function_tool",
           "read_config", "run"]
