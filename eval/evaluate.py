"""`toolace eval`: BFCL accuracy, validity and latency of a model; `--compare A B`: agreement of two quantizations.

Tool choice (BFCL's setting for models with forced calling): "required" in the call categories, "auto" in
irrelevance, where declining to call is the right answer. `tool_choice="auto"` uses auto everywhere.
In auto mode an answer that starts as text is stopped at its first visible character unless `full_text` is set:
BFCL scores only whether a call was made, and generating the rest of a long text answer costs minutes per category
on a laptop without changing any score (latency for those rows is then the time to that verdict)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from toolace.api import ToolACE
from toolace.errors import InputError
from toolace.limits import DEFAULT_BATCHING, MAX_MAX_TOKENS
from toolace.paths import atomic_output

from . import quant_quality as quality
from .ast_checker import check
from .bfcl import Question, category_names, default_data_dir, ground_truth_calls, is_irrelevance, load_questions
from .defaults import DEFAULT_CATEGORIES, EVAL_MAX_TOKENS, TOOL_CHOICE_MODES

__all__ = ["DEFAULT_CATEGORIES", "EVAL_MAX_TOKENS", "TOOL_CHOICE_MODES", "call_transcripts", "check_max_tokens",
           "choice_for", "compare", "evaluate", "run_question", "select_questions", "summarize"]

COMPARE_TRANSCRIPTS = 20  # token-level comparison: enough positions (~800) for a stable KL mean, seconds on a laptop
RAW_CHARS_KEPT = 400  # model output kept per question in the JSON report


def select_questions(data: str | None, categories: str, limit: int | None,
                     from_end: bool = False) -> list[Question]:
    """The first `limit` questions of each category (all without a limit; `from_end`: the last `limit`)."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    out: list[Question] = []
    for cat in category_names(data, categories):
        qs = [q for q in load_questions(data, (cat,))]
        out += (qs[-limit:] if from_end else qs[:limit]) if limit else qs
    return out


def choice_for(q: Question, mode: str) -> str:
    if mode not in TOOL_CHOICE_MODES:
        raise InputError(f"tool choice mode must be one of {', '.join(TOOL_CHOICE_MODES)}, got {mode!r}")
    return "auto" if mode == "auto" or is_irrelevance(q.category) else "required"


def run_question(ta: ToolACE, q: Question, tool_choice: str, max_tokens: int, full_text: bool) -> dict[str, Any]:
    """One question through the model: calls (or text), validity, finish reason, latency, AST-checker verdict."""
    start = time.perf_counter()
    toolset = ta.toolset(q.functions, tool_choice)
    out = _generate(ta, q, toolset, tool_choice, max_tokens, full_text, start)
    verdict = check(q, out["calls"], toolset.tools)
    return {"id": q.id, "category": q.category, "tool_choice": tool_choice, "correct": verdict.correct,
            "reason": verdict.reason, **out, "raw": out["raw"][:RAW_CHARS_KEPT]}


def _generate(ta: ToolACE, q: Question, toolset: Any, tool_choice: str, max_tokens: int, full_text: bool,
              start: float) -> dict[str, Any]:
    if tool_choice == "auto" and not full_text:
        raw, result = "", None
        stream = ta.stream(q.messages, toolset, max_tokens=max_tokens)
        try:
            for event in stream:
                if event.kind == "done":
                    result = event.result
                elif event.kind == "text":
                    raw += event.text
                    if raw.strip():  # the answer is text: no call follows, the verdict is known
                        break
        finally:
            stream.close()  # releases the model lock; the next prefill reuses the KV prefix as usual
        if result is None:
            return {"calls": [], "raw": raw, "valid": True, "errors": [], "finish_reason": "text",
                    "latency_s": time.perf_counter() - start, "completion_tokens": None}
    else:
        result = ta.chat(q.messages, toolset, max_tokens=max_tokens)
    return {"calls": result.calls, "raw": result.raw, "valid": bool(result.valid), "errors": result.errors,
            "finish_reason": result.finish_reason, "latency_s": time.perf_counter() - start,
            "completion_tokens": result.stats.completion_tokens}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-category numbers. Validity counts outputs that are call lists which parse and validate, over the outputs
    that had to be calls (required mode) or chose to be (auto); outputs cut by max_tokens are counted apart."""
    n = len(rows)
    cut = sum(r["finish_reason"] == "length" for r in rows)
    call_mode = [r for r in rows if r["tool_choice"] != "auto" or r["raw"].lstrip().startswith("[")]
    judged = [r for r in call_mode if r["finish_reason"] != "length"]
    valid = sum(bool(r["valid"] and r["calls"]) for r in judged)
    lat = [r["latency_s"] for r in rows]
    return {"n": n, "correct": sum(r["correct"] for r in rows),
            "accuracy": sum(r["correct"] for r in rows) / n if n else None,
            "tool_choice": sorted({r["tool_choice"] for r in rows}),
            "call_outputs": len(call_mode), "valid": valid, "validity": valid / len(judged) if judged else None,
            "cut_by_max_tokens": cut,
            "latency_mean_s": statistics.fmean(lat) if lat else None,
            "latency_median_s": statistics.median(lat) if lat else None}


def _progress(items: Iterable[Any], desc: str, progress: bool, total: int | None = None) -> Iterable[Any]:
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="q", dynamic_ncols=True, total=total)


def _write_json(report: dict[str, Any], json_out: str | None) -> None:
    if json_out:
        with atomic_output(json_out) as tmp:
            tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")


def check_max_tokens(max_tokens: int) -> None:
    if not 1 <= max_tokens <= MAX_MAX_TOKENS:
        raise InputError(f"--max-tokens must be between 1 and {MAX_MAX_TOKENS}, got {max_tokens}")


def evaluate(model: str = "demo", data: str | None = None, categories: str = DEFAULT_CATEGORIES,
             limit: int | None = None, json_out: str | None = None, tool_choice: str = "category",
             max_tokens: int = EVAL_MAX_TOKENS, full_text: bool = False, progress: bool = True,
             parallel: int = 1, batching: str = DEFAULT_BATCHING) -> dict[str, Any]:
    """Run BFCL questions through `model`, score them with the AST checker, and report per category.
    `limit` is per category (the first N questions of each). `parallel`: questions decoded together in slots,
    `batching` exact or fast (docs/parallel.md)."""
    check_max_tokens(max_tokens)
    data = data if data is not None else default_data_dir()
    questions = select_questions(data, categories, limit)
    for q in questions:
        choice_for(q, tool_choice)
    # Every question has its own tool set: persisting each tool prompt's KV to disk would only cost writes.
    ta = ToolACE.load(model, kv_cache=False, parallel=parallel, batching=batching)
    with ThreadPoolExecutor(parallel) as pool:  # one thread per slot; map keeps the questions' order
        rows = list(_progress(pool.map(lambda q: run_question(ta, q, choice_for(q, tool_choice), max_tokens, full_text),
                                       questions), "eval", progress, len(questions)))
    cats = list(dict.fromkeys(r["category"] for r in rows))
    per_cat = {c: summarize([r for r in rows if r["category"] == c]) for c in cats}
    accs = [s["accuracy"] for s in per_cat.values() if s["accuracy"] is not None]
    report = {"model": str(model), "model_file": str(ta.model.path), "data": str(data), "limit_per_category": limit,
              "parallel": parallel, "batching": batching,
              "tool_choice": tool_choice,
              "tool_choice_note": "auto everywhere" if tool_choice == "auto" else
              "required in call categories, auto in irrelevance",
              "max_tokens": max_tokens, "text_answers": "full" if full_text else "stopped at first character",
              "engine": ta.engine, "categories": per_cat,
              "overall": {**summarize(rows), "category_mean_accuracy": statistics.fmean(accs) if accs else None},
              "questions": rows}
    _write_json(report, json_out)
    return report


# --- comparing two quantizations ----------------------------------------------------------------------------------
def call_transcripts(questions: list[Question], count: int,
                     from_end: bool = False) -> list[tuple[Question, list[dict[str, Any]]]]:
    """Up to `count` questions with a concrete ground truth, round-robin over categories so each is represented,
    from the start of each category (`from_end`: from its end, the held-aside side of a calibration set)."""
    queues: dict[str, list[Question]] = {}
    for q in (reversed(questions) if from_end else questions):
        if q.ground_truth is not None:
            queues.setdefault(q.category, []).append(q)
    picked: list[tuple[Question, list[dict[str, Any]]]] = []
    while len(picked) < count and any(queues.values()):
        for queue in queues.values():
            if queue and len(picked) < count:
                q = queue.pop(0)
                calls = ground_truth_calls(q, ToolACE.toolset(q.functions).tools)
                if calls:
                    picked.append((q, calls))
    return picked


def compare(a: str, b: str, data: str | None = None, categories: str = DEFAULT_CATEGORIES,
            limit: int | None = None, json_out: str | None = None, tool_choice: str = "category",
            max_tokens: int = EVAL_MAX_TOKENS, transcripts: int = COMPARE_TRANSCRIPTS,
            progress: bool = True) -> dict[str, Any]:
    """Call-level agreement (identical parsed calls on the same prompts) and token-level KL(a||b) and top-1
    agreement on ground-truth call transcripts. Both models stay loaded together."""
    check_max_tokens(max_tokens)
    data = data if data is not None else default_data_dir()
    questions = select_questions(data, categories, limit)
    ta_a, ta_b = ToolACE.load(a, kv_cache=False), ToolACE.load(b, kv_cache=False)
    quality.require_same_vocab(ta_a, ta_b, a, b)
    agree: dict[str, list[bool]] = {}
    for q in _progress(questions, "compare", progress):
        choice = choice_for(q, tool_choice)
        # Text answers stop early as in evaluate: two text answers agree (no calls either way), as BFCL would see it.
        ra, rb = (run_question(t, q, choice, max_tokens, full_text=False) for t in (ta_a, ta_b))
        agree.setdefault(q.category, []).append(ra["calls"] == rb["calls"])
    picked = call_transcripts(questions, transcripts)
    tokens = quality.transcripts(ta_a, picked)
    quality.check_same_tokens(tokens, quality.transcripts(ta_b, picked), a, b)
    kls, top1 = [], []
    for t in _progress(tokens, "logits", progress):
        kl, same = quality.kl_rows(quality.next_token_logprobs(ta_a, t), quality.next_token_logprobs(ta_b, t))
        kls.append(kl)
        top1.append(same)
    all_agree = [x for v in agree.values() for x in v]
    report = {"a": str(a), "b": str(b), "a_file": str(ta_a.model.path), "b_file": str(ta_b.model.path),
              "limit_per_category": limit, "tool_choice": tool_choice,
              "call_agreement": {c: sum(v) / len(v) for c, v in agree.items()},
              "call_agreement_overall": sum(all_agree) / len(all_agree) if all_agree else None,
              "questions": len(all_agree),
              "token": {"transcripts": len(picked), **quality.token_figures(kls, top1)}}
    _write_json(report, json_out)
    return report
