"""`toolace run` and `toolace chat`: the tool loop at the command line. Thin: flags go to toolace.agent.run; library
errors become one line and SIGTERM unwinds like Ctrl-C, closing the MCP servers (the `edge` helper). Tools act on
the user's machine, so without --yes each call is shown and runs only after a `y`. toolace/cli.py loads COMMANDS
by name when one of them runs; this module imports only the shared flags (toolace/cli_options.py), never the CLI."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from toolace.cli_options import model_options, sampling_options
from toolace.edge import edge, prompt
from toolace.limits import DEFAULT_MAX_STEPS, TOOL_CALL_SECONDS

if TYPE_CHECKING:  # annotations only: the loop (and pydantic, the MCP SDK) load when a command runs
    from .loop import Approval, Step
    from .tools import ExecutableTool

SHOWN_RESULT_CHARS = 300  # characters of a result echoed to the terminal (the model gets up to its own limit)


def source_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--tools", "tools_file", default=None, type=click.Path(dir_okay=False),
                     help="JSON tools file (no code: you type each result)."),
        click.option("--functions", "functions_file", default=None, type=click.Path(dir_okay=False),
                     help="Python file: its TOOLS list, or its public functions, are the tools."),
        click.option("--mcp", "mcp_config", default=None, type=click.Path(dir_okay=False),
                     help='MCP config: {"mcpServers": {name: {command, args, env, cwd}}}.'),
        click.option("--max-steps", type=int, default=DEFAULT_MAX_STEPS, show_default=True,
                     help="Model turns that call tools before the run stops."),
        click.option("--yes", is_flag=True, help="Run every call without asking."),
        click.option("--call-timeout", type=float, default=TOOL_CALL_SECONDS, show_default=True,
                     help="Seconds one call may run."),
    ]):
        fn = opt(fn)
    return fn


def show_call(call: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in call["arguments"].items())
    return f"{call['name']}({args})"


def _hooks(tools: list[ExecutableTool], yes: bool) -> tuple[Callable[[dict], Approval], Callable[[dict], str]]:
    by_name = {t.name: t for t in tools}

    def approve(call: dict[str, Any]) -> Approval:
        tool = by_name.get(call["name"])
        if yes or tool is None or tool.execute is None:  # no code to run: the user types the result anyway
            return True
        where = f" [{tool.source}]" if tool.source != "python" else ""
        click.echo(f"call {show_call(call)}{where}", err=True)
        try:
            answer = prompt("run it? (y = yes, n = skip it, q = stop)", choices=["y", "n", "q"])
        except click.Abort:  # end of input: nobody is there to approve
            return "stop"
        return True if answer == "y" else "stop" if answer == "q" else False

    def ask(call: dict[str, Any]) -> str:
        try:
            return prompt(f"result of {show_call(call)}", suffix="> ")
        except click.Abort:
            return "error: no result was given"

    return approve, ask


def _echo_step(step: Step) -> None:
    for call, result in zip(step.calls, step.results, strict=True):
        text = result["content"]
        shown = text if len(text) <= SHOWN_RESULT_CHARS else text[:SHOWN_RESULT_CHARS] + " ..."
        click.echo(f"call {show_call(call)}")
        click.echo(f"  {'error' if result['is_error'] else 'result'}: {shown}")


def _options(max_tokens: int, temperature: float, seed: int | None, no_parallel: bool,
             call_timeout: float) -> dict[str, Any]:
    return {"max_tokens": max_tokens, "temperature": temperature, "seed": seed,
            "parallel_tool_calls": not no_parallel, "call_timeout": call_timeout}


@click.command("run")
@click.argument("question")
@source_options
@model_options
@sampling_options
@click.option("--json", "as_json", is_flag=True, help="Print the RunResult as one JSON object.")
@edge
def run(question: str, tools_file: str | None, functions_file: str | None, mcp_config: str | None, max_steps: int,
        yes: bool, call_timeout: float, model: str, n_ctx: int, n_gpu_layers: str, engine: str,
        cache_max_bytes: int | None, kv_type: str, speculative: bool, tool_choice: str, max_tokens: int,
        temperature: float, seed: int | None, no_parallel: bool, as_json: bool) -> None:
    """Ask QUESTION; run the calls the model makes, feed the results back, until it answers."""
    from toolace.api import ToolACE

    from .loop import run as run_loop
    from .sources import tool_sources

    if not (tools_file or functions_file or mcp_config):
        raise click.UsageError("give at least one tool source: --tools, --functions or --mcp")
    with tool_sources(tools_file, functions_file, mcp_config) as (tools, warnings):
        for w in warnings:
            click.echo(f"warning: {w}", err=True)
        ta = ToolACE.load(model, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, engine=engine,
                          cache_max_bytes=cache_max_bytes, kv_type=kv_type,
                          speculative=speculative)
        approve, ask = _hooks(tools, yes)
        result = run_loop(ta, question, tools, tool_choice, max_steps, approve, ask=ask,
                          on_step=None if as_json else _echo_step,
                          **_options(max_tokens, temperature, seed, no_parallel, call_timeout))
    if as_json:
        click.echo(json.dumps(result.as_dict(), ensure_ascii=False))
    elif result.answer is not None:
        click.echo(result.answer)
    if result.finish_reason != "answer":
        why = {"max_steps": f"the model was still calling tools after {max_steps} step(s) (--max-steps)",
               "length": "the answer was cut by --max-tokens, or where it began to repeat itself",
               "refused": "stopped at an approval prompt"}
        click.echo(f"run ended without a complete answer: {why[result.finish_reason]}", err=True)
        sys.exit(1)


@click.command("chat")
@source_options
@model_options
@sampling_options
@edge
def chat(tools_file: str | None, functions_file: str | None, mcp_config: str | None, max_steps: int, yes: bool,
         call_timeout: float, model: str, n_ctx: int, n_gpu_layers: str, engine: str, cache_max_bytes: int | None,
         kv_type: str, speculative: bool, tool_choice: str, max_tokens: int, temperature: float, seed: int | None,
         no_parallel: bool) -> None:
    """Interactive chat. Calls to --functions/--mcp tools run (after your `y`); for --tools you type the result."""
    from toolace.api import ToolACE

    from .loop import run as run_loop
    from .sources import tool_sources

    options = _options(max_tokens, temperature, seed, no_parallel, call_timeout)
    with tool_sources(tools_file, functions_file, mcp_config) as (tools, warnings):
        for w in warnings:
            click.echo(f"warning: {w}", err=True)
        ta = ToolACE.load(model, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, engine=engine,
                          cache_max_bytes=cache_max_bytes, kv_type=kv_type,
                          speculative=speculative)
        approve, ask = _hooks(tools, yes)
        history: list[dict[str, Any]] = []
        click.echo("toolace chat: empty line or Ctrl-D quits.")
        while True:
            question = prompt("you", default="", suffix="> ", err=False)
            if not question.strip():
                return
            history.append({"role": "user", "content": question})
            if not tools:
                options_plain = {k: v for k, v in options.items() if k not in ("call_timeout", "parallel_tool_calls")}
                reply = ta.chat(history, None, **options_plain)
                history.append({"role": "assistant", "content": reply.text or ""})
                click.echo(f"assistant> {reply.text or ''}")
                continue
            result = run_loop(ta, history, tools, tool_choice, max_steps, approve, ask=ask, on_step=_echo_step,
                              **options)
            history = result.messages
            click.echo(f"assistant> {result.answer or ''}")
            if result.finish_reason != "answer":
                click.echo(f"(no complete answer: {result.finish_reason})", err=True)


COMMANDS = (run, chat)
