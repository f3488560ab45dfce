"""The budget planner without a model (docs/budget.md): the completion walk always completes the call list (checked
by the same engine that constrains decoding, and by the parser and validator), the runaway detector fires on
cycles and not on their near misses, and the value scanner knows where a value starts and ends."""

from __future__ import annotations

import json
from typing import Any

import llguidance
import numpy as np
import pytest

from tests.conftest import EXAMPLES
from toolace.grammars.check import byte_tokenizer, check_text, sample_text, to_llguidance
from toolace.grammars.compile import compile_grammar
from toolace.grammars.parser import parse_calls
from toolace.limits import (
    LOOP_MIN_REPEATS,
    LOOP_MIN_SPAN_TOKENS,
    PROSE_LOOP_MAX_PERIOD,
    PROSE_LOOP_MIN_CHARS,
    PROSE_LOOP_MIN_SPAN_TOKENS,
)
from toolace.runtime.budget import (
    Lex,
    find_loop,
    json_value_depths,
    prose_loop,
    prose_phrase_loop,
    shortest_completion,
    value_depths,
)

CALENDAR = json.loads((EXAMPLES / "calendar_weather.json").read_text())
TRAVEL = json.loads((EXAMPLES / "bfcl_travel.json").read_text())
AWKWARD = [{"name": "f", "parameters": {"type": "object", "properties": {
    "email": {"type": "string", "format": "email"},
    "when": {"type": "string", "format": "date-time"},
    "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"},
    "n": {"type": "integer", "minimum": 10, "maximum": 12},
    "x": {"type": "number", "minimum": 0.5},
    "nested": {"type": "object", "properties": {"k": {"type": "array", "items": {"type": "string"}, "minItems": 2}},
               "required": ["k"]},
    "pair": {"type": "tuple", "items": {"type": "integer"}, "minItems": 2},
}, "required": ["email", "when", "code", "n", "x", "nested", "pair"]}}]


def _complete(gbnf: str, prefix: str) -> str:
    matcher = llguidance.LLMatcher(byte_tokenizer(), to_llguidance(gbnf), log_level=0)
    data = prefix.encode()
    assert matcher.try_consume_tokens(list(data)) == len(data), prefix
    tail = shortest_completion(matcher, Lex().feed(data))
    assert tail is not None
    assert matcher.try_consume_tokens([]) == 0 and not matcher.is_error()  # the walk left the matcher as it was
    return prefix + tail.decode()


@pytest.mark.parametrize(("tools", "choice"), [(CALENDAR, "required"), (TRAVEL, "required"), (AWKWARD, "required"),
                                               (CALENDAR, "auto"), (TRAVEL, "hotel_booking")])
def test_every_prefix_completes_to_a_valid_call_list(tools: list[dict[str, Any]], choice: str) -> None:
    """Random sentences of the grammar, cut at every byte: the walk completes each prefix into a sentence that the
    grammar accepts and that parses and validates."""
    compiled = compile_grammar(tools, choice)
    rng = np.random.default_rng(7)
    for _ in range(4):
        text = sample_text(compiled.gbnf, rng, max_bytes=400)
        if text is None or not text.startswith("["):
            continue
        for cut in range(0, len(text), max(1, len(text) // 25)):
            prefix = text[:cut]
            if prefix.encode("utf-8", "strict") != text.encode()[: len(prefix.encode())]:
                continue
            done = _complete(compiled.gbnf, prefix)
            assert check_text(compiled.gbnf, done).ok, done
            if done.startswith("["):
                calls = parse_calls(done, compiled.tools)
                assert compiled.validator.errors(calls) == [] or compiled.post_checks, done


@pytest.mark.parametrize(("prefix", "completion"), [
    ("[Weather Lookup API(city='Lis", "[Weather Lookup API(city='Lis')]"),
    ("[Weather Lookup API(city='Lisbon', unit='fa", "[Weather Lookup API(city='Lisbon', unit='fahrenheit')]"),
    ("[calendar.create_event(title='a)b", "[calendar.create_event(title='a)b',date='',start_time='',"
                                          "duration_minutes=0)]"),  # a ")" inside a string closes nothing
    ("[calendar.create_event(title='', date='', start_time='', duration_minutes=12",
     "[calendar.create_event(title='', date='', start_time='', duration_minutes=12)]"),  # the number ends
    ("[calendar.create_event(title='', date='', start_time='', duration_minutes=1, attendees=['a', \"b",
     "[calendar.create_event(title='', date='', start_time='', duration_minutes=1, attendees=['a', \"b\"])]"),
])
def test_completion_closes_the_innermost_first(prefix: str, completion: str) -> None:
    assert _complete(compile_grammar(CALENDAR, "required").gbnf, prefix) == completion


def test_walk_ends_on_unbounded_patterns() -> None:
    """A string pattern with `+` repeats (an email) does not keep the walk choosing the same byte."""
    done = _complete(compile_grammar(AWKWARD, "required").gbnf, "[f(email='")
    assert check_text(compile_grammar(AWKWARD, "required").gbnf, done).ok and len(done) < 1000


LOOP = [5, 6, 7, 8, 9, 10]  # a cycle of period 6


@pytest.mark.parametrize(("tokens", "found"), [
    ([1, 2] + LOOP * 3, (6, 3)),
    ([1, 2] + LOOP * 4, (6, 4)),
    ([1] * LOOP_MIN_SPAN_TOKENS, (1, LOOP_MIN_SPAN_TOKENS)),
    ([3, 4] * (LOOP_MIN_SPAN_TOKENS // 2), (2, LOOP_MIN_SPAN_TOKENS // 2)),
    # near misses: one copy short, one token short of the span, the cycle broken at the end
    ([1, 2] + LOOP * (LOOP_MIN_REPEATS - 1), None),
    ([1] * (LOOP_MIN_SPAN_TOKENS - 1), None),
    ([1, 2] + LOOP * 3 + [99], None),
    ([1, 2] + LOOP * 2 + [5, 6, 7, 8, 9, 11], None),
])
def test_find_loop(tokens: list[int], found: tuple[int, int] | None) -> None:
    assert find_loop(tokens) == found


@pytest.mark.parametrize(("text", "depths"), [
    ("[f(a=1)]", "00001100"),
    ("[f(a='x,y')]", "000012222200"),
    ("[f(a=(1, 2), b=3)]", "000012222210001100"),
    ("[f(a='\\'', b=[])]", "00001222200012100"),
    ("[f(), g(a={'k': [1]})]", "0000000001233322332100"),
])
def test_value_depths(text: str, depths: str) -> None:
    assert "".join(str(d) for d in value_depths(text)) == depths


@pytest.mark.parametrize(("text", "depths"), [
    ('{"a": 1}', "12221110"),
    ('{"a": "x,y"}', "122211222220"),
    ("[1, [2]]", "11112210"),
    ('{"k": "\\""}', "12221122220"),
    ('"ab"', "1111"),  # a top-level string is inside the answer's one value too
])
def test_json_value_depths(text: str, depths: str) -> None:
    """A JSON answer is one value: everything inside its outer brackets (or its string) is inside it."""
    assert "".join(str(d) for d in json_value_depths(text)) == depths


TOKYO = "The function should return the converted time in Tokyo. "
LINE = "print(convert_time('Asia/Tokyo'))\n"


@pytest.mark.parametrize(("text", "loops"), [
    (TOKYO * 3, True),  # the answer, at its third copy
    ("It failed. " + TOKYO * 3, True),
    (LINE * 3, True),
    ("First sentence here. Second one, longer. " * 3, True),  # a block of two, three times
    ("One.\n\nTwo is longer.\n\n" * 3, True),  # blank lines between copies are no units
    # near misses: two copies; the third still being written; the same sentence with other text between; short
    # lines; a block longer than PROSE_LOOP_MAX_PERIOD; a copy that differs in one character
    (TOKYO * 2, False),
    (TOKYO * 2 + "The function should", False),
    (TOKYO + "Then this. " + TOKYO + "And that. " + TOKYO, False),
    ("Yes.\n" * 6, False),
    ("".join(f"Sentence number {i}. " for i in range(PROSE_LOOP_MAX_PERIOD + 1)) * 3, False),
    (TOKYO * 2 + TOKYO.replace("Tokyo", "Tokio"), False),
])
def test_prose_loop(text: str, loops: bool) -> None:
    assert prose_loop(text, text[-8:]) is loops
    assert len("Yes.") < PROSE_LOOP_MIN_CHARS <= len(TOKYO.strip())


def test_prose_loop_only_looks_when_a_unit_ends() -> None:
    """The check runs when the newest piece ends a line or sentence; a piece that ends none is never a loop."""
    assert prose_loop(TOKYO * 3, "Tokyo. ") and not prose_loop(TOKYO * 3, "converted")


PHRASE = [11, 12, 13, 14, 15, 16, 17]  # "that contains a nested JSON object", as seven tokens


@pytest.mark.parametrize(("tokens", "loops"), [
    ([1, 2] + PHRASE * -(-PROSE_LOOP_MIN_SPAN_TOKENS // len(PHRASE)), True),
    ([1, 2] + [0, 3] * (PROSE_LOOP_MIN_SPAN_TOKENS // 2), True),
    # near misses: one copy short of the span; the loop broken by its last token; a value's runaway span
    ([1, 2] + PHRASE * (-(-PROSE_LOOP_MIN_SPAN_TOKENS // len(PHRASE)) - 1), False),
    ([1, 2] + PHRASE * 6 + [99], False),
    ([1, 2] + [0, 3] * (LOOP_MIN_SPAN_TOKENS // 2), LOOP_MIN_SPAN_TOKENS >= PROSE_LOOP_MIN_SPAN_TOKENS),
])
def test_prose_phrase_loop(tokens: list[int], loops: bool) -> None:
    """A phrase going round inside a sentence that never ends: a token cycle, with a longer span than a value's."""
    assert prose_phrase_loop(tokens) is loops


def test_byte_matchers_are_compiled_once_and_never_shared() -> None:
    """Every guard of the same tools gets its own matcher at the grammar's start, copied from one compiled once."""
    from toolace.grammars import plan
    from toolace.limits import BYTE_MATCHER_CACHE_ENTRIES

    gbnf = compile_grammar(CALENDAR, "required").gbnf
    first = plan.byte_matcher(gbnf)
    assert first.try_consume_tokens(list(b"[")) == 1  # fed: a later matcher must not see this
    second = plan.byte_matcher(gbnf)
    assert second is not first
    assert second.try_consume_tokens(list(b"]")) == 0  # at the start, where "]" is refused ...
    assert second.try_consume_tokens(list(b"[")) == 1  # ... and "[" is taken
    assert gbnf in plan._MATCHERS  # kept for the next request of these tools
    for i in range(BYTE_MATCHER_CACHE_ENTRIES + 3):  # bounded: the least recently used grammar goes first
        plan.byte_matcher(f"{gbnf}\n# variant {i}\n")
    assert len(plan._MATCHERS) == BYTE_MATCHER_CACHE_ENTRIES and gbnf not in plan._MATCHERS


class _Bytes:
    """A vocabulary of one token per byte: the guard's decisions without a model."""

    def encode(self, data: bytes) -> list[int]:
        return list(data)

    def piece(self, token: int) -> bytes:
        return bytes([token])


@pytest.mark.parametrize(("tools", "choice"), [(CALENDAR, "required"), (TRAVEL, "required"), (AWKWARD, "required")])
def test_the_reserve_is_kept_while_it_still_completes(tools: list[dict[str, Any]], choice: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """After every accepted token the guard's reserve completes the text so far into a sentence of the grammar;
    inside a value (or following the reserve) it is kept rather than walked again, so most tokens need no walk."""
    from toolace.grammars import plan

    walks = []
    walk = plan.shortest_completion
    monkeypatch.setattr(plan, "shortest_completion", lambda *a, **k: walks.append(1) or walk(*a, **k))
    compiled = compile_grammar(tools, choice)
    names = [t.name for t in compiled.tools]
    rng = np.random.default_rng(11)
    fed = 0
    for _ in range(6):
        text = sample_text(compiled.gbnf, rng, max_bytes=400)
        if text is None:
            continue
        guard = plan.Guard(_Bytes(), compiled.gbnf, names, True, 4096, 4096)
        for i, b in enumerate(text.encode()):
            assert guard.check([b], 4096 - i - 1).cut is False
            fed += 1
            done = bytes(guard.text) + b"".join(bytes([t]) for t in guard.plan)
            assert check_text(compiled.gbnf, done.decode()).ok, done  # the reserve is a completion from here
    assert 0 < len(walks) < fed / 2, (len(walks), fed)


def test_a_stale_reserve_is_walked_again() -> None:
    """Near miss of the above: once the value the reserve closed is closed by the text, the old reserve no longer
    completes it, and a fresh walk replaces it."""
    from toolace.grammars import plan

    compiled = compile_grammar(CALENDAR, "required")
    guard = plan.Guard(_Bytes(), compiled.gbnf, [t.name for t in compiled.tools], True, 4096, 4096)
    for b in b"[calendar.create_event(title='Budget',date='2026-12-01',start_time='14:00',duration_minutes=45":
        guard.check([b], 4000)
    before = bytes(guard.plan)
    assert before.endswith(b")]")  # kept since "=": still a completion after each digit
    for b in b",attendees=[":
        guard.check([b], 4000)
    after = bytes(guard.plan)
    assert before != after and after.startswith(b"]")
    assert check_text(compiled.gbnf, (bytes(guard.text) + after).decode()).ok


def test_a_cut_closes_the_value_rather_than_extend_a_kept_reserve() -> None:
    """The kept reserve after `=4` is `0)]`; a cut right there emits the fresh walk's `)` (the number stays 4), not
    the kept reserve's `0` (40). Near miss: with room for the kept reserve, the model's digit is taken."""
    from toolace.grammars import plan

    compiled = compile_grammar(CALENDAR, "required")
    names = [t.name for t in compiled.tools]
    head = b"[calendar.create_event(title='B',date='d',start_time='s',duration_minutes=4"
    for room, expected in ((1, plan.Verdict([ord(")")], True)), (3, plan.Verdict([ord("5")], False))):
        guard = plan.Guard(_Bytes(), compiled.gbnf, names, True, 4096, 4096)
        for b in head:
            guard.check([b], 4000)
        assert bytes(guard.plan) == b"0)]"
        assert guard.check([ord("5")], room) == expected
