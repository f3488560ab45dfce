"""Normalise tool definitions (OpenAI, bare, ToolACE/BFCL dialects) into JSON Schema, once, and check them.

The result keeps the user's original function dict for the prompt (the model was trained on the dialect as written)
and a JSON Schema for the grammar compiler and the validator."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from toolace.errors import SchemaError
from toolace.limits import MAX_ENUM_VALUES, MAX_NAME_CHARS, MAX_SCHEMA_DEPTH, MAX_TOOLS, MAX_TOOLS_FILE_BYTES
from toolace.paths import read_json_file

from .repairs import repair_defaults, repair_node

# Dialect type names → JSON Schema types: BFCL's Python dialect plus the Java/JavaScript names of its other sets.
TYPE_ALIASES: dict[str, str | None] = {
    "string": "string", "str": "string", "String": "string",
    "char": "string", "character": "string",
    "integer": "integer", "int": "integer", "long": "integer", "Long": "integer", "Integer": "integer",
    "short": "integer", "byte": "integer", "BigInteger": "integer",
    "number": "number", "float": "number", "double": "number", "Double": "number", "Float": "number",
    "boolean": "boolean", "bool": "boolean", "Boolean": "boolean",
    "array": "array", "list": "array", "tuple": "array", "Array": "array", "ArrayList": "array", "List": "array",
    "object": "object", "dict": "object", "HashMap": "object", "Map": "object", "Object": "object",
    "null": "null", "None": "null",
    # "any" and BFCL's one empty type string mean no type constraint (JSON Schema's absent "type").
    "any": None, "Any": None, "": None,
}
TUPLE_MARK = "x-toolace-tuple"  # set on arrays the dialect calls tuples: "(a, b)" is accepted besides "[a, b]"

# Work done, by kind ("normalise_tool", "compile_grammar"): tests read it to prove a request normalises each tool and
# compiles its grammar once.
WORK: Counter[str] = Counter()

# Keywords whose values are schemas / maps of schemas / lists of schemas (for walking).
SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else")
SUBSCHEMA_MAP_KEYS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
SUBSCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems")

# A name must not contain what delimits the call language: parentheses, brackets, comma, "=", quotes, backslash,
# control characters; nor start or end with whitespace.
_NAME_FORBIDDEN = re.compile(r"[()\[\],=\"'\\\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Tool:
    """One function: its verbatim name, the original dict (for the prompt) and normalised JSON Schema parameters."""

    name: str
    description: str
    parameters: dict[str, Any]
    original: dict[str, Any] = field(repr=False)
    repairs: tuple[str, ...] = ()  # "TOOL /pointer: what was done" (grammars/repairs.py)
    problem: str = ""  # why the tool has no usable schema: it is left out of the grammar with a warning

    @property
    def param_names(self) -> list[str]:
        return list(self.parameters.get("properties", {}))


def check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise SchemaError(f"{what} must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME_CHARS:
        raise SchemaError(f"{what} {name[:40]!r}... is longer than {MAX_NAME_CHARS} characters")
    bad = _NAME_FORBIDDEN.search(name)
    if bad:
        raise SchemaError(f"{what} {name!r} contains {bad.group()!r}, which delimits the call language")
    if name != name.strip():
        raise SchemaError(f"{what} {name!r} starts or ends with whitespace")
    return name


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value (the value itself is level 1), iteratively (a 1000-deep value must not hit
    Python's recursion limit); the walk stops at the first level past `limit`, which the caller refuses."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if d > limit:
            return d
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, d + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def _normalise_schema(node: Any, pointer: str, repairs: list[str] | None = None) -> Any:
    """Map dialect types to JSON Schema; recurse into subschemas. Returns a new dict. With `repairs` (tool
    parameters), sloppy nodes with one obvious reading are repaired and each repair recorded (grammars/repairs.py)."""
    if isinstance(node, bool):
        return node
    if not isinstance(node, dict):
        raise SchemaError(f"{pointer or '/'}: a schema must be an object, got {type(node).__name__}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type":
            out.update(_normalise_type(value, node, pointer))
        elif key in SUBSCHEMA_KEYS and isinstance(value, (dict, bool)):
            out[key] = _normalise_schema(value, f"{pointer}/{key}", repairs)
        elif key in SUBSCHEMA_MAP_KEYS and isinstance(value, dict):
            out[key] = {k: _normalise_schema(v, f"{pointer}/{key}/{k}", repairs) for k, v in value.items()}
        elif key in SUBSCHEMA_LIST_KEYS and isinstance(value, list):
            out[key] = [_normalise_schema(v, f"{pointer}/{key}/{i}", repairs) for i, v in enumerate(value)]
        elif key == "items" and isinstance(value, list):  # draft-4 tuple form
            out["prefixItems"] = [_normalise_schema(v, f"{pointer}/items/{i}", repairs) for i, v in enumerate(value)]
        else:
            out[key] = value
    if "enum" in out:
        if not isinstance(out["enum"], list) or not out["enum"]:
            raise SchemaError(f"{pointer or '/'}: enum must be a non-empty list")
        if len(out["enum"]) > MAX_ENUM_VALUES:
            raise SchemaError(f"{pointer or '/'}: enum has {len(out['enum'])} values, the limit is {MAX_ENUM_VALUES}")
    if repairs is not None:
        repair_node(out, pointer, repairs)
    return out


def _normalise_type(value: Any, node: dict[str, Any], pointer: str) -> dict[str, Any]:
    names = value if isinstance(value, list) else [value]
    mapped: list[str] = []
    for name in names:
        if not isinstance(name, str) or name not in TYPE_ALIASES:
            raise SchemaError(f"{pointer or '/'}: unknown type {name!r}")
        json_type = TYPE_ALIASES[name]
        if json_type is None:
            return {}  # any: no constraint
        if json_type not in mapped:
            mapped.append(json_type)
    out: dict[str, Any] = {"type": mapped[0] if len(mapped) == 1 else mapped}
    if "tuple" in names:
        out[TUPLE_MARK] = True
    return out


def _unwrap(entry: Any, index: int) -> dict[str, Any]:
    """Return the bare function dict of one tool entry in any supported dialect."""
    if not isinstance(entry, dict):
        raise SchemaError(f"tool #{index}: expected an object, got {type(entry).__name__}")
    if entry.get("type") == "function" and isinstance(entry.get("function"), dict):
        return entry["function"]
    if "name" in entry:
        return entry
    raise SchemaError(f"tool #{index}: no 'name' (expected a function object or {{'type': 'function', ...}})")


def normalise_tool(entry: Any, index: int = 0) -> Tool:
    """One tool entry → Tool. A bad entry or name is refused; a schema with no obvious reading gives a Tool whose
    `problem` says why (the compiler leaves it out with a warning, docs/budget.md)."""
    WORK["normalise_tool"] += 1
    fn = _unwrap(entry, index)
    name = check_name(fn.get("name"), f"tool #{index} name")
    try:
        return _normalise_function(fn, name)
    except SchemaError as e:
        return Tool(name=name, description="", parameters={"type": "object", "properties": {}}, original=fn,
                    problem=str(e))


def _normalise_function(fn: dict[str, Any], name: str) -> Tool:
    where = f"tool {name!r}"
    if json_depth(fn, MAX_SCHEMA_DEPTH * 2 + 2) > MAX_SCHEMA_DEPTH * 2 + 2:  # dict+key levels
        raise SchemaError(f"{where}: schema nesting is deeper than {MAX_SCHEMA_DEPTH} levels")
    description = fn.get("description", "")
    if not isinstance(description, str):
        raise SchemaError(f"{where}: description must be a string")
    if "parameters" in fn and "arguments" in fn:
        raise SchemaError(f"{where}: has both 'parameters' and 'arguments'")
    raw = fn.get("parameters", fn.get("arguments", {"type": "object", "properties": {}}))
    if raw is None:
        raw = {"type": "object", "properties": {}}
    if not isinstance(raw, dict):
        raise SchemaError(f"{where}: parameters must be an object")
    repairs: list[str] = []
    try:
        params = _normalise_schema(raw, "", repairs)
    except SchemaError as e:
        raise SchemaError(f"{where}: parameters{e}") from None
    if params.get("type", "object") != "object":
        raise SchemaError(f"{where}: parameters must have type object, got {params.get('type')!r}")
    params.setdefault("type", "object")
    params.setdefault("properties", {})
    if not isinstance(params["properties"], dict):
        raise SchemaError(f"{where}: properties must be an object")
    for pname in params["properties"]:
        check_name(pname, f"{where}: parameter name")
    required = params.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaError(f"{where}: required must be a list of strings")
    unknown = [r for r in required if r not in params["properties"]]
    if unknown:
        raise SchemaError(f"{where}: required names unknown parameter(s) {unknown}")
    try:
        jsonschema.Draft202012Validator.check_schema(params)
    except jsonschema.SchemaError as e:
        at = "/" + "/".join(str(p) for p in e.absolute_path)
        raise SchemaError(f"{where}: invalid JSON Schema at {at}: {e.message}") from None
    repair_defaults(params, repairs)
    return Tool(name=name, description=description, parameters=params, original=fn,
                repairs=tuple(f"{name} {r}" for r in repairs))


def normalise_tools(entries: Any) -> list[Tool]:
    """Normalise a tool list (or an object with a 'tools'/'functions' list, or a single tool)."""
    if isinstance(entries, dict):
        if isinstance(entries.get("tools"), list):
            entries = entries["tools"]
        elif isinstance(entries.get("functions"), list):
            entries = entries["functions"]
        else:
            entries = [entries]
    if not isinstance(entries, list):
        raise SchemaError(f"tools must be a list of function objects, got {type(entries).__name__}")
    if not entries:
        raise SchemaError("tools list is empty")
    if all(isinstance(e, Tool) for e in entries):
        return list(entries)  # already normalised
    if len(entries) > MAX_TOOLS:
        raise SchemaError(f"{len(entries)} tools given, the limit is {MAX_TOOLS}")
    tools = [normalise_tool(e, i) for i, e in enumerate(entries)]
    seen: set[str] = set()
    for t in tools:
        if t.name in seen:
            raise SchemaError(f"duplicate tool name {t.name!r}")
        seen.add(t.name)
    return tools


def read_tools_file(path: str | Path) -> Any:
    """The JSON of a tools file, size-bounded; normalised later, once, by `build_toolset`."""
    p = Path(path)
    return read_json_file(p, MAX_TOOLS_FILE_BYTES, SchemaError, f"tools file {str(p)!r}")


def load_tools(path: str | Path) -> list[Tool]:
    """Read and normalise a JSON tools file."""
    return normalise_tools(read_tools_file(path))
