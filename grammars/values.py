"""JSON Schema → GBNF for Python-literal values, one compiler per tool.

Each keyword is either enforced by the grammar, recorded as a post-check (validated with jsonschema after
decoding and reported), or refused with a SchemaError naming it. Nothing is dropped silently."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jsonschema

from toolace.errors import SchemaError
from toolace.limits import MAX_INT_RANGE_DIGITS, MAX_STRING_REPEAT

from .gbnf import DQ, SQ, Grammar, gbnf_literal, py_literal, repeat
from .numbers import int_range
from .regex import RegexUnsupported, regex_to_gbnf
from .schema import TUPLE_MARK, Tool

# Keywords enforced only after decoding (the grammar admits a superset there).
POST_CHECKED = ("multipleOf", "uniqueItems", "minProperties", "maxProperties", "contains", "minContains",
                "maxContains", "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "propertyNames",
                "patternProperties", "unevaluatedProperties", "unevaluatedItems", "dependencies")
# Formats with an exact grammar; other formats are post-checked.
# A calendar date, exactly: month lengths, and 29 February only in leap years (Gregorian: every 4th year, but
# centuries only every 400th).
_YEAR = r"([0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"  # 0001-9999: year 0 is no ISO/Python date
_DATE = ("(" + _YEAR + r"-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)"
         r"|02-(0[1-9]|1[0-9]|2[0-8]))"
         r"|([0-9]{2}(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)-02-29)")
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
FORMAT_PATTERNS = {
    "date": f"^{_DATE}$",
    "time": f"^{_TIME}$",
    "date-time": f"^{_DATE}[Tt]{_TIME}$",
    "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    "email": r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$",
    "uri": r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"{}|\\^`]+$",
    "ipv4": r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$",
}
TYPE_RULES = {"boolean": "bool", "null": "null"}


@dataclass(frozen=True)
class PostCheck:
    """A keyword the grammar does not enforce exactly; jsonschema checks it after decoding."""

    tool: str
    pointer: str
    keyword: str

    def __str__(self) -> str:
        return f"{self.tool}: {self.pointer or '/'}: {self.keyword}"


class ValueCompiler:
    """Compiles the value schemas of one tool's parameters into rules of a shared Grammar."""

    QUOTES: tuple[str, ...] = ("'", '"')  # with `literal`, the literal syntax (grammars/json_schema.py: JSON's)
    # The range an integer with one bound gets on its other side (None: unbounded), and the rule for integers whose
    # schema bounds are too wide for an exact range (grammars/json_schema.py: int64, "Sane numbers").
    INT_BOUNDS: tuple[int | None, int | None] = (None, None)
    WIDE_INT = "int"
    literal = staticmethod(py_literal)

    def _quoted(self, dq: str, sq: str) -> str:
        return f"{DQ} {dq} {DQ} | {SQ} {sq} {SQ}" if "'" in self.QUOTES else f"{DQ} {dq} {DQ}"

    def __init__(self, grammar: Grammar, tool: Tool) -> None:
        self.g, self.tool, self.root = grammar, tool, tool.parameters
        self.post: list[PostCheck] = []
        self._refs: dict[str, str] = {}
        self._productive: set[str] = self._productive_refs()

    # --- helpers -------------------------------------------------------------------------------------------------
    def _post(self, pointer: str, keyword: str) -> None:
        self.post.append(PostCheck(self.tool.name, pointer, keyword))

    def _resolve(self, ref: Any, pointer: str) -> tuple[str, Any]:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"tool {self.tool.name!r}: {pointer}: only local $ref ('#/...') is supported, "
                              f"got {ref!r}")
        node: Any = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise SchemaError(f"tool {self.tool.name!r}: {pointer}: $ref {ref!r} does not resolve")
        return ref, node

    def _all_refs(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        stack: list[Any] = [self.root]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if isinstance(node.get("$ref"), str) and node["$ref"] not in found:
                    ref, target = self._resolve(node["$ref"], "")
                    found[ref] = target
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        return found

    def _is_productive(self, s: Any, ok: set[str]) -> bool:
        """Can `s` derive a finite value, assuming the refs in `ok` can? (least fixed point, iterated by caller)"""
        if s is False:
            return False
        if not isinstance(s, dict):
            return True
        if "$ref" in s and s["$ref"] not in ok:
            return False
        if "enum" in s or "const" in s:
            return True
        if any(not self._is_productive(b, ok) for b in s.get("allOf", [])):
            return False
        for key in ("anyOf", "oneOf"):
            if key in s and not any(self._is_productive(b, ok) for b in s[key]):
                return False
        props = s.get("properties", {})
        if any(not self._is_productive(props.get(r, True), ok) for r in s.get("required", [])):
            return False
        prefix = s.get("prefixItems", [])
        need_items = s.get("minItems", 0) > len(prefix)
        return all(self._is_productive(p, ok) for p in prefix[: s.get("minItems", 0)]) and (
            not need_items or self._is_productive(s.get("items", True), ok))

    def _productive_refs(self) -> set[str]:
        refs, ok = self._all_refs(), set()
        changed = True
        while changed:
            changed = False
            for ref, target in refs.items():
                if ref not in ok and self._is_productive(target, ok):
                    ok.add(ref)
                    changed = True
        return ok

    def check_productive(self, schema: Any, pointer: str) -> None:
        if not self._is_productive(schema, self._productive):
            raise SchemaError(f"tool {self.tool.name!r}: {pointer}: no finite value satisfies this schema "
                              "($ref cycle without base case, or false schema)")

    # --- values --------------------------------------------------------------------------------------------------
    def value(self, s: Any, pointer: str, aliases: tuple[str, ...] = ()) -> str:
        """Return a GBNF expression (usually a rule name) for values of schema `s`."""
        if s is True or s == {}:
            return "any"
        if s is False:
            raise SchemaError(f"tool {self.tool.name!r}: {pointer}: schema 'false' admits no value")
        for kw in POST_CHECKED:
            if kw in s:
                self._post(pointer, kw)
        if "$ref" in s:
            return self._ref(s, pointer, aliases)
        if "allOf" in s:
            return self._all_of(s, pointer, aliases)
        if "enum" in s or "const" in s:
            return self._enum(s, pointer)
        for key in ("anyOf", "oneOf"):
            if key in s:
                if key == "oneOf":
                    self._post(pointer, "oneOf")  # exclusivity is checked after decoding
                rest = {k: v for k, v in s.items() if k != key}
                branches = [self.value({**rest, **b} if isinstance(b, dict) else b, f"{pointer}/{key}/{i}", aliases)
                            for i, b in enumerate(s[key])]
                return self.g.add("alt", " | ".join(dict.fromkeys(branches)))
        types = s.get("type")
        if types is None:
            types = "object" if "properties" in s else "array" if ("items" in s or "prefixItems" in s) else None
            if types is None:
                return "any"
        alts = [self._typed(t, s, pointer) for t in (types if isinstance(types, list) else [types])]
        if s.get("nullable") is True:
            alts.append("null")
        return self.g.add("v", " | ".join(dict.fromkeys(alts))) if len(alts) > 1 else alts[0]

    def _ref(self, s: dict[str, Any], pointer: str, aliases: tuple[str, ...]) -> str:
        ref, target = self._resolve(s["$ref"], pointer)
        if ref in aliases:
            raise SchemaError(f"tool {self.tool.name!r}: {pointer}: $ref {ref!r} refers to itself without "
                              "consuming input (left-recursive cycle)")
        if any(k in s for k in ("type", "properties", "items", "enum", "const", "anyOf", "oneOf", "allOf")):
            self._post(pointer, "$ref siblings")
        if ref not in self._refs:
            name = self.g.reserve("ref-" + ref.rsplit("/", 1)[-1])
            self._refs[ref] = name
            self.g.define(name, self.value(target, ref, aliases + (ref,)))
        return self._refs[ref]

    def _all_of(self, s: dict[str, Any], pointer: str, aliases: tuple[str, ...]) -> str:
        merged = {k: v for k, v in s.items() if k != "allOf"}
        for i, branch in enumerate(s["allOf"]):
            if not isinstance(branch, dict):
                if branch is False:
                    raise SchemaError(f"tool {self.tool.name!r}: {pointer}/allOf/{i}: schema 'false' admits no value")
                continue
            if "$ref" in branch and len(branch) == 1:
                branch = self._resolve(branch["$ref"], pointer)[1]
            clash = set(merged) & set(branch) - {"description", "title"}
            if clash:
                self._post(pointer, "allOf")  # overlapping keywords: last wins in the grammar; jsonschema checks all
            merged.update(branch)
        return self.value(merged, pointer, aliases)

    def _enum(self, s: dict[str, Any], pointer: str) -> str:
        values = [s["const"]] if "const" in s else list(s["enum"])
        rest = {k: v for k, v in s.items() if k not in ("enum", "const")}
        validator = jsonschema.Draft202012Validator(rest)
        try:
            values = [v for v in values if validator.is_valid(v)]
        except jsonschema.exceptions.RefResolutionError:  # type: ignore[attr-defined]
            self._post(pointer, "enum with $ref siblings")
        if not values:
            raise SchemaError(f"tool {self.tool.name!r}: {pointer or '/'}: no enum/const value satisfies the schema")
        literals: list[str] = []
        for v in values:
            for quote in self.QUOTES:
                literals.append(gbnf_literal(self.literal(v, quote)))
        return self.g.add("enum", " | ".join(dict.fromkeys(literals)))

    def _typed(self, t: str, s: dict[str, Any], pointer: str) -> str:
        if t in TYPE_RULES:
            return TYPE_RULES[t]
        if t == "string":
            return self._string(s, pointer)
        if t == "integer":
            return self._integer(s, pointer)
        if t == "number":
            return self._number(s, pointer)
        if t == "array":
            return self._array(s, pointer)
        return self._object(s, pointer)

    def _string(self, s: dict[str, Any], pointer: str) -> str:
        lo, hi = s.get("minLength", 0), s.get("maxLength")
        regex = s.get("pattern")
        fmt = s.get("format")
        if regex is None and fmt is not None:
            if fmt in FORMAT_PATTERNS:
                regex = FORMAT_PATTERNS[fmt]
            else:
                self._post(pointer, f"format {fmt}")
        elif fmt is not None:
            self._post(pointer, f"format {fmt}")
        if regex is not None:
            try:
                dq, sq = regex_to_gbnf(regex, '"'), regex_to_gbnf(regex, "'")
                if lo or hi is not None:
                    self._post(pointer, "minLength/maxLength with pattern")
                return self.g.add("pat", self._quoted(dq, sq))
            except RegexUnsupported as e:
                self._post(pointer, f"pattern ({e})")
        if lo == 0 and hi is None:
            return "str"
        if max(lo, hi or 0) > MAX_STRING_REPEAT:
            self._post(pointer, "minLength/maxLength")
            return "str"
        dq, sq = repeat("dq-char", lo, hi), repeat("sq-char", lo, hi)
        return self.g.add(f"str-{lo}-{hi}", self._quoted(dq, sq))

    def _integer(self, s: dict[str, Any], pointer: str) -> str:
        lo = hi = None
        if isinstance(s.get("minimum"), (int, float)):
            lo = math.ceil(s["minimum"])
        if isinstance(s.get("exclusiveMinimum"), (int, float)):
            lo = max(lo if lo is not None else -math.inf, math.floor(s["exclusiveMinimum"]) + 1)
        if isinstance(s.get("maximum"), (int, float)):
            hi = math.floor(s["maximum"])
        if isinstance(s.get("exclusiveMaximum"), (int, float)):
            hi = min(hi if hi is not None else math.inf, math.ceil(s["exclusiveMaximum"]) - 1)
        if lo is None and hi is None:
            return "int"
        if lo is not None and hi is not None and lo > hi:
            raise SchemaError(f"tool {self.tool.name!r}: {pointer or '/'}: no integer in [{lo}, {hi}]")
        if any(b is not None and len(str(abs(int(b)))) > MAX_INT_RANGE_DIGITS for b in (lo, hi)):
            self._post(pointer, "minimum/maximum")
            return self.WIDE_INT
        low, high = self.INT_BOUNDS
        if lo is None and low is not None and hi >= low:  # the schema's own bound wins; the default fills the other
            lo = low
        if hi is None and high is not None and lo <= high:
            hi = high
        return self.g.add(f"int-{lo}-{hi}", int_range(None if lo is None else int(lo), None if hi is None else int(hi)))

    def _number(self, s: dict[str, Any], pointer: str) -> str:
        lower = [s[k] for k in ("minimum", "exclusiveMinimum") if isinstance(s.get(k), (int, float))]
        upper = [s[k] for k in ("maximum", "exclusiveMaximum") if isinstance(s.get(k), (int, float))]
        if not lower and not upper:
            return "num"
        exact = lower == [0] and "minimum" in s and not upper  # minimum 0 is exactly "no minus sign"
        if not exact:
            self._post(pointer, "minimum/maximum (number)")
        if lower and max(lower) >= 0:
            return "nonneg-num"
        if upper and min(upper) < 0:
            return self.g.add("neg-num", '"-" nonneg-num')
        return "num"

    def _array(self, s: dict[str, Any], pointer: str) -> str:
        lo, hi = s.get("minItems", 0), s.get("maxItems")
        prefix = s.get("prefixItems", [])
        items = s.get("items", True)
        if prefix:
            parts = [self.value(p, f"{pointer}/prefixItems/{i}") for i, p in enumerate(prefix)]
            body = " sep ".join(parts)
            if items is not False:
                body += f" (sep {self.value(items, f'{pointer}/items')})*"
            if lo > len(prefix) or hi is not None:
                self._post(pointer, "minItems/maxItems with prefixItems")
            inner = f"({body})?" if lo == 0 else body
        else:
            if items is False:
                return self.g.add("empty-list", '"[]"') if lo == 0 else self._no_value(pointer)
            item = self.value(items, f"{pointer}/items")
            if max(lo, hi or 0) > MAX_STRING_REPEAT:
                self._post(pointer, "minItems/maxItems")
                lo, hi = 0, None
            more = repeat(f"(sep {item})", max(lo - 1, 0), None if hi is None else hi - 1)
            tail = "" if more == '""' else f" {more}"
            inner = '""' if hi == 0 else f"({item}{tail})?" if lo == 0 else f"{item}{tail}"
        body = f'"[" {inner} "]"'
        if s.get(TUPLE_MARK):
            body += f' | "(" {inner} ","? ")"'
        return self.g.add("list", body)

    def _no_value(self, pointer: str) -> str:
        raise SchemaError(f"tool {self.tool.name!r}: {pointer or '/'}: minItems > 0 with items false admits no value")

    def _object(self, s: dict[str, Any], pointer: str) -> str:
        props: dict[str, Any] = dict(s.get("properties", {}))
        required = set(s.get("required", []))
        extra = s.get("additionalProperties", None if props else True)
        # A required name with no declared schema takes additionalProperties' (any value by default): the grammar
        # then demands it, rather than leaving a missing key to the post-check (BFCL's parallel_29 has such dicts).
        for key in s.get("required", []):
            if key not in props:
                if extra is False:
                    raise SchemaError(f"tool {self.tool.name!r}: {pointer or '/'}: required property {key!r} is "
                                      "not declared and additionalProperties is false: no value is possible")
                props[key] = True if extra in (None, True) else extra
        extra_expr = None
        if extra is not None and extra is not False:
            extra_expr = f"str colon {self.value(extra, f'{pointer}/additionalProperties')}"
            if props:
                self._post(pointer, "additionalProperties keys distinct from declared properties")
        entries = []
        for key, sub in props.items():
            sub_ptr = f"{pointer}/properties/{key}"
            if key in required:
                self.check_productive(sub, sub_ptr)
            keylit = " | ".join(gbnf_literal(self.literal(key, q)) for q in self.QUOTES)
            entries.append((f"({keylit}) colon {self.value(sub, sub_ptr)}", key in required))
        return self.g.add("dict", f'"{{" {self.chain(entries, extra_expr)} "}}"')

    def chain(self, entries: list[tuple[str, bool]], extra: str | None = None) -> str:
        """Comma-separated entries in the given order, optional ones skippable, then any number of `extra`.

        Built back to front as first_i / rest_i rules (rest_i is "what may follow once something was emitted"),
        so size is linear in the number of entries, never the 2^n of `x? x? x?`."""
        rest = f"(sep {extra})*" if extra else None
        first = f"({extra} (sep {extra})*)?" if extra else None
        for expr, req in reversed(entries):
            new_rest = f"sep {expr}" + (f" {rest}" if rest else "")
            new_first = expr + (f" {rest}" if rest else "")
            if not req:
                new_rest = f"({new_rest})?" if rest is None else f"{new_rest} | {rest}"
                new_first = f"({new_first})?" if first is None else f"{new_first} | {first}"
            rest = self.g.add("rest", new_rest)
            first = self.g.add("first", new_first)
        return first or '""'


