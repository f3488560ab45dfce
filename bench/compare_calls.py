"""Compare the calls of two BFCL eval reports question by question (parallel slots issue, acceptance 1): how often
the questions run N at a time (`toolace eval --parallel N`) give the same calls as run alone, and which differ.

    python bench/compare_calls.py ALONE.json TOGETHER.json OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def compare(alone: dict[str, Any], together: dict[str, Any]) -> dict[str, Any]:
    old = {q["id"]: q for q in alone["questions"]}
    new = {q["id"]: q for q in together["questions"]}
    ids = [i for i in new if i in old]
    differ = [i for i in ids if old[i]["calls"] != new[i]["calls"]]
    call_mode = [i for i in ids if new[i]["tool_choice"] != "auto"]
    return {"alone": alone.get("model_file"), "together_parallel": together.get("parallel"),
            "together_batching": together.get("batching", "exact"), "questions": len(ids),
            "same_calls": len(ids) - len(differ), "same_calls_rate": (len(ids) - len(differ)) / len(ids),
            "same_raw": sum(old[i]["raw"] == new[i]["raw"] for i in ids),
            "valid_together": sum(bool(new[i]["valid"] and new[i]["calls"]) for i in call_mode),
            "call_mode_questions": len(call_mode),
            "differing": [{"id": i, "alone": old[i]["raw"], "together": new[i]["raw"]} for i in differ]}


def main(argv: list[str]) -> None:
    alone, together = (json.loads(Path(p).read_text()) for p in argv[:2])
    text = json.dumps(compare(alone, together), indent=1)
    if len(argv) > 2:
        Path(argv[2]).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
