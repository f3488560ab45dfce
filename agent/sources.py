"""Where the CLI's tools come from: a JSON tools file (no code: the user supplies results), a Python file of
functions, an MCP config. One context manager gathers them and closes the MCP servers on every exit path."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from toolace.errors import InputError
from toolace.grammars.schema import read_tools_file

from .functions import function_tool
from .mcp import MCPServers
from .tools import ExecutableTool, as_tools


def load_functions(path: str | Path) -> list[ExecutableTool]:
    """The tools of a Python file: its `TOOLS` list if it has one, else every public function defined in it."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"functions file {str(p)!r}: no such file")
    name = f"toolace_functions_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise InputError(f"functions file {str(p)!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pydantic resolve the file's own types through sys.modules
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file: any fault is one line naming it
        sys.modules.pop(name, None)
        raise InputError(f"functions file {str(p)!r} failed to load: {type(e).__name__}: {e}") from None
    listed = getattr(module, "TOOLS", None)
    if listed is not None:
        if not isinstance(listed, (list, tuple)):
            raise InputError(f"functions file {str(p)!r}: TOOLS must be a list")
        return as_tools(listed)
    found = [obj for n, obj in vars(module).items() if not n.startswith("_") and inspect.isfunction(obj)
             and obj.__module__ == name]
    if not found:
        raise InputError(f"functions file {str(p)!r} defines no public function")
    return [function_tool(fn) for fn in found]


ToolGroup = tuple[str, list[ExecutableTool]]  # (where the tools come from, as a person reads it; the tools)


@contextmanager
def tool_groups(tools_file: str | None = None, functions_file: str | None = None,
                mcp_config: str | None = None) -> Iterator[tuple[list[ToolGroup], list[str]]]:
    """(groups, warnings): the tools by source (a tools file, a Python file, each MCP server), for listings such as
    the server's page; MCP servers run until the block ends, however it ends."""
    groups: list[ToolGroup] = []
    if tools_file:
        raw: Any = read_tools_file(tools_file)
        entries = raw.get("tools", raw.get("functions", [raw])) if isinstance(raw, dict) else raw
        if not isinstance(entries, list):
            raise InputError(f"tools file {tools_file!r}: expected a list of tools")
        groups.append((f"tools file {Path(tools_file).name}",
                       as_tools([dict(e) if isinstance(e, dict) else e for e in entries])))
    if functions_file:
        groups.append((f"Python file {Path(functions_file).name}", load_functions(functions_file)))
    if not mcp_config:
        yield groups, []
        return
    with MCPServers(mcp_config) as servers:
        for cfg in servers.configs:
            mine = [t for t in servers.tools if t.source == f"mcp:{cfg.name}"]
            groups.append((f"MCP server {cfg.name}", mine))
        yield groups, list(servers.warnings)


@contextmanager
def tool_sources(tools_file: str | None = None, functions_file: str | None = None,
                 mcp_config: str | None = None) -> Iterator[tuple[list[ExecutableTool], list[str]]]:
    """(tools, warnings) from the given sources; MCP servers run until the block ends, however it ends."""
    with tool_groups(tools_file, functions_file, mcp_config) as (groups, warnings):
        yield [t for _, tools in groups for t in tools], warnings
