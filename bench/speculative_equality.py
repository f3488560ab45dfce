"""Greedy output with speculation equals output without it, question by question on BFCL (docs/speculative.md;
issue #28).

Every question (non-live categories, evenly spread when limited) is answered twice by the model under greedy
decoding, tool_choice auto, once with `speculative` off and once on. The two raw texts and call lists must be
equal; the counters say what speculation saved (decodes, drafted and accepted tokens). Writes
bench/results/speculative_equality_<model>.json as it goes, so a partial run is still a result.

    .venv/bin/python bench/speculative_equality.py [--model demo] [--limit N] [--max-tokens 256] [--threads N]

On a machine with several cores, `--shard K/N` answers every N-th question from the K-th into its own file (one
process per core, `taskset` pinned: two llama.cpp processes sharing cores slow each other), and `--merge` joins
the shards' files into the one result."""

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


def write(out: Path, report: dict[str, Any]) -> None:
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")


def merge(out: Path, parts: list[str]) -> dict[str, Any]:
    """Join shard files into one report, questions in BFCL order, seconds the longest shard's."""
    reports = [json.loads(Path(p).read_text()) for p in parts]
    order = {q.id: i for i, q in enumerate(load_questions(reports[0]["data"], CATEGORIES))}
    rows = sorted((r for rep in reports for r in rep["questions"]), key=lambda r: order[r["id"]])
    report = {**reports[0], "shards": len(reports), "seconds": max(rep["seconds"] for rep in reports),
              "summary": summary(rows), "questions": rows}
    write(out, report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "bfcl"))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=EVAL_MAX_TOKENS)
    parser.add_argument("--json", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shard", default=None, help="K/N: every N-th question from the K-th")
    parser.add_argument("--merge", nargs="+", default=None, help="shard files to join into --json")
    args = parser.parse_args()
    out = Path(args.json or REPO / "bench" / "results" / f"speculative_equality_{Path(args.model).stem}.json")
    if args.merge:
        print(json.dumps(merge(out, args.merge)["summary"], indent=1))
        return
    ta = ToolACE.load(args.model, n_ctx=4096, n_threads=args.threads)
    questions = list(load_questions(args.data, CATEGORIES))
    if args.limit:
        questions = questions[:: max(1, len(questions) // args.limit)][: args.limit]
    if args.shard:
        k, n = (int(x) for x in args.shard.split("/"))
        questions = questions[k::n]
    rows: list[dict[str, Any]] = []
    start = time.monotonic()
    for q in questions:
        rows.append({"id": q.id, "off": answer(ta, q, args.max_tokens, False),
                     "on": answer(ta, q, args.max_tokens, True)})
        report = {"model": args.model, "data": args.data, "decoding": "greedy, tool_choice auto",
                  "max_tokens": args.max_tokens, "seconds": round(time.monotonic() - start),
                  "summary": summary(rows), "questions": rows}
        write(out, report)
    print(json.dumps(summary(rows), indent=1))


if __name__ == "__main__":
    main()
