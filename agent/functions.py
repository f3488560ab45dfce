"""A plain Python function (sync or async) as a tool: name, description and parameter descriptions from its
docstring (Google, NumPy or reST, via docstring-parser), JSON Schema from its type hints (via pydantic).

Why pydantic: it already maps every hint kind the issue lists (Optional, Literal, Enum, tuples, dataclasses, models,
defaults) to JSON Schema, and the same model then validates and converts the model's arguments before the call,
so schema and conversion can never disagree. It is what the MCP SDK's own server uses for the same job."""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docstring_parser
from pydantic import BaseModel, ConfigDict, Field, PydanticUserError, ValidationError, create_model

from toolace.errors import SchemaError
from toolace.grammars.schema import SUBSCHEMA_KEYS, SUBSCHEMA_LIST_KEYS, SUBSCHEMA_MAP_KEYS, check_name

from .executable import ExecutableTool, ToolOutput, to_text

_POSITIONAL_ONLY = inspect.Parameter.POSITIONAL_ONLY
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


@dataclass(frozen=True)
class _Param:
    name: str  # the Python parameter name (and the name the model sees)
    field: str  # the pydantic field name: differs when the name is private or shadows a BaseModel attribute
    positional_only: bool


def _field_name(name: str) -> str:
    if name.startswith("_") or hasattr(BaseModel, name):
        return f"field_{name.lstrip('_')}_{len(name)}"
    return name


def _describe(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The docstring's description and its per-parameter descriptions (any of the three styles)."""
    doc = docstring_parser.parse(inspect.getdoc(fn) or "")
    text = "\n\n".join(p for p in (doc.short_description, doc.long_description) if p)
    return text, {p.arg_name: (p.description or "").strip() for p in doc.params if p.description}


def arguments_model(fn: Callable[..., Any], name: str) -> tuple[type[BaseModel], list[_Param], str]:
    """A pydantic model of fn's parameters (extra arguments forbidden), the parameter mapping, the description."""
    try:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
    except (TypeError, ValueError, NameError) as e:
        raise SchemaError(f"function {name!r}: cannot read its signature or type hints: {e}") from None
    description, param_docs = _describe(fn)
    fields: dict[str, Any] = {}
    params: list[_Param] = []
    for p in sig.parameters.values():
        if p.kind in _VARIADIC:
            raise SchemaError(f"function {name!r}: *{p.name} parameters cannot be described as a tool")
        check_name(p.name, f"function {name!r}: parameter name")
        field = _field_name(p.name)
        default = ... if p.default is inspect.Parameter.empty else p.default
        info = Field(default, description=param_docs.get(p.name), alias=p.name if field != p.name else None)
        fields[field] = (hints.get(p.name, Any), info)
        params.append(_Param(p.name, field, p.kind == _POSITIONAL_ONLY))
    try:
        model = create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid", populate_by_name=False),
                             **fields)
    except PydanticUserError as e:
        raise SchemaError(f"function {name!r}: a parameter's type hint has no JSON Schema: {e.message}") from None
    return model, params, description


def _walk(node: Any, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    """Apply fn to every subschema, bottom up, following only schema positions (not property names or values)."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key, value in node.items():
        if key in SUBSCHEMA_KEYS and isinstance(value, dict):
            out[key] = _walk(value, fn)
        elif key in SUBSCHEMA_MAP_KEYS and isinstance(value, dict):
            out[key] = {k: _walk(v, fn) for k, v in value.items()}
        elif key in SUBSCHEMA_LIST_KEYS and isinstance(value, list):
            out[key] = [_walk(v, fn) for v in value]
    return fn(out)


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace pydantic's `#/$defs/X` references by the definitions themselves, so the prompt shows each type where
    it is used; only recursive definitions (which cannot be inlined) stay in `$defs`."""
    defs = schema.get("$defs", {})
    recursive: set[str] = set()

    def resolve(node: Any, stack: frozenset[str]) -> Any:
        def one(n: dict[str, Any]) -> dict[str, Any]:
            ref = n.get("$ref")
            if not (isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in defs):
                return n
            target = ref[8:]
            if target in stack:
                recursive.add(target)
                return n
            rest = {k: v for k, v in n.items() if k != "$ref"}
            return {**resolve(defs[target], stack | {target}), **rest}

        return _walk(node, one)

    body = resolve({k: v for k, v in schema.items() if k != "$defs"}, frozenset())
    kept: dict[str, Any] = {}
    while recursive - kept.keys():
        for target in sorted(recursive - kept.keys()):
            kept[target] = resolve(defs[target], frozenset({target}))
    if kept:
        body["$defs"] = kept
    return body


def _drop_titles(node: dict[str, Any]) -> dict[str, Any]:
    node.pop("title", None)  # pydantic's "Title"-cased names repeat the property names and only cost prompt tokens
    return node


def parameters_schema(model: type[BaseModel]) -> dict[str, Any]:
    """JSON Schema of an arguments model as a toolace tool's `parameters` (no titles, local refs inlined)."""
    try:
        schema = model.model_json_schema(by_alias=True)
    except PydanticUserError as e:  # e.g. a Callable parameter: valid Python, no JSON form
        raise SchemaError(f"{model.__name__}: a parameter's type hint has no JSON Schema: {e.message}") from None
    schema = _walk(_inline_refs(schema), _drop_titles)
    schema.setdefault("properties", {})
    return schema


def _short_errors(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in err['loc']) or '(arguments)'}: {err['msg']}" for err in e.errors())


async def _bounded(awaitable: Any, timeout: float) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


def _executor(fn: Callable[..., Any], model: type[BaseModel], params: list[_Param]) -> Any:
    def execute(arguments: dict[str, Any], timeout: float) -> ToolOutput:
        try:
            values = model.model_validate(arguments)
        except ValidationError as e:
            return ToolOutput(f"error: invalid arguments: {_short_errors(e)}", True)
        args = [getattr(values, p.field) for p in params if p.positional_only]
        kwargs = {p.name: getattr(values, p.field) for p in params if not p.positional_only}
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):  # async def, or a callable returning a coroutine: this worker's own loop
            result = asyncio.run(_bounded(result, timeout))
        return ToolOutput(to_text(result))

    return execute


def function_tool(fn: Callable[..., Any], name: str | None = None, description: str | None = None) -> ExecutableTool:
    """A Python function (sync or async) as an ExecutableTool: schema from hints, text from the docstring."""
    if not callable(fn):
        raise SchemaError(f"expected a function, got {type(fn).__name__}")
    derived = getattr(fn, "__name__", None)
    if name is None and not (isinstance(derived, str) and derived.isidentifier()):
        raise SchemaError(f"{fn!r} has no name a tool can use (a lambda or a partial?): pass name=")
    tool_name = check_name(name or derived, "function name")
    model, params, doc = arguments_model(fn, tool_name)
    spec = {"type": "function", "function": {"name": tool_name, "description": description or doc,
                                             "parameters": parameters_schema(model)}}
    return ExecutableTool(spec, _executor(fn, model, params), concurrent=True, source="python")

