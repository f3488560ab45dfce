"""The re-sample after a rejection works on token ids (the allowed side of a mask, or the refused side when most
tokens are allowed): it must pick exactly what a full -inf mask over the whole vocabulary picks, greedy or sampled,
with logit_bias, on the real 128k Llama-3 vocabulary and llguidance's real bitmask."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from toolace.errors import GenerationError
from toolace.runtime.constraints import _Masks, _matcher
from toolace.runtime.model import Model
from toolace.runtime.sampling import Sampler, SamplingParams

PARAMS = [
    SamplingParams(),
    SamplingParams(temperature=1.0, seed=3),
    SamplingParams(temperature=0.7, top_k=5, seed=4),
    SamplingParams(temperature=1.3, top_p=0.5, min_p=0.01, seed=5),
]


def _full_mask(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    out = np.full_like(logits, -np.inf)
    out[allowed] = logits[allowed]
    return out


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("share", [0.001, 0.3, 0.9])
def test_sampling_among_ids_equals_a_full_mask(params: SamplingParams, share: float) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=5000).astype(np.float32)
    allowed = np.flatnonzero(rng.random(5000) < share).astype(np.int32)
    # bias on an allowed token, on a refused one (must not leak in) and on the overall argmax
    bias = {int(allowed[0]): 4.0, int(np.setdiff1d(np.arange(5000), allowed)[0]): 100.0, int(np.argmax(logits)): -3.0}
    for p in (params, dataclasses.replace(params, logit_bias=bias)):
        for _ in range(5):
            # a fresh sampler per pick: same seed, so both must draw the same token
            assert Sampler(p).sample(logits, allowed) == Sampler(p).sample(_full_mask(logits, allowed))


@pytest.fixture(scope="module")
def tiny(tiny_llama_gguf: Path) -> Model:
    return Model(tiny_llama_gguf, n_ctx=256)


@pytest.mark.parametrize(("gbnf", "refused_side"), [
    ('root ::= [^"]* "\\""', True),  # inside a string: nearly every token allowed, the refused ids are kept
    ('root ::= [0-9]+ ";"', False),  # a number: ~1.1k of 128k tokens allowed, the allowed ids are kept
])
def test_mask_ids_and_resample_match_the_bitmask(tiny: Model, gbnf: str, refused_side: bool) -> None:
    matcher = _matcher(tiny, gbnf)
    masks = _Masks(matcher, tiny.n_vocab)
    masks.fill()
    allowed = np.flatnonzero(np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8),
                                           count=tiny.n_vocab, bitorder="little"))
    ids, refused = masks.resolve()
    assert refused == refused_side
    expected = np.setdiff1d(np.arange(tiny.n_vocab), allowed) if refused else allowed
    assert np.array_equal(ids, expected)
    assert all(masks.allows(int(t)) for t in allowed[:: max(1, allowed.size // 500)])
    assert not masks.allows(int(np.setdiff1d(np.arange(tiny.n_vocab), allowed)[0]))
    assert not masks.allows(-1) and not masks.allows(tiny.n_vocab)  # near misses: the ends of the vocabulary
    assert masks.allows(int(allowed[0])) and masks.allows(int(allowed[-1]))
    rng = np.random.default_rng(1)
    scratch = np.empty(tiny.n_vocab, dtype=np.float32)
    for params in PARAMS:
        logits = rng.normal(size=tiny.n_vocab).astype(np.float32)
        logits[tiny.tokenize('"', special=False)[0]] = 50.0  # the raw favourite is refused by both grammars
        assert masks.sample(Sampler(params), logits, scratch) == Sampler(params).sample(_full_mask(logits, allowed))
    masks.fill()
    assert masks.resolve()[0] is ids  # the same mask again: resolved once, then from the cache


def test_a_mask_allowing_nothing_is_a_clear_error(tiny: Model) -> None:
    masks = _Masks(_matcher(tiny, 'root ::= "a"'), tiny.n_vocab)  # never filled: every bit clear
    with pytest.raises(GenerationError, match="^grammar allows no token"):
        masks.sample(Sampler(SamplingParams()), np.zeros(tiny.n_vocab, dtype=np.float32),
                     np.empty(tiny.n_vocab, dtype=np.float32))
    masks.fill()  # near miss: filled, "a" is allowed
    assert masks.sample(Sampler(SamplingParams()), np.zeros(tiny.n_vocab, dtype=np.float32),
                        np.empty(tiny.n_vocab, dtype=np.float32)) == tiny.tokenize("a", special=False)[0]
