"""`toolace bench serve`'s report: the parallel-slots targets checked against the measured columns, a PNG, and the
summary lines (docs/parallel.md).

Targets (ratios, so they hold on any machine): the toolace `--parallel N` column's aggregate tok/s at 4 and 8
clients over its tok/s at 1 is at least TARGET_CEILING_SHARE of this machine's batching ceiling at that N; toolace
over llama-server at 4 clients is at least TARGET_VS_LLAMA_SERVER; every answer valid; p95 latency at 4 clients is at
most TARGET_P95_OVER_P50 times the 1-client p50. And with `--vllm-export`, the budget guard inside vLLM makes it at
most TARGET_GUARD_SLOWDOWN slower (`guard_cost`, docs/scale-out.md)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .bench import save_png, subplots

PARALLEL_COLUMN = "toolace --parallel N"
FAST_COLUMN = "toolace --parallel N --batching fast"
LLAMA_SERVER_COLUMN = "llama-server -np N"
TARGET_CEILING_SHARE = 0.8  # of the ceiling (one decode of N tokens / N decodes of one), at 4 and 8 clients
TARGET_VS_LLAMA_SERVER = 1.0  # aggregate tok/s at 4 clients (issue #30), toolace enforcing the grammar throughout
TARGET_P95_OVER_P50 = 2.5  # p95 latency at 4 clients over the 1-client p50
TARGET_LEVELS = (4, 8)
VLLM_UNGUARDED_COLUMN = "vLLM (export, no guard)"
VLLM_GUARDED_COLUMN = "vLLM (export, guard)"  # the guard's cost: the same longer run as VLLM_UNGUARDED_COLUMN
GUARD_LEVELS = (1, 4)  # clients at which the guard's cost is measured
TARGET_GUARD_SLOWDOWN = 0.05  # the guard may make vLLM at most 5% slower (issue #27)


def _row(report: dict[str, Any], column: str, clients: int) -> dict[str, Any] | None:
    return next((r for r in report["columns"].get(column, []) if r["clients"] == clients), None)


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """Each target with its measured value and whether it holds; a target whose columns are missing is absent.
    `prompt_share_1` (the 1-client TTFT over latency, p50) says how much of a request batching cannot share."""
    one = _row(report, PARALLEL_COLUMN, 1)
    if one is None:
        return {}
    out: dict[str, Any] = {"prompt_share_1": round(one["ttft_p50_s"] / one["latency_p50_s"], 3)
                           if one["ttft_p50_s"] and one["latency_p50_s"] else None}
    for n in TARGET_LEVELS:
        for column, key in ((PARALLEL_COLUMN, f"scaling_{n}"), (FAST_COLUMN, f"scaling_fast_{n}")):
            row, ceiling = _row(report, column, n), report["ceiling"].get(str(n))
            if row is not None and ceiling:
                scaling = row["tok_per_s"] / one["tok_per_s"]
                out[key] = {"measured": round(scaling, 3), "needed": round(TARGET_CEILING_SHARE * ceiling, 3),
                            "met": scaling >= TARGET_CEILING_SHARE * ceiling}
    four, theirs = _row(report, PARALLEL_COLUMN, 4), _row(report, LLAMA_SERVER_COLUMN, 4)
    if four is not None and theirs is not None:
        ratio = four["tok_per_s"] / theirs["tok_per_s"]
        out["vs_llama_server_4"] = {"measured": round(ratio, 3), "needed": TARGET_VS_LLAMA_SERVER,
                                    "met": ratio >= TARGET_VS_LLAMA_SERVER}
    valid = [r["validity"] for r in report["columns"][PARALLEL_COLUMN]]
    out["validity"] = {"measured": min(valid), "needed": 1.0, "met": min(valid) == 1.0}
    if four is not None:
        ratio = four["latency_p95_s"] / one["latency_p50_s"]
        # Four clients share the machine: their mean latency is at least 4 / ceiling_4 times one client's, the
        # floor below which no batching can bring p95 (above TARGET_P95_OVER_P50 where the ceiling is under 1.6).
        floor = 4 / report["ceiling"]["4"] if report["ceiling"].get("4") else None
        out["p95_4_over_p50_1"] = {"measured": round(ratio, 3), "needed": TARGET_P95_OVER_P50,
                                   "floor": round(floor, 3) if floor else None, "met": ratio <= TARGET_P95_OVER_P50}
    return out


def guard_cost(report: dict[str, Any]) -> dict[str, Any]:
    """vLLM with the budget guard against the same server without it, at GUARD_LEVELS, from the same bursts; the
    target is at most TARGET_GUARD_SLOWDOWN slower (issue #27): in the clients' tok/s (`vllm_guard_N`), as the
    median of the bursts' paired ratios (`vllm_guard_paired_N`: each burst sent the same requests to both, so a
    moment the machine was busy moves one pair, not the totals), in the engine's own time per token
    (`vllm_guard_engine_N`, where the guard runs), and from the guard's own clock (`vllm_guard_code_N`: its
    seconds inside the guarded server over the rest of the bursts' wall time, what its code adds)."""
    out = {}
    for n in GUARD_LEVELS:
        on, off = _row(report, VLLM_GUARDED_COLUMN, n), _row(report, VLLM_UNGUARDED_COLUMN, n)
        if not (on and off):
            continue
        if off["tok_per_s"]:
            out[f"vllm_guard_{n}"] = _at_most_guard_slowdown(1 - on["tok_per_s"] / off["tok_per_s"])
        on_bursts, off_bursts = on.get("burst_tok_per_s") or [], off.get("burst_tok_per_s") or []
        # burst k sent the same requests to both: a paired reading
        if on_bursts and len(on_bursts) == len(off_bursts) and all(off_bursts):
            out[f"vllm_guard_paired_{n}"] = _at_most_guard_slowdown(
                statistics.median(1 - a / b for a, b in zip(on_bursts, off_bursts, strict=True)))
        if on.get("guard_code_slowdown") is not None:  # the guard's own time, read inside the guarded server
            out[f"vllm_guard_code_{n}"] = _at_most_guard_slowdown(on["guard_code_slowdown"])
        if on.get("engine_ms_per_token") and off.get("engine_ms_per_token"):
            out[f"vllm_guard_engine_{n}"] = _at_most_guard_slowdown(
                on["engine_ms_per_token"] / off["engine_ms_per_token"] - 1)
    return out


def _at_most_guard_slowdown(slower: float) -> dict[str, Any]:
    """A guard-cost reading judged as reported (rounded to 0.1%) against TARGET_GUARD_SLOWDOWN."""
    slower = round(slower, 3)
    return {"measured": slower, "needed": TARGET_GUARD_SLOWDOWN, "met": slower <= TARGET_GUARD_SLOWDOWN}


def plot_report(report: dict[str, Any], out: str) -> None:
    """Aggregate tok/s and p95 latency against clients, one line per column, with the ceiling-scaled 1-client
    figure of the parallel column as the reference line."""
    import matplotlib.ticker

    fig, axes = subplots(1, 2, figsize=(11, 4))
    for name, rows in report["columns"].items():
        clients = [r["clients"] for r in rows]
        axes[0].plot(clients, [r["tok_per_s"] for r in rows], marker="o", label=name)
        axes[1].plot(clients, [r["latency_p95_s"] for r in rows], marker="o", label=name)
    one, levels = _row(report, PARALLEL_COLUMN, 1), [int(n) for n in report["ceiling"]]
    if one is not None:
        axes[0].plot(levels, [one["tok_per_s"] * report["ceiling"][str(n)] for n in levels], "k--",
                     label="toolace 1-client x batching ceiling")
    axes[0].set(xlabel="concurrent clients", ylabel="aggregate completion tok/s", xscale="log")
    axes[1].set(xlabel="concurrent clients", ylabel="p95 latency, s", xscale="log")
    for ax in axes:
        ax.set_xticks(levels, [str(n) for n in levels], minor=False)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axes[0].legend(fontsize=7)
    axes[0].set_title(f"{Path(report['model_file']).name}, {report['cores']} cores")
    save_png(fig, out)


def summary(report: dict[str, Any]) -> str:
    lines = [f"model {report['model']}  max_tokens {report['max_tokens']}  batching ceiling "
             + "  ".join(f"N={n}: {x}x" for n, x in report["ceiling"].items())]
    for mode, shapes in report.get("step_shapes", {}).items():  # one step of four sequences against each alone
        lines.append(f"step of 4 sequences, {mode} batching: "
                     + "  ".join(f"[{name}] {x}x" for name, x in shapes.items()))
    lines.append(f"{'column':<24}{'clients':>8}{'tok/s':>9}{'req/s':>8}{'p50 s':>8}{'p95 s':>8}{'ttft s':>8}"
                 f"{'valid':>8}")
    for name, rows in report["columns"].items():
        for r in rows:
            ttft = "-" if r["ttft_p50_s"] is None else f"{r['ttft_p50_s']:.2f}"
            lines.append(f"{name:<24}{r['clients']:>8}{r['tok_per_s']:>9.1f}{r['req_per_s']:>8.2f}"
                         f"{r['latency_p50_s']:>8.2f}{r['latency_p95_s']:>8.2f}{ttft:>8}{100 * r['validity']:>7.0f}%")
    for name, t in report.get("targets", {}).items():
        if isinstance(t, dict):
            floor = f", floor {t['floor']}" if t.get("floor") else ""  # the least any batching could reach
            lines.append(f"target {name}: {t['measured']} (needed {t['needed']}{floor}): "
                         f"{'met' if t['met'] else 'missed'}")
    return "\n".join(lines)
