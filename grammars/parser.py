"""Call text → [{"name", "arguments"}], without eval, plus an incremental form for streaming.

Names are matched against the known tools (longest match followed by "("), so names with spaces and dots parse.
Values are Python literals: strings in either quote with escapes, ints, floats, True/False/None, lists, tuples
(returned as lists) and dicts with string keys. Whitespace between tokens is tolerated here; the grammar is the
strict definition of the language."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from toolace.errors import ValidationFailure
from toolace.limits import MAX_CALL_TEXT_CHARS, MAX_LITERAL_DEPTH

from .schema import Tool

_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_NUMBER_CHARS = re.compile(r"[-+.0-9eE]*")
_SIMPLE_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_CONSTANTS = {"True": True, "False": False, "None": None}
_WS = " \t\r\n"


class CallParseError(ValidationFailure):
    """Text that is not in the call language; `offset` says where it stops making sense."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at character {offset})")
        self.offset = offset


class _Incomplete(Exception):
    """The text ended inside a call (used by the streaming parser)."""


@dataclass
class Call:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass(frozen=True)
class Event:
    """A streaming event: kind is "name" (call `index` named), "argument" (key/value closed) or "end"."""

    kind: str
    index: int
    name: str = ""
    key: str = ""
    value: Any = None


class _Reader:
    def __init__(self, text: str, tools: Iterable[Tool], partial: bool = False) -> None:
        if len(text) > MAX_CALL_TEXT_CHARS:
            raise CallParseError(f"call text longer than {MAX_CALL_TEXT_CHARS} characters", MAX_CALL_TEXT_CHARS)
        self.s, self.i, self.partial = text, 0, partial
        # Longest names first so "get weather" wins over "get".
        self.tools = sorted(tools, key=lambda t: -len(t.name))
        self.events: list[Event] = []

    # --- low level ---------------------------------------------------------------------------------------------
    def fail(self, message: str) -> CallParseError:
        if self.partial and self.i >= len(self.s):
            raise _Incomplete
        return CallParseError(message, self.i)

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in _WS:
            self.i += 1

    def peek(self) -> str:
        if self.i >= len(self.s):
            if self.partial:
                raise _Incomplete
            return ""
        return self.s[self.i]

    def expect(self, ch: str) -> None:
        self.ws()
        if self.peek() != ch:
            raise self.fail(f"expected {ch!r}, found {self.peek() or 'end of text'!r}")
        self.i += 1

    def match_name(self, names: list[str], what: str) -> str:
        rest = self.s[self.i:]
        for name in names:
            if rest.startswith(name):
                self.i += len(name)
                return name
        if self.partial and any(n.startswith(rest) for n in names):
            raise _Incomplete
        found = re.match(r"[^(=,\s\]]*", rest)
        raise self.fail(f"unknown {what} {found.group() if found else rest[:20]!r}")

    # --- structure -----------------------------------------------------------------------------------------------
    def calls(self) -> list[Call]:
        self.ws()
        self.expect("[")
        out: list[Call] = []
        while True:
            self.ws()
            out.append(self.call(len(out)))
            self.ws()
            if self.peek() == ",":
                self.i += 1
                continue
            self.expect("]")
            break
        self.ws()
        if self.i != len(self.s):
            raise self.fail("text after the closing ']'")
        return out

    def call(self, index: int) -> Call:
        tool = self.tools[[t.name for t in self.tools].index(self.match_name([t.name for t in self.tools], "function"))]
        self.expect("(")
        self.events.append(Event("name", index, name=tool.name))
        call = Call(tool.name)
        params = sorted(tool.param_names, key=lambda p: -len(p))
        self.ws()
        if self.peek() != ")":
            while True:
                self.ws()
                key = self.match_name(params, f"parameter of {tool.name}")
                if key in call.arguments:
                    raise self.fail(f"parameter {key!r} given twice")
                self.expect("=")
                self.ws()
                call.arguments[key] = self.value(0)
                self.ws()
                if self.peek() not in ",)":
                    raise self.fail(f"expected ',' or ')', found {self.peek()!r}")
                self.events.append(Event("argument", index, name=tool.name, key=key, value=call.arguments[key]))
                if self.peek() == ")":
                    break
                self.i += 1
        self.i += 1
        self.events.append(Event("end", index, name=tool.name))
        return call

    # --- values --------------------------------------------------------------------------------------------------
    def value(self, depth: int) -> Any:
        if depth > MAX_LITERAL_DEPTH:
            raise self.fail(f"literal nests deeper than {MAX_LITERAL_DEPTH}")
        ch = self.peek()
        if ch in ("'", '"'):
            return self.string(ch)
        if ch in "[(":
            close = "]" if ch == "[" else ")"
            return self.sequence(close, depth)
        if ch == "{":
            return self.mapping(depth)
        if ch == "-" or ch.isdigit():
            return self.number()
        for word, val in _CONSTANTS.items():
            if self.s.startswith(word, self.i):
                self.i += len(word)
                return val
            if self.partial and word.startswith(self.s[self.i:]):
                raise _Incomplete
        raise self.fail(f"expected a value, found {ch!r}")

    def string(self, quote: str) -> str:
        self.i += 1
        out: list[str] = []
        while True:
            ch = self.peek()
            if ch == quote:
                self.i += 1
                return "".join(out)
            if ch in ("", "\n", "\r"):
                raise self.fail("unterminated string")
            if ch != "\\":
                out.append(ch)
                self.i += 1
                continue
            self.i += 1
            esc = self.peek()
            if esc in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[esc])
                self.i += 1
            elif esc in _HEX_ESCAPES:
                n = _HEX_ESCAPES[esc]
                digits = self.s[self.i + 1:self.i + 1 + n]
                if len(digits) < n and self.partial:
                    raise _Incomplete
                if len(digits) != n or not all(c in "0123456789abcdefABCDEF" for c in digits) or \
                        int(digits, 16) > 0x10FFFF:
                    raise self.fail(f"bad \\{esc} escape")
                out.append(chr(int(digits, 16)))
                self.i += 1 + n
            else:
                raise self.fail(f"unknown escape \\{esc}")

    def number(self) -> int | float:
        if self.partial and _NUMBER_CHARS.match(self.s, self.i).end() >= len(self.s):
            raise _Incomplete  # more digits, a fraction or an exponent may follow
        m = _NUMBER.match(self.s, self.i)
        if not m or m.end() == self.i or (m.group() == "-"):
            raise self.fail("malformed number")
        self.i = m.end()
        if self.i < len(self.s) and (self.s[self.i].isalnum() or self.s[self.i] in "._"):
            raise self.fail("malformed number")
        if m.group(1) is None and m.group(2) is None:
            return int(m.group())
        value = float(m.group())
        if not math.isfinite(value):
            raise self.fail("number out of range")
        return value

    def sequence(self, close: str, depth: int) -> list[Any]:
        self.i += 1
        items: list[Any] = []
        self.ws()
        while self.peek() != close:
            items.append(self.value(depth + 1))
            self.ws()
            if self.peek() == ",":
                self.i += 1
                self.ws()
            elif self.peek() != close:
                raise self.fail(f"expected ',' or {close!r}")
        self.i += 1
        return items

    def mapping(self, depth: int) -> dict[str, Any]:
        self.i += 1
        out: dict[str, Any] = {}
        self.ws()
        while self.peek() != "}":
            if self.peek() not in ("'", '"'):
                raise self.fail("dict keys must be strings")
            # A repeated key keeps its last value, as in Python: a free-form dict's keys are not unique in the grammar
            # (no context-free grammar can make them so), and whatever the grammar allows must parse.
            key = self.string(self.peek())
            self.expect(":")
            self.ws()
            out[key] = self.value(depth + 1)
            self.ws()
            if self.peek() == ",":
                self.i += 1
                self.ws()
            elif self.peek() != "}":
                raise self.fail("expected ',' or '}'")
        self.i += 1
        return out


def looks_like_calls(text: str) -> bool:
    return text.lstrip().startswith("[")


def parse_calls(text: str, tools: Iterable[Tool]) -> list[Call]:
    """Parse a complete call list; raise CallParseError saying where it stops making sense."""
    return _Reader(text, tools).calls()


class StreamParser:
    """Feed text as it is generated; get each call's name once its "(" is seen and each argument once closed."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self.tools = list(tools)
        self.text = ""
        self._emitted = 0
        self.error: CallParseError | None = None

    def retract(self, n: int) -> None:
        """Drop the last n characters fed (a runaway value cut back). They lie inside one open value, where no
        event has been emitted, so the events already given stay true."""
        self.text = self.text[: len(self.text) - n]

    def feed(self, chunk: str) -> list[Event]:
        self.text += chunk
        if not looks_like_calls(self.text):
            return []
        reader = _Reader(self.text, self.tools, partial=True)
        try:
            reader.calls()
        except _Incomplete:
            pass
        except CallParseError as e:  # text outside the language (unconstrained output): report, stop emitting
            self.error = e
        new = reader.events[self._emitted:]
        self._emitted = len(reader.events)
        return new
