"""Loops in model output (docs/budget.md): a token cycle repeating inside one value of a call list or JSON answer (a
runaway value, which the decoder cuts), and a text answer going round (a looping answer, which ends). Pure Python:
the decoder (runtime/generate.py) and the vLLM export's logits processor (serve/vllm/guard.py) use the same tests."""

from __future__ import annotations

import re
from collections.abc import Sequence

from toolace.limits import (
    LOOP_MAX_PERIOD_TOKENS,
    LOOP_MIN_REPEATS,
    LOOP_MIN_SPAN_TOKENS,
    PROSE_LOOP_MAX_PERIOD,
    PROSE_LOOP_MIN_CHARS,
    PROSE_LOOP_MIN_SPAN_TOKENS,
    PROSE_LOOP_REPEATS,
)


def value_depths(text: str) -> list[int]:
    """For each character of a call list, how deep inside an argument value it is (0: outside every value): 1 from
    the "=" of an argument to its "," or ")", plus open brackets and an open string inside it. Names cannot hold
    brackets, quotes or "=" (schema.check_name), so a plain scan is exact on text the grammar allowed."""
    depths: list[int] = []
    stack, in_arg, quote, escaped = 0, False, "", False
    for ch in text:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            depths.append(1 + max(stack - 2, 0) + 1)
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[({":
            stack += 1
        elif ch in "])}":
            stack -= 1
            in_arg = in_arg and stack >= 2  # the call's ")" ends its last argument
        elif stack == 2 and ch in "=,":
            in_arg = ch == "="
        depths.append((1 + max(stack - 2, 0) + (1 if quote else 0)) if in_arg else 0)
    return depths


def json_value_depths(text: str) -> list[int]:
    """`value_depths` for a JSON answer: each character's open brackets plus an open string. The whole answer is
    the one value, so a cycle anywhere inside its outer brackets (a member's digits or string, a list's items) is a
    runaway; JSON strings only use double quotes and escapes."""
    depths: list[int] = []
    stack, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            depths.append(stack + 1)
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            stack += 1
        elif ch in "]}":
            stack -= 1
        depths.append(stack + (1 if in_string else 0))
    return depths


def find_loop(tokens: Sequence[int], min_span: int = LOOP_MIN_SPAN_TOKENS) -> tuple[int, int] | None:
    """(period, repeats) if the output ends with at least LOOP_MIN_REPEATS copies of one token cycle of period <=
    LOOP_MAX_PERIOD_TOKENS spanning >= `min_span` tokens; the shortest period wins."""
    n = len(tokens)
    for p in range(1, LOOP_MAX_PERIOD_TOKENS + 1):
        need = max(LOOP_MIN_REPEATS, -(-min_span // p))
        if n < need * p:
            break
        cycle = tokens[n - p:]
        k = 1
        while (k + 1) * p <= n and tokens[n - (k + 1) * p: n - k * p] == cycle:
            k += 1
        if k >= need:
            return p, k
    return None


_UNIT_END = re.compile(r"(?<=[.!?])\s+|\n")  # a sentence ends at . ! ? before a space; a line at its newline


def prose_phrase_loop(tokens: Sequence[int]) -> bool:
    """A text answer repeating one phrase inside a sentence that never ends ("that contains a nested JSON object"
    over and over): LOOP_MIN_REPEATS copies of a token cycle spanning PROSE_LOOP_MIN_SPAN_TOKENS, longer than a value's
    runaway needs, so a row of short repeats in real text ("0, 0, 0" in a small matrix) is left alone."""
    return find_loop(tokens, PROSE_LOOP_MIN_SPAN_TOKENS) is not None


def prose_loop(text: str, piece: str) -> bool:
    """True when a text answer (`piece` its newest part) is going round: its last finished lines and sentences are
    PROSE_LOOP_REPEATS copies in a row of one block of at most PROSE_LOOP_MAX_PERIOD of them ("The function should
    return the converted time in Tokyo." over and over, or a paragraph of two sentences), one of which has at least
    PROSE_LOOP_MIN_CHARS characters. Only consecutive copies count, so a sentence said again later in a real
    answer, or short lines that repeat ("Yes.", "```"), never end it; blank lines are not units."""
    if not any(c in piece for c in ".!?\n"):
        return False  # no line or sentence ended in this piece (the check costs O(text) only at unit ends)
    units = [u.strip() for u in _UNIT_END.split(text)]
    if not (text.endswith("\n") or text.rstrip()[-1:] in (".", "!", "?")):
        units.pop()  # the last unit is still being written
    units = [u for u in units if u]
    for period in range(1, PROSE_LOOP_MAX_PERIOD + 1):
        if len(units) < PROSE_LOOP_REPEATS * period:
            break
        block = units[len(units) - period:]
        if max(len(u) for u in block) < PROSE_LOOP_MIN_CHARS:
            continue
        if all(units[len(units) - (k + 1) * period: len(units) - k * period] == block
               for k in range(1, PROSE_LOOP_REPEATS)):
            return True
    return False
