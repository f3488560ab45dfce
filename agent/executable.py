"""A tool the loop can run: its spec (a toolace tool dict) plus the code behind it, and what a call returns. Its own
module so the tool sources (agent/functions.py, agent/mcp.py) and the loop's tool gathering (agent/tools.py) build
on it without importing each other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pydantic_core import to_json

from toolace.grammars.schema import normalise_tool

Executor = Callable[[dict[str, Any], float], "ToolOutput"]  # (arguments, timeout seconds) -> output


@dataclass(frozen=True)
class ToolOutput:
    """A call's result as the model will see it: text, and whether it is an error."""

    content: str
    is_error: bool = False


@dataclass(frozen=True)
class ExecutableTool:
    """A tool dict (any dialect toolace reads) and the code behind it."""

    spec: dict[str, Any]
    execute: Executor | None = None
    concurrent: bool = True  # False: never run beside another call of the same step
    source: str = "python"  # python | mcp:<server> | user: shown in listings and errors

    @cached_property
    def name(self) -> str:  # once per tool: normalising checks the whole schema
        return normalise_tool(self.spec).name


def to_text(value: Any) -> str:
    """A Python return value as tool-message text: strings verbatim, everything else as JSON."""
    if isinstance(value, str):
        return value
    return to_json(value, fallback=repr).decode()
