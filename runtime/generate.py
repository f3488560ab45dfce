"""The decoding loop: prefill (with prefix reuse), then sample under an optional grammar, fast-forwarding tokens
the grammar forces, until end of turn, max tokens or a stop string. Yields text as it is produced.

With a call grammar the loop also keeps the shortest completion in reserve (runtime/budget.py, docs/budget.md), so
a call list always closes within max_tokens, and cuts runaway values (a token cycle repeating inside one value).
With `stop_loops`, a text answer that repeats a line or sentence ends there (grammars/plan.py: prose_loop)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from toolace.errors import GenerationError, InputError
from toolace.limits import MAX_FAST_FORWARD_TOKENS, MAX_LOOP_CUTS, MAX_MAX_TOKENS

from .budget import BudgetGuard, find_loop, prose_loop, prose_phrase_loop
from .constraints import Constraint
from .model import Model
from .sampling import Sampler, SamplingParams
from .speculative import Drafter, Speculator, rows_equal_single_decodes

# Where an output token came from (GenerationStats counts each): fast-forward, the model's logits, the budget guard.
FORCED, SAMPLED, PLANNED = "forced", "sampled", "planned"


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0
    completion_tokens: int = 0
    forced_tokens: int = 0  # emitted by fast-forward: the grammar allowed only these
    sampled_tokens: int = 0  # chosen from the model's logits, one per decode
    rejections: int = 0
    prefill_seconds: float = 0.0
    first_token_seconds: float = 0.0  # time to first token, from the start of prefill
    decode_seconds: float = 0.0
    grammar_seconds: float = 0.0  # time in the grammar engine (checks, masks, accepts), not plain sampling
    finish_reason: str = ""
    truncated: bool = False  # a value was cut short (budget reserve or runaway value): finish_reason is "length"
    planned_tokens: int = 0  # tokens the budget guard emitted instead of the model's
    loop_cuts: int = 0  # runaway values cut back
    rolled_back_tokens: int = 0  # decoded, then dropped by those cuts (not in completion_tokens)
    prose_loop: bool = False  # a text answer was ended at a repeated line or sentence (also `truncated`)
    minimum_tokens: int | None = None  # the shortest complete call list for this grammar (None: no call grammar)
    decodes: int = 0  # llama_decode calls after the prompt (speculation makes fewer than output tokens)
    speculative: bool = False  # speculation ran (asked for, and this model's batched rows equal one-token decodes)
    drafted_tokens: int = 0  # speculative draft tokens verified (after the grammar cut them; docs/speculative.md)
    accepted_drafts: int = 0  # ... of which the loop took (the rest were removed from the KV cache)
    verify_decodes: int = 0  # decodes that carried a draft (logits at every position)
    stop_sequence: str = ""  # the stop string that ended the generation, if one did
    step_grammar_ms: list[float] = field(default_factory=list, repr=False)


@dataclass
class Chunk:
    text: str
    tokens: list[int]
    retract: int = 0  # characters of earlier chunks to drop before this one (a runaway value cut back)


@dataclass(frozen=True)
class CallGrammar:
    """What the budget guard needs to know about the grammar being decoded."""

    gbnf: str
    tool_names: tuple[str, ...]
    calls_only: bool  # required / named tool_choice: the output is a call list from its first token
    json: bool = False  # the output may be a JSON value (response_format): its values are found as JSON's


def check_max_tokens(max_tokens: int) -> int:
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_MAX_TOKENS:
        raise InputError(f"max_tokens must be an integer in [1, {MAX_MAX_TOKENS}], got {max_tokens!r}")
    return max_tokens


class _Decoder:
    """State of one generation: output tokens and text, budget, the guard; each method one kind of step."""

    def __init__(self, model: Model, constraint: Constraint | None, guard: BudgetGuard | None, budget: int,
                 st: GenerationStats, stop: Sequence[str], t0: float, spec: Speculator | None = None) -> None:
        self.model, self.constraint, self.guard, self.budget, self.st, self.stop = \
            model, constraint, guard, budget, st, stop
        self.spec = spec  # speculative decoding: it holds the KV cache ahead of the taken tokens
        self.detok = model.detokenizer()
        self.out: list[int] = []  # output tokens, in order
        self.text = ""
        self.t0 = t0  # start of prefill, for time to first token
        self._crossing: tuple[int, int] | None = None  # (period, start) of a cycle found to span several values
        self.origins: list[str] = []  # per output token: FORCED, SAMPLED or PLANNED, so a cut-back uncounts it

    @property
    def room(self) -> int:
        return self.budget - self.st.completion_tokens

    def emit(self, tokens: list[int], forced: bool, origin: str) -> Chunk:
        """Evaluate and output `tokens`; `forced`: the grammar takes them as a run (no per-token check);
        `origin` is counted in the stats (forced + sampled + planned = completion tokens)."""
        self._count(origin, len(tokens))
        self.origins += [origin] * len(tokens)
        if self.constraint is not None:
            if forced:
                self.constraint.accept_forced(tokens)
            else:
                self.constraint.accept(tokens[0])
        self._eval(tokens)
        self.st.completion_tokens += len(tokens)
        self.out += tokens
        piece = "".join(self.detok.add(t) for t in tokens)
        if not self.st.first_token_seconds:
            self.st.first_token_seconds = time.perf_counter() - self.t0
        self.text += piece
        return Chunk(piece, tokens)

    def _eval(self, tokens: list[int]) -> None:
        if self.spec is None:
            self.model.eval(tokens)
            self.st.decodes += 1
        else:
            self.spec.evaluate(tokens, self.room - len(tokens))

    def logits(self) -> np.ndarray:
        return self.model.logits() if self.spec is None else self.spec.logits()

    def _count(self, origin: str, n: int) -> None:
        if origin == FORCED:
            self.st.forced_tokens += n
        elif origin == SAMPLED:
            self.st.sampled_tokens += n
        else:
            self.st.planned_tokens += n

    def guarded(self, tokens: list[int]) -> tuple[list[int] | None, bool]:
        """The tokens to emit for this step (None: end the turn), and whether they are the guard's plan."""
        if self.guard is None:
            return tokens, False
        verdict = self.guard.check(tokens, self.room - len(tokens))
        if verdict.cut:
            self.st.truncated = True
        return verdict.tokens, verdict.cut

    def hit_stop(self) -> bool:
        return any(s and s in self.text for s in self.stop)

    def runaway(self) -> tuple[int, int] | None:
        """(tokens to roll back, characters they hold) when the output ends in a runaway value, else None."""
        if self.guard is None or not self.guard.active or self.st.loop_cuts >= MAX_LOOP_CUTS:
            return None
        found = find_loop(self.out)
        if found is None:
            return None
        period, repeats = found
        drop = period * (repeats - 1)
        first = len(self.out) - drop - period  # where the first copy of the cycle starts
        if self._crossing == (period, first):
            return None  # known to cross an argument boundary; a longer run of the same cycle still does
        start = len(self._decode(self.out[:first]))
        if min(self.guard.depths(self.text)[start:], default=0) < 1:
            self._crossing = (period, first)
            return None  # the repeats cross an argument boundary: not one value (the budget still bounds it)
        kept = self._decode(self.out[: len(self.out) - drop])
        return drop, len(self.text) - len(kept)

    def _decode(self, tokens: list[int]) -> str:
        d = self.model.detokenizer()
        return "".join(d.add(t) for t in tokens)

    def cut_back(self, drop: int, chars: int) -> Chunk:
        """Roll the last `drop` tokens back everywhere (KV, grammar, guard, text) and close the value there."""
        dropped = self.out[len(self.out) - drop:]
        del self.out[len(self.out) - drop:]
        for origin in self.origins[len(self.origins) - drop:]:
            self._count(origin, -1)
        del self.origins[len(self.origins) - drop:]
        if self.spec is None:
            self.model.truncate(len(self.model.tokens) - drop)
        else:
            self.spec.truncate(self.spec.held - drop)
        if self.constraint is not None:
            self.constraint.rollback(drop)
        assert self.guard is not None
        self.guard.rollback(dropped)
        self.st.completion_tokens -= drop
        self.st.rolled_back_tokens += drop
        self.st.loop_cuts += 1
        self.st.truncated = True
        self.text = self.text[: len(self.text) - chars]
        self.detok = self.model.detokenizer()
        for t in self.out:  # the decoder's state (a UTF-8 sequence split across tokens) as of the kept tokens
            self.detok.add(t)
        close = self.guard.close_value()
        if close is None:
            return Chunk("", [], retract=chars)
        chunk = self.emit(close, forced=False, origin=PLANNED)
        return Chunk(chunk.text, chunk.tokens, retract=chars)


def generate(model: Model, prompt: Sequence[int], *, constraint: Constraint | None, sampling: SamplingParams,
             max_tokens: int, stop: Sequence[str] = (), fast_forward: bool = True,
             stats: GenerationStats | None = None, call_grammar: CallGrammar | None = None,
             stop_loops: bool = False, speculative: bool = False, drafter: Drafter | None = None) -> Iterator[Chunk]:
    """Yield chunks of generated text; `stats` (if given) is filled in, finish_reason last. With `call_grammar`
    (the grammar of `constraint`), a call list always completes within the budget; a budget below the shortest
    complete call is refused in required/named mode before anything is evaluated. `stop_loops`: a text answer
    (not a call list or JSON value) that repeats a line or sentence ends there, truncated. `speculative`: drafts
    (forced tokens, prompt lookup, or `drafter`'s) are verified several tokens per decode; the tokens chosen are
    the same (docs/speculative.md)."""
    check_max_tokens(max_tokens)
    sampling.check_vocab(model.n_vocab)  # before any token: a bias on id >= n_vocab would index past the logits
    st = stats if stats is not None else GenerationStats()
    budget = min(max_tokens, model.n_ctx - len(prompt))
    guard = None
    if call_grammar is not None and constraint is not None:
        guard = BudgetGuard(model, call_grammar.gbnf, call_grammar.tool_names, call_grammar.calls_only, max_tokens,
                            model.n_ctx - len(prompt), call_grammar.json)
        st.minimum_tokens = guard.minimum
    # Only where a batched row equals a one-token decode (probed once per model, before the prefill it disturbs):
    # elsewhere speculation would change the output, so it is off and the stats say so.
    st.speculative = speculative and rows_equal_single_decodes(model)
    t0 = time.perf_counter()
    st.prompt_tokens = len(prompt)
    st.reused_tokens = model.prefill(prompt)
    st.prefill_seconds = time.perf_counter() - t0
    spec = Speculator(model, constraint, prompt, model.eog_ids, drafter, fast_forward) if st.speculative else None
    dec = _Decoder(model, constraint, guard, budget, st, stop, t0, spec)
    st.finish_reason = "length"
    t_decode = time.perf_counter()
    try:
        yield from _steps(dec, Sampler(sampling, history=dec.out), fast_forward, stop_loops)
        if guard is not None and guard.active and dec.room == 0:
            if not guard.accepting():
                raise GenerationError("the call list did not complete within the budget (the reserve must fit: a bug)")
            if not st.truncated:
                st.finish_reason = "stop"  # the call list closed on the budget's last token: only end of turn left
        if st.truncated:
            st.finish_reason = "length"
        tail = dec.detok.flush()
        if tail:
            yield Chunk(tail, [])
    finally:  # also when the consumer stops early: the KV cache must hold the taken tokens only
        if spec is not None:
            spec.close()
            st.decodes, st.verify_decodes = spec.decodes, spec.verify_decodes
            st.drafted_tokens, st.accepted_drafts = spec.drafted, spec.accepted
    st.decode_seconds = time.perf_counter() - t_decode
    if constraint is not None:
        st.rejections = constraint.rejections
        st.step_grammar_ms = list(constraint.step_ms)
        st.grammar_seconds = sum(constraint.step_ms) / 1000


def _steps(dec: _Decoder, sampler: Sampler, fast_forward: bool, stop_loops: bool) -> Iterator[Chunk]:
    """The decoding loop: one chunk per step (a sampled token, a forced run or a planned token)."""
    model, constraint, guard, st = dec.model, dec.constraint, dec.guard, dec.st
    while dec.room > 0:
        forced: list[int] = []
        if constraint is not None and fast_forward:
            forced = [t for t in constraint.forced_tokens() if t not in model.eog_ids][: min(MAX_FAST_FORWARD_TOKENS,
                                                                                            dec.room)]
        if forced:
            tokens, planned = dec.guarded(forced)
        else:
            token = sampler.sample(dec.logits()) if constraint is None else constraint.choose(dec.logits(), sampler)
            if not st.first_token_seconds:
                st.first_token_seconds = time.perf_counter() - dec.t0
            if token in model.eog_ids:
                if constraint is not None:
                    constraint.accept(token)
                st.finish_reason = "stop"
                return
            tokens, planned = dec.guarded([token])
            if planned and constraint is not None:
                constraint.discard()  # the model's token was checked (maybe consumed) but not taken
        if tokens is None:  # the plan ends the turn here (the grammar accepts)
            return
        chunk = dec.emit(tokens, forced=len(tokens) > 1 or (bool(forced) and not planned),
                         origin=PLANNED if planned else FORCED if forced else SAMPLED)
        yield chunk
        if not forced and not planned:
            cut = dec.runaway()
            if cut is not None:
                yield dec.cut_back(*cut)
        if stop_loops and (guard is None or guard.mode == "text") and \
                (prose_loop(dec.text, chunk.text) or prose_phrase_loop(dec.out)):
            st.truncated = st.prose_loop = True  # already streamed: the answer ends after the repeat, not before
            return
        if dec.hit_stop():
            st.finish_reason = "stop"
            st.stop_sequence = next(s for s in dec.stop if s and s in dec.text)  # which one (Anthropic reports it)
            return
