"""Parity is a table (issue #27): the shared cases, the budget guard's included, against `toolace serve` (llama.cpp,
the demo GGUF) in the same run as vLLM with the export (test_vllm_export.py, the HF checkpoint made from that GGUF),
and what each engine answered side by side. Both must give complete valid calls everywhere (each side's own tests);
the planner must agree on the shortest call (asserted); where the calls differ, the engines took different tokens
(vLLM's model picks its own split of grammar-forced text, toolace fast-forwards the canonical one), recorded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI

from tests.helpers import guard_cases
from tests.helpers import openai_cases as cases
from tests.helpers.server import start_server, stop_server
from tests_vllm.conftest import MEASURED
from toolace.api import ToolACE
from toolace.fixtures import SMOLLM2_GGUF, fixture_path

LOCAL = "smollm2"  # the model name the local target reports (toolace serve answers any name)


@pytest.fixture(scope="module")
def server() -> Iterator[cases.Target]:
    gguf = fixture_path(SMOLLM2_GGUF)
    if not gguf.exists():
        pytest.fail(f"fixture {gguf} missing: run `make fixtures` first (tests never download)")
    served = start_server(ToolACE.load(str(gguf), n_ctx=2048))
    yield cases.Target(OpenAI(base_url=served.base_url, api_key="unused", timeout=600, max_retries=0), LOCAL,
                       logprobs=False)
    stop_server(served)


class TestToolaceServeInTheSameRun(cases.SharedCases):
    """The shared cases against toolace serve, in `make test-vllm` beside vLLM's run of them."""


def _seen(kind: str, local: bool) -> Any:
    """What one engine's run of a guard case saw (guard_cases.SEEN is keyed by model name, then the case)."""
    return next((v for k, v in guard_cases.SEEN.items() if k.endswith(f": {kind}") and k.startswith(LOCAL) == local),
                None)


def _side_by_side(kind: str) -> dict[str, Any]:
    local, remote = _seen(kind, True) or {}, _seen(kind, False) or {}
    return {key: {"vllm": remote.get(key), "toolace serve": local.get(key),
                  "same": _answer(remote.get(key)) == _answer(local.get(key))} for key in sorted({*local, *remote})}


def _answer(seen: Any) -> Any:
    if not isinstance(seen, dict):
        return seen
    return seen.get("calls", seen.get("content"))


def test_parity_table() -> None:
    """After both engines ran the shared cases: the same minimum max_tokens on both (the planner on llama.cpp's
    tokenizer and on the Hugging Face one vLLM serves with), and the table of what each answered."""
    local, remote = _seen("minimum", True), _seen("minimum", False)
    if remote is None:
        pytest.skip("vLLM's run of the shared cases (test_vllm_export.py) is not in this session")
    assert local == remote and local
    table = {kind: _side_by_side(kind) for kind in ("calendar", "structured")}
    MEASURED["parity"] = {"minimum": local, **table,
                          "same_answers": {kind: f"{sum(r['same'] for r in rows.values())}/{len(rows)}"
                                           for kind, rows in table.items()}}
