"""Score parsed calls against BFCL possible answers, following BFCL's AST rules (our own implementation).

A possible answer lists, per parameter, the acceptable values ("" = the parameter may be omitted). Values nested in a
dict are again lists of alternatives; list elements are concrete. Strings compare after BFCL's normalisation, so
"April 1, 2024" and "april 1 2024" are the same answer. Java/JavaScript parameters are strings holding source text:
they are compared as text, and where the answer is not a string the source is read as a literal first."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from toolace.errors import InputError
from toolace.eval.bfcl import STRING_LANGUAGES, Question, is_irrelevance
from toolace.grammars.schema import Tool, normalise_tools

# BFCL's normalisation: spaces and these punctuation marks carry no meaning in an answer; case neither.
_NOISE = re.compile(r"[ ,./\-_*^]")
_MISSING = object()


@dataclass(frozen=True)
class CheckResult:
    correct: bool
    reason: str = ""


def standardize_string(text: str) -> str:
    """Lowercase, drop spaces and `,./-_*^`, and treat single quotes as double quotes (as BFCL does)."""
    return _NOISE.sub("", text).lower().replace("'", '"')


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)  # bool is an int subclass in Python


def _types(schema: dict[str, Any]) -> list[str]:
    t = schema.get("type")
    return [] if t is None else [t] if isinstance(t, str) else list(t)


def _type_ok(value: Any, schema: dict[str, Any]) -> bool:
    """BFCL's type rule: exact types, except that an int is accepted where a float (number) is declared."""
    types = _types(schema)
    if not types:
        return True
    checks = {"string": lambda v: isinstance(v, str), "integer": lambda v: _is_number(v) and isinstance(v, int),
              "number": _is_number, "boolean": lambda v: isinstance(v, bool),
              "array": lambda v: isinstance(v, list), "object": lambda v: isinstance(v, dict),
              "null": lambda v: v is None}
    return any(checks.get(t, lambda v: True)(value) for t in types)


def _match(value: Any, expected: Any, schema: dict[str, Any], lang: bool) -> str | None:
    """None when `value` equals the concrete answer `expected` under BFCL's rules, else why not."""
    if lang and isinstance(value, str) and not isinstance(expected, str):
        parsed = source_literal(value)
        return "source text not a literal" if parsed is _MISSING else _match(parsed, expected, {}, lang=False)
    if not _type_ok(value, schema):
        return f"wrong type {type(value).__name__}"
    if isinstance(expected, str):
        if isinstance(value, str) and (standardize_string(value) == standardize_string(expected) or
                                       lang and standardize_string(_unquote(value)) == standardize_string(expected)):
            return None
        return f"{value!r} not allowed"
    if isinstance(expected, bool) or expected is None:
        return None if value is expected else f"{value!r} not allowed"
    if _is_number(expected):
        return None if _is_number(value) and value == expected else f"{value!r} not allowed"
    if isinstance(expected, list):
        if not isinstance(value, list) or len(value) != len(expected):
            return f"{value!r} not allowed"
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        for i, (v, e) in enumerate(zip(value, expected, strict=True)):
            why = _match(v, e, items, lang)
            if why:
                return f"item {i}: {why}"
        return None
    if isinstance(expected, dict):
        if not isinstance(value, dict):
            return f"{value!r} not allowed"
        return _match_dict(value, expected, schema, lang)
    return None if value == expected else f"{value!r} not allowed"


def _match_dict(value: dict[str, Any], expected: dict[str, Any], schema: dict[str, Any], lang: bool) -> str | None:
    """Key by key: each expected key maps to a list of allowed values ("" = key may be absent)."""
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    for key in value:
        if key not in expected:
            return f"unexpected key {key!r}"
    for key, alts in expected.items():
        alts = alts if isinstance(alts, list) else [alts]
        if key not in value:
            if "" not in alts:
                return f"missing key {key!r}"
            continue
        if _first_failure(value[key], alts, props.get(key, {}), lang) is not None:
            return f"key {key!r}: {value[key]!r} not allowed"
    return None


def _first_failure(value: Any, alternatives: list[Any], schema: dict[str, Any], lang: bool) -> str | None:
    """None when some alternative matches; otherwise the reason given by the last one tried."""
    why = "no allowed value"
    for alt in alternatives:
        if alt == "" and not isinstance(value, str):
            continue  # "" marks "may be omitted", it is not a value a non-string can equal
        why = _match(value, alt, schema, lang)
        if why is None:
            return None
    return why


def check_call(call: dict[str, Any], answer: dict[str, dict[str, list[Any]]], tools: dict[str, Tool],
               lang: bool = False) -> CheckResult:
    """One model call against one ground-truth call `{name: {param: [allowed...]}}`."""
    (name, params), = answer.items()
    if call.get("name") != name:
        return CheckResult(False, f"wrong function: {call.get('name')!r}, expected {name!r}")
    tool = tools.get(name)
    if tool is None:
        raise InputError(f"ground truth names function {name!r}, which the question does not define")
    props: dict[str, Any] = tool.parameters.get("properties", {})
    args = {k: _as_lists(v) for k, v in call.get("arguments", {}).items()}
    for req in tool.parameters.get("required", []):
        if req not in args:
            return CheckResult(False, f"missing required param {req}")
    for key in args:
        if key not in props:
            return CheckResult(False, f"unknown param {key}")
        if key not in params:
            return CheckResult(False, f"unexpected param {key}")
    for key, alts in params.items():
        if key not in args:
            if "" not in alts:  # optional in the schema, but the question states it
                return CheckResult(False, f"missing param {key}")
            continue
        schema = props[key] if isinstance(props[key], dict) else {}
        if not lang and not _type_ok(args[key], schema):
            return CheckResult(False, f"wrong type for {key}: {type(args[key]).__name__}, "
                                      f"expected {'/'.join(_types(schema))}")
        why = _first_failure(args[key], alts, schema, lang)
        if why is not None:
            return CheckResult(False, f"value of {key} not allowed: {_short(args[key])} ({why})")
    return CheckResult(True, "ok")


def _as_lists(value: Any) -> Any:
    """Tuples compare as lists (the parser yields lists, but API callers may pass tuples)."""
    if isinstance(value, list | tuple):
        return [_as_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_lists(v) for k, v in value.items()}
    return value


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _perfect_matching(ok: list[list[bool]]) -> bool:
    """Kuhn's augmenting paths: can every ground-truth call (column) get its own model call (row)?"""
    n = len(ok)
    owner: list[int] = [-1] * n

    def augment(row: int, seen: list[bool]) -> bool:
        for col in range(n):
            if ok[row][col] and not seen[col]:
                seen[col] = True
                if owner[col] < 0 or augment(owner[col], seen):
                    owner[col] = row
                    return True
        return False

    return all(augment(row, [False] * n) for row in range(n))


def check(question: Question, calls: Sequence[dict[str, Any]], tools: Sequence[Tool] | None = None) -> CheckResult:
    """Score a model's parsed calls for one BFCL question (irrelevance: correct iff there is no call)."""
    if is_irrelevance(question.category):
        return CheckResult(not calls, "no call" if not calls else f"{len(calls)} call(s) where none fits")
    if question.ground_truth is None:
        raise InputError(f"{question.id}: no possible answer to score against")
    by_name = {t.name: t for t in (tools if tools is not None else normalise_tools(question.functions))}
    lang = question.category in STRING_LANGUAGES
    answers = question.ground_truth
    if not calls:
        return CheckResult(False, "no call")
    if "parallel" not in question.category:  # parallel, parallel_multiple, live_parallel, ...: any call order
        if len(calls) != 1:
            return CheckResult(False, f"expected one call, got {len(calls)}")
        return check_call(calls[0], answers[0], by_name, lang)
    if len(calls) != len(answers):
        return CheckResult(False, f"expected {len(answers)} calls, got {len(calls)}")
    results = [[check_call(c, a, by_name, lang) for a in answers] for c in calls]
    if _perfect_matching([[r.correct for r in row] for row in results]):
        return CheckResult(True, "ok")
    for j, answer in enumerate(answers):  # explain with the first answer that no call satisfies
        if not any(row[j].correct for row in results):
            same_name = [row[j] for row in results if not row[j].reason.startswith("wrong function")]
            detail = same_name[0].reason if same_name else f"no call to {next(iter(answer))}"
            return CheckResult(False, f"ground-truth call {j}: {detail}")
    return CheckResult(False, "calls cannot be matched one-to-one with the ground truth")


# --- Java / JavaScript source literals ----------------------------------------------------------------------------
def _unquote(text: str) -> str:
    t = text.strip()
    return t[1:-1] if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'`" else t


_NUMBER = re.compile(r"-?\d+(\.\d*)?([eE][+-]?\d+)?[lLfFdD]?(?![\w.])")
_IDENT = re.compile(r"[A-Za-z_$][\w$.]*")
_OPENERS = [  # Java collection constructors that read as list literals: (pattern, closing character)
    (re.compile(r"new\s+[\w.]+(\s*<[^>]*>)?\s*\[\s*\]\s*\{"), "}"),
    (re.compile(r"(Arrays\.asList|List\.of|Set\.of)\s*\("), ")"),
]
_MAP_OF = re.compile(r"Map\.of\s*\(")
_HASHMAP = re.compile(r"new\s+(Hash|LinkedHash|Tree)?Map\s*(<[^>]*>)?\s*\(\s*\)\s*\{\{")


class _Source:
    """A small reader for literal source text: JSON, JavaScript arrays/objects (bare keys, identifiers kept as
    their name), Java arrays, Arrays.asList/List.of, Map.of and double-brace HashMap initialisers."""

    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def take(self, ch: str) -> None:
        self.ws()
        if not self.s.startswith(ch, self.i):
            raise ValueError(f"expected {ch!r} at {self.i}")
        self.i += len(ch)

    def value(self, depth: int = 0) -> Any:
        if depth > 32:
            raise ValueError("too deep")
        self.ws()
        rest, ch = self.s[self.i:], self.s[self.i:self.i + 1]
        for pattern, close in _OPENERS:
            m = pattern.match(rest)
            if m:
                self.i += m.end()
                return self.items(close, depth)
        if (m := _MAP_OF.match(rest)) is not None:
            self.i += m.end()
            flat = self.items(")", depth)
            return {str(k): v for k, v in zip(flat[::2], flat[1::2], strict=True)}
        if (m := _HASHMAP.match(rest)) is not None:
            self.i += m.end()
            return self.puts(depth)
        if ch == "[":
            self.i += 1
            return self.items("]", depth)
        if ch == "{":
            return self.obj(depth)
        if ch and ch in "\"'`":
            end = self.s.index(ch, self.i + 1)
            text, self.i = self.s[self.i + 1:end], end + 1
            return text
        if (m := _NUMBER.match(rest)) is not None:
            self.i += m.end()
            num = m.group().rstrip("lLfFdD")
            return float(num) if any(c in num for c in ".eE") else int(num)
        if (m := _IDENT.match(rest)) is not None:
            self.i += m.end()
            return {"true": True, "false": False, "null": None, "None": None}.get(m.group(), m.group())
        raise ValueError(f"unexpected {ch!r}")

    def _separated(self, close: str, read_one: Callable[[], None]) -> None:
        """Call `read_one` for each comma-separated entry up to `close` (a trailing comma allowed), then skip it."""
        self.ws()
        while not self.s.startswith(close, self.i):
            read_one()
            self.ws()
            if self.s.startswith(",", self.i):
                self.i += 1
                self.ws()
        self.i += 1

    def items(self, close: str, depth: int) -> list[Any]:
        out: list[Any] = []
        self._separated(close, lambda: out.append(self.value(depth + 1)))
        return out

    def obj(self, depth: int) -> dict[str, Any]:
        self.take("{")
        out: dict[str, Any] = {}

        def entry() -> None:
            key = self.value(depth + 1)
            self.take(":")
            out[str(key)] = self.value(depth + 1)

        self._separated("}", entry)
        return out

    def puts(self, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.ws()
        while not self.s.startswith("}}", self.i):
            self.take("put")
            self.take("(")
            key = self.value(depth + 1)
            self.take(",")
            out[str(key)] = self.value(depth + 1)
            self.take(")")
            self.take(";")
            self.ws()
        self.i += 2
        return out


def source_literal(text: str) -> Any:
    """The value a Java/JavaScript source literal denotes, or _MISSING when it is not one we can read."""
    reader = _Source(text)
    try:
        value = reader.value()
        reader.ws()
    except (ValueError, IndexError):
        return _MISSING
    return value if reader.i == len(text) else _MISSING
