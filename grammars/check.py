"""Membership test for the call language without a model: llguidance over a byte-level vocabulary.

The same engine that constrains decoding decides `toolace grammar --check`, so "in the language" means exactly
what the decoder would have allowed."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import llguidance
import numpy as np

from toolace.errors import SchemaError

BYTE_EOS = 256  # the byte vocabulary's end-of-sequence id (bytes are ids 0-255)


class _ByteVocab:
    """A tokenizer whose tokens are the 256 bytes plus EOS, in llguidance's TokenizerWrapper protocol."""

    def __init__(self) -> None:
        self.tokens = [bytes([i]) for i in range(256)] + [b"\xff<eos>"]
        self.eos_token_id = BYTE_EOS
        self.bos_token_id = None
        self.special_token_ids = [BYTE_EOS]

    def __call__(self, data: bytes) -> list[int]:
        return list(data)


@lru_cache(maxsize=1)
def byte_tokenizer() -> llguidance.LLTokenizer:
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteVocab()))


@lru_cache(maxsize=64)  # the same grammar is converted for every call and every check that uses it
def to_llguidance(gbnf: str) -> str:
    """Convert GBNF to llguidance's grammar form; a grammar it cannot take is a compile error (fail closed)."""
    try:
        grammar = llguidance.grammar_from("gbnf", gbnf)
    except ValueError as e:
        raise SchemaError(f"grammar rejected by llguidance: {e}") from None
    err = llguidance.LLMatcher.validate_grammar(grammar)
    if err:
        raise SchemaError(f"grammar rejected by llguidance: {err}")
    return grammar


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    offset: int  # characters of the text that matched before the grammar stopped accepting
    reason: str

    def where(self, text: str) -> str:
        ctx = text[max(0, self.offset - 20): self.offset]
        return f"stops matching at character {self.offset} (after {ctx!r}): {self.reason}"


def check_text(gbnf: str, text: str) -> CheckResult:
    """Is `text` a complete sentence of the grammar?"""
    matcher = llguidance.LLMatcher(byte_tokenizer(), to_llguidance(gbnf), log_level=0)
    data = text.encode("utf-8")
    n = matcher.try_consume_tokens(list(data))
    chars = len(data[:n].decode("utf-8", errors="ignore"))
    if n < len(data):
        return CheckResult(False, chars, f"{text[chars:chars + 1]!r} is not allowed there")
    if not matcher.is_accepting():
        return CheckResult(False, chars, "the text ends before the call is complete")
    return CheckResult(True, chars, "")


STRUCTURAL = frozenset(b"\"')]},:=0123456789")  # bytes that tend to close a value: a random walk prefers them


def sample_text(gbnf: str, rng: Any, max_bytes: int = 2000) -> str | None:
    """A random sentence of the grammar (a random walk over allowed bytes), or None if it did not finish within
    `max_bytes`. Biased towards ASCII and closing bytes so walks end; used to test that everything the grammar
    can produce parses and validates."""
    matcher = llguidance.LLMatcher(byte_tokenizer(), to_llguidance(gbnf), log_level=0)
    out = bytearray()
    while len(out) < max_bytes:
        bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed = np.flatnonzero(bits[: BYTE_EOS + 1])
        if BYTE_EOS in allowed and (len(allowed) == 1 or rng.random() < 0.3):
            return out.decode("utf-8")
        choices = [b for b in allowed if b != BYTE_EOS]
        ascii_ = [b for b in choices if b < 0x80]
        closing = [b for b in ascii_ if b in STRUCTURAL]
        pool = closing if closing and rng.random() < 0.5 else ascii_ if ascii_ and rng.random() < 0.95 else choices
        byte = int(pool[int(rng.integers(len(pool)))])
        if not matcher.consume_token(byte):
            raise SchemaError(f"grammar walk refused an allowed byte: {matcher.get_error()}")
        out.append(byte)
    return None
