"""Compare two BFCL eval reports question by question (issue 13, acceptance 3): outputs cut without a complete call,
raw outputs identical where the earlier run did not run into max_tokens, and mean tokens and seconds per question.

    python bench/compare_budget.py bench/results/eval_smollm2.json bench/results/eval_smollm2_budget.json \
        bench/results/eval_smollm2_budget_compare.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import mean
from typing import Any


def _cut(q: dict[str, Any]) -> bool:
    """A call output that ended without a complete call list."""
    return q["finish_reason"] == "length" and not q["calls"]


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    old = {q["id"]: q for q in before["questions"]}
    new = {q["id"]: q for q in after["questions"]}
    ids = [i for i in old if i in new]
    looped = [i for i in ids if old[i]["finish_reason"] == "length"]  # ran into max_tokens before
    steady = [i for i in ids if i not in set(looped)]
    changed = [i for i in steady if (old[i]["raw"], old[i]["completion_tokens"]) != (new[i]["raw"],
                                                                                    new[i]["completion_tokens"])]

    def means(rows: dict[str, Any], which: list[str]) -> dict[str, float]:
        tokens = [rows[i]["completion_tokens"] for i in which if rows[i]["completion_tokens"] is not None]
        return {"tokens": mean(tokens) if tokens else 0.0, "seconds": mean(rows[i]["latency_s"] for i in which)}

    return {
        "before": str(before.get("model_file", "")), "questions": len(ids),
        "cut_without_complete_call": {"before": sum(_cut(old[i]) for i in ids),
                                      "after": sum(_cut(new[i]) for i in ids)},
        "invalid_after": [i for i in ids if not new[i]["valid"]],
        "ran_into_max_tokens_before": len(looped),
        "after_for_those": {"complete_calls": sum(bool(new[i]["calls"]) for i in looped),
                            "finish_length": sum(new[i]["finish_reason"] == "length" for i in looped),
                            "correct_before": sum(old[i]["correct"] for i in looped),
                            "correct_after": sum(new[i]["correct"] for i in looped)},
        "did_not_run_into_max_tokens": len(steady),
        "identical_raw_and_tokens": len(steady) - len(changed),
        "changed": changed,
        "accuracy": {"before": before["overall"]["accuracy"], "after": after["overall"]["accuracy"]},
        "mean_per_question_all": {"before": means(old, ids), "after": means(new, ids)},
        "mean_per_question_unchanged": {"before": means(old, steady), "after": means(new, steady)},
        "mean_per_question_looped": {"before": means(old, looped), "after": means(new, looped)},
    }


def main(argv: list[str]) -> None:
    before, after = (json.loads(Path(p).read_text()) for p in argv[:2])
    report = compare(before, after)
    text = json.dumps(report, indent=1)
    if len(argv) > 2:
        Path(argv[2]).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
