"""Tools + tool_choice → one GBNF grammar for ToolACE's call language (DESIGN.md §2)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from toolace.errors import SchemaError

from .gbnf import Grammar, gbnf_literal
from .schema import Tool, normalise_tools
from .validate import CallValidator
from .values import PostCheck, ValueCompiler

TOOL_CHOICE_MODES = ("auto", "required", "none")


@dataclass(frozen=True)
class CompiledGrammar:
    """The GBNF text plus what a decoder and validator need to know about it."""

    gbnf: str
    tools: list[Tool]
    tool_choice: str  # auto | required | none | a tool name
    parallel: bool
    post_checks: list[PostCheck] = field(default_factory=list)
    compile_seconds: float = 0.0

    @cached_property
    def validator(self) -> CallValidator:
        """Built once per grammar (the API caches grammars), not once per generated answer."""
        return CallValidator(self.tools)

    @property
    def calls_only(self) -> bool:
        return self.tool_choice not in ("auto", "none")

    def annotated(self) -> str:
        """The GBNF with the post-checked keywords as leading comments (what `toolace grammar` prints)."""
        head = [f"# tool_choice: {self.tool_choice}; parallel calls: {'yes' if self.parallel else 'no'}"]
        head += [f"# post-checked after decoding: {p}" for p in self.post_checks]
        return "\n".join(head) + "\n" + self.gbnf


def resolve_tool_choice(tool_choice: Any, tools: list[Tool]) -> str:
    """Accept 'auto' | 'required' | 'none' | a tool name | OpenAI's {"type": "function", "function": {"name"}}."""
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        if tool_choice.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise SchemaError(f"tool_choice object must be {{'type': 'function', 'function': {{'name': ...}}}}, "
                              f"got {tool_choice!r}")
        tool_choice = fn["name"]
    if not isinstance(tool_choice, str):
        raise SchemaError(f"tool_choice must be a string or object, got {type(tool_choice).__name__}")
    if tool_choice in TOOL_CHOICE_MODES:
        return tool_choice
    names = [t.name for t in tools]
    if tool_choice not in names:
        raise SchemaError(f"tool_choice names unknown tool {tool_choice!r}; known: {', '.join(names)}")
    return tool_choice


def compile_grammar(tools: list[Tool] | Any, tool_choice: Any = "auto", parallel: bool = True) -> CompiledGrammar:
    """Compile normalised tools (or raw tool dicts) into the grammar for `tool_choice`."""
    start = time.perf_counter()
    tools = normalise_tools(tools)
    choice = resolve_tool_choice(tool_choice, tools)
    g = Grammar()
    post: list[PostCheck] = []
    call_rules: dict[str, str] = {}
    for i, tool in enumerate(tools):
        if choice not in TOOL_CHOICE_MODES and tool.name != choice:
            continue
        vc = ValueCompiler(g, tool)
        params = tool.parameters["properties"]
        required = set(tool.parameters.get("required", []))
        entries = []
        for pname, sub in params.items():
            ptr = f"/properties/{pname}"
            if pname in required:
                vc.check_productive(sub, ptr)
            entries.append((f"{gbnf_literal(pname + '=')} {vc.value(sub, ptr)}", pname in required))
        args = vc.chain(entries)
        call_rules[tool.name] = g.define(g.reserve(f"call-{i}"), f"{gbnf_literal(tool.name + '(')} {args} \")\"")
        post += vc.post
    call = g.define(g.reserve("call"), " | ".join(call_rules.values())) if choice != "none" else ""
    calls = f'"[" {call} (sep {call})* "]"' if parallel else f'"[" {call} "]"'
    root = {"auto": f"{calls} | text", "none": "text"}.get(choice, calls)
    return CompiledGrammar(gbnf=g.render(root), tools=tools, tool_choice=choice, parallel=parallel,
                           post_checks=post, compile_seconds=time.perf_counter() - start)
