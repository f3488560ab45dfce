"""Tools + tool_choice → one GBNF grammar for ToolACE's call language (docs/design.md, "Call language")."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from toolace.errors import SchemaError

from .gbnf import Grammar, gbnf_literal
from .schema import WORK, Tool, normalise_tools
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
    warnings: list[str] = field(default_factory=list)  # tools left out of the grammar, and why

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
        head += [f"# repaired: {r}" for t in self.tools for r in t.repairs]
        head += [f"# left out: {w}" for w in self.warnings]
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
    """Compile normalised tools (or raw tool dicts) into the grammar for `tool_choice`. A tool with no usable
    schema is left out with a warning, unless tool_choice names it or no usable tool remains (SchemaError)."""
    start = time.perf_counter()
    WORK["compile_grammar"] += 1
    tools = normalise_tools(tools)
    choice = resolve_tool_choice(tool_choice, tools)
    g = Grammar()
    post: list[PostCheck] = []
    call_rules: dict[str, str] = {}
    problems = {t.name: t.problem for t in tools if t.problem}
    for i, tool in enumerate(tools):
        if tool.problem or (choice not in TOOL_CHOICE_MODES and tool.name != choice):
            continue
        mark = _mark(g)
        try:
            call_rules[tool.name], checks = _compile_tool(g, tool, i)
        except SchemaError as e:
            _restore(g, mark)  # the rules of a tool left out would be dead weight in the grammar
            problems[tool.name] = str(e)
            continue
        post += checks
    if choice in problems:
        raise SchemaError(f"tool_choice names {choice!r}, which cannot be used: {problems[choice]}")
    usable = [t for t in tools if t.name not in problems]
    if not usable:  # one tool: its own message; several: each tool's
        raise SchemaError("; ".join(problems.values()) if len(problems) == 1 else
                          "no usable tool: " + "; ".join(problems.values()))
    call = g.define(g.reserve("call"), " | ".join(call_rules.values())) if choice != "none" else ""
    calls = f'"[" {call} (sep {call})* "]"' if parallel else f'"[" {call} "]"'
    root = {"auto": f"{calls} | text", "none": "text"}.get(choice, calls)
    warnings = [f"{p}; the tool is left out of the grammar" for p in problems.values()]
    return CompiledGrammar(gbnf=g.render(root), tools=usable, tool_choice=choice, parallel=parallel,
                           post_checks=post, compile_seconds=time.perf_counter() - start, warnings=warnings)


def _compile_tool(g: Grammar, tool: Tool, i: int) -> tuple[str, list[PostCheck]]:
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
    return g.define(g.reserve(f"call-{i}"), f"{gbnf_literal(tool.name + '(')} {args} \")\""), vc.post


def _mark(g: Grammar) -> tuple[int, int]:
    return len(g.rules), g._size  # the compiler owns the table it fills


def _restore(g: Grammar, mark: tuple[int, int]) -> None:
    """Drop the rules defined since `mark` (rule tables keep insertion order)."""
    n, size = mark
    for name in list(g.rules)[n:]:
        del g.rules[name]
    g._by_body = {b: r for b, r in g._by_body.items() if r in g.rules}
    g._size = size
