"""The `toolace` command: a thin click edge over the library. Library errors become one line and an exit code."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from toolace.edge import edge
from toolace.limits import DEFAULT_MAX_QUEUE, DEFAULT_MAX_TOKENS, DEFAULT_N_CTX, DEFAULT_SERVE_PARALLEL


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
    from toolace.grammars.schema import read_tools_file
    from toolace.grammars.toolset import build_toolset

    # Built once, before the model loads: bad tools or tool_choice fail fast, and the model reuses this set.
    toolset = build_toolset(read_tools_file(tools_file), tool_choice, not no_parallel)
    for warning in toolset.grammar.warnings:  # tools left out of the grammar: the others still work
        click.echo(f"warning: {warning}", err=True)
    ta = ToolACE.load(model, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, engine=engine)
    result = ta.call(question, toolset, max_tokens=max_tokens, temperature=temperature, seed=seed)
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
    from toolace.grammars.parser import looks_like_calls, parse_calls
    from toolace.grammars.schema import read_tools_file
    from toolace.grammars.toolset import build_toolset

    compiled = build_toolset(read_tools_file(tools_file), tool_choice, not no_parallel).grammar
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
@model_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Other than loopback needs --api-key.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--api-key", default=None, help="Require 'Authorization: Bearer KEY'.")
@click.option("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, show_default=True,
              help="Requests waiting + running; more get 429 with Retry-After.")
@click.option("--alias", "aliases", multiple=True, metavar="NAME",
              help="Another name /v1/models lists for the model (repeatable; any name is served anyway).")
@click.option("--parallel", type=int, default=DEFAULT_SERVE_PARALLEL, show_default=True,
              help="Requests decoded together (slots of --n-ctx tokens each); 1 = one at a time.")
@edge
def serve(model: str, n_ctx: int, n_gpu_layers: str, engine: str, host: str, port: int, api_key: str | None,
          max_queue: int, aliases: tuple[str, ...], parallel: int) -> None:
    """OpenAI-compatible server: /v1/chat/completions (tools enforced), /v1/completions, /v1/models, /health."""
    from toolace.serve.server import serve as run_server

    run_server(model=model, host=host, port=port, api_key=api_key, n_ctx=n_ctx, max_queue=max_queue,
               n_gpu_layers=n_gpu_layers, engine=engine, aliases=aliases, parallel=parallel)


def _register() -> None:
    """Verb modules define their own click commands; the CLI only gathers them."""
    from toolace.agent.cli import COMMANDS as AGENT  # run, chat: the tool loop
    from toolace.cli_convert import COMMANDS as CONVERT
    from toolace.eval.cli import COMMANDS as EVAL
    from toolace.serve.vllm.export import COMMANDS as EXPORT  # export vllm: scale-out (docs/scale-out.md)

    for command in (*CONVERT, *EVAL, *AGENT, *EXPORT):
        main.add_command(command)


_register()

if __name__ == "__main__":
    main()
