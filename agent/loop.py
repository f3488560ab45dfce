"""The assistant loop: ask the model, run the calls it makes, feed the results back, until it answers.

Each step is one model turn under the tools' grammar. The calls of a step run at once (one worker thread each, at
most MAX_TOOL_WORKERS), each bounded by its own time limit; their results go back as tool messages in call order,
so the conversation reads as the model wrote it. Faults are results: a tool that raises, times out, returns too
much or whose server died gives the model an error text, and the loop goes on (docs/agent.md). A call that breaks
its schema (a keyword the grammar could only post-check) is never run: the model gets the violations instead.

`on_event` sees the run as it happens (streamed text, each turn's figures, each call with its checks, each result):
the server's page and `toolace run` share this one path from call to approval to result to answer. `cancel` stops
it: the current turn before its next token, a pending approval at once (the caller's hook watches it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from toolace.errors import InputError
from toolace.grammars.toolset import build_toolset
from toolace.limits import (
    DEFAULT_MAX_STEPS,
    MAX_STEPS,
    MAX_TOOL_RESULT_CHARS,
    MAX_TOOL_WORKERS,
    TOOL_CALL_GRACE_SECONDS,
    TOOL_CALL_SECONDS,
)

from .tools import ExecutableTool, ToolOutput, arguments_json, as_tools, error_text

if TYPE_CHECKING:
    from toolace.api import ToolACE
    from toolace.surface import CallResult

Approval = bool | Literal["stop"]  # True: run it; False: skip it, the model is told; "stop": end the run (refused)
DECLINED = "error: the user declined this call; it was not run"
STOPPED = "error: the user stopped the run; this call was not run"
TRUNCATED = "error: a value in this call was cut short to fit max_tokens; it was not run"
INVALID = "error: this call breaks the tool's schema; it was not run: "  # + each violation, naming its keyword
CHECKED = ("decoded under the grammar of the tools' schemas, parsed, and checked against the tool's JSON Schema "
           "(keywords a grammar cannot express included)")
Event = dict[str, Any]  # {"type": "text" | "turn" | "call" | "result", ...}: docs/agent.md, "Events"


@dataclass
class Step:
    """One model turn that made calls, and what came of them."""

    calls: list[dict[str, Any]]  # {"id", "name", "arguments"}
    results: list[dict[str, Any]] = field(default_factory=list)  # {"id", "name", "content", "is_error", "seconds"}
    errors: list[str] = field(default_factory=list)  # post-decoding schema checks the turn's calls failed
    seconds: float = 0.0  # the model turn plus its calls

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "results": self.results, "errors": self.errors, "seconds": round(self.seconds, 3)}


@dataclass
class RunResult:
    """What a run produced: the answer (None if there is none), its steps, the whole conversation and why it ended:
    answer | max_steps | length (a turn hit max_tokens) | refused (the user stopped it at an approval) | cancelled
    (the caller's `cancel` was set)."""

    answer: str | None
    steps: list[Step]
    messages: list[dict[str, Any]]
    finish_reason: str

    def as_dict(self, messages: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"answer": self.answer, "steps": [s.as_dict() for s in self.steps],
                               "finish_reason": self.finish_reason}
        if messages:
            out["messages"] = self.messages
        return out


def cut(text: str, limit: int) -> str:
    """At most `limit` characters, with a note the model reads when something was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[toolace: result cut to its first {limit} of {len(text)} characters]"


def _start(messages: str | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        if not messages.strip():
            raise InputError("question must be a non-empty string")
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, (list, tuple)) or not messages or not all(isinstance(m, dict) for m in messages):
        raise InputError("messages must be a non-empty list of message objects")
    return [dict(m) for m in messages]


class _Worker:
    """One call on its own daemon thread: a tool that never returns cannot keep the process alive at exit."""

    def __init__(self, tool: ExecutableTool, arguments: dict[str, Any], timeout: float) -> None:
        self.output: ToolOutput | None = None
        self.seconds = 0.0
        self.done = threading.Event()
        self.timeout = timeout
        self.thread = threading.Thread(target=self._run, args=(tool, arguments), daemon=True,
                                       name=f"toolace-tool-{tool.name}")

    def _run(self, tool: ExecutableTool, arguments: dict[str, Any]) -> None:
        start = time.monotonic()
        try:
            assert tool.execute is not None
            self.output = tool.execute(arguments, self.timeout)
        except Exception as e:  # a tool's fault is the model's result, not our crash
            self.output = ToolOutput(error_text(e), True)
        finally:
            self.seconds = time.monotonic() - start
            self.done.set()

    def wait(self, name: str, deadline: float) -> tuple[ToolOutput, float]:
        if not self.done.wait(max(0.0, deadline - time.monotonic())) or self.output is None:
            return ToolOutput(f"error: {name} did not finish within {self.timeout:g} s; it was abandoned", True), \
                self.timeout
        return self.output, self.seconds


def _run_calls(jobs: list[tuple[int, ExecutableTool, dict[str, Any]]], timeout: float,
               outputs: dict[int, tuple[ToolOutput, float]]) -> None:
    """Run the approved calls that have code: concurrent ones together (in batches), the others one by one."""
    together = [j for j in jobs if j[1].concurrent]
    alone = [[j] for j in jobs if not j[1].concurrent]
    batches = [together[i:i + MAX_TOOL_WORKERS] for i in range(0, len(together), MAX_TOOL_WORKERS)] + alone
    for batch in batches:
        workers = [(i, tool, _Worker(tool, args, timeout)) for i, tool, args in batch]
        for _, _, w in workers:
            w.thread.start()
        deadline = time.monotonic() + timeout + TOOL_CALL_GRACE_SECONDS  # one clock for the batch: they run at once
        for i, tool, w in workers:
            outputs[i] = w.wait(tool.name, deadline)


def _execute(calls: list[dict[str, Any]], tools: dict[str, ExecutableTool], approve: Callable[[dict], Approval] | None,
             ask: Callable[[dict], str] | None, timeout: float,
             invalid: dict[int, list[str]] | None = None) -> tuple[list[tuple[ToolOutput, float]], bool]:
    """Outputs in call order, and whether the user stopped the run. `invalid`: the violations of calls that failed
    the schema check, by index; those are never run (nor shown for approval), the model gets the violations."""
    outputs: dict[int, tuple[ToolOutput, float]] = {}
    jobs: list[tuple[int, ExecutableTool, dict[str, Any]]] = []
    stopped = False
    for i, call in enumerate(calls):
        tool = tools.get(call["name"])
        if invalid and invalid.get(i):
            outputs[i] = (ToolOutput(INVALID + "; ".join(invalid[i]), True), 0.0)
            continue
        verdict: Approval = "stop" if stopped else (approve(call) if approve else True)
        if verdict == "stop":
            stopped = True
            outputs[i] = (ToolOutput(STOPPED, True), 0.0)
        elif not verdict:
            outputs[i] = (ToolOutput(DECLINED, True), 0.0)
        elif tool is None:  # the grammar admits only listed names: a safety net, not a path
            outputs[i] = (ToolOutput(f"error: no tool named {call['name']!r}", True), 0.0)
        elif tool.execute is None:
            start = time.monotonic()
            text = ask(call) if ask else f"error: {call['name']} has no code to run here"
            outputs[i] = (ToolOutput(text, ask is None), time.monotonic() - start)
        else:
            jobs.append((i, tool, call["arguments"]))
    _run_calls(jobs, timeout, outputs)
    return [outputs[i] for i in range(len(calls))], stopped


def _feedback(output: ToolOutput, limit: int) -> str:
    text = cut(output.content, limit)
    if output.is_error and not text.lower().startswith("error"):
        text = f"error: {text}"  # the model sees only text: say it failed
    return text


def stream_turn(ta: Any, messages: list[dict[str, Any]], toolset: Any, options: dict[str, Any],
                on_event: Callable[[Event], None] | None = None,
                cancel: threading.Event | None = None) -> CallResult | None:
    """One model turn; its text is handed to `on_event` as it comes, then the turn's figures. None when `cancel`
    stopped it (the stream ends without a result)."""
    if on_event is None and cancel is None:
        return ta.chat(messages, toolset, **options)
    result = None
    extra = {} if cancel is None else {"cancel": cancel}
    for ev in ta.stream(messages, toolset, **options, **extra):
        if ev.kind == "text" and on_event is not None:
            on_event({"type": "text", "text": ev.text})
        elif ev.kind == "done":
            result = ev.result
    if result is not None and on_event is not None:
        on_event(turn_event(result))
    return result


def turn_event(result: CallResult) -> Event:
    """A turn's figures as the page shows them: time to first token and decode speed."""
    st = result.stats
    speed = st.completion_tokens / st.decode_seconds if st.decode_seconds > 0 else None
    return {"type": "turn", "calls": len(result.calls), "finish_reason": result.finish_reason,
            "prompt_tokens": st.prompt_tokens, "completion_tokens": st.completion_tokens,
            "ttft_s": round(st.first_token_seconds, 4), "tokens_per_s": None if speed is None else round(speed, 2)}


def run(ta: ToolACE, question_or_messages: str | Sequence[dict[str, Any]], tools: Sequence[Any],
        tool_choice: Any = "auto", max_steps: int = DEFAULT_MAX_STEPS,
        approve: Callable[[dict[str, Any]], Approval] | None = None, *,
        ask: Callable[[dict[str, Any]], str] | None = None, on_step: Callable[[Step], None] | None = None,
        call_timeout: float = TOOL_CALL_SECONDS, max_result_chars: int = MAX_TOOL_RESULT_CHARS,
        parallel_tool_calls: bool = True, on_event: Callable[[Event], None] | None = None,
        cancel: threading.Event | None = None, **options: Any) -> RunResult:
    """Ask, run the calls, feed the results back, until the model answers or `max_steps` turns made calls.

    tools: Python functions, (tool dict, function) pairs, plain tool dicts (their results come from `ask`),
    ExecutableTools, or `MCPServers`. approve(call) sees each call before it runs. tool_choice applies to the
    first turn only; later turns are "auto" so the model can answer. options: ToolACE.chat's (max_tokens, ...).
    on_event(event) and cancel: see the module's docstring."""
    if not isinstance(max_steps, int) or not 1 <= max_steps <= MAX_STEPS:
        raise InputError(f"max_steps must be an integer from 1 to {MAX_STEPS}, got {max_steps!r}")
    if not call_timeout > 0 or max_result_chars < 1:
        raise InputError("call_timeout and max_result_chars must be positive")
    executable = as_tools(tools)
    if not executable:
        raise InputError("run needs at least one tool")
    specs = [t.spec for t in executable]
    first = build_toolset(specs, tool_choice, parallel_tool_calls)  # bad tools fail here, before any decoding
    later = build_toolset(specs, "auto", parallel_tool_calls)
    by_name = {t.name: t for t in executable}
    messages = _start(question_or_messages)
    steps: list[Step] = []
    emit = on_event or (lambda event: None)
    for n in range(max_steps):
        start = time.monotonic()
        toolset = first if n == 0 else later
        turn = None if cancel is not None and cancel.is_set() else \
            stream_turn(ta, messages, toolset, options, on_event, cancel)
        if turn is None:
            return RunResult(None, steps, messages, "cancelled")
        if not turn.calls:
            messages.append({"role": "assistant", "content": turn.text or ""})
            cut_off = turn.finish_reason == "length"
            return RunResult(turn.text if turn.text is not None else None, steps, messages,
                             "length" if cut_off else "answer")
        calls = [{"id": cid, "name": c["name"], "arguments": c["arguments"]}
                 for cid, c in zip(turn.call_ids, turn.calls, strict=True)]
        step = Step(calls, errors=list(turn.errors))
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": c["id"], "type": "function",
             "function": {"name": c["name"], "arguments": arguments_json(c["arguments"])}} for c in calls]})
        truncated = bool(getattr(turn, "truncated", False))
        # Checked here, not taken from turn.errors: keywords the grammar only post-checks (a pattern it cannot
        # express, a format, multipleOf) are enforced before any tool runs, whoever decoded the turn.
        invalid = {i: toolset.validator.call_errors(c["name"], c["arguments"]) for i, c in enumerate(calls)}
        for i, c in enumerate(calls):
            emit({"type": "call", **c, "valid": not invalid[i] and not truncated, "errors": invalid[i],
                  "truncated": truncated, "checked": CHECKED, "source": getattr(by_name.get(c["name"]), "source", "")})
        if truncated:  # valid but not what the model meant: never act on it
            outputs, stopped = [(ToolOutput(TRUNCATED, True), 0.0) for _ in calls], False
        else:
            outputs, stopped = _execute(calls, by_name, approve, ask, call_timeout, invalid)
        for call, (output, seconds) in zip(calls, outputs, strict=True):
            content = _feedback(output, max_result_chars)
            step.results.append({"id": call["id"], "name": call["name"], "content": content,
                                 "is_error": output.is_error, "seconds": round(seconds, 3)})
            emit({"type": "result", **step.results[-1]})
            messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["name"], "content": content})
        step.seconds = time.monotonic() - start
        steps.append(step)
        if on_step is not None:
            on_step(step)
        if stopped:
            cancelled = cancel is not None and cancel.is_set()
            return RunResult(None, steps, messages, "cancelled" if cancelled else "refused")
    return RunResult(None, steps, messages, "max_steps")
