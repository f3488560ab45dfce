"""Decode speed of one model file, for `toolace bench quants`'s per-quant column: run in a child process
(eval/child.py) so that its peak RSS is this model's alone. Greedy, unconstrained, one token per llama_decode:
what a user's tokens/s is once the prompt is in."""

from __future__ import annotations

import time

import numpy as np

from toolace.runtime.model import Model

SPEED_PROMPT = "Write a short story about a lighthouse keeper."  # any prose start: the figure is per token
SPEED_CONTEXT_TOKENS = 512  # the context made for the measure: prompt plus the decoded tokens fit


def decode_speed(path: str, tokens: str) -> dict[str, float]:
    """Tokens per second decoding `tokens` (a count, as text from the command line) after a short prompt."""
    n = int(tokens)
    m = Model(path, n_ctx=SPEED_CONTEXT_TOKENS)
    prompt = [m.bos_id, *m.tokenize(SPEED_PROMPT, special=False)]
    m.prefill(prompt)
    m.eval([int(np.argmax(m.logits()))])  # the first decode allocates its buffers: not counted
    start = time.perf_counter()
    for _ in range(n):
        m.eval([int(np.argmax(m.logits()))])
    return {"decode_tokens_per_s": n / (time.perf_counter() - start)}
