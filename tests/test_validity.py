"""The guarantee on a real model: in call modes every output SmolLM2 produces for BFCL questions is a complete call
list that parses and validates, whatever max_tokens cuts (the budget guard closes it: docs/budget.md). The questions
run four at a time in parallel slots (runtime/batch.py), so the batched decoder is held to the same guarantee.
(`toolace eval` runs all 1,390 questions alone: bench/results/eval_smollm2_budget.json; here a stratified sample.)"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from toolace.api import ToolACE
from toolace.eval.bfcl import load_questions

pytestmark = pytest.mark.slow  # every call mode sampled on the demo model (~55 s): `make test-slow`

SAMPLE = 24 if not os.environ.get("TOOLACE_STRESS") else 10**6
SLOTS = 4
MAX_TOKENS = 64  # below many BFCL answers' length: the guard must close those calls, not drop them


def test_every_call_mode_output_is_complete_and_valid(smollm2_gguf: Path, bfcl_dir: Path) -> None:
    ta = ToolACE.load(str(smollm2_gguf), n_ctx=4096, kv_cache=False, parallel=SLOTS)
    questions = [q for q in load_questions(bfcl_dir) if q.category != "irrelevance"]
    step = max(1, len(questions) // SAMPLE)
    sample = questions[::step][:SAMPLE]
    with ThreadPoolExecutor(SLOTS) as pool:
        results = list(pool.map(lambda q: ta.chat(q.messages, q.functions, "required", max_tokens=MAX_TOKENS),
                                sample))
    for q, r in zip(sample, results, strict=True):
        assert r.calls and r.valid, f"{q.id}: {r.raw!r} {r.errors}"
        assert r.finish_reason == ("length" if r.truncated else "stop"), (q.id, r.finish_reason)
    cut = sum(r.truncated for r in results)
    print(f"\n{len(results)} of {len(sample)} outputs complete and valid; {cut} closed early by the budget guard")
    assert len(sample) >= SAMPLE and ta.slot_state()["max_sequences_per_step"] >= 2
