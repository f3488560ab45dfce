"""The vLLM guard's cost as `toolace bench serve --vllm-export` reports it (eval/bench_serve_report.py:
guard_cost): tok/s with the guard against the same server without it, at 1 and 4 clients; the 5% target at its
bound and past it."""

from __future__ import annotations

from typing import Any

import pytest

from toolace.eval.bench_serve import VLLM_COLUMN
from toolace.eval.bench_serve_report import (
    GUARD_LEVELS,
    TARGET_GUARD_SLOWDOWN,
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
    assert set(cost) == {f"vllm_guard_{n}" for n in GUARD_LEVELS}  # no bursts, no engine times: totals only
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


def test_paired_bursts_judged_by_their_median() -> None:
    """Burst k sent the same requests to both servers: the median of the per-burst ratios is a third reading,
    which one disturbed burst does not move (the totals it does)."""
    report = _report(90.0, 100.0)
    for column, bursts in ((VLLM_GUARDED_COLUMN, [9.8, 10.0, 5.0]), (VLLM_UNGUARDED_COLUMN, [10.0, 10.0, 10.0])):
        for row in report["columns"][column]:
            row["burst_tok_per_s"] = bursts
    cost = guard_cost(report)
    assert cost["vllm_guard_paired_4"] == {"measured": 0.02, "needed": TARGET_GUARD_SLOWDOWN, "met": True}
    assert cost["vllm_guard_4"]["met"] is False  # the totals, moved by the one slow burst
    report["columns"][VLLM_GUARDED_COLUMN][1]["burst_tok_per_s"] = [9.0, 9.4, 9.9]
    assert guard_cost(report)["vllm_guard_paired_4"] == {"measured": 0.06, "needed": TARGET_GUARD_SLOWDOWN,
                                                         "met": False}


def test_the_guards_own_clock_is_a_reading() -> None:
    """The guard's seconds inside the guarded server, over the rest of the bursts' wall time: what its code adds."""
    report = _report(100.0, 100.0)
    report["columns"][VLLM_GUARDED_COLUMN][0]["guard_code_slowdown"] = 0.021
    report["columns"][VLLM_GUARDED_COLUMN][1]["guard_code_slowdown"] = 0.0514
    cost = guard_cost(report)
    assert cost["vllm_guard_code_1"] == {"measured": 0.021, "needed": TARGET_GUARD_SLOWDOWN, "met": True}
    assert cost["vllm_guard_code_4"] == {"measured": 0.051, "needed": TARGET_GUARD_SLOWDOWN, "met": False}


def test_guard_clock_files_sum_over_engines(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked for, each engine leaves its totals in the notes folder after every step (replaced whole, never a
    nonce's name, so the notes sweep leaves them); the reader sums the engines'. Not asked for, nothing is written."""
    from toolace.paths import TEMP_SUFFIX
    from toolace.serve.vllm import meta

    monkeypatch.setenv(meta.NOTES_ENV, str(tmp_path))
    meta.GuardClock().add(0.5, steps=1, rows=2)
    assert list(tmp_path.iterdir()) == []  # a served engine writes no clock
    monkeypatch.setenv(meta.GUARD_CLOCK_ENV, "1")
    clock = meta.GuardClock()
    clock.add(0.5, steps=1, rows=2)
    assert meta.read_guard_time(tmp_path) == {"seconds": 0.5, "setup_seconds": 0.0, "steps": 1, "rows": 2,
                                              "requests": 0}
    clock.add(0.25, requests=1)
    (tmp_path / f"{meta.GUARD_TIME_PREFIX}1.json").write_text('{"seconds": 1.0, "steps": 3, "rows": 3}')
    (tmp_path / f"{meta.GUARD_TIME_PREFIX}2.json").write_text("{not json")  # a reader must survive any file
    assert meta.read_guard_time(tmp_path) == {"seconds": 1.75, "setup_seconds": 0.25, "steps": 4, "rows": 5,
                                              "requests": 1}
    names = [p.name for p in tmp_path.iterdir()]
    assert not any(meta.is_nonce(n) for n in names) and not any(n.endswith((".tmp", TEMP_SUFFIX)) for n in names)
