"""The validity guarantee under an adversarial sampler: the tiny random-weight Llama-3.1 (128,256-token vocabulary)
sampling at temperature 1.5 under the grammar for BFCL's functions. Every output that ends is a call list that
parses and validates; so does every output the budget guard closed at max_tokens (tool_choice required or named:
`finish_reason` "length" with complete, valid calls). With tool_choice auto a text answer (or a call list below the
shortest call's budget) may be cut: such outputs are counted apart, never as valid, and must be prefixes of the
language.
`make stress` runs >= 10,000 samples over every BFCL function set; `make test` a short run."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from toolace.api import ToolACE
from toolace.errors import InputError
from toolace.eval.bfcl import load_questions
from toolace.grammars.check import check_text

pytestmark = pytest.mark.slow  # the random-weight sampler (~30 s; make stress runs 10,000): `make test-slow`

STRESS = bool(os.environ.get("TOOLACE_STRESS"))
SAMPLES = 10_000 if STRESS else 60
# Sample i is the same whichever process takes it (its question, variant and seed follow from i), so a long run
# may be split across cores: TOOLACE_STRESS_RANGE=START:STOP takes samples START..STOP-1 of the SAMPLES.
RANGE = range(*map(int, os.environ["TOOLACE_STRESS_RANGE"].split(":"))) if os.environ.get("TOOLACE_STRESS_RANGE") \
    else range(SAMPLES)
# At temperature 1.5 a random model almost never closes a string, so nearly every sample is cut whatever the
# budget; the stress run spends its time on more samples (the call's opening structure) rather than longer ones.
MAX_TOKENS = 32 if STRESS else 64
# Each question is sampled in every (tool choice, parallel) variant in a row, so its prompt is prefilled once and
# the other five reuse it from the KV cache; 10,000 samples then cover all of BFCL's ~1,400 questions.
VARIANTS = [(mode, parallel) for mode in range(3) for parallel in (True, False)]


def _sample(ta: ToolACE, q: Any, mode: str, parallel: bool, seed: int, counts: Counter[str]) -> Any:
    """One sample at MAX_TOKENS; where that is below the shortest complete call (required or named), the budget
    guard refuses it (docs/budget.md) and the sample is taken at that minimum instead."""
    kw = {"temperature": 1.5, "seed": seed, "parallel_tool_calls": parallel}
    try:
        return ta.chat(q.messages, q.functions, mode, max_tokens=MAX_TOKENS, **kw)
    except InputError as e:
        found = re.search(r"raise max_tokens to at least (\d+)", str(e))
        assert found and mode != "auto", (q.id, mode, str(e))
        counts["budget raised to the shortest call"] += 1
        return ta.chat(q.messages, q.functions, mode, max_tokens=int(found.group(1)), **kw)


def test_random_weights_at_temperature_1_5_never_emit_an_invalid_call(tiny_llama_gguf: Path, bfcl_dir: Path) -> None:
    ta = ToolACE.load(str(tiny_llama_gguf), n_ctx=4096, kv_cache=False)
    questions = list(load_questions(bfcl_dir))
    counts: Counter[str] = Counter()
    for i in RANGE:
        if STRESS and i > RANGE.start and i % 500 == 0:  # a long run that is stopped still says how far it got
            print(f"\nsamples {RANGE.start}..{i - 1}: {dict(counts)}; 0 invalid", flush=True)
        k, v = divmod(i, len(VARIANTS))
        m, parallel = VARIANTS[v]
        q = questions[(k * 7919) % len(questions)]  # a prime stride: every category early, every question in time
        mode = ["required", "auto", q.functions[k % len(q.functions)]["name"]][m]
        r = _sample(ta, q, mode, parallel, i, counts)
        if r.finish_reason == "length":
            verdict = check_text(ta.toolset(q.functions, mode, parallel).grammar.gbnf, r.raw)
            if mode != "auto":  # the budget guard completes every call list given its minimum (docs/budget.md)
                assert verdict.ok and r.calls and r.valid, f"{q.id} mode {mode} seed {i}: {r.raw!r} {r.errors}"
                counts["closed by the budget guard"] += 1
                continue
            # auto: a call list may be cut below the minimum, but it never left the language
            assert verdict.ok or verdict.offset == len(r.raw), f"{q.id}: {verdict.where(r.raw)}"
            counts["cut by max_tokens (auto)"] += 1
            continue
        if mode == "auto" and not r.calls:
            assert r.text and not r.text.startswith("["), (q.id, r.raw)
            counts["text (auto)"] += 1
            continue
        assert r.calls and r.valid, f"{q.id} mode {mode} seed {i}: {r.raw!r} {r.errors}"
        if mode not in ("required", "auto"):
            assert {c["name"] for c in r.calls} == {mode}
        counts["valid calls"] += 1
    covered = len({(i // len(VARIANTS) * 7919) % len(questions) for i in RANGE})
    print(f"\nadversarial sampling: samples {RANGE.start}..{RANGE.stop - 1} of {SAMPLES}, over {covered} of "
          f"{len(questions)} BFCL questions: {dict(counts)}; 0 invalid")
    assert counts["valid calls"] > 0
