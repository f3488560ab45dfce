"""bench/speculative_equality.py's bookkeeping: which rows' times count a pause, and `--retime`, which answers them
again with the real model and keeps the new times only where the answers are the same."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from toolace.api import ToolACE
from toolace.eval.bfcl import load_questions

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "speculative_equality.py"


@pytest.fixture(scope="module")
def eq() -> ModuleType:
    spec = importlib.util.spec_from_file_location("speculative_equality", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(off: tuple[float, int], on: tuple[float, int]) -> dict[str, Any]:
    return {"id": "q", "off": {"seconds": off[0], "decodes": off[1]}, "on": {"seconds": on[0], "decodes": on[1]}}


def test_paused_rows_table(eq: ModuleType) -> None:
    limit = eq.PAUSED_SECONDS_PER_DECODE
    cases = [  # (off (seconds, decodes), on (seconds, decodes), paused)
        ((5.0, 200), (4.5, 150), False),  # 25 and 30 ms a decode: decoding
        ((limit * 100, 100), (1.0, 80), False),  # at the limit: still decoding (near miss)
        ((limit * 100 + 0.5, 100), (1.0, 80), True),  # past it: a pause
        ((1.0, 100), (90.0, 155), True),  # the speculative answer stopped mid-way
        ((0.0, 0), (0.1, 0), False),  # no decode after the prompt (an answer of one token)
        ((0.0, 0), (limit + 0.1, 0), True),  # ... its near miss: a pause all the same
    ]
    for off, on, want in cases:
        assert eq.paused(_row(off, on)) is want, (off, on)


@pytest.mark.slow  # six real answers for a bench script's bookkeeping (~13 s): make test-slow
def test_retime_keeps_new_times_only_for_the_same_answers(eq: ModuleType, smollm2_gguf: Path,
                                                          bfcl_dir: Path) -> None:
    ta = ToolACE.load(str(smollm2_gguf), n_ctx=4096, n_threads=2)
    questions = list(load_questions(bfcl_dir, ("simple_python",)))[:3]
    rows = [{"id": q.id, "off": eq.answer(ta, q, 24, False), "on": eq.answer(ta, q, 24, True)} for q in questions]
    rows[0]["on"]["seconds"] = 1e4  # stopped mid-way: answered again, same answer, new time kept
    rows[1]["off"]["seconds"], rows[1]["off"]["raw"] = 1e4, rows[1]["off"]["raw"] + "!"  # a different answer
    kept = rows[2]  # not paused: not answered again (the same row stays)
    differ = eq.retime(ta, questions, rows, 24)
    assert differ == [questions[1].id]
    assert rows[0]["on"]["seconds"] < 1e4 and not eq.paused(rows[0])
    assert rows[1]["off"]["seconds"] == 1e4 and rows[1]["off"]["raw"].endswith("!")  # kept for a look
    assert rows[2] is kept and eq.summary(rows)["paused"] == 1
