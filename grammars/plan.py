"""The budget guard and the runaway detector for any tokenizer (docs/budget.md): pure Python and llguidance.

A grammar-constrained output is only valid once it is complete, so the decoder keeps in reserve the tokens that the
shortest completion from its current grammar state needs. The completion is found on a byte-level llguidance
matcher kept in step with the output: a greedy walk that takes forced bytes, then prefers bytes that close what is
open. Its canonical tokenization is the reserve. A model token is taken only if the reserve of the state after it
still fits the budget left; otherwise the decoder emits the next token of that completion instead (the plan), which
closes the open value and hands the remaining required arguments back to the model under the shrinking budget.
Taking a plan token shortens the plan by one, so the reserve always fits once the start fits: the request's
minimum `max_tokens` is the shortest complete call, computed per tool from the grammar's start.

Runaway values: the same token cycle repeated inside one open value is cut (grammars/loops.py).

The tokenizer is a `Vocab`: llama.cpp's (runtime/budget.py) or the Hugging Face tokenizer a vLLM server samples
with (serve/vllm/guard.py, the export's logits processor), so both engines plan the same completions."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from weakref import WeakKeyDictionary

import llguidance
import numpy as np

from toolace.errors import ContextLengthError, GenerationError, InputError
from toolace.limits import (
    BYTE_MATCHER_CACHE_ENTRIES,
    MAX_COMPLETION_BYTES,
    START_PLAN_CACHE_ENTRIES,
)

from .check import BYTE_EOS, byte_tokenizer, to_llguidance
from .loops import json_value_depths, value_depths


class Vocab(Protocol):
    """A model's tokenizer as the guard needs it. Held weakly by the start-plan cache, so it must be hashable."""

    def encode(self, data: bytes) -> list[int]:
        """The canonical tokens of `data` (no BOS, no special tokens)."""

    def piece(self, token: int) -> bytes:
        """The bytes one token stands for."""


# Byte preference of the completion walk at a choice point, after closing what is open (`Lex.closer`): the
# shortest values (0, empty strings), separators, then anything else in byte order; spaces and non-ASCII last.
_ORDER = b"0'\",123456789"
_RANK = np.full(256, 10_000, dtype=np.int64)
for _b in range(0x21, 0x7F):
    _RANK[_b] = 100 + _b
for _i, _b in enumerate(_ORDER):
    _RANK[_b] = _i
_RANK[ord(" ")] = 1_000
_CLOSERS = {"[": ord("]"), "(": ord(")"), "{": ord("}")}
_NUMBER_BYTES = frozenset(b"0123456789.eE+-")
# A byte chosen this many times in one walk yields to the others (a pattern such as [a-z0-9]+@... would otherwise
# take "0" forever); the walk still ends at the first closing byte it may take.
REPEAT_PENALTY_EVERY = 2
# A completion walk longer than this many bytes per token of room cannot fit anyway: the walk stops there.
MAX_TOKEN_BYTES_BOUND = 64


@dataclass(frozen=True)
class Lex:
    """What is open at a byte position of call-language (or JSON) text: brackets, a string, a number. The walk
    closes the innermost first; a plain scan is exact because names hold no brackets or quotes (schema.check_name)."""

    stack: str = ""
    quote: str = ""
    escaped: bool = False
    number: bool = False

    def step(self, b: int) -> Lex:
        ch = chr(b)
        if self.quote:
            if self.escaped:
                return Lex(self.stack, self.quote)
            if ch == "\\":
                return Lex(self.stack, self.quote, escaped=True)
            return Lex(self.stack, "" if ch == self.quote else self.quote)
        if ch in "'\"":
            return Lex(self.stack, ch)
        if ch in _CLOSERS:
            return Lex(self.stack + ch)
        if ch in ")]}":
            return Lex(self.stack[:-1])
        return Lex(self.stack, number=b in _NUMBER_BYTES)

    def closer(self) -> int | None:
        if self.quote:
            return None if self.escaped else ord(self.quote)
        return _CLOSERS[self.stack[-1]] if self.stack else None

    def feed(self, data: bytes) -> Lex:
        lex = self
        for b in data:
            lex = lex.step(b)
        return lex


def _choose(allowed: np.ndarray, lex: Lex, used: np.ndarray) -> int:
    closer = lex.closer()
    if closer is not None and closer in allowed:
        return closer
    if lex.number and ord(",") in allowed:
        return ord(",")  # a number could go on forever; what follows it cannot be avoided
    key = (used[allowed] // REPEAT_PENALTY_EVERY) * 100_000 + _RANK[allowed]
    return int(allowed[np.argmin(key)])


_MATCHERS: OrderedDict[str, Any] = OrderedDict()  # gbnf -> a matcher at the start, never fed (copied per use)
_MATCHERS_LOCK = threading.Lock()


def byte_matcher(gbnf: str) -> Any:
    """A fresh byte-level matcher at the grammar's start. Compiling one takes milliseconds, copying a compiled
    one microseconds: a server guards every request of the same tools, so the compiled one is kept (LRU)."""
    with _MATCHERS_LOCK:  # the server's request threads share the cache
        pristine = _MATCHERS.get(gbnf)
        if pristine is None:
            pristine = _MATCHERS[gbnf] = llguidance.LLMatcher(byte_tokenizer(), to_llguidance(gbnf), log_level=0)
            if len(_MATCHERS) > BYTE_MATCHER_CACHE_ENTRIES:
                _MATCHERS.popitem(last=False)
        _MATCHERS.move_to_end(gbnf)
        return pristine.deep_copy()


def shortest_completion(matcher: Any, lex: Lex, limit: int = MAX_COMPLETION_BYTES) -> bytes | None:
    """A short completion from the matcher's state to an accepting one (the matcher is left as it was), or None if
    the walk passes `limit` bytes. Greedy: forced bytes, else close the innermost open thing, else the preferred
    byte (`_choose`). Not always the shortest, always a valid completion; its tokens are the reserve."""
    out = bytearray()
    used = np.zeros(256, dtype=np.int64)
    try:
        while not matcher.is_accepting():
            forced = bytes(matcher.compute_ff_bytes())
            if forced:
                step = forced
            else:
                bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
                allowed = np.flatnonzero(bits[:BYTE_EOS])
                if allowed.size == 0:
                    raise GenerationError(f"grammar dead end while planning a completion: {matcher.get_error()}")
                b = _choose(allowed, lex, used)
                if b == lex.closer():
                    used[:] = 0  # progress: the penalty only breaks walks that go round inside one thing
                else:
                    used[b] += 1
                step = bytes([b])
            if len(out) + len(step) > limit:
                return None
            if not matcher.consume_tokens(list(step)):
                raise GenerationError(f"grammar refused its own completion: {matcher.get_error()}")
            out += step
            lex = lex.feed(step)
        return bytes(out)
    finally:
        if out and not matcher.rollback(len(out)):
            raise GenerationError(f"grammar rollback failed after planning: {matcher.get_error()}")


_PLANS: WeakKeyDictionary[Any, OrderedDict[tuple[str, tuple[str, ...]], tuple[int, ...] | None]] = \
    WeakKeyDictionary()


def start_plan(vocab: Vocab, gbnf: str, names: tuple[str, ...]) -> tuple[int, ...] | None:
    """`_walk_start`, cached per vocabulary (weakly: a tokenizer that is dropped takes its plans with it)."""
    plans = _PLANS.setdefault(vocab, OrderedDict())
    key = (gbnf, names)
    if key not in plans:
        plans[key] = _walk_start(vocab, gbnf, names)
        if len(plans) > START_PLAN_CACHE_ENTRIES:
            plans.popitem(last=False)
    plans.move_to_end(key)
    return plans[key]


def _walk_start(vocab: Vocab, gbnf: str, names: tuple[str, ...]) -> tuple[int, ...] | None:
    """Tokens of the shortest complete call list from the grammar's start: one walk per tool (a byte-greedy walk
    would pick a tool by its first letters, not its length)."""
    best: tuple[int, ...] | None = None
    matcher = byte_matcher(gbnf)
    for name in names:
        head = f"[{name}(".encode()
        if matcher.try_consume_tokens(list(head)) != len(head):
            matcher.reset()
            continue  # tool_choice names another tool
        tail = shortest_completion(matcher, Lex().feed(head))
        matcher.reset()
        if tail is not None:
            plan = tuple(vocab.encode(head + tail))
            if best is None or len(plan) < len(best):
                best = plan
    if best is None:  # not a "[name(" call list (JSON, another call syntax): the greedy walk from the start
        tail = shortest_completion(matcher, Lex())
        best = None if tail is None else tuple(vocab.encode(tail) if tail else [])
    return best


@dataclass
class Verdict:
    """What the guard decided for one step: the tokens to emit (None: end the turn) and whether they replace the
    model's choice."""

    tokens: list[int] | None
    cut: bool


class Guard:
    """Keeps the shortest completion in reserve while a call list (or a JSON answer) is being decoded.

    `calls_only` (required / named tool_choice, a JSON answer): guarded from the first token, and a budget below the
    minimum is refused. auto: guarded once the output starts with "[" (a call list) or "{" with `json` (the JSON
    answer beside tools), if the budget allows the minimum (below it, a call list may still be cut, as without a
    guard; docs/budget.md). A grammar whose completions the planner cannot find within MAX_COMPLETION_BYTES is not
    guarded. `json`: the output may be a JSON value, whose values `json_value_depths` finds."""

    def __init__(self, vocab: Vocab, gbnf: str, names: Sequence[str], calls_only: bool, max_tokens: int,
                 context_room: int, json: bool = False) -> None:
        self.vocab, self.names, self.json = vocab, tuple(names), json
        self.matcher = byte_matcher(gbnf)
        start = start_plan(vocab, gbnf, self.names)
        self.minimum = None if start is None else len(start)
        budget = min(max_tokens, context_room)
        if calls_only and self.minimum is not None and budget < self.minimum:
            if max_tokens < self.minimum:
                raise InputError(f"max_tokens {max_tokens} is below the {self.minimum} tokens of the shortest "
                                 f"complete call for these tools; raise max_tokens to at least {self.minimum}")
            raise ContextLengthError(f"the context has room for {context_room} tokens after the prompt, below the "
                                     f"{self.minimum} tokens of the shortest complete call for these tools")
        self.enabled = self.minimum is not None and budget >= self.minimum
        self.mode = "calls" if calls_only else "undecided"  # auto: decided by the first output byte
        self.plan: list[int] = list(start or [])  # valid from the current state; empty: walk again when needed
        self.lex = [Lex()]  # the open brackets/string/number after each fed byte
        self.text = bytearray()  # the bytes fed so far (for value_depths)

    @property
    def active(self) -> bool:
        return self.enabled and self.mode != "text"

    def _decide(self, data: bytes) -> None:
        if self.mode == "undecided" and data:
            self.mode = "calls" if data[:1] == b"[" or (self.json and data[:1] == b"{") else "text"

    def _feed(self, data: bytes) -> bool:
        if not data:
            return True
        n = self.matcher.try_consume_tokens(list(data))
        if n != len(data):
            if n and not self.matcher.rollback(n):
                raise GenerationError(f"grammar rollback failed: {self.matcher.get_error()}")
            return False
        lex = self.lex[-1]
        for b in data:
            lex = lex.step(b)
            self.lex.append(lex)
        self.text += data
        return True

    def _unfeed(self, n: int) -> None:
        if n:
            if not self.matcher.rollback(n):
                raise GenerationError(f"grammar rollback failed: {self.matcher.get_error()}")
            del self.lex[len(self.lex) - n:]
            del self.text[len(self.text) - n:]

    def _bytes(self, tokens: Sequence[int]) -> bytes:
        return b"".join(self.vocab.piece(t) for t in tokens)

    def check(self, tokens: list[int], room: int) -> Verdict:
        """Take `tokens` (the model's or fast-forwarded) if the reserve after them fits `room` (budget left after
        them); else the next planned token."""
        data = self._bytes(tokens)
        self._decide(data)
        if not self.active:
            return Verdict(tokens, False)  # text (auto) or unguarded: the byte matcher is no longer needed
        before = self.plan
        if not self._feed(data):  # the decoder's grammar allowed them: this is not the grammar being decoded
            self.enabled = False
            return Verdict(tokens, False)
        kept = self._still_valid(tokens, data, before)
        if kept is not None and len(kept) <= room:
            self.plan = kept
            return Verdict(tokens, False)
        planned = self._walk(room)
        if planned is not None:
            self.plan = planned  # the reserve that was checked is the one a cut will use
            return Verdict(tokens, False)
        self._unfeed(len(data))
        # The cut's plan: a fresh walk where it fits (it closes the open value: a number ends here rather than
        # taking the kept reserve's "0"), else the reserve checked at the last step, which does.
        fresh = self._walk(room + len(tokens))
        self.plan = before if fresh is None else fresh
        return Verdict(self._planned(), True)

    def _walk(self, room: int) -> list[int] | None:
        """The walk's completion from here in tokens, if it fits `room`."""
        tail = shortest_completion(self.matcher, self.lex[-1], limit=max(room, 0) * MAX_TOKEN_BYTES_BOUND)
        planned = None if tail is None else self.vocab.encode(tail) if tail else []
        return planned if planned is not None and len(planned) <= room else None

    def _still_valid(self, tokens: list[int], data: bytes, before: list[int]) -> list[int] | None:
        """The reserve from before `data`, as a completion from after it, when it still is one: the model followed
        it (the rest of it), or wrote on inside a value it closes (all of it, checked by the matcher). Most tokens
        of a value end here, without the byte walk (the guard's per-token cost, docs/budget.md)."""
        if not before:
            return None
        if before[:len(tokens)] == tokens:
            return before[len(tokens):]
        tail = self._bytes(before)
        if tail.startswith(data):
            return self.vocab.encode(tail[len(data):])
        n = self.matcher.try_consume_tokens(list(tail))
        fits = n == len(tail) and self.matcher.is_accepting()
        if n and not self.matcher.rollback(n):
            raise GenerationError(f"grammar rollback failed: {self.matcher.get_error()}")
        return before if fits else None

    def feed(self, tokens: Sequence[int]) -> None:
        """Follow tokens taken without a check (an engine that overrode the guard's choice)."""
        data = self._bytes(tokens)
        self._decide(data)
        if self.active and not self._feed(data):
            self.enabled = False
        self.plan = []

    def _planned(self) -> list[int] | None:
        if not self.plan:
            tail = shortest_completion(self.matcher, self.lex[-1])
            if tail is None:
                raise GenerationError("no completion of the call list within the planner's limit")
            self.plan = self.vocab.encode(tail) if tail else []
        if not self.plan:
            return None  # the grammar accepts here: end the turn
        token = self.plan.pop(0)
        if not self._feed(self._bytes([token])):
            raise GenerationError("the grammar refused a planned token")
        return [token]

    def close_value(self) -> list[int] | None:
        """The first token of the completion from here (closes the innermost open value)."""
        self.plan = []
        return self._planned()

    def rollback(self, tokens: Sequence[int]) -> None:
        self._unfeed(len(self._bytes(tokens)))
        self.plan = []

    def accepting(self) -> bool:
        return bool(self.matcher.is_accepting())

    def depths(self, text: str) -> list[int]:
        """`value_depths` for a call list, `json_value_depths` for a JSON answer (beside tools: one that starts
        with "{")."""
        return json_value_depths(text) if self.json and (not self.names or text.startswith("{")) \
            else value_depths(text)
