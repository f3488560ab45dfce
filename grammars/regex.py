"""Regular expressions (JSON Schema `pattern`, `format`) → GBNF over the characters of a quoted Python string.

Supports literals, escapes, classes, `.`, groups, alternation, the usual quantifiers, and `^`/`$` at the ends.
Anything else (look-around, back-references, word boundaries) raises RegexUnsupported and the caller falls back
to post-decoding validation, recording it. Each character is emitted in one canonical encoding: raw when the quote
allows it, else its Python escape."""

from __future__ import annotations

from dataclasses import dataclass

from toolace.limits import MAX_STRING_REPEAT

from .gbnf import class_char, gbnf_literal, py_str, repeat


class RegexUnsupported(ValueError):
    """The pattern uses a feature the grammar cannot express exactly."""


Ranges = list[tuple[int, int]]
_DIGIT: Ranges = [(48, 57)]
_WORD: Ranges = [(48, 57), (65, 90), (95, 95), (97, 122)]
_SPACE: Ranges = [(9, 13), (32, 32)]
_CLASS_ESCAPES = {"d": (_DIGIT, False), "D": (_DIGIT, True), "w": (_WORD, False), "W": (_WORD, True),
                  "s": (_SPACE, False), "S": (_SPACE, True)}
_CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}


@dataclass
class Node:
    kind: str  # lit, class, seq, alt, rep, bol, eol
    ranges: Ranges | None = None
    negated: bool = False
    children: list[Node] | None = None
    lo: int = 0
    hi: int | None = None


class _Parser:
    def __init__(self, pattern: str) -> None:
        self.p, self.i = pattern, 0

    def peek(self) -> str:
        return self.p[self.i] if self.i < len(self.p) else ""

    def take(self) -> str:
        ch = self.peek()
        if not ch:
            raise RegexUnsupported("unexpected end of pattern")
        self.i += 1
        return ch

    def parse(self) -> Node:
        node = self.alt()
        if self.i != len(self.p):
            raise RegexUnsupported(f"unbalanced ')' at {self.i}")
        return node

    def alt(self) -> Node:
        branches = [self.seq()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.seq())
        return branches[0] if len(branches) == 1 else Node("alt", children=branches)

    def seq(self) -> Node:
        items: list[Node] = []
        while self.peek() and self.peek() not in "|)":
            items.append(self.quantified(self.atom()))
        return Node("seq", children=items)

    def quantified(self, atom: Node) -> Node:
        ch = self.peek()
        if ch in ("*", "+", "?"):
            self.i += 1
            lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
        elif ch == "{" and self._is_bound():
            lo, hi = self._bound()
        else:
            return atom
        if self.peek() == "?":  # lazy: same language
            self.i += 1
        if atom.kind in ("bol", "eol"):
            raise RegexUnsupported("quantified anchor")
        return Node("rep", children=[atom], lo=lo, hi=hi)

    def _is_bound(self) -> bool:
        j = self.p.find("}", self.i)
        body = self.p[self.i + 1:j] if j > 0 else ""
        return bool(body) and all(c.isdigit() or c == "," for c in body) and body[0].isdigit()

    def _bound(self) -> tuple[int, int | None]:
        j = self.p.index("}", self.i)
        body, self.i = self.p[self.i + 1:j], j + 1
        lo_s, _, hi_s = body.partition(",")
        lo = int(lo_s)
        hi = lo if "," not in body else (int(hi_s) if hi_s else None)
        if (hi if hi is not None else lo) > MAX_STRING_REPEAT or (hi is not None and hi < lo):
            raise RegexUnsupported(f"repetition {{{body}}} is over {MAX_STRING_REPEAT} or inverted")
        return lo, hi

    def atom(self) -> Node:
        ch = self.take()
        if ch == "(":
            if self.peek() == "?":
                rest = self.p[self.i:self.i + 3]
                if rest.startswith("?:"):
                    self.i += 2
                elif rest.startswith("?P<") or (rest.startswith("?<") and rest[2:3] not in ("=", "!")):
                    self.i = self.p.index(">", self.i) + 1
                else:
                    raise RegexUnsupported("look-around or inline flags")
            node = self.alt()
            if self.take() != ")":
                raise RegexUnsupported("unbalanced '('")
            return node
        if ch == "[":
            return self.char_class()
        if ch == ".":
            return Node("class", ranges=[(10, 10)], negated=True)
        if ch == "^":
            return Node("bol")
        if ch == "$":
            return Node("eol")
        if ch == "\\":
            return self.escape(in_class=False)
        if ch in "*+?":
            raise RegexUnsupported(f"nothing to repeat before {ch!r}")
        return Node("lit", ranges=[(ord(ch), ord(ch))])

    def escape(self, in_class: bool) -> Node:
        ch = self.take()
        if ch in _CLASS_ESCAPES:
            ranges, negated = _CLASS_ESCAPES[ch]
            return Node("class", ranges=list(ranges), negated=negated)
        if ch in _CHAR_ESCAPES:
            c = ord(_CHAR_ESCAPES[ch])
        elif ch in "xu":
            n = 2 if ch == "x" else 4
            digits = self.p[self.i:self.i + n]
            if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise RegexUnsupported(f"bad \\{ch} escape")
            self.i += n
            c = int(digits, 16)
        elif ch.isalnum():
            raise RegexUnsupported(f"escape \\{ch}")  # \b, \B, back-references, \p{...}
        else:
            c = ord(ch)
        return Node("lit", ranges=[(c, c)])

    def char_class(self) -> Node:
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        ranges: Ranges = []
        first = True
        while True:
            ch = self.take()
            if ch == "]" and not first:
                break
            first = False
            if ch == "\\":
                node = self.escape(in_class=True)
                if node.negated:
                    raise RegexUnsupported("negated escape inside a class")
                assert node.ranges is not None
                if len(node.ranges) > 1 or node.ranges[0][0] != node.ranges[0][1]:
                    ranges += node.ranges
                    continue
                lo = node.ranges[0][0]
            else:
                lo = ord(ch)
            if self.peek() == "-" and self.p[self.i + 1:self.i + 2] not in ("]", ""):
                self.i += 1
                hi_ch = self.take()
                hi = self.escape(in_class=True).ranges[0][0] if hi_ch == "\\" else ord(hi_ch)  # type: ignore[index]
                if hi < lo:
                    raise RegexUnsupported("inverted class range")
                ranges.append((lo, hi))
            else:
                ranges.append((lo, lo))
        return Node("class", ranges=ranges, negated=negated)


def _subtract(ranges: Ranges, cut: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        pieces = [(lo, hi)]
        for clo, chi in cut:
            nxt = []
            for plo, phi in pieces:
                if chi < plo or clo > phi:
                    nxt.append((plo, phi))
                    continue
                if plo < clo:
                    nxt.append((plo, clo - 1))
                if chi < phi:
                    nxt.append((chi + 1, phi))
            pieces = nxt
        out += pieces
    return out


def _contains(ranges: Ranges, c: int) -> bool:
    return any(lo <= c <= hi for lo, hi in ranges)


def _class_text(ranges: Ranges) -> str:
    return "".join(class_char(chr(lo)) if lo == hi else f"{class_char(chr(lo))}-{class_char(chr(hi))}"
                   for lo, hi in ranges)


def _needs_escape(quote: str) -> Ranges:
    return [(0, 0x1F), (0x7F, 0x7F), (ord("\\"), ord("\\")), (ord(quote), ord(quote))]


def _char_set(node: Node, quote: str) -> str:
    """GBNF for one character from a class, in canonical encoding for `quote`."""
    assert node.ranges is not None
    excluded = _needs_escape(quote)
    escaped_chars = [c for lo, hi in excluded for c in range(lo, hi + 1)]
    alts: list[str] = []
    if node.negated:
        alts.append(f"[^{_class_text(node.ranges + excluded)}]")
        special = [c for c in escaped_chars if not _contains(node.ranges, c)]
    else:
        raw = _subtract(node.ranges, excluded)
        if raw:
            alts.append(f"[{_class_text(raw)}]")
        special = [c for c in escaped_chars if _contains(node.ranges, c)]
    alts += [gbnf_literal(py_str(chr(c), quote)[1:-1]) for c in dict.fromkeys(special)]
    if not alts:
        raise RegexUnsupported("empty character class")
    return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"


def _emit(node: Node, quote: str) -> str:
    if node.kind in ("lit", "class"):
        return _char_set(node, quote)
    if node.kind == "seq":
        assert node.children is not None
        parts = [_emit(c, quote) for c in node.children]
        return "(" + " ".join(parts) + ")" if parts else '""'
    if node.kind == "alt":
        assert node.children is not None
        return "(" + " | ".join(_emit(c, quote) for c in node.children) + ")"
    if node.kind == "rep":
        assert node.children is not None
        return repeat(_emit(node.children[0], quote), node.lo, node.hi)
    raise RegexUnsupported("'^' or '$' inside the pattern")


def _strip_anchors(node: Node, quote: str) -> str:
    """Anchors are allowed only at the ends of a top-level branch; an unanchored end matches any text."""
    anything = ("dq-char*" if quote == '"' else "sq-char*")
    if node.kind == "alt":
        assert node.children is not None
        return "(" + " | ".join(_strip_anchors(c, quote) for c in node.children) + ")"
    items = list(node.children or []) if node.kind == "seq" else [node]
    head = items[0].kind == "bol" if items else False
    tail = items[-1].kind == "eol" if items else False
    core = items[1 if head else 0:len(items) - 1 if tail and len(items) > (1 if head else 0) else len(items)]
    body = _emit(Node("seq", children=core), quote)
    return " ".join(([] if head else [anything]) + [body] + ([] if tail else [anything]))


def regex_to_gbnf(pattern: str, quote: str) -> str:
    """GBNF expression for the *contents* of a `quote`-quoted string whose decoded value matches `pattern`
    (JSON Schema search semantics: unanchored ends match anything)."""
    return _strip_anchors(_Parser(pattern).parse(), quote)
