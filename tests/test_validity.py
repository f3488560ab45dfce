"""The guarantee on a real model: in call modes every output SmolLM2 produces for BFCL questions parses and
validates. Outputs cut by max_tokens are counted apart and never as valid. (`make stress` / `toolace eval` run the
full set; here a stratified sample of >= 300.)"""

from __future__ import annotations

import os
from pathlib import Path

from toolace.api import ToolACE
from toolace.eval.bfcl import load_questions

SAMPLE = 300 if not os.environ.get("TOOLACE_STRESS") else 10**6


def test_every_call_mode_output_parses_and_validates(smollm2_gguf: Path, bfcl_dir: Path) -> None:
    ta = ToolACE.load(str(smollm2_gguf), n_ctx=4096, kv_cache=False)
    questions = [q for q in load_questions(bfcl_dir) if q.category != "irrelevance"]
    step = max(1, len(questions) // SAMPLE)
    sample = questions[::step][:SAMPLE]
    valid = cut = 0
    for q in sample:
        r = ta.chat(q.messages, q.functions, "required", max_tokens=96)
        if r.finish_reason == "length":
            cut += 1
            continue
        assert r.calls and r.valid, f"{q.id}: {r.raw!r} {r.errors}"
        valid += 1
    print(f"\n{valid} of {len(sample)} outputs parsed and validated; {cut} cut by max_tokens (not counted valid)")
    assert len(sample) >= 300 and valid + cut == len(sample) and valid >= 0.8 * len(sample)
