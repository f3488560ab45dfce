"""GBNF text: rule table, literal and character-class escaping, and Python-literal rendering.

Names are data here: the fixed rules of the call language live in BASE_RULES, and every generated rule goes
through Grammar.add so identical bodies share one rule."""

from __future__ import annotations

import re
from typing import Any

from toolace.errors import SchemaError
from toolace.limits import MAX_GRAMMAR_BYTES, MAX_GRAMMAR_RULES, MAX_WS

# Escapes used when rendering a constant as a Python literal (a quoted string holds no raw control character).
PY_SIMPLE_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}

DQ, SQ = r'"\""', '"\'"'  # GBNF literals for the two quote characters

MAX_DOUBLE_FRACTION = "7976931348623157"  # the largest finite double is 1.7976931348623157e308


def _fraction_at_most(digits: str) -> str:
    """GBNF for a non-empty digit string whose value as a fraction is at most 0.<digits>: at each position a smaller
    digit then anything, or the same digit then the rest (or the end)."""
    tail = '"0"*'
    for pos, c in reversed(list(enumerate(digits))):
        lower = [f"[0-{int(c) - 1}] [0-9]*"] if c != "0" else []
        tail = " | ".join([*lower, f'"{c}" ({tail})'] + ([] if pos == 0 else ['""']))
    return tail


# The fixed vocabulary of the call language. Generated rules refer to these names.
BASE_RULES: dict[str, str] = {
    "ws": f'" "{{0,{MAX_WS}}}',
    "sep": '"," ws',
    "colon": '":" ws',
    "hex": "[0-9a-fA-F]",
    "esc": r'''"\\" (["'\\nrtbf] | "x" hex{2} | "u" hex{4} | "U" ("000" hex{5} | "0010" hex{4}))''',
    "dq-char": r'[^"\\\x00-\x1f\x7f] | esc',
    "sq-char": r"[^'\\\x00-\x1f\x7f] | esc",
    "str": r'''"\"" dq-char* "\"" | "'" sq-char* "'"''',
    "int": '"0" | "-"? [1-9] [0-9]*',
    "frac": '"." [0-9]+',
    # Floats are finite doubles by construction: plain form with at most 308 integer digits, or scientific form
    # with one leading digit and an exponent of at most 307, or 308 with a mantissa up to the largest double's
    # (1.7976931348623157); negative exponents take up to three digits (an underflow to zero is still finite).
    "exp": '[eE] ("+"? ([0-9] [0-9]? | [12] [0-9] [0-9] | "30" [0-7]) | "-" [0-9] [0-9]? [0-9]?)',
    "float": '("0" | [1-9] [0-9]{0,307}) frac | [0-9] frac? exp | "1" ("." frac-308)? [eE] "+"? "308"',
    "frac-308": _fraction_at_most(MAX_DOUBLE_FRACTION),
    "num": 'int | "-"? float',
    "nonneg-num": '"0" | [1-9] [0-9]* | float',
    "bool": '"True" | "False"',
    "null": '"None"',
    "any": "str | num | bool | null | any-list | any-tuple | any-dict",
    "any-list": '"[" (any (sep any)*)? "]"',
    "any-tuple": '"(" (any (sep any)* ","?)? ")"',
    "any-dict": '"{" (any-kv (sep any-kv)*)? "}"',
    "any-kv": "str colon any",
    # Free text: must not start with "[" (that would be a call) nor with whitespace (which could hide one).
    "text": r"[^\[ \t\n\r\x00] [^\x00]*",
}


def gbnf_literal(s: str) -> str:
    """A GBNF string literal matching exactly `s`."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def class_char(ch: str) -> str:
    """One character escaped for use inside a GBNF [...] class."""
    if ch == "\\":
        return "\\\\"
    if ch in "]^-[" or ord(ch) < 0x20 or ord(ch) == 0x7F:  # hex form: both llama.cpp and llguidance read it
        return f"\\x{ord(ch):02X}"
    return ch


def py_str(s: str, quote: str = "'") -> str:
    """Python-literal rendering of `s` with the given quote, the canonical form the grammar accepts for constants."""
    out = [quote]
    for ch in s:
        if ch == quote:
            out.append("\\" + ch)
        elif ch in PY_SIMPLE_ESCAPES:
            out.append(PY_SIMPLE_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append(quote)
    return "".join(out)


def py_literal(value: object, quote: str = "'") -> str:
    """Render a JSON value as the Python literal the call language uses (repr style, chosen quote)."""
    if value is None:
        return "None"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, str):
        return py_str(value, quote)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise SchemaError(f"{value!r} has no literal in the call language")
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(py_literal(v, quote) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py_str(str(k), quote)}: {py_literal(v, quote)}" for k, v in value.items()) + "}"
    raise SchemaError(f"{type(value).__name__} value {value!r} has no literal in the call language")


def repeat(expr: str, lo: int, hi: int | None) -> str:
    """`expr` repeated lo..hi times (hi None: unbounded), in the simplest form both parsers accept
    (llguidance refuses `{0,0}`)."""
    if hi == 0:
        return '""'
    if (lo, hi) == (1, 1):
        return expr
    forms = {(0, None): "*", (1, None): "+", (0, 1): "?"}
    if (lo, hi) in forms:
        return expr + forms[(lo, hi)]
    return expr + (f"{{{lo},}}" if hi is None else f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}")


def render_calls(calls: list[dict[str, Any]]) -> str:
    """Canonical call text for [{"name", "arguments"}] (the inverse of the parser)."""
    parts = [f"{c['name']}(" + ", ".join(f"{k}={py_literal(v)}" for k, v in c["arguments"].items()) + ")"
             for c in calls]
    return "[" + ", ".join(parts) + "]"


_RULE_NAME = re.compile(r"[^a-zA-Z0-9-]+")


class Grammar:
    """An ordered GBNF rule table. `add` dedupes by body so shared value types cost one rule. `base`: the fixed
    rules generated ones refer to (a subclass swaps them, e.g. JSON syntax in grammars/json_schema.py)."""

    base: dict[str, str] = BASE_RULES

    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self._by_body: dict[str, str] = {}
        self._size = 0

    def reserve(self, hint: str) -> str:
        """Claim a fresh rule name (for recursive rules whose body is set later with `define`)."""
        base = _RULE_NAME.sub("-", hint).strip("-").lower() or "r"
        if base[0].isdigit():
            base = "r-" + base
        name, n = base, 1
        while name in self.rules or name in self.base:
            n += 1
            name = f"{base}-{n}"
        self.rules[name] = ""
        return name

    def define(self, name: str, body: str) -> str:
        self.rules[name] = body
        self._size += len(name) + len(body) + 6
        if self._size > MAX_GRAMMAR_BYTES or len(self.rules) > MAX_GRAMMAR_RULES:
            raise SchemaError(
                f"grammar exceeds its limits ({MAX_GRAMMAR_BYTES} bytes, {MAX_GRAMMAR_RULES} rules); "
                "reduce the number of tools, enum values or length bounds"
            )
        return name

    def add(self, hint: str, body: str) -> str:
        """Return the name of a rule with this body, creating it if needed."""
        if body in self.base.values():
            return next(k for k, v in self.base.items() if v == body)
        if body in self._by_body:
            return self._by_body[body]
        name = self.define(self.reserve(hint), body)
        self._by_body[body] = name
        return name

    def render(self, root_body: str) -> str:
        """Full GBNF text: root first, then generated rules, then the base rules they use (all of them; unused
        base rules are harmless and keep the artefact stable)."""
        lines = [f"root ::= {root_body}"]
        lines += [f"{k} ::= {v}" for k, v in self.rules.items()]
        lines += [f"{k} ::= {v}" for k, v in self.base.items()]
        return "\n".join(lines) + "\n"
