"""Click commands for evaluation and benchmarks: `eval` and `bench` (with `bench convert`, `serve`, `soak`,
`quants`). Thin: flags pass straight to the library functions of the same names; toolace/cli.py registers them."""

from __future__ import annotations

from typing import Any

import click

from toolace.cli_options import batching_option
from toolace.edge import edge
from toolace.limits import DEFAULT_N_CTX, IMATRIX_DEFAULT_LIMIT

from .defaults import (
    DATA_ENV,
    DEFAULT_CATEGORIES,
    EVAL_MAX_TOKENS,
    QUANTS_DEFAULT_HELD_ASIDE,
    QUANTS_DEFAULT_QUESTIONS,
    QUANTS_DEFAULT_TYPES,
    TOOL_CHOICE_MODES,
)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:5.1f}%"


def print_eval_table(report: dict[str, Any]) -> None:
    click.echo(f"model {report['model']}  tool_choice: {report['tool_choice_note']}  max_tokens {report['max_tokens']}")
    click.echo(f"{'category':<20}{'n':>5}{'accuracy':>10}{'validity':>10}{'cut':>5}{'mean s':>8}{'median s':>9}")
    for name, s in [*report["categories"].items(), ("overall", report["overall"])]:
        click.echo(f"{name:<20}{s['n']:>5}{_pct(s['accuracy']):>10}{_pct(s['validity']):>10}"
                   f"{s['cut_by_max_tokens']:>5}{s['latency_mean_s']:>8.2f}{s['latency_median_s']:>9.2f}")


def print_compare_table(report: dict[str, Any]) -> None:
    click.echo(f"A {report['a']}  vs  B {report['b']}  ({report['questions']} questions)")
    for cat, frac in report["call_agreement"].items():
        click.echo(f"  call agreement {cat:<20}{_pct(frac)}")
    click.echo(f"  call agreement {'overall':<20}{_pct(report['call_agreement_overall'])}")
    tok = report["token"]
    kl = "-" if tok["kl_mean"] is None else f"{tok['kl_mean']:.5f} (max {tok['kl_max']:.5f})"
    click.echo(f"  token level: {tok['transcripts']} transcripts, {tok['positions']} positions, KL(A||B) mean {kl}, "
               f"top-1 agreement {_pct(tok['top1_agreement'])}")


@click.command("eval")
@click.option("--model", default="demo", show_default=True, help="GGUF path, 'demo', or a pulled name.")
@click.option("--data", default=None, type=click.Path(file_okay=False),
              help=f"BFCL data folder (default: ${DATA_ENV}, else TOOLACE_HOME/bfcl).")
@click.option("--categories", default=DEFAULT_CATEGORIES, show_default=True, help="Comma-separated BFCL categories.")
@click.option("--limit", type=int, default=None, help="Questions per category (the first N).")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Write the report here.")
@click.option("--tool-choice", type=click.Choice(TOOL_CHOICE_MODES), default="category", show_default=True,
              help="category: required for call categories, auto for irrelevance; auto: auto everywhere.")
@click.option("--max-tokens", type=int, default=EVAL_MAX_TOKENS, show_default=True)
@click.option("--full-text", is_flag=True, help="Generate text answers to the end (slower, same scores).")
@click.option("--compare", nargs=2, default=None, metavar="A B", help="Compare two GGUF quantizations instead.")
@click.option("--parallel", type=int, default=1, show_default=True, help="Questions decoded together (slots).")
@batching_option
@edge
def eval_cmd(model: str, data: str | None, categories: str, limit: int | None, json_out: str | None,
             tool_choice: str, max_tokens: int, full_text: bool, compare: tuple[str, str] | None,
             parallel: int, batching: str) -> None:
    """Score a model on any BFCL v4 category file (accuracy, validity, latency), or --compare A B for quantization
    agreement."""
    from toolace.eval.evaluate import compare as run_compare
    from toolace.eval.evaluate import evaluate

    if compare:
        print_compare_table(run_compare(compare[0], compare[1], data=data, categories=categories, limit=limit,
                                        json_out=json_out, tool_choice=tool_choice, max_tokens=max_tokens))
    else:
        print_eval_table(evaluate(model, data=data, categories=categories, limit=limit, json_out=json_out,
                                  tool_choice=tool_choice, max_tokens=max_tokens, full_text=full_text,
                                  parallel=parallel, batching=batching))


@click.group("bench", invoke_without_command=True)
@click.option("--model", default="demo", show_default=True, help="GGUF path, 'demo', or a pulled name.")
@click.option("--data", default=None, type=click.Path(file_okay=False), help="BFCL data folder (for the call).")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Write the report here.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Write a PNG chart here.")
@click.option("--runs", type=int, default=3, show_default=True, help="Repetitions per figure.")
@click.option("--max-tokens", type=int, default=48, show_default=True)
@click.option("--n-ctx", type=int, default=DEFAULT_N_CTX, show_default=True)
@click.option("--threads", type=int, default=None,
              help="llama.cpp threads (default: all usable cores up to 4, else half).")
@click.pass_context
@edge
def bench(ctx: click.Context, model: str, data: str | None, json_out: str | None, plot: str | None, runs: int,
          max_tokens: int, n_ctx: int, threads: int | None) -> None:
    """Runtime benchmark: grammar cost per token per engine, e2e ratio, TTFT cold/warm/disk, speeds, RSS.
    `bench convert SRC` measures conversion instead."""
    if ctx.invoked_subcommand is not None:
        return
    from toolace.eval.bench import bench as run_bench
    from toolace.eval.bench import summary

    click.echo(summary(run_bench(model=model, data=data, json_out=json_out, plot=plot, runs=runs,
                                 max_tokens=max_tokens, n_ctx=n_ctx, threads=threads)))


@bench.command("convert")
@click.argument("src")
@click.option("--outtype", default="f16", show_default=True, help="Float type to convert to: f32, f16 or bf16.")
@click.option("--quant", default="Q4_K_M", show_default=True, help="llama.cpp type to quantize that output to.")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Write the report here.")
@click.option("--workdir", default=None, type=click.Path(file_okay=False),
              help="Where the temporary outputs go (default: the system's temp folder).")
@edge
def bench_convert_cmd(src: str, outtype: str, quant: str, json_out: str | None, workdir: str | None) -> None:
    """Conversion benchmark: convert and quantize time, MB/s against copying the same bytes, peak RSS."""
    from toolace.eval.bench_convert import bench_convert, summary

    click.echo(summary(bench_convert(src=src, outtype=outtype, quant=quant, json_out=json_out, workdir=workdir)))


@bench.command("serve")
@click.option("--model", default="demo", show_default=True, help="GGUF path, 'demo', or a pulled name.")
@click.option("--data", default=None, type=click.Path(file_okay=False), help="BFCL data folder (the requests).")
@click.option("--n-ctx", type=int, default=2048, show_default=True, help="Context per slot.")
@click.option("--max-tokens", type=int, default=128, show_default=True)
@click.option("--llama-server", default=None, type=click.Path(dir_okay=False, exists=True),
              help="A llama-server binary (`make llama-server`) for its column.")
@click.option("--vllm-url", default=None, help="A running vLLM with the toolace export (serve.sh), for its column.")
@click.option("--vllm-export", default=None, type=click.Path(file_okay=False, exists=True),
              help="Or a `toolace export vllm` folder: its serve.sh is started for the vLLM column only.")
@click.option("--vllm-args", default="", help="Extra arguments for that serve.sh (e.g. '--enforce-eager').")
@click.option("--vllm-only", is_flag=True, help="Only the vLLM columns (with --vllm-export: guard on and off).")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Write the report here.")
@click.option("--logs", default=None, type=click.Path(file_okay=False), help="Folder for the servers' logs.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Write a PNG of the columns here.")
@edge
def bench_serve_cmd(model: str, data: str | None, n_ctx: int, max_tokens: int, llama_server: str | None,
                    vllm_url: str | None, vllm_export: str | None, vllm_args: str, vllm_only: bool,
                    json_out: str | None, logs: str | None, plot: str | None) -> None:
    """Concurrent clients (1, 2, 4, 8) through real HTTP servers: toolace --parallel N and 1, llama-server -np N,
    vLLM (from an export: also without its budget guard, at 1 and 4 clients, for the guard's cost); tok/s, req/s,
    latency, TTFT, validity."""
    from toolace.eval.bench_serve import bench_serve
    from toolace.eval.bench_serve_report import summary

    click.echo(summary(bench_serve(model=model, data=data, n_ctx=n_ctx, max_tokens=max_tokens,
                                   llama_server=llama_server, vllm_url=vllm_url, vllm_export=vllm_export,
                                   vllm_args=vllm_args, json_out=json_out, logs=logs, plot=plot,
                                   vllm_only=vllm_only)))


@bench.command("quants")
@click.argument("src")
@click.option("--types", default=",".join(QUANTS_DEFAULT_TYPES), show_default=True,
              help="Comma-separated llama.cpp types; TYPE+fc / TYPE+generic quantize with that importance matrix.")
@click.option("--data", default=None, type=click.Path(file_okay=False), help="BFCL data folder.")
@click.option("--limit", type=int, default=QUANTS_DEFAULT_QUESTIONS, show_default=True,
              help="BFCL questions per category for the call columns (from the files' ends).")
@click.option("--held-aside", type=int, default=QUANTS_DEFAULT_HELD_ASIDE, show_default=True,
              help="Call transcripts for KL and top-1 (from the files' ends, disjoint from calibration).")
@click.option("--calibration", type=int, default=IMATRIX_DEFAULT_LIMIT, show_default=True,
              help="Transcripts for the function-calling imatrix (from the files' starts).")
@click.option("--max-tokens", type=int, default=EVAL_MAX_TOKENS, show_default=True, help="Per BFCL question.")
@click.option("--generic-text", default=None, type=click.Path(dir_okay=False),
              help="Text file for the +generic imatrix (default: the Python standard library's docstrings).")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Write the report here.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Write a size-vs-KL PNG here.")
@click.option("--workdir", default=None, type=click.Path(file_okay=False),
              help="Where the reference and the quants are made (default: the system's temp folder).")
@edge
def bench_quants_cmd(**kwargs: Any) -> None:
    """Per-quant evidence from one unquantized SRC (checkpoint folder or float GGUF): size, KL and top-1 against
    the reference on held-aside call transcripts, call agreement, flips, validity, tokens/s, peak RSS."""
    from toolace.eval.bench_quants import bench_quants, summary

    click.echo(summary(bench_quants(**kwargs)))


@bench.command("soak")
@click.option("--model", default="demo", show_default=True, help="GGUF path, 'demo', or a pulled name.")
@click.option("--minutes", type=float, default=5.0, show_default=True, help="How long the clients run.")
@click.option("--clients", type=int, default=16, show_default=True, help="Concurrent client threads.")
@click.option("--parallel", type=int, default=4, show_default=True, help="The server's slots.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the scenario mix.")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Write the report here.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Write a PNG of RSS over time here.")
@click.option("--logs", default=None, type=click.Path(file_okay=False), help="Folder for the server's log.")
@edge
def bench_soak_cmd(**kwargs: Any) -> None:
    """A real server under valid, malformed, slow, disconnecting and cross-origin clients on loopback, for a bounded
    time: outcomes, latency, RSS over time, slots and queue at the end. Exits 1 when a check fails."""
    from toolace.eval.bench_soak import bench_soak, summary

    report = bench_soak(**kwargs)
    click.echo(summary(report))
    if not report["checks"]["pass"]:
        raise SystemExit(1)


COMMANDS = (eval_cmd, bench)
