"""Left recursion in GBNF, found before llama.cpp's grammar engine sees the text: llguidance accepts left-recursive
grammars, llama.cpp refuses direct left recursion but, through a rule that can match nothing, allocates until the
process dies. The grammar is parsed the way llama.cpp parses it, without recursion; what cannot be parsed is
refused (fail closed)."""

from __future__ import annotations

import re
from functools import lru_cache

from toolace.errors import SchemaError
from toolace.limits import MAX_GBNF_GROUP_DEPTH

# llama.cpp refuses direct left recursion, but not left recursion through a rule that can match the empty string
# (`root ::= n root "a" | "b"` with `n ::= "c"?`): its initial stack expansion then never ends and allocates until
# the process dies. llguidance (an Earley parser) takes such grammars, so this check runs before llama.cpp sees one.
# The parser mirrors llama.cpp's grammar-parser: rules end at a newline outside parentheses, names are [a-zA-Z0-9-].
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
        if depth > MAX_GBNF_GROUP_DEPTH:
            raise self.fail(f"parentheses nest deeper than {MAX_GBNF_GROUP_DEPTH}")
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
