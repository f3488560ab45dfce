"""One typed tool set per request: normalised tools, the resolved tool_choice and the compiled grammar (with its
validator), built once by whoever receives the tools (CLI, server, API) and passed down as this type.

Built sets are cached by content hash, so a desktop app sending the same 20 tools with every request normalises
and compiles them once (docs/design.md, "Tool sets")."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from toolace.errors import SchemaError
from toolace.limits import TOOLSET_CACHE_ENTRIES
from toolace.lru import LRU

from .compile import CompiledGrammar, compile_grammar
from .parser import Call
from .schema import WORK, Tool, normalise_tools
from .validate import CallValidator

__all__ = ["WORK", "ToolSet", "build_toolset"]


@dataclass(frozen=True)
class ToolSet:
    """Tools + tool_choice + parallel, compiled. Immutable, so one instance is shared by concurrent requests."""

    tools: list[Tool]  # normalised, in the order given
    tool_choice: str  # resolved: auto | required | none | a tool name
    parallel: bool
    grammar: CompiledGrammar
    key: str  # content hash of (tools as given, tool_choice, parallel)

    @property
    def calls_only(self) -> bool:
        return self.grammar.calls_only

    @property
    def validator(self) -> CallValidator:
        return self.grammar.validator

    def errors(self, calls: list[Call]) -> list[str]:
        return self.validator.errors(calls)


def _content_key(tools: Any, tool_choice: Any, parallel: bool) -> str:
    """sha256 of the tools as given (JSON, keys sorted), the tool_choice and the parallel flag."""
    if isinstance(tools, list) and tools and all(isinstance(t, Tool) for t in tools):
        tools = [t.original for t in tools]
    try:
        text = json.dumps([tools, tool_choice, bool(parallel)], sort_keys=True, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError) as e:
        raise SchemaError(f"tools are not JSON data: {e}") from None
    return hashlib.sha256(text.encode()).hexdigest()


_CACHE: LRU[str, ToolSet] = LRU(TOOLSET_CACHE_ENTRIES)


def build_toolset(tools: Any, tool_choice: Any = "auto", parallel: bool = True) -> ToolSet:
    """Normalise `tools` (any supported dialect, or Tool objects) and compile the grammar for `tool_choice`, or
    return the cached set for the same content."""
    if isinstance(tools, ToolSet):
        return tools
    if not isinstance(parallel, bool):
        raise SchemaError(f"parallel_tool_calls must be a boolean, got {parallel!r}")
    key = _content_key(tools, tool_choice, parallel)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    grammar = compile_grammar(normalise_tools(tools), tool_choice, parallel)
    built = ToolSet(grammar.tools, grammar.tool_choice, grammar.parallel, grammar, key)
    _CACHE.put(key, built)
    return built
