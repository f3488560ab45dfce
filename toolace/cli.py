"""The `toolace` command: a thin click edge over the library. Library errors become one line and an exit code."""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import click

from toolace.cli_options import batching_option, model_options, sampling_options
from toolace.edge import edge
from toolace.limits import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_REQUEST_TIMEOUT_SECONDS,
    DEFAULT_SERVE_PARALLEL,
    TOOL_CALL_SECONDS,
)

# Commands defined in other modules, by name. A verb's module is imported only when that verb runs (or --help lists
# the commands), so each command pays for its own imports only: `toolace grammar`, `list`, `show` and `rm` never
# load llama.cpp, and none of the command modules imports this one (their shared flags live in cli_options).
VERB_MODULES = {
    "chat": "toolace.agent.cli", "run": "toolace.agent.cli",
    "convert": "toolace.cli_convert", "info": "toolace.cli_convert", "quantize": "toolace.cli_convert",
    "list": "toolace.cli_models", "pull": "toolace.cli_models", "rm": "toolace.cli_models",
    "show": "toolace.cli_models",
    "bench": "toolace.eval.cli", "eval": "toolace.eval.cli", "imatrix": "toolace.eval.cli_imatrix",
    "export": "toolace.serve.vllm.export",
}


class VerbGroup(click.Group):
    """The main group: the commands defined here, plus VERB_MODULES' commands, each loaded when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *VERB_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in VERB_MODULES and cmd_name not in self.commands:
            module = importlib.import_module(VERB_MODULES[cmd_name])
            return next(c for c in module.COMMANDS if c.name == cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=VerbGroup)
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
def call(question: str, tools_file: str, model: str, n_ctx: int, n_gpu_layers: str, engine: str,
         cache_max_bytes: int | None, kv_type: str, speculative: bool, tool_choice: str, max_tokens: int,
         temperature: float, seed: int | None, no_parallel: bool, as_json: bool) -> None:
    """Ask QUESTION with the functions in --tools; print the (guaranteed valid) calls or the text answer."""
    from toolace.api import ToolACE
    from toolace.grammars.schema import read_tools_file
    from toolace.grammars.toolset import build_toolset

    # Built once, before the model loads: bad tools or tool_choice fail fast, and the model reuses this set.
    toolset = build_toolset(read_tools_file(tools_file), tool_choice, not no_parallel)
    for warning in toolset.grammar.warnings:  # tools left out of the grammar: the others still work
        click.echo(f"warning: {warning}", err=True)
    ta = ToolACE.load(model, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, engine=engine, cache_max_bytes=cache_max_bytes,
                      kv_type=kv_type, speculative=speculative)
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
@click.option("--port", type=int, default=8000, show_default=True, help="0 picks a free port.")
@click.option("--ready-file", default=None, type=click.Path(dir_okay=False),
              help="Once ready, also write the JSON line {url, pid, model} printed on stdout here.")
@click.option("--parent-pid", type=int, default=None, help="Exit when this process is gone (a host app's own pid).")
@click.option("--api-key", default=None, help="Require 'Authorization: Bearer KEY' (visible in `ps`: prefer "
              "--api-key-file or $TOOLACE_API_KEY).")
@click.option("--api-key-file", default=None, type=click.Path(dir_okay=False),
              help="Read the API key from the first line of this file.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Another Host name to answer besides loopback names and --host (repeatable; against DNS "
                   "rebinding every other name gets 403).")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="A web origin (scheme://host[:port], or '*') whose pages may call this server (repeatable); "
                   "requests from any other site's page get 403.")
@click.option("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_SECONDS, show_default=True,
              help="Seconds one request may take, queue wait included; then 504.")
@click.option("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, show_default=True,
              help="Requests waiting + running; more get 429 with Retry-After.")
@click.option("--alias", "aliases", multiple=True, metavar="NAME",
              help="Another name /v1/models lists for the model (repeatable; any name is served anyway).")
@click.option("--parallel", type=int, default=DEFAULT_SERVE_PARALLEL, show_default=True,
              help="Requests decoded together (slots of --n-ctx tokens each); 1 = one at a time.")
@batching_option
@click.option("--mcp", "mcp_config", default=None, type=click.Path(dir_okay=False),
              help='Tools the page runs: MCP config {"mcpServers": {name: {command, args, env, cwd}}}.')
@click.option("--functions", "functions_file", default=None, type=click.Path(dir_okay=False),
              help="Tools the page runs: a Python file (its TOOLS list, or its public functions).")
@click.option("--tools", "tools_file", default=None, type=click.Path(dir_okay=False),
              help="Tools the page offers without code: a JSON tools file (you type each result).")
@click.option("--yes", is_flag=True, help="Run every tool call without asking for approval on the page.")
@click.option("--call-timeout", type=float, default=TOOL_CALL_SECONDS, show_default=True,
              help="Seconds one tool call may run.")
@edge
def serve(**kwargs: Any) -> None:
    """Local server: OpenAI's /v1/chat/completions (tools enforced), /v1/responses, /v1/completions; Anthropic's
    /v1/messages; Ollama's /api/*; /health, /slots; a page at / that runs --mcp/--functions tools after your
    approval (docs/page.md). Prints one JSON line {url, pid, model} once ready: open the url."""
    from toolace.serve.server import serve as run_server

    run_server(**kwargs)


if __name__ == "__main__":
    main()
