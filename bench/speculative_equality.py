"""Greedy output with speculation equals output without it, question by question on BFCL (docs/speculative.md;
issue #28).

Every question (non-live categories, evenly spread when limited) is answered twice by the model under greedy
decoding, tool_choice auto, once with `speculative` off and once on. The two raw texts and call lists must be
equal; the counters say what speculation saved (decodes, drafted and accepted tokens). Writes
bench/results/speculative_equality_<model>.json as it goes, so a partial run is still a result.

    .venv/bin/python bench/speculative_equality.py [--model demo] [--limit N] [--max-tokens 256] [--threads N]"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from toolace.api import ToolACE
from toolace.eval.bfcl import CATEGORIES, load_questions
from toolace.eval.defaults import EVAL_MAX_TOKENS

REPO = Path(__file__).resolve().parent.parent


def answer(ta: ToolACE, q: Any, max_tokens: int, speculative: bool) -> dict[str, Any]:
    r = ta.chat(q.messages, ta.toolset(q.functions, "auto"), max_tokens=max_tokens, speculative=speculative)
    st = r.stats
    return {"raw": r.raw, "calls": r.calls, "tokens": st.completion_tokens, "decodes": st.decodes,
            "speculative": st.speculative, "drafted": st.drafted_tokens, "accepted": st.accepted_drafts,
            "seconds": round(st.decode_seconds, 3)}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    on = [r["on"] for r in rows]
    return {"questions": len(rows),
            "identical": sum(r["on"]["raw"] == r["off"]["raw"] and r["on"]["calls"] == r["off"]["calls"]
                             for r in rows),
            "speculation_ran": sum(o["speculative"] for o in on),
            "tokens": sum(o["tokens"] for o in on),
            "decodes_off": sum(r["off"]["decodes"] for r in rows), "decodes_on": sum(o["decodes"] for o in on),
            "drafted": sum(o["drafted"] for o in on), "accepted": sum(o["accepted"] for o in on),
            "decode_seconds_off": round(sum(r["off"]["seconds"] for r in rows), 2),
            "decode_seconds_on": round(sum(o["seconds"] for o in on), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "bfcl"))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=EVAL_MAX_TOKENS)
    parser.add_argument("--json", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    out = Path(args.json or REPO / "bench" / "results" / f"speculative_equality_{Path(args.model).stem}.json")
    ta = ToolACE.load(args.model, n_ctx=4096, n_threads=args.threads)
    questions = list(load_questions(args.data, CATEGORIES))
    if args.limit:
        questions = questions[:: max(1, len(questions) // args.limit)][: args.limit]
    rows: list[dict[str, Any]] = []
    start = time.monotonic()
    for q in questions:
        rows.append({"id": q.id, "off": answer(ta, q, args.max_tokens, False),
                     "on": answer(ta, q, args.max_tokens, True)})
        report = {"model": args.model, "decoding": "greedy, tool_choice auto", "max_tokens": args.max_tokens,
                  "seconds": round(time.monotonic() - start), "summary": summary(rows), "questions": rows}
        out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(summary(rows), indent=1))


if __name__ == "__main__":
    main()
