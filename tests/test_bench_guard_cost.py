"""The vLLM guard's cost as `toolace bench serve --vllm-export` reports it (eval/bench_serve.py: guard_cost): tok/s
with the guard against the same server without it, at 1 and 4 clients; the 5% target at its bound and past it."""

from __future__ import annotations

from typing import Any

import pytest

from toolace.eval.bench_serve import (
    GUARD_LEVELS,
    TARGET_GUARD_SLOWDOWN,
    VLLM_COLUMN,
    VLLM_GUARDED_COLUMN,
    VLLM_UNGUARDED_COLUMN,
    guard_cost,
)


def _report(on: float, off: float, levels: tuple[int, ...] = GUARD_LEVELS) -> dict[str, Any]:
    return {"columns": {VLLM_COLUMN: [{"clients": n, "tok_per_s": 1.0} for n in (1, 2, 4, 8)],
                        VLLM_GUARDED_COLUMN: [{"clients": n, "tok_per_s": on} for n in levels],
                        VLLM_UNGUARDED_COLUMN: [{"clients": n, "tok_per_s": off} for n in levels]}}


@pytest.mark.parametrize(("on", "met"), [(100 * (1 - TARGET_GUARD_SLOWDOWN), True), (100.0, True), (110.0, True),
                                         (100 * (1 - TARGET_GUARD_SLOWDOWN) - 0.1, False), (50.0, False)])
def test_guard_cost_target(on: float, met: bool) -> None:
    cost = guard_cost(_report(on, 100.0))
    assert set(cost) == {f"vllm_guard_{n}" for n in GUARD_LEVELS}
    assert all(c["met"] is met and c["needed"] == TARGET_GUARD_SLOWDOWN for c in cost.values())
    assert cost["vllm_guard_1"]["measured"] == round(1 - on / 100.0, 3)


def test_engine_time_per_token_judged_beside_client_throughput() -> None:
    """vLLM's own inter-token latency (from /metrics) gives a second reading, judged on the same target."""
    report = _report(100.0, 100.0)
    for column, ms in ((VLLM_GUARDED_COLUMN, 21.0), (VLLM_UNGUARDED_COLUMN, 20.0)):
        for row in report["columns"][column]:
            row["engine_ms_per_token"] = ms
    cost = guard_cost(report)
    assert cost["vllm_guard_engine_4"] == {"measured": 0.05, "needed": TARGET_GUARD_SLOWDOWN, "met": True}
    assert cost["vllm_guard_1"]["measured"] == 0.0
    report["columns"][VLLM_GUARDED_COLUMN][0]["engine_ms_per_token"] = 21.2
    assert guard_cost(report)["vllm_guard_engine_1"]["met"] is False


def test_no_unguarded_column_no_target() -> None:
    assert guard_cost({"columns": {VLLM_COLUMN: [{"clients": 1, "tok_per_s": 5.0}]}}) == {}
    assert set(guard_cost(_report(9.0, 10.0, levels=(4,)))) == {"vllm_guard_4"}


def test_rounds_merge_into_totals_and_medians() -> None:
    """The guard's cost is read from several starts of each server: tok/s from the summed tokens and wall time
    (not the mean of the rounds' rates), latencies as the median of the rounds'."""
    from toolace.eval.bench_serve import _merged

    row = {"clients": 1, "requests": 2, "wall_s": 2.0, "completion_tokens": 20, "tok_per_s": 10.0, "req_per_s": 1.0,
           "latency_p50_s": 1.0, "latency_p95_s": 1.5, "ttft_p50_s": None, "validity": 1.0}
    slow = {**row, "wall_s": 4.0, "tok_per_s": 5.0, "req_per_s": 0.5, "latency_p50_s": 2.0, "latency_p95_s": 2.5,
            "ttft_p50_s": 0.3, "validity": 0.5}
    merged = _merged([row, slow])
    assert (merged["requests"], merged["completion_tokens"], merged["wall_s"]) == (4, 40, 6.0)
    assert (merged["tok_per_s"], merged["latency_p50_s"], merged["ttft_p50_s"], merged["validity"]) == \
        (6.67, 1.5, 0.3, 0.75)
