"""The `toolace` command: a thin click edge over the library. Library errors become one line and an exit code."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from toolace.errors import ToolaceError
from toolace.limits import DEFAULT_MAX_TOKENS, DEFAULT_N_CTX


def edge(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn ToolaceError into click's one-line error with the error's exit code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ToolaceError as e:
            exc = click.ClickException(str(e))
            exc.exit_code = e.exit_code
            raise exc from None

    return wrapper


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flags shared by every command that loads a model (they equal ToolACE.load's parameters)."""
    for opt in reversed([
        click.option("--model", "model", default="demo", show_default=True,
                     help="GGUF path, 'demo' (bundled SmolLM2), or a name from `toolace pull`."),
        click.option("--n-ctx", type=int, default=DEFAULT_N_CTX, show_default=True, help="Context size in tokens."),
        click.option("--n-gpu-layers", default="auto", show_default=True, help="'auto' offloads all layers "
                     "when llama.cpp was built with CUDA/Metal; an integer sets it."),
        click.option("--engine", type=click.Choice(["llguidance", "llama"]), default="llguidance",
                     show_default=True, help="Grammar engine."),
    ]):
        fn = opt(fn)
    return fn


def sampling_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--tool-choice", default="auto", show_default=True,
                     help="auto | required | none | a function name."),
        click.option("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, show_default=True),
        click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy."),
        click.option("--seed", type=int, default=None),
        click.option("--no-parallel", is_flag=True, help="At most one call per turn."),
    ]):
        fn = opt(fn)
    return fn


@click.group()
@click.version_option(package_name="toolace")
def main() -> None:
    """toolace: ToolACE-8B on your laptop, offline, with every function call guaranteed valid."""


def print_result(result: Any) -> None:
    if result.calls:
        click.echo(result.raw)
        for n, call in enumerate(result.calls, 1):
            click.echo(f"call {n}: {call['name']}")
            for key, value in call["arguments"].items():
                click.echo(f"  {key} = {json.dumps(value, ensure_ascii=False)}")
    else:
        click.echo(result.text or "")
    if result.errors:
        for err in result.errors:
            click.echo(f"invalid: {err}", err=True)
    else:
        click.echo(f"valid: yes ({result.finish_reason})" if result.calls else f"({result.finish_reason})")


@main.command()
@click.argument("question")
@click.option("--tools", "tools_file", required=True, type=click.Path(dir_okay=False), help="JSON tools file.")
@model_options
@sampling_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@edge
def call(question: str, tools_file: str, model: str, n_ctx: int, n_gpu_layers: str, engine: str, tool_choice: str,
         max_tokens: int, temperature: float, seed: int | None, no_parallel: bool, as_json: bool) -> None:
    """Ask QUESTION with the functions in --tools; print the (guaranteed valid) calls or the text answer."""
    from toolace.api import ToolACE
    from toolace.grammars.compile import compile_grammar
    from toolace.grammars.schema import load_tools

    tools = load_tools(tools_file)
    compile_grammar(tools, tool_choice, not no_parallel)  # bad tools or tool_choice fail before the model loads
    ta = ToolACE.load(model, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, engine=engine)
    result = ta.call(question, tools, tool_choice, max_tokens=max_tokens, temperature=temperature, seed=seed,
                     parallel_tool_calls=not no_parallel)
    if as_json:
        click.echo(json.dumps(result.as_dict(), ensure_ascii=False))
    else:
        print_result(result)
    if result.errors:
        sys.exit(1)


@main.command()
@click.option("--tools", "tools_file", required=True, type=click.Path(dir_okay=False), help="JSON tools file.")
@click.option("--tool-choice", default="auto", show_default=True, help="auto | required | none | a function name.")
@click.option("--no-parallel", is_flag=True, help="At most one call per turn.")
@click.option("--check", "check", default=None, help="Exit 0 if TEXT is in the language (prints the calls), else 1.")
@edge
def grammar(tools_file: str, tool_choice: str, no_parallel: bool, check: str | None) -> None:
    """Print the GBNF grammar for a tools file, or --check whether a text is in its language."""
    from toolace.grammars.check import check_text
    from toolace.grammars.compile import compile_grammar
    from toolace.grammars.parser import looks_like_calls, parse_calls
    from toolace.grammars.schema import load_tools

    compiled = compile_grammar(load_tools(tools_file), tool_choice, not no_parallel)
    if check is None:
        click.echo(compiled.annotated(), nl=False)
        return
    verdict = check_text(compiled.gbnf, check)
    if not verdict.ok:
        click.echo(f"not in the language: {verdict.where(check)}", err=True)
        sys.exit(1)
    if looks_like_calls(check):
        calls = parse_calls(check, compiled.tools)
        errors = compiled.validator.errors(calls)
        click.echo(json.dumps([c.as_dict() for c in calls], ensure_ascii=False))
        for err in errors:  # only keywords the grammar post-checks can fail here
            click.echo(f"post-check failed: {err}", err=True)
        if errors:
            sys.exit(1)
    else:
        click.echo(json.dumps({"text": check}, ensure_ascii=False))


@main.command()
@click.option("--tools", "tools_file", default=None, type=click.Path(dir_okay=False), help="JSON tools file.")
@model_options
@sampling_options
@edge
def chat(tools_file: str | None, model: str, n_ctx: int, n_gpu_layers: str, engine: str, tool_choice: str,
         max_tokens: int, temperature: float, seed: int | None, no_parallel: bool) -> None:
    """Interactive chat: shows each call the model makes and asks you for the tool's result."""
    from toolace.api import ToolACE
    from toolace.grammars.schema import load_tools

    tools = load_tools(tools_file) if tools_file else None
    ta = ToolACE.load(model, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, engine=engine)
    history: list[dict[str, Any]] = []
    options = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed,
               "parallel_tool_calls": not no_parallel}
    click.echo("toolace chat: empty line or Ctrl-D quits.")
    while True:
        question = click.prompt("you", default="", show_default=False, prompt_suffix="> ")
        if not question.strip():
            return
        history.append({"role": "user", "content": question})
        choice = tool_choice
        while True:
            result = ta.chat(history, tools, choice if tools else "auto", **options)
            if not result.calls:
                click.echo(f"assistant> {result.text or ''}")
                history.append({"role": "assistant", "content": result.raw})
                break
            print_result(result)
            history.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": cid, "type": "function",
                 "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                for cid, c in zip(result.call_ids, result.calls, strict=True)]})
            for cid, c in zip(result.call_ids, result.calls, strict=True):
                answer = click.prompt(f"result of {c['name']}", prompt_suffix="> ")
                history.append({"role": "tool", "tool_call_id": cid, "content": answer})
            choice = "auto"  # after tool results the model may answer in text


@main.command()
@model_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Other than loopback needs --api-key.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--api-key", default=None, help="Require 'Authorization: Bearer KEY'.")
@click.option("--max-queue", type=int, default=8, show_default=True, help="Requests waiting + running; more get 429.")
@edge
def serve(model: str, n_ctx: int, n_gpu_layers: str, engine: str, host: str, port: int, api_key: str | None,
          max_queue: int) -> None:
    """OpenAI-compatible server: /v1/chat/completions (tools enforced), /v1/completions, /v1/models, /health."""
    from toolace.runtime.server import serve as run_server

    run_server(model=model, host=host, port=port, api_key=api_key, n_ctx=n_ctx, max_queue=max_queue,
               n_gpu_layers=n_gpu_layers, engine=engine)


@main.group(invoke_without_command=True)
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
    from toolace.runtime.bench import bench as run_bench
    from toolace.runtime.bench import summary

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
    from toolace.convert.bench import bench_convert, summary

    click.echo(summary(bench_convert(src=src, outtype=outtype, quant=quant, json_out=json_out, workdir=workdir)))


def _register() -> None:
    """Verb modules define their own click commands; the CLI only gathers them."""
    from toolace.convert.cli import COMMANDS
    from toolace.runtime.evaluate import eval_cmd

    for command in (*COMMANDS, eval_cmd):
        main.add_command(command)


_register()

if __name__ == "__main__":
    main()
