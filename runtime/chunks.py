"""The chunked-prefill rule: prompts are evaluated in fixed PREFILL_CHUNK-token chunks, and only whole chunks are
reused. One home for Model and the parallel slots alike; llama.cpp-free, so the memory estimate can size a decode
step without loading it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

# Prompts are evaluated in chunks of this many tokens at fixed positions (0, 64, 128, ...), and only whole chunks
# are reused from the KV cache: a token's KV then always comes from the same batch shape, so greedy output does not
# depend on what the cache held (llama.cpp's results differ in the last bits with the batch size, and a different
# split of the uncached suffix used to flip close greedy choices). The cost: up to 63 cached tokens re-evaluated.
PREFILL_CHUNK = 64


def whole_chunks(n: int) -> int:
    """The first `n` tokens rounded down to whole PREFILL_CHUNK chunks: the part a later prompt may reuse."""
    return n - n % PREFILL_CHUNK


def eval_in_chunks(evaluate: Callable[[Sequence[int]], None], tokens: Sequence[int], start: int) -> int:
    """Evaluate `tokens[start:]` (start on a chunk boundary) in PREFILL_CHUNK chunks at fixed positions; returns
    how many leading tokens are now chunk-evaluated."""
    for at in range(start, len(tokens), PREFILL_CHUNK):
        evaluate(tokens[at: at + PREFILL_CHUNK])
    return whole_chunks(len(tokens))


def reusable_prefix(held: Sequence[int], chunked: int, tokens: Sequence[int]) -> int:
    """Tokens of `tokens` a KV cache holding `held` can keep: whole PREFILL_CHUNK chunks of the common prefix within
    its first `chunked` (chunk-evaluated) tokens, leaving at least one token to evaluate so logits are fresh."""
    n = 0
    for a, b in zip(held[:chunked], tokens, strict=False):
        if a != b:
            break
        n += 1
    return whole_chunks(min(n, len(tokens) - 1))
