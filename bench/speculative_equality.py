"""Greedy output with speculation equals output without it, question by question on BFCL (docs/speculative.md;
issue #28).

Every question (non-live categories, evenly spread when limited) is answered twice by the model under greedy
decoding, tool_choice auto, once with `speculative` off and once on. The two raw texts and call lists must be
equal; the counters say what speculation saved (decodes, drafted and accepted tokens). Writes
bench/results/speculative_equality_<model>.json as it goes, so a partial run is still a result.

    .venv/bin/python bench/speculative_equality.py [--model demo] [--limit N] [--max-tokens 256] [--threads N]

On a machine with several cores, `--shard K/N` answers every N-th question from the K-th into its own file (one
process per core, `taskset` pinned: two llama.cpp processes sharing cores slow each other), and `--merge` joins
the shards' files into the one result. `--resume` keeps the questions a file already answered, when the engine
(toolace's runtime and grammars sources and the llama.cpp build, `engine_hash`) is the same; so a long run can
be continued in another session. `--retime` (with `--resume`) first answers again the questions whose times
count a pause (a run stopped to measure something else alone), keeping the new times where the answers equal the
stored ones and listing the ids where they do not."""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from toolace.api import ToolACE
from toolace.eval.bfcl import CATEGORIES, load_questions
from toolace.eval.defaults import EVAL_MAX_TOKENS
from toolace.paths import atomic_output

REPO = Path(__file__).resolve().parent.parent
OFF_PATH = {"batch.py"}  # the parallel slots: one question at a time in one context never reaches them
# Seconds per decode above which an answer's time counts a pause, not decoding: a decode here takes 10-40 ms, and
# a run stopped (SIGSTOP) to measure something else alone kept its clock going. `--retime` answers those again.
PAUSED_SECONDS_PER_DECODE = 0.25


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
            "decode_seconds_on": round(sum(o["seconds"] for o in on), 2),
            "paused": sum(paused(r) for r in rows)}  # rows whose seconds count a pause (see --retime)


def paused(row: dict[str, Any]) -> bool:
    return any(row[k]["seconds"] > PAUSED_SECONDS_PER_DECODE * max(1, row[k]["decodes"]) for k in ("off", "on"))


def retime(ta: ToolACE, questions: list[Any], rows: list[dict[str, Any]], max_tokens: int) -> list[str]:
    """Answer the paused rows' questions again and keep the new times where the new answers equal the stored ones
    (a second determinism check); returns the ids whose answers differ (kept as they were, to be looked at)."""
    by_id = {q.id: q for q in questions}
    differ = []
    for i, row in enumerate(rows):
        if row["id"] not in by_id or not paused(row):
            continue
        again = {"id": row["id"], "off": answer(ta, by_id[row["id"]], max_tokens, False),
                 "on": answer(ta, by_id[row["id"]], max_tokens, True)}
        if all(again[k][f] == row[k][f] for k in ("off", "on") for f in ("raw", "calls", "tokens", "decodes")):
            rows[i] = again
        else:
            differ.append(row["id"])
    return differ


def engine_hash() -> str:
    """What decides the tokens: toolace's runtime and grammar sources (but OFF_PATH) and the llama.cpp build (its
    version and this CPU's features, LLAMAFILE among them: `build_identity`), not the library's bytes, which differ
    between two compiles of the same source (a build directory's name is in them): a run resumes on a new machine."""

    from toolace.runtime.cache import build_identity

    h = hashlib.sha256(build_identity().encode())
    sources = [*(REPO / "runtime").rglob("*.py"), *(REPO / "grammars").rglob("*.py")]
    for f in sorted(f for f in sources if f.name not in OFF_PATH):
        h.update(f.name.encode() + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def write(out: Path, report: dict[str, Any]) -> None:
    with atomic_output(out) as tmp:  # a run stopped mid-write leaves the last whole report, for --resume
        tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")


def merge(out: Path, parts: list[str]) -> dict[str, Any]:
    """Join shard files into one report, questions in BFCL order, seconds the longest shard's."""
    reports = [json.loads(Path(p).read_text()) for p in parts]
    if len({rep.get("engine_hash") for rep in reports}) > 1:
        raise SystemExit("the shards were answered by different engines: " + ", ".join(parts))
    order = {q.id: i for i, q in enumerate(load_questions(reports[0]["data"], CATEGORIES))}
    rows = sorted((r for rep in reports for r in rep["questions"]), key=lambda r: order[r["id"]])
    report = {**reports[0], "shards": len(reports), "seconds": max(rep["seconds"] for rep in reports),
              "summary": summary(rows), "questions": rows}
    differ = sorted({i for rep in reports for i in rep.get("retime_differ", [])})
    report.pop("retime_differ", None)
    if differ:
        report = {**report, "retime_differ": differ}
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
    parser.add_argument("--resume", action="store_true", help="keep what --json already holds (same engine)")
    parser.add_argument("--seed", default=None, help="with --resume and no --json file yet: start from this merged "
                        "report's answers to this shard's questions (same engine)")
    parser.add_argument("--retime", action="store_true", help="with --resume: first answer again the questions "
                        "whose times count a pause, keeping the new times where the answers are the same")
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
    engine, spent = engine_hash(), 0
    source = out if out.exists() else Path(args.seed) if args.seed else None
    if args.resume and source is not None:
        old = json.loads(source.read_text())
        if old.get("engine_hash") != engine:
            raise SystemExit(f"{source} was answered by another engine ({old.get('engine_hash')}, now {engine})")
        mine = {q.id for q in questions}  # a seed (a merged report) also holds the other shards' questions
        rows = [r for r in old["questions"] if r["id"] in mine]
        spent = old["seconds"] if source == out else 0
    start = time.monotonic() - spent
    extra = {"retime_differ": old["retime_differ"]} if args.resume and source and "retime_differ" in old else {}

    def save() -> None:
        write(out, {"model": args.model, "data": args.data, "engine_hash": engine,
                    "decoding": "greedy, tool_choice auto", "max_tokens": args.max_tokens,
                    "seconds": round(time.monotonic() - start), "summary": summary(rows), **extra,
                    "questions": rows})

    if args.retime:
        differ = retime(ta, questions, rows, args.max_tokens)
        if differ:
            extra["retime_differ"] = sorted({*extra.get("retime_differ", []), *differ})
        save()
        print(f"retimed; answers differing from the stored ones: {differ or 'none'}", flush=True)
    done = {r["id"] for r in rows}
    for q in (q for q in questions if q.id not in done):
        rows.append({"id": q.id, "off": answer(ta, q, args.max_tokens, False),
                     "on": answer(ta, q, args.max_tokens, True)})
        save()
    print(json.dumps(summary(rows), indent=1))


if __name__ == "__main__":
    main()
