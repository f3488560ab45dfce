"""Looping text answers, question by question on BFCL irrelevance (docs/budget.md, "Looping answers"; issue #27).

Every irrelevance question is answered twice by the demo model under greedy decoding, tool_choice auto (the model
answers in text), once with `stop_loops` off and once on. An answer the detector leaves alone must be the same
text, token for token; one it stops must be a prefix of the unguarded answer, ended where a line or sentence came
round for the third time. Writes bench/results/prose_loops_irrelevance.json (each question's two answers and the
summary) as it goes, so a partial run is still a result.

    .venv/bin/python bench/prose_loops.py [--limit N] [--max-tokens 256] [--data ../shared/bfcl]"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from toolace.api import ToolACE
from toolace.eval.bfcl import load_questions
from toolace.eval.defaults import EVAL_MAX_TOKENS
from toolace.paths import atomic_output

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "results" / "prose_loops_irrelevance.json"


def answer(ta: ToolACE, q: Any, max_tokens: int, stop_loops: bool) -> dict[str, Any]:
    result = ta.chat(q.messages, ta.toolset(q.functions, "auto"), max_tokens=max_tokens, stop_loops=stop_loops)
    return {"raw": result.raw, "tokens": result.stats.completion_tokens, "finish_reason": result.finish_reason,
            "truncated": result.truncated, "prose_loop": result.stats.prose_loop, "calls": len(result.calls)}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    stopped = [r for r in rows if r["on"]["prose_loop"]]
    left = [r for r in rows if not r["on"]["prose_loop"]]
    return {
        "questions": len(rows),
        "stopped_as_loops": len(stopped),
        "left_alone": len(left),
        "left_alone_identical": sum(r["on"]["raw"] == r["off"]["raw"] for r in left),
        "stopped_are_prefixes": sum(r["off"]["raw"].startswith(r["on"]["raw"]) for r in stopped),
        "unguarded_hit_max_tokens": sum(r["off"]["finish_reason"] == "length" for r in rows),
        "stopped_that_hit_max_tokens_unguarded": sum(r["off"]["finish_reason"] == "length" for r in stopped),
        "tokens_off": sum(r["off"]["tokens"] for r in rows),
        "tokens_on": sum(r["on"]["tokens"] for r in rows),
    }


def _earlier(path: Path, max_tokens: int) -> tuple[list[dict[str, Any]], int]:
    """The questions an interrupted run with the same budget already answered (greedy: they would not change), and
    the seconds it took."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return [], 0
    if report.get("max_tokens") != max_tokens:
        return [], 0
    return list(report.get("questions", [])), int(report.get("seconds", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "bfcl"))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=EVAL_MAX_TOKENS)
    parser.add_argument("--json", default=str(OUT))
    args = parser.parse_args()
    ta = ToolACE.load("demo", n_ctx=4096)
    questions = list(load_questions(args.data, ("irrelevance",)))[: args.limit]
    rows, earlier_seconds = _earlier(Path(args.json), args.max_tokens)
    done = {r["id"] for r in rows}
    start = time.monotonic()
    for q in questions:
        if q.id in done:
            continue
        rows.append({"id": q.id, "off": answer(ta, q, args.max_tokens, False),
                     "on": answer(ta, q, args.max_tokens, True)})
        report = {"model": "demo (SmolLM2-135M-Instruct Q4_1)", "decoding": "greedy, tool_choice auto",
                  "max_tokens": args.max_tokens, "seconds": earlier_seconds + round(time.monotonic() - start),
                  "summary": summary(rows), "questions": rows}
        with atomic_output(args.json) as tmp:  # a run stopped mid-write keeps the last complete report
            tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(summary(rows), indent=1))


if __name__ == "__main__":
    main()
