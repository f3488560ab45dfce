"""What the loop runs: a tool spec (a toolace tool dict) plus the code that executes it, and what a call returns.

Every tool source (Python functions, MCP servers, plain dicts with a function attached) becomes an `ExecutableTool`,
so the loop treats them alike. A tool without code (a dict from a --tools file) has `execute=None`: the caller's
`ask` hook supplies its result (the CLI asks the user, as `toolace chat` does)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from toolace.errors import SchemaError

from .executable import ExecutableTool, Executor, ToolOutput, to_text
from .functions import function_tool

__all__ = ["ExecutableTool", "Executor", "ToolOutput", "arguments_json", "as_tools", "error_text", "to_text"]

def _kwargs_executor(fn: Callable[..., Any]) -> Executor:
    """Run `fn(**arguments)` for a tool dict paired with a plain callable (no schema conversion: the dict has it)."""

    def execute(arguments: dict[str, Any], timeout: float) -> ToolOutput:
        return ToolOutput(to_text(fn(**arguments)))

    return execute


def as_tools(items: Iterable[Any]) -> list[ExecutableTool]:
    """Turn a mixed tool list into ExecutableTools: callables, (dict, callable) pairs, plain dicts (no code),
    ExecutableTools, and anything with a `tools` attribute holding ExecutableTools (an `MCPServers`)."""
    out: list[ExecutableTool] = []
    for n, item in enumerate(items):
        if isinstance(item, ExecutableTool):
            out.append(item)
        elif isinstance(item, dict):
            out.append(ExecutableTool(item, None, concurrent=False, source="user"))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], dict) and callable(item[1]):
            out.append(ExecutableTool(item[0], _kwargs_executor(item[1])))
        elif isinstance(getattr(item, "tools", None), list) and not isinstance(item, type):
            if callable(getattr(item, "start", None)):
                item.start()  # MCPServers: started on first use (once), closed by `with`, close() or at exit
            out.extend(as_tools(item.tools))
        elif callable(item) and not isinstance(item, type):
            out.append(function_tool(item))
        else:
            raise SchemaError(f"tool #{n}: expected a function, a tool dict, a (dict, function) pair or MCP "
                              f"servers, got {type(item).__name__}")
    return out


def error_text(exc: BaseException) -> str:
    """One line for the model about a failed call: the exception's type and message, never a traceback."""
    message = str(exc).strip() or "(no message)"
    return f"error: {type(exc).__name__}: {message}"


def arguments_json(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, ensure_ascii=False)
