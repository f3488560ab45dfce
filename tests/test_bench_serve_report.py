"""`toolace bench serve`'s target checks, on reports shaped as the bench writes them: each target met at its bound
and missed just past it, and a PNG written whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from toolace.eval.bench_serve_report import (
    FAST_COLUMN,
    LLAMA_SERVER_COLUMN,
    PARALLEL_COLUMN,
    plot_report,
    summary,
    targets,
)


def _row(clients: int, tok_per_s: float, p50: float = 1.0, p95: float = 1.0, valid: float = 1.0) -> dict[str, Any]:
    return {"clients": clients, "requests": 3 * clients, "wall_s": 1.0, "completion_tokens": 10, "tok_per_s": tok_per_s,
            "req_per_s": 1.0, "latency_p50_s": p50, "latency_p95_s": p95, "ttft_p50_s": p50 / 2, "validity": valid}


def _report(tok4: float, theirs4: float, p95_4: float, valid8: float = 1.0) -> dict[str, Any]:
    ours = [_row(1, 10.0, p50=2.0), _row(2, 15.0), _row(4, tok4, p95=p95_4), _row(8, 20.0, valid=valid8)]
    return {"model": "m", "model_file": "/x/m.gguf", "max_tokens": 8, "cores": 2,
            "ceiling": {"1": 1.0, "2": 1.5, "4": 2.0, "8": 2.5},
            "columns": {PARALLEL_COLUMN: ours, LLAMA_SERVER_COLUMN: [_row(1, 10.0), _row(4, theirs4)]}}


# (tok/s at 4, llama-server's at 4, p95 at 4, validity at 8) -> which targets hold.  At 4 the ceiling is 2.0, so
# scaling needs 1.6 (16 tok/s); against llama-server 1.0; p95 at most 2.5 x the 1-client p50 of 2.0 s.
CASES = [
    ((16.0, 16.0, 5.0, 1.0), {"scaling_4": True, "vs_llama_server_4": True, "p95_4_over_p50_1": True,
                              "validity": True, "scaling_8": True}),
    ((15.9, 15.0, 5.0, 1.0), {"scaling_4": False, "vs_llama_server_4": True}),  # just under 0.8 x ceiling
    ((16.0, 16.1, 5.0, 1.0), {"vs_llama_server_4": False}),  # 16 / 16.1 < 1.0
    ((16.0, 16.0, 5.01, 1.0), {"p95_4_over_p50_1": False}),
    ((16.0, 16.0, 5.0, 0.99), {"validity": False}),
]


@pytest.mark.parametrize(("values", "expected"), CASES)
def test_targets_table(values: tuple[float, float, float, float], expected: dict[str, bool]) -> None:
    got = targets(_report(*values))
    assert {name: got[name]["met"] for name in expected} == expected
    assert got["prompt_share_1"] == 0.5
    assert got["p95_4_over_p50_1"]["floor"] == 2.0  # 4 clients / a ceiling of 2.0: no batching goes below


def test_the_fast_column_is_scaled_against_the_same_ceiling() -> None:
    report = _report(16.0, 16.0, 5.0)
    report["columns"][FAST_COLUMN] = [_row(4, 15.9)]
    got = targets(report)
    assert got["scaling_fast_4"] == {"measured": 1.59, "needed": 1.6, "met": False}
    report["columns"][FAST_COLUMN] = [_row(4, 16.0)]
    assert targets(report)["scaling_fast_4"]["met"]


def test_targets_without_columns_and_plot(tmp_path: Path) -> None:
    report = _report(16.0, 17.0, 5.0)
    del report["columns"][LLAMA_SERVER_COLUMN]
    got = targets(report)
    assert "vs_llama_server_4" not in got and got["scaling_4"]["met"]
    report["targets"] = got
    assert "target scaling_4: 1.6 (needed 1.6): met" in summary(report)
    assert "target p95_4_over_p50_1: 2.5 (needed 2.5, floor 2.0): met" in summary(report)
    out = tmp_path / "serve.png"
    plot_report(report, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [p.name for p in tmp_path.iterdir()] == ["serve.png"]
