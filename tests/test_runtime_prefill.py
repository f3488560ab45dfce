"""Prefix reuse never changes the numbers: after any earlier evaluation, prefilling a prompt gives bit-identical
logits to prefilling it into an empty context. The case that used to differ: a cached prefix reaching into tokens
that were decoded one at a time (a previous answer quoted in the next turn), whose KV entries llama.cpp computes
slightly differently from a batched prefill (runtime/model.py, PREFILL_CHUNK)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from toolace.runtime.model import PREFILL_CHUNK, Model


@pytest.fixture(scope="module")
def model(smollm2_gguf: Path) -> Iterator[Model]:
    yield Model(smollm2_gguf, n_ctx=1024)


def _fresh(model: Model, tokens: list[int]) -> np.ndarray:
    model.reset()
    model.prefill(tokens)
    return model.logits().copy()


def test_reuse_after_decoded_tokens_is_bit_identical(model: Model) -> None:
    text = model.tokenize("The quick brown fox jumps over the lazy dog. " * 20, special=False)
    prompt, answer = text[:150], text[150:190]
    target = prompt + answer + text[190:200]
    expected = _fresh(model, target)
    model.reset()
    model.prefill(prompt)
    for t in answer:  # decoded one token at a time, as generate() does
        model.eval([t])
    reused = model.prefill(target)
    assert reused == (150 // PREFILL_CHUNK) * PREFILL_CHUNK  # only whole prefill chunks are reused
    assert np.array_equal(model.logits(), expected)


@pytest.mark.parametrize("earlier", [30, 64, 100, 128, 199, 200])
def test_any_earlier_prefix_gives_identical_logits(model: Model, earlier: int) -> None:
    text = model.tokenize("Once upon a time, in a land far away, there lived a curious fox. " * 12, special=False)
    target = text[:200]
    expected = _fresh(model, target)
    model.reset()
    model.prefill(text[:earlier] + model.tokenize(" something else entirely", special=False))
    model.prefill(target)
    assert np.array_equal(model.logits(), expected)
    model.prefill(target)  # the same prompt again: the last chunk is re-evaluated the same way
    assert np.array_equal(model.logits(), expected)
