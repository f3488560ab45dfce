"""Structured outputs: a JSON Schema → a GBNF grammar for JSON text (OpenAI's `response_format`), by the same
ValueCompiler as tool arguments with JSON's literal syntax swapped in: double quotes only, true/false/null, JSON
escapes. Each response is parsed and validated with jsonschema after decoding (the post-checked keywords too).

Alongside tools (tool_choice auto) the output is either the call list or the JSON value: the two grammars are
joined under one root, the JSON one's rules renamed so the two rule sets never clash."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import jsonschema

from toolace.errors import SchemaError
from toolace.limits import (
    JSON_FRACTION_DIGITS,
    JSON_INT_MAX,
    JSON_INT_MIN,
    JSON_NUMBER_INT_DIGITS,
    MAX_SCHEMA_DEPTH,
    RESPONSE_FORMAT_CACHE_ENTRIES,
)

from .gbnf import BASE_RULES, Grammar
from .numbers import int_range
from .schema import TUPLE_MARK, Tool, _normalise_schema, json_depth
from .toolset import ToolSet, build_toolset
from .values import PostCheck, ValueCompiler

# The call language's base rules with JSON's syntax for strings, booleans, null and "any value" (no tuples), and
# numbers a sane length (docs/budget.md, "Sane numbers"): an unbounded integer is an int64, a number has at most
# JSON_NUMBER_INT_DIGITS digits before its point and JSON_FRACTION_DIGITS after it (larger magnitudes use the
# exponent). Rule names stay the same, so the value compiler's references need no change; `big-int` is the integer
# of a schema whose own bounds lie beyond int64.
_INT_PART = f'("0" | [1-9] [0-9]{{0,{JSON_NUMBER_INT_DIGITS - 1}}})'
JSON_BASE_RULES: dict[str, str] = {
    **{k: v for k, v in BASE_RULES.items() if k not in ("any-tuple", "text")},
    "esc": r'"\\" (["\\/bfnrt] | "u" hex{4})',
    "dq-char": r'[^"\\\x00-\x1f] | esc',
    "str": r'"\"" dq-char* "\""',
    "bool": '"true" | "false"',
    "null": '"null"',
    "any": "str | num | bool | null | any-list | any-dict",
    "int": int_range(JSON_INT_MIN, JSON_INT_MAX),
    "big-int": BASE_RULES["int"],
    "frac": f'"." [0-9]{{1,{JSON_FRACTION_DIGITS}}}',
    "float": f'{_INT_PART} frac | [0-9] frac? exp | "1" ("." frac-308)? [eE] "+"? "308"',
    "frac-308": BASE_RULES["frac-308"].replace('"0"*', '"0"?'),  # 1.7976931348623157, one more digit at most
    "nonneg-num": f"{_INT_PART} | float",
}
# A Python \xNN escape, as GBNF literal text (regex character sets emit it for control characters): JSON's \u00NN.
_PY_HEX_ESCAPE = re.compile(r'"\\\\x([0-9a-fA-F]{2})"')
_GBNF_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[A-Za-z0-9-]+|\s+|.')
JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}
JSON_PREFIX = "json-"  # the JSON grammar's rule names inside a grammar joined with the call grammar


class JsonGrammar(Grammar):
    base = JSON_BASE_RULES

    def define(self, name: str, body: str) -> str:
        return super().define(name, _PY_HEX_ESCAPE.sub(r'"\\\\u00\1"', body))


class JsonValueCompiler(ValueCompiler):
    """ValueCompiler emitting JSON literals."""

    QUOTES = ('"',)
    INT_BOUNDS = (JSON_INT_MIN, JSON_INT_MAX)
    WIDE_INT = "big-int"

    @staticmethod
    def literal(value: Any, quote: str = '"') -> str:
        return json.dumps(value, ensure_ascii=False)

    def _array(self, s: dict[str, Any], pointer: str) -> str:
        return super()._array({k: v for k, v in s.items() if k != TUPLE_MARK}, pointer)  # JSON has no tuples


@dataclass(frozen=True)
class ResponseFormat:
    """A compiled response schema: its grammar (root = one JSON value) and the validator for the answer."""

    name: str
    schema: dict[str, Any]  # normalised
    gbnf: str
    key: str  # content hash of (name, schema as given)
    post_checks: list[PostCheck] = field(default_factory=list)

    @cached_property
    def validator(self) -> jsonschema.Draft202012Validator:
        return jsonschema.Draft202012Validator(self.schema,
                                               format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)

    @property
    def is_object(self) -> bool:
        return self.schema.get("type") == "object"

    def errors(self, text: str) -> list[str]:
        """Why `text` is not a JSON value valid under the schema (empty when it is)."""
        try:
            value = json.loads(text)
        except ValueError as e:
            return [f"response is not JSON: {e}"]
        except RecursionError:
            return ["response nests too deep to check"]
        return [f"response{''.join(f'/{p}' for p in err.absolute_path)}: {err.message}"
                for err in sorted(self.validator.iter_errors(value), key=lambda e: list(e.absolute_path))]

    def instruction(self) -> str:
        """The system-prompt line telling the model what to answer (the grammar enforces it either way)."""
        return ("Answer with a JSON value (no other text) that matches this JSON Schema:\n"
                + json.dumps(self.schema, ensure_ascii=False))

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`messages` with the instruction added to the system message (one is made if there is none)."""
        msgs = [dict(m) for m in messages]
        if msgs and msgs[0].get("role") in ("system", "developer") and isinstance(msgs[0].get("content"), str):
            msgs[0]["content"] = f"{msgs[0]['content']}\n\n{self.instruction()}"
            return msgs
        return [{"role": "system", "content": self.instruction()}, *msgs]


class _Lru:
    def __init__(self, size: int) -> None:
        self.size, self.items, self.lock = size, OrderedDict[str, Any](), threading.Lock()

    def get_or_make(self, key: str, make: Any) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = make()
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


_FORMATS = _Lru(RESPONSE_FORMAT_CACHE_ENTRIES)
_JOINED = _Lru(RESPONSE_FORMAT_CACHE_ENTRIES)


def compile_response_format(schema: Any = None, name: str = "response") -> ResponseFormat:
    """Compile a JSON Schema (None: any JSON object, OpenAI's json_object) into a ResponseFormat; cached by
    content."""
    if schema is None:
        schema = JSON_OBJECT_SCHEMA
    if not isinstance(schema, (dict, bool)):
        raise SchemaError(f"response_format schema must be a JSON Schema object, got {type(schema).__name__}")
    try:
        key = hashlib.sha256(json.dumps([name, schema], sort_keys=True).encode()).hexdigest()
    except (TypeError, ValueError, RecursionError) as e:
        raise SchemaError(f"response_format schema is not JSON data: {e}") from None
    return _FORMATS.get_or_make(key, lambda: _compile(schema, name, key))


def _compile(schema: Any, name: str, key: str) -> ResponseFormat:
    where = f"response_format {name!r}"
    if json_depth(schema, MAX_SCHEMA_DEPTH * 2 + 2) > MAX_SCHEMA_DEPTH * 2 + 2:
        raise SchemaError(f"{where}: schema nesting is deeper than {MAX_SCHEMA_DEPTH} levels")
    try:
        norm = _normalise_schema(schema, "")
        jsonschema.Draft202012Validator.check_schema(norm)
    except SchemaError as e:
        raise SchemaError(f"{where}: {e}") from None
    except jsonschema.SchemaError as e:
        at = "/" + "/".join(str(p) for p in e.absolute_path)
        raise SchemaError(f"{where}: invalid JSON Schema at {at}: {e.message}") from None
    if isinstance(norm, bool):
        norm = {} if norm else {"not": {}}
    g = JsonGrammar()
    vc = JsonValueCompiler(g, Tool(name=where, description="", parameters=norm, original={}))
    vc.check_productive(norm, "")
    root = vc.value(norm, "")
    return ResponseFormat(name, norm, g.render(root), key, vc.post)


def _rename(gbnf: str, prefix: str) -> str:
    """Every rule of `gbnf` renamed with `prefix` (names only: string literals and classes are left alone)."""
    names = {line.split(" ::= ", 1)[0] for line in gbnf.splitlines() if " ::= " in line}
    return "".join(prefix + t if t in names else t for t in _GBNF_TOKEN.findall(gbnf))


def response_grammar(toolset: ToolSet | None, fmt: ResponseFormat) -> str:
    """The grammar for an answer that is `fmt`'s JSON value, or (tool_choice auto) a call list or that value; a
    required or named tool_choice keeps the call grammar alone."""
    if toolset is None or toolset.tool_choice == "none":
        return fmt.gbnf
    if toolset.tool_choice != "auto":
        return toolset.grammar.gbnf
    if not fmt.is_object:  # a JSON array would start like a call list: the answer could not be told apart
        raise SchemaError("a response_format schema combined with tools must have type object")
    key = f"{toolset.key}|{fmt.key}"

    def join() -> str:
        calls = build_toolset(toolset.tools, "required", toolset.parallel).grammar.gbnf
        calls = calls.replace("root ::= ", "tool-calls ::= ", 1)
        return f"root ::= tool-calls | {JSON_PREFIX}root\n" + calls + _rename(fmt.gbnf, JSON_PREFIX)

    return str(_JOINED.get_or_make(key, join))
