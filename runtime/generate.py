"""The decoding loop: prefill (with prefix reuse), then sample under an optional grammar, fast-forwarding tokens
the grammar forces, until end of turn, max tokens or a stop string. Yields text as it is produced."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from toolace.errors import InputError
from toolace.limits import MAX_FAST_FORWARD_TOKENS, MAX_MAX_TOKENS

from .constraints import Constraint
from .model import Model
from .sampling import Sampler, SamplingParams


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0
    completion_tokens: int = 0
    forced_tokens: int = 0
    rejections: int = 0
    prefill_seconds: float = 0.0
    first_token_seconds: float = 0.0  # time to first token, from the start of prefill
    decode_seconds: float = 0.0
    grammar_seconds: float = 0.0  # time in the grammar engine (checks, masks, accepts), not plain sampling
    finish_reason: str = ""
    step_grammar_ms: list[float] = field(default_factory=list, repr=False)


@dataclass
class Chunk:
    text: str
    tokens: list[int]


def check_max_tokens(max_tokens: int) -> int:
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_MAX_TOKENS:
        raise InputError(f"max_tokens must be an integer in [1, {MAX_MAX_TOKENS}], got {max_tokens!r}")
    return max_tokens


def generate(model: Model, prompt: Sequence[int], *, constraint: Constraint | None, sampling: SamplingParams,
             max_tokens: int, stop: Sequence[str] = (), fast_forward: bool = True,
             stats: GenerationStats | None = None) -> Iterator[Chunk]:
    """Yield chunks of generated text; `stats` (if given) is filled in, finish_reason last."""
    check_max_tokens(max_tokens)
    sampling.check_vocab(model.n_vocab)  # before any token: a bias on id >= n_vocab would index past the logits
    st = stats if stats is not None else GenerationStats()
    t0 = time.perf_counter()
    st.prompt_tokens = len(prompt)
    st.reused_tokens = model.prefill(prompt)
    st.prefill_seconds = time.perf_counter() - t0
    budget = min(max_tokens, model.n_ctx - len(prompt))
    sampler = Sampler(sampling)
    detok = model.detokenizer()
    text_so_far = ""
    st.finish_reason = "length"
    t_decode = time.perf_counter()
    while st.completion_tokens < budget:
        if constraint is not None and fast_forward:
            forced = [t for t in constraint.forced_tokens() if t not in model.eog_ids]
            forced = forced[: min(MAX_FAST_FORWARD_TOKENS, budget - st.completion_tokens)]
            if forced:
                constraint.accept_forced(forced)
                model.eval(forced)
                st.forced_tokens += len(forced)
                st.completion_tokens += len(forced)
                piece = "".join(detok.add(t) for t in forced)
                if not st.first_token_seconds:
                    st.first_token_seconds = time.perf_counter() - t0
                text_so_far += piece
                yield Chunk(piece, forced)
                if _hit_stop(text_so_far, stop):
                    st.finish_reason = "stop"
                    break
                continue
        logits = model.logits()
        token = sampler.sample(logits) if constraint is None else constraint.choose(logits, sampler)
        if not st.first_token_seconds:
            st.first_token_seconds = time.perf_counter() - t0
        if token in model.eog_ids:
            if constraint is not None:
                constraint.accept(token)
            st.finish_reason = "stop"
            break
        if constraint is not None:
            constraint.accept(token)
        st.completion_tokens += 1
        piece = detok.add(token)
        model.eval([token])
        text_so_far += piece
        yield Chunk(piece, [token])
        if _hit_stop(text_so_far, stop):
            st.finish_reason = "stop"
            break
    tail = detok.flush()
    if tail:
        yield Chunk(tail, [])
    st.decode_seconds = time.perf_counter() - t_decode
    if constraint is not None:
        st.rejections = constraint.rejections
        st.step_grammar_ms = list(constraint.step_ms)
        st.grammar_seconds = sum(constraint.step_ms) / 1000


def _hit_stop(text: str, stop: Sequence[str]) -> bool:
    return any(s and s in text for s in stop)
