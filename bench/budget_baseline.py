"""Same-build baseline for the budget comparison (issue 13): re-run chosen BFCL questions with the budget guard
off (the decoder as before the guard) and compare with the guarded run's report, question by question.

    python bench/budget_baseline.py REPORT.json OUT.json ID [ID ...]

The committed report was made with another llama.cpp build, whose logits differ in the last bits; this tells a
difference made by the guard from one made by the build."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import toolace.api as api
from toolace.api import ToolACE
from toolace.eval.bfcl import load_questions
from toolace.eval.evaluate import RAW_CHARS_KEPT


def main(report_path: str, out_path: str, ids: list[str]) -> None:
    report = json.loads(Path(report_path).read_text())
    rows = {q["id"]: q for q in report["questions"]}
    cats = tuple(sorted({rows[i]["category"] for i in ids}))
    questions = {q.id: q for q in load_questions(report["data"], cats)}
    ta = ToolACE.load(report["model"])
    api.CallGrammar = lambda *_: None  # type: ignore[assignment,misc]  # no guard: plain constrained decoding
    out: list[dict[str, Any]] = []
    for i in ids:
        q, row = questions[i], rows[i]
        r = ta.chat(q.messages, q.functions, row["tool_choice"], max_tokens=report["max_tokens"])
        out.append({"id": i, "guarded_finish": row["finish_reason"], "guarded_tokens": row["completion_tokens"],
                    "unguarded_finish": r.finish_reason, "unguarded_tokens": r.stats.completion_tokens,
                    "unguarded_cut_without_call": r.finish_reason == "length" and not r.calls,
                    "identical": r.raw[:RAW_CHARS_KEPT] == row["raw"] and
                    r.stats.completion_tokens == row["completion_tokens"]})
        print(json.dumps(out[-1]), flush=True)
    Path(out_path).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
