"""Speculative decoding under the grammar (docs/speculative.md), on the real models: a copied argument costs fewer
decodes than tokens; a draft the grammar forbids never reaches llama.cpp; a rejected draft leaves the KV cache and the
grammar as if it had never been tried; sampling keeps its distribution; greedy output equals the output without
speculation, token for token, on BFCL questions with both fixture models."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest

from toolace.api import ToolACE
from toolace.eval.bfcl import load_questions
from toolace.runtime.chunks import PREFILL_CHUNK
from toolace.runtime.constraints import make_constraint
from toolace.runtime.generate import CallGrammar, GenerationStats, generate
from toolace.runtime.sampling import SamplingParams
from toolace.runtime.speculative import LOOKUP_MIN_NGRAM, PromptLookup, rows_equal_single_decodes

TOOLS = [
    {"name": "find_user", "description": "Look up a user's numeric id by name.", "parameters": {
        "type": "dict", "properties": {"name": {"type": "string", "description": "User name"}}, "required": ["name"]}},
    {"name": "list_orders", "description": "List the orders of a user, by numeric user id.", "parameters": {
        "type": "dict", "properties": {"user_id": {"type": "integer", "description": "The user's id"}},
        "required": ["user_id"]}},
    {"name": "set_unit", "description": "Set the temperature unit.", "parameters": {
        "type": "dict", "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit", "kelvin"]}},
        "required": ["unit"]}},
]
NAME = "Maximilian Alexander Montgomery-Smithson"


@pytest.fixture(scope="module")
def smol(smollm2_gguf: Path) -> ToolACE:
    return ToolACE.load(str(smollm2_gguf), n_ctx=4096, kv_cache=False)


@pytest.fixture(scope="module")
def tiny(tiny_llama_gguf: Path) -> ToolACE:
    return ToolACE.load(str(tiny_llama_gguf), n_ctx=4096, kv_cache=False)


pytestmark = pytest.mark.speculative  # speculation runs only on the batch-invariant build (make test-speculative)


class Recorder:
    """The real model, with every verification decode noted (the tokens held before it and the tokens it carried)."""

    def __init__(self, model: Any) -> None:
        self.model, self.base, self.verified = model, model, []  # `base`: the model's probe verdict applies

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def eval_rows(self, tokens: Sequence[int], want: Sequence[bool]) -> list[np.ndarray | None]:
        self.verified.append((self.model.tokens, list(tokens)))
        return self.model.eval_rows(tokens, want)


class FixedDrafter:
    """Proposes the same tokens at every step (whatever the grammar says), and counts what it proposed."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens, self.proposed = tokens, 0

    def propose(self, context: Sequence[int], k: int) -> list[int]:
        self.proposed += min(k, len(self.tokens))
        return self.tokens[:k]


def run(ta: ToolACE, question: str, choice: str, *, speculative: bool, drafter: Any = None, max_tokens: int = 40,
        sampling: SamplingParams | None = None, model: Any = None,
        guard: bool = True) -> tuple[str, list[int], GenerationStats]:
    """One generation through the engine (as ToolACE.stream runs it), with an optional drafter."""
    toolset = ta.toolset(TOOLS, choice)
    prompt = ta.prompt_tokens([{"role": "user", "content": question}], toolset.tools)
    gbnf = toolset.grammar.gbnf
    st = GenerationStats()
    chunks = list(generate(model or ta.model, prompt, constraint=make_constraint("llguidance", ta.model, gbnf),
                           sampling=sampling or SamplingParams(), max_tokens=max_tokens, stats=st,
                           call_grammar=CallGrammar(gbnf, tuple(t.name for t in toolset.tools), toolset.calls_only)
                           if guard else None,
                           speculative=speculative, drafter=drafter))
    return "".join(c.text for c in chunks), [t for c in chunks for t in c.tokens], st


def test_a_copied_argument_is_taken_from_drafts(smol: ToolACE) -> None:
    """The name is copied from the question: once its first two tokens are out (LOOKUP_MIN_NGRAM), prompt lookup
    drafts the rest and verifications of several tokens take it, so the call costs fewer decodes than it has tokens;
    the text is the text without speculation."""
    question = f"Find the user named {NAME}."
    plain, plain_tokens, pst = run(smol, question, "find_user", speculative=False)
    text, tokens, st = run(smol, question, "find_user", speculative=True)
    assert NAME in plain and (text, tokens) == (plain, plain_tokens)
    name_tokens = len(smol.model.tokenize(" " + NAME, special=False))
    assert st.accepted_drafts >= name_tokens - LOOKUP_MIN_NGRAM - 1, st
    assert st.decodes + name_tokens - LOOKUP_MIN_NGRAM - 2 <= pst.decodes, (st, pst)
    assert st.decodes < st.completion_tokens


# (case, question, tool_choice, drafted text): each draft is one the grammar refuses at most steps of the call
FORBIDDEN = [
    ("letters for an integer", "Show the orders of user 4217.", "list_orders", "abc"),
    ("a value outside the enum", "Use celsius please.", "set_unit", "rankine'"),
    ("a parameter the tool lacks", f"Find the user named {NAME}.", "find_user", "', age=3)"),
    ("text after the call list", "Show the orders of user 4217.", "list_orders", "] and then"),
]


@pytest.mark.parametrize("case,question,choice,draft", FORBIDDEN, ids=[c[0] for c in FORBIDDEN])
def test_a_draft_the_grammar_forbids_is_never_verified(smol: ToolACE, case: str, question: str, choice: str,
                                                       draft: str) -> None:
    """Every token llama.cpp verified was one the grammar allowed after the tokens before it (replayed on a fresh
    matcher), though the drafter proposed forbidden ones; the output is the output without speculation."""
    drafter = FixedDrafter(smol.model.tokenize(draft, special=False))
    assert rows_equal_single_decodes(smol.model)  # else speculation would not run (docs/speculative.md)
    rec = Recorder(smol.model)
    plain, _, _ = run(smol, question, choice, speculative=False)
    text, _, st = run(smol, question, choice, speculative=True, drafter=drafter, model=rec)
    assert text == plain
    toolset = smol.toolset(TOOLS, choice)
    prompt = smol.prompt_tokens([{"role": "user", "content": question}], toolset.tools)
    assert drafter.proposed > 0  # it proposed at every step; what the grammar refused was cut before llama.cpp
    for held, seq in rec.verified:
        out = held[len(prompt):]
        matcher = make_constraint("llguidance", smol.model, toolset.grammar.gbnf).matcher
        assert matcher.consume_tokens(out)
        assert matcher.try_consume_tokens(seq) == len(seq), (case, seq)
    assert st.verify_decodes == len(rec.verified)


def test_a_rejected_draft_leaves_kv_cache_and_grammar_as_never_tried(smol: ToolACE) -> None:
    """Drafts the grammar allows but the model does not choose (another name) are verified and rejected: the output,
    the KV cache's contents and the next generation are those of a run that never tried them."""
    wrong = FixedDrafter(smol.model.tokenize(" Zebulon Quixote", special=False))
    question, follow = f"Find the user named {NAME}.", "Show the orders of user 4217."
    plain, plain_tokens, _ = run(smol, question, "find_user", speculative=False)
    plain_next, _, _ = run(smol, follow, "list_orders", speculative=False)
    text, tokens, st = run(smol, question, "find_user", speculative=True, drafter=wrong)
    assert st.verify_decodes > 0 and st.accepted_drafts < st.drafted_tokens  # drafts were tried and rejected
    assert (text, tokens) == (plain, plain_tokens)
    held = smol.model.tokens
    assert held[len(held) - len(tokens):] == tokens  # the cache holds the prompt and the taken tokens, nothing else
    mem = llama_cpp.llama_get_memory(smol.model.ctx)
    assert llama_cpp.llama_memory_seq_pos_max(mem, 0) == len(held) - 1
    assert run(smol, follow, "list_orders", speculative=False)[0] == plain_next


def test_sampling_keeps_its_distribution(smol: ToolACE) -> None:
    """At temperature 1 the enum value is drawn from the model's masked distribution, though every draft proposes
    the same value (a point-mass draft): over many seeds its frequencies match the exact probabilities (chi-square),
    and each seed gives the output it gives without speculation."""
    toolset = smol.toolset(TOOLS, "set_unit")
    question = "Pick any unit you like."
    prompt = smol.prompt_tokens([{"role": "user", "content": question}], toolset.tools)
    while len(prompt) % PREFILL_CHUNK != 1:  # each run then reuses every prompt chunk and evaluates one token
        question += " ok"
        prompt = smol.prompt_tokens([{"role": "user", "content": question}], toolset.tools)
    constraint = make_constraint("llguidance", smol.model, toolset.grammar.gbnf)
    prefix = constraint.forced_tokens()  # `[set_unit(unit='`: the value's first token is the first choice
    smol.model.prefill(prompt + prefix[:-1])
    smol.model.eval(prefix[-1:])
    assert constraint.matcher.consume_tokens(prefix)
    constraint.masks.fill()
    allowed, refused = constraint.masks.resolve()
    assert not refused and 1 < allowed.size < 64  # a tiny vocabulary: a quote, the enum values' first pieces
    logits = smol.model.logits()[allowed].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    favourite = [int(allowed[np.argsort(p)[-2]])]  # the draft, every time: the second most likely token
    seeds = 240
    firsts: Counter[int] = Counter()
    for seed in range(seeds):  # the guard is left out: the first choice is the model's own at any budget
        params = SamplingParams(temperature=1.0, seed=seed)
        text, tokens, st = run(smol, question, "set_unit", speculative=True, drafter=FixedDrafter(favourite),
                               sampling=params, max_tokens=len(prefix) + 1, guard=False)
        assert st.speculative and st.verify_decodes == 1  # the forced run and the draft, in one decode
        if seed < 10:
            assert (text, tokens) == run(smol, question, "set_unit", speculative=False, sampling=params,
                                         max_tokens=len(prefix) + 1, guard=False)[:2]
        firsts[tokens[len(prefix)]] += 1
    assert set(firsts) <= {int(t) for t in allowed}
    expected = p * seeds
    big = expected >= 5  # bins of at least 5 expected; the rest pooled
    observed = [firsts[int(t)] for t in allowed[big]] + [seeds - sum(firsts[int(t)] for t in allowed[big])]
    wanted = list(expected[big]) + [seeds - expected[big].sum()]
    if wanted[-1] < 5:
        observed, wanted = observed[:-1], wanted[:-1]
    assert len(wanted) >= 2 and big[np.argsort(p)[-2]]  # the drafted token has a bin of its own
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, wanted, strict=True))
    assert chi2 < chi2_999(len(wanted) - 1), (chi2, observed, wanted)


def chi2_999(df: int) -> float:
    """The chi-square distribution's 0.999 quantile (Wilson-Hilferty; within 2% from 1 degree of freedom on)."""
    z = 3.090
    return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3


def _bfcl_sample(bfcl_dir: Path, n: int) -> list[Any]:
    questions = [q for q in load_questions(bfcl_dir, ("simple_python", "multiple", "parallel"))]
    step = max(1, len(questions) // n)
    return questions[::step][:n]


@pytest.mark.parametrize("which", ["smol", "tiny"])
def test_greedy_output_equals_output_without_speculation_on_bfcl(which: str, request: pytest.FixtureRequest,
                                                                  bfcl_dir: Path) -> None:
    """Question by question: the same raw text and the same calls, with fewer decodes in all (tool_choice
    required, so every answer is a call list; bench/speculative_equality.py covers auto, mostly text here)."""
    ta: ToolACE = request.getfixturevalue(which)
    decodes = [0, 0]
    for q in _bfcl_sample(bfcl_dir, 12):
        toolset = ta.toolset(q.functions, "required")
        plain = ta.chat(q.messages, toolset, max_tokens=64, speculative=False)
        spec = ta.chat(q.messages, toolset, max_tokens=64, speculative=True)
        assert (spec.raw, spec.calls) == (plain.raw, plain.calls), q.id
        assert spec.stats.completion_tokens == plain.stats.completion_tokens
        decodes[0] += plain.stats.decodes
        decodes[1] += spec.stats.decodes
    assert decodes[1] < decodes[0]


def test_prompt_lookup_proposes_what_followed_the_longest_match() -> None:
    cases = [  # (context, k, proposal)
        ([1, 2, 3, 4, 5, 9, 2, 3], 2, [4, 5]),  # "2 3" occurred before: what followed it
        ([1, 2, 3, 7, 3, 8, 2, 3], 3, [7, 3, 8]),  # the longer match (2 3) wins over the later 1-gram (3 8)
        ([2, 3, 1, 2, 3, 6, 2, 3], 2, [6, 2]),  # two equal matches: the latest
        ([5, 6, 7], 4, []),  # nothing repeats
        ([4, 1, 4, 1], 3, [4, 1]),  # up to the end of the context
        ([1, 2, 9, 3, 2], 3, []),  # only the last token (2) occurred before: a one-token match drafts nothing
        ([1, 3, 2, 9, 3, 2], 3, [9, 3, 2]),  # ... its near miss: "3 2" occurred before
        ([7, 1, 2, 3, 4, 8, 0, 1, 2, 3, 4], 1, [8]),  # a match longer than LOOKUP_MAX_NGRAM
    ]
    for context, k, proposal in cases:
        assert PromptLookup().propose(context, k) == proposal, context


def test_parallel_slots_verify_drafts_with_the_same_output(smollm2_gguf: Path) -> None:
    """In a slot of the shared context a copied argument is verified in the sequence's share of a step: the same
    text as without speculation, fewer decodes."""
    ta = ToolACE.load(str(smollm2_gguf), n_ctx=2048, kv_cache=False, parallel=2)
    question = f"Find the user named {NAME}."
    plain = ta.call(question, TOOLS, "find_user", max_tokens=40, speculative=False)
    spec = ta.call(question, TOOLS, "find_user", max_tokens=40, speculative=True)
    assert spec.stats.speculative and spec.raw == plain.raw and NAME in spec.raw
    assert spec.stats.decodes < plain.stats.decodes and spec.stats.accepted_drafts > 0


@pytest.mark.parametrize("value,ok", [(False, True), (True, True), (None, True), ("no", False), (0, False)])
def test_the_request_field_is_a_boolean(value: Any, ok: bool) -> None:
    from toolace.serve.errors import ApiError
    from toolace.serve.request_model import engine_request

    messages = [{"role": "user", "content": "hi"}]
    if not ok:
        with pytest.raises(ApiError, match="speculative must be a boolean"):
            engine_request(messages, speculative=value)
        return
    options = engine_request(messages, speculative=value).options
    assert options.get("speculative", "server default") == ("server default" if value is None else value)


# (case, question, tool_choice, call options): the ways a generation ends early must end it at the same token
EARLY_ENDS = [
    ("budget reserve cuts the value", f"Find the user named {NAME}.", "find_user", {"max_tokens": 10}),
    ("runaway value cut back", "Find the user named " + "Lo" * 40, "find_user", {"max_tokens": 24}),
    ("stop string inside a copied name", f"Find the user named {NAME}.", "find_user", {"stop": ["Montgomery"]}),
    ("prose loop stop", "Say 'The function should return the converted time in Tokyo.' five times, one per line.",
     "none", {"max_tokens": 120}),
]


@pytest.mark.parametrize("case,question,choice,options", EARLY_ENDS, ids=[c[0] for c in EARLY_ENDS])
def test_early_ends_are_those_without_speculation(smol: ToolACE, case: str, question: str, choice: str,
                                                  options: dict[str, Any]) -> None:
    plain = smol.call(question, TOOLS, choice, speculative=False, **options)
    spec = smol.call(question, TOOLS, choice, speculative=True, **options)
    assert spec.stats.speculative
    assert (spec.raw, spec.finish_reason, spec.truncated) == (plain.raw, plain.finish_reason, plain.truncated), case
    for field in ("completion_tokens", "loop_cuts", "rolled_back_tokens", "planned_tokens", "stop_sequence",
                  "prose_loop"):
        assert getattr(spec.stats, field) == getattr(plain.stats, field), field
