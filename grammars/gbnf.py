"""GBNF text: rule table, literal and character-class escaping, and Python-literal rendering.

Names are data here: the fixed rules of the call language live in BASE_RULES, and every generated rule goes
through Grammar.add so identical bodies share one rule."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from toolace.errors import SchemaError
from toolace.limits import MAX_GRAMMAR_BYTES, MAX_GRAMMAR_RULES, MAX_WS

# Characters a quoted string may hold raw, per quote: no quote, no backslash, no control character (so no raw
# newline); anything else needs an escape.
RAW_EXCLUDED = "\\\x00-\x1f\x7f"
PY_SIMPLE_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}

DQ, SQ = r'"\""', '"\'"'  # GBNF literals for the two quote characters

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
    # with one leading digit and an exponent of at most 307 (repr's own forms).
    "exp": '[eE] [-+]? ([0-9] [0-9]? | [12] [0-9] [0-9] | "30" [0-7])',
    "float": '("0" | [1-9] [0-9]{0,307}) frac | [0-9] frac? exp',
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
    """An ordered GBNF rule table. `add` dedupes by body so shared value types cost one rule."""

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
        while name in self.rules or name in BASE_RULES:
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
        if body in BASE_RULES.values():
            return next(k for k, v in BASE_RULES.items() if v == body)
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
        lines += [f"{k} ::= {v}" for k, v in BASE_RULES.items()]
        return "\n".join(lines) + "\n"


# --- left recursion (llama.cpp's GBNF engine) ------------------------------------------------------------------------
# llama.cpp refuses direct left recursion, but not left recursion through a rule that can match the empty string
# (`root ::= n root "a" | "b"` with `n ::= "c"?`): its initial stack expansion then never ends and allocates until
# the process dies. llguidance (an Earley parser) takes such grammars, so this check runs before llama.cpp sees one.
# The parser mirrors llama.cpp's grammar-parser: rules end at a newline outside parentheses, names are [a-zA-Z0-9-].
_MAX_GROUP_DEPTH = 256  # nested parentheses followed; deeper is refused (stack safety)
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_NAME = re.compile(r"[a-zA-Z0-9-]+")
_SPACE = re.compile(r"(?:[ \t]+|#[^\r\n]*)*")
_SPACE_NL = re.compile(r"(?:[ \t\r\n]+|#[^\r\n]*)*")
_LITERAL = re.compile(r'"(?:\\.|[^"\\])*"', re.DOTALL)
_CLASS = re.compile(r"\[(?:\\.|[^\]\\])*\]", re.DOTALL)
_Alt = list[str | None]  # one alternative: rule names, None for a symbol that consumes input


class _GbnfRules:
    """Just enough of a GBNF parse for nullability and left corners: each rule (groups and repetitions become
    anonymous rules) is a list of alternatives of rule references and input-consuming terminals."""

    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0
        self.rules: dict[str, list[_Alt]] = {}
        self.owner: dict[str, str] = {}  # anonymous rule → the named rule it was written in
        self._anon = 0
        self._space(newline_ok=True)
        while self.i < len(self.s):
            self._rule()

    def fail(self, why: str) -> SchemaError:
        return SchemaError(f"grammar is not GBNF llama.cpp can parse: {why} at character {self.i}")

    def _space(self, newline_ok: bool) -> None:
        m = (_SPACE_NL if newline_ok else _SPACE).match(self.s, self.i)
        self.i = m.end() if m else self.i  # the pattern matches the empty string: m is never None

    def _name(self) -> str:
        m = _NAME.match(self.s, self.i)
        if m is None:
            raise self.fail("expecting a rule name")
        self.i = m.end()
        return m.group()

    def _rule(self) -> None:
        name = self._name()
        self._space(newline_ok=False)
        if not self.s.startswith("::=", self.i):
            raise self.fail("expecting ::=")
        self.i += 3
        self._space(newline_ok=True)
        self.rules[name] = self._alternates(name, nested=False, depth=0)
        self.owner[name] = name
        if self.s.startswith("\r", self.i):
            self.i += 1
        if self.i < len(self.s):
            if self.s[self.i] != "\n":
                raise self.fail("expecting newline or end")
            self.i += 1
        self._space(newline_ok=True)

    def _new_rule(self, owner: str, alts: list[_Alt]) -> str:
        self._anon += 1
        name = f" {self._anon}"  # a space: never a written rule's name
        self.rules[name], self.owner[name] = alts, owner
        return name

    def _alternates(self, owner: str, nested: bool, depth: int) -> list[_Alt]:
        if depth > _MAX_GROUP_DEPTH:
            raise self.fail(f"parentheses nest deeper than {_MAX_GROUP_DEPTH}")
        alts = [self._sequence(owner, nested, depth)]
        while self.s.startswith("|", self.i):
            self.i += 1
            self._space(newline_ok=True)
            alts.append(self._sequence(owner, nested, depth))
        return alts

    def _terminal(self, pattern: re.Pattern[str]) -> bool:
        """Past a "..." literal or [...] class; True if it holds a character."""
        m = pattern.match(self.s, self.i)
        if m is None:
            raise self.fail("unexpected end of input")
        self.i = m.end()
        return m.end() - m.start() > 2

    def _sequence(self, owner: str, nested: bool, depth: int) -> _Alt:
        s, seq = self.s, []
        last: int | None = None  # index in seq of the symbol a repetition applies to
        while self.i < len(s):
            c = s[self.i]
            if c in "*+?{":
                if last is None:
                    raise self.fail("expecting preceding item to */+/?/{")
                lo = 1 if c == "+" else 0
                if c == "{":
                    close = s.find("}", self.i)
                    if close < 0:
                        raise self.fail("expecting }")
                    lo_text = s[self.i + 1:close].split(",")[0].strip()
                    if not lo_text.isdigit():
                        raise self.fail("expecting an integer in {m,n}")
                    lo, self.i = int(lo_text), close
                self.i += 1
                if lo == 0:  # S? S* S{0,n}: empty, or starts like S
                    seq[last:] = [self._new_rule(owner, [seq[last:], []])]
                self._space(nested)
                continue
            last = len(seq)
            if c == '"':
                if self._terminal(_LITERAL):
                    seq.append(None)
                else:
                    last = None  # "" matches nothing: no symbol (llama.cpp refuses a repetition after it too)
            elif c == "[":
                self._terminal(_CLASS)
                seq.append(None)
            elif c == ".":
                self.i += 1
                seq.append(None)
            elif c in "<!":  # a token <...>, <[id]>, or its negation !<...>
                close = s.find(">", self.i)
                if close < 0:
                    raise self.fail("expecting >")
                self.i = close + 1
                seq.append(None)
            elif c in _WORD:
                seq.append(self._name())
            elif c == "(":
                self.i += 1
                self._space(newline_ok=True)
                seq.append(self._new_rule(owner, self._alternates(owner, nested=True, depth=depth + 1)))
                if not s.startswith(")", self.i):
                    raise self.fail("expecting )")
                self.i += 1
            else:
                break
            self._space(nested)
        return seq


@lru_cache(maxsize=64)  # checked for every llama-engine generation with the same tools
def left_recursive_rule(gbnf: str) -> str | None:
    """A rule of `gbnf` that can reach itself without consuming input (left recursion, also through rules that
    match the empty string), or None. Linear in the grammar's size; iterative (no recursion limit)."""
    g = _GbnfRules(gbnf)
    rules = g.rules
    # Nullable rules: a worklist over the count of not-yet-nullable symbols of each alternative.
    pending: list[list[int]] = []
    uses: dict[str, list[tuple[str, int]]] = {}
    nullable: set[str] = set()
    work: list[str] = []
    for name, alts in rules.items():
        counts = []
        for k, alt in enumerate(alts):
            counts.append(len(alt))
            for sym in alt:
                if sym is not None:
                    uses.setdefault(sym, []).append((name, k))
            if not alt and name not in nullable:
                nullable.add(name)
                work.append(name)
        pending.append(counts)
    index = {name: n for n, name in enumerate(rules)}
    while work:
        for user, k in uses.get(work.pop(), ()):
            counts = pending[index[user]]
            counts[k] -= 1
            if counts[k] == 0 and user not in nullable:
                nullable.add(user)
                work.append(user)
    # Left corners: A → B when B can come first in A (after only nullable symbols).
    edges: dict[str, list[str]] = {name: [] for name in rules}
    for name, alts in rules.items():
        for alt in alts:
            for sym in alt:
                if sym is None:
                    break
                if sym in rules:  # an undefined name: llama.cpp reports it itself
                    edges[name].append(sym)
                if sym not in nullable:
                    break
    # Kahn's algorithm: what cannot be peeled off lies on or after a cycle; walking back along in-edges inside
    # that rest must revisit a rule, which is then on a cycle.
    indegree = dict.fromkeys(rules, 0)
    preds: dict[str, list[str]] = {name: [] for name in rules}
    for a, bs in edges.items():
        for b in bs:
            indegree[b] += 1
            preds[b].append(a)
    free = [name for name, d in indegree.items() if d == 0]
    while free:
        for b in edges[free.pop()]:
            indegree[b] -= 1
            if indegree[b] == 0:
                free.append(b)
    rest = {name for name, d in indegree.items() if d > 0}
    if not rest:
        return None
    node, seen = next(name for name in rules if name in rest), set()  # the first in the text: deterministic
    while node not in seen:
        seen.add(node)
        node = next(p for p in preds[node] if p in rest)
    return g.owner[node]


def check_llama_gbnf(gbnf: str) -> None:
    """Refuse what would make llama.cpp's GBNF engine exhaust memory; call before llama_sampler_init_grammar."""
    rule = left_recursive_rule(gbnf)
    if rule is not None:
        raise SchemaError(f"grammar is left-recursive: rule {rule!r} can reach itself without consuming input "
                          "(llama.cpp's grammar engine cannot run it)")
