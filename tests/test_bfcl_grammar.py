"""Every BFCL function compiles; every ground-truth call is in the language; broken variants are not."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from toolace.eval.bfcl import Question, ground_truth_calls, load_questions
from toolace.grammars.check import check_text
from toolace.grammars.compile import CompiledGrammar, compile_grammar
from toolace.grammars.gbnf import render_calls

# Ground truths that contradict their own declared schema (BFCL data quirks): None for a number, True for a
# string, a string for an array. jsonschema rejects them too, and so must the grammar.
SCHEMA_QUIRKS = {"simple_python_307", "parallel_152", "parallel_multiple_21", "parallel_multiple_94"}


@pytest.fixture(scope="module")
def compiled(bfcl_dir: Path) -> list[tuple[Question, CompiledGrammar]]:
    start = time.perf_counter()
    out = [(q, compile_grammar(q.functions, "required")) for q in load_questions(bfcl_dir)]
    n_functions = sum(len(q.functions) for q, _ in out)
    print(f"\ncompiled {n_functions} BFCL functions in {len(out)} grammars, {time.perf_counter() - start:.2f} s")
    assert n_functions == 2067
    return out


def _mutations(calls: list[dict[str, Any]], cg: CompiledGrammar) -> dict[str, list[dict[str, Any]]]:
    tools = {t.name: t for t in cg.tools}
    out: dict[str, list[dict[str, Any]]] = {}
    for i, call in enumerate(calls):
        tool = tools[call["name"]]
        props = tool.parameters["properties"]
        for key, value in call["arguments"].items():
            if "type" not in props[key] or "wrong_type" in out:
                continue
            wrong: Any = 12345 if isinstance(value, str) else "text"
            if not jsonschema.Draft202012Validator(props[key]).is_valid(wrong):
                out["wrong_type"] = copy.deepcopy(calls)
                out["wrong_type"][i]["arguments"][key] = wrong
        required = [r for r in tool.parameters.get("required", []) if r in call["arguments"]]
        if required and "missing_required" not in out:
            out["missing_required"] = copy.deepcopy(calls)
            del out["missing_required"][i]["arguments"][required[0]]
    out["unknown_param"] = copy.deepcopy(calls)
    out["unknown_param"][0]["arguments"]["zz_not_a_param"] = 1
    out["unknown_function"] = copy.deepcopy(calls)
    out["unknown_function"][0]["name"] += "_v2"
    return out


@pytest.mark.slow  # every BFCL ground truth and its variants (~17 s): make test-slow
def test_ground_truth_in_language_and_variants_not(compiled: list[tuple[Question, CompiledGrammar]]) -> None:
    checked = quirks = rejected = 0
    for q, cg in compiled:
        if q.ground_truth is None:
            continue
        calls = ground_truth_calls(q, cg.tools)
        if calls is None:
            assert q.id in SCHEMA_QUIRKS, f"{q.id}: ground truth fits no schema alternative"
            quirks += 1
            continue
        text = render_calls(calls)
        verdict = check_text(cg.gbnf, text)
        assert verdict.ok, f"{q.id}: {verdict.where(text)}"
        checked += 1
        for kind, variant in _mutations(calls, cg).items():
            bad = render_calls(variant)
            assert not check_text(cg.gbnf, bad).ok, f"{q.id}: {kind} variant accepted: {bad}"
            rejected += 1
    print(f"\n{checked} ground truths in the language, {rejected} broken variants rejected, {quirks} quirks")
    assert checked == 1146 and quirks == len(SCHEMA_QUIRKS)


def test_every_mode_compiles_for_bfcl(compiled: list[tuple[Question, CompiledGrammar]]) -> None:
    for _, cg in compiled[::25]:
        for mode in ("auto", "none", cg.tools[0].name):
            compile_grammar(cg.tools, mode)
