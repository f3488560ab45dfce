"""ToolACE.connect(base_url): the call/chat/stream surface against a remote OpenAI-compatible server (vLLM with
`toolace export vllm`, or `toolace serve`), so code written against a local ToolACE — the agent loop included —
runs unchanged on a cluster (docs/scale-out.md).

The server decodes under the grammar and parses; this side builds the same ToolSet (tool_choice, parallel) to send,
checks the returned calls with the same validator, and re-renders them canonically as `raw` (the server's exact
text is not part of OpenAI's response)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from toolace.errors import GenerationError
from toolace.grammars.gbnf import render_calls
from toolace.grammars.parser import Call
from toolace.grammars.toolset import ToolSet, build_toolset
from toolace.limits import DEFAULT_MAX_TOKENS, REMOTE_TIMEOUT_SECONDS
from toolace.runtime.generate import GenerationStats
from toolace.surface import CallResult, ChatSurface, StreamEvent


def _request_tools(toolset: ToolSet) -> dict[str, Any]:
    """The OpenAI request fields for a tool set: each tool as the user wrote it, the resolved tool_choice."""
    choice = toolset.tool_choice
    return {"tools": [{"type": "function", "function": t.original} for t in toolset.tools],
            "tool_choice": choice if choice in ("auto", "required", "none")
            else {"type": "function", "function": {"name": choice}},
            "parallel_tool_calls": toolset.parallel}


class RemoteToolACE(ChatSurface):
    """A remote model with ToolACE's call/chat/stream. Thread-safe (the openai client is)."""

    def __init__(self, base_url: str, api_key: str | None = None, model: str | None = None,
                 timeout: float = REMOTE_TIMEOUT_SECONDS) -> None:
        from openai import OpenAI, OpenAIError

        self._errors = OpenAIError
        self.client = OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=1)
        self.base_url = base_url
        if model is None:
            try:
                served = self.client.models.list().data
            except OpenAIError as e:
                raise GenerationError(f"cannot list models at {base_url}: {e}") from None
            if not served:
                raise GenerationError(f"{base_url} serves no model")
            model = served[0].id
        self.model = model

    toolset = staticmethod(build_toolset)

    def stream(self, messages: Sequence[dict[str, Any]], tools: ToolSet | Sequence[Any] | None = None,
               tool_choice: Any = "auto", *, parallel_tool_calls: bool = True,
               max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0, top_p: float = 1.0,
               seed: int | None = None, stop: Sequence[str] = (), **_engine_only: Any) -> Iterator[StreamEvent]:
        """Events as ToolACE.stream yields them; each call's arguments once the call is complete. Options that
        only the local engine has (top_k, min_p, logit_bias, fast_forward) are ignored."""
        toolset = build_toolset(tools, tool_choice, parallel_tool_calls) if tools else None
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "max_tokens": max_tokens,
                                "temperature": temperature, "top_p": top_p, "stream": True,
                                "stream_options": {"include_usage": True}}
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = list(stop)
        if toolset is not None:
            body.update(_request_tools(toolset))
        try:
            yield from self._events(self.client.chat.completions.create(**body), toolset)
        except self._errors as e:
            raise GenerationError(f"remote generation failed: {e}") from None

    def _events(self, chunks: Any, toolset: ToolSet | None) -> Iterator[StreamEvent]:
        text, stats = "", GenerationStats()
        calls: dict[int, dict[str, Any]] = {}
        done: set[int] = set()
        for chunk in chunks:
            if chunk.usage is not None:
                stats.prompt_tokens, stats.completion_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
            for choice in chunk.choices or []:
                if choice.finish_reason:
                    stats.finish_reason = "length" if choice.finish_reason == "length" else "stop"
                if choice.delta.content:
                    text += choice.delta.content
                    yield StreamEvent("text", text=choice.delta.content)
                for tc in choice.delta.tool_calls or []:
                    if tc.index not in calls:
                        yield from self._close([i for i in calls if i not in done], calls, done)
                        calls[tc.index] = {"id": tc.id or "", "name": "", "arguments": ""}
                    call = calls[tc.index]
                    if tc.function and tc.function.name:
                        call["name"] = tc.function.name
                        yield StreamEvent("call_name", index=tc.index, name=call["name"])
                    if tc.function and tc.function.arguments:
                        call["arguments"] += tc.function.arguments
        yield from self._close([i for i in calls if i not in done], calls, done)
        yield StreamEvent("done", result=self._result(text, calls, toolset, stats))

    @staticmethod
    def _close(indices: list[int], calls: dict[int, dict[str, Any]], done: set[int]) -> Iterator[StreamEvent]:
        for i in indices:
            done.add(i)
            call = calls[i]
            try:
                call["parsed"] = json.loads(call["arguments"] or "{}")
            except (ValueError, RecursionError):  # not JSON, past the digit limit, or too deep: not a valid call
                call["parsed"] = None
                continue
            for key, value in call["parsed"].items() if isinstance(call["parsed"], dict) else ():
                yield StreamEvent("argument", index=i, name=call["name"], key=key, value=value)
            yield StreamEvent("call_end", index=i, name=call["name"])

    @staticmethod
    def _result(text: str, calls: dict[int, dict[str, Any]], toolset: ToolSet | None,
                stats: GenerationStats) -> CallResult:
        if not calls:
            errors = []
            if toolset is not None and toolset.calls_only:
                errors.append(f"no call produced (finish_reason {stats.finish_reason})")
            return CallResult([], text, text, stats.finish_reason, errors, stats=stats)
        ordered = [calls[i] for i in sorted(calls)]
        bad = [c["name"] for c in ordered if not isinstance(c.get("parsed"), dict)]
        if bad:
            return CallResult([], None, text, stats.finish_reason,
                              [f"call {n!r}: arguments are not a JSON object" for n in bad], stats=stats)
        parsed = [Call(c["name"], c["parsed"]) for c in ordered]
        errors = toolset.validator.errors(parsed) if toolset is not None else []
        as_dicts = [c.as_dict() for c in parsed]
        return CallResult(as_dicts, None, render_calls(as_dicts), stats.finish_reason, errors,
                          [c["id"] for c in ordered], stats)
