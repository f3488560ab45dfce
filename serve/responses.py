"""Response shaping: library results → OpenAI JSON bodies and stream chunks. Plain functions and one small state
object per stream; no I/O here."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from toolace.api import CallResult, StreamEvent
from toolace.runtime.generate import GenerationStats
from toolace.runtime.history import CallMemory, call_id


def usage(stats: GenerationStats) -> dict[str, int]:
    p, c = stats.prompt_tokens, stats.completion_tokens
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def arguments_json(args: dict[str, Any]) -> str:
    return json.dumps(args, ensure_ascii=False)


def content_of(result: CallResult) -> str | None:
    if result.calls:
        return None
    return result.text if result.text is not None else result.raw


def finish_reason(result: CallResult) -> str:
    """"length" for calls the token budget had to cut short (docs/budget.md), so a client can decide not to run
    them; else "tool_calls" for calls, or how the text ended."""
    if result.calls and not result.truncated:
        return "tool_calls"
    return "length" if result.truncated else result.finish_reason


def extension(result: CallResult) -> dict[str, Any]:
    """The `toolace` field: what OpenAI's shape has no place for (validity, post-check errors, a value cut short by
    the budget, tools left out of the grammar)."""
    return {"valid": result.valid, "errors": result.errors, "truncated": result.truncated,
            "warnings": result.warnings}


def tool_calls(result: CallResult) -> list[dict[str, Any]]:
    return [{"id": cid, "type": "function",
             "function": {"name": c["name"], "arguments": arguments_json(c["arguments"])}}
            for cid, c in zip(result.call_ids, result.calls, strict=False)]


def choice(result: CallResult, index: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content_of(result)}
    if result.calls:
        message["tool_calls"] = tool_calls(result)
    return {"index": index, "message": message, "finish_reason": finish_reason(result), "logprobs": None}


def chat_completion(results: list[CallResult], cid: str, created: int, model: str) -> dict[str, Any]:
    """One choice per result (`n`); usage counts the prompt once and every choice's tokens."""
    total = usage(results[0].stats)
    total["completion_tokens"] = sum(r.stats.completion_tokens for r in results)
    total["total_tokens"] = total["prompt_tokens"] + total["completion_tokens"]
    ext = extension(results[0]) if len(results) == 1 else {"choices": [extension(r) for r in results]}
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "choices": [choice(r, i) for i, r in enumerate(results)],
        "usage": total, "system_fingerprint": None, "toolace": ext,
    }


def text_completion(text: str, stats: GenerationStats, model: str, created: int) -> dict[str, Any]:
    return {
        "id": "cmpl-" + secrets.token_hex(12), "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": stats.finish_reason, "logprobs": None}],
        "usage": usage(stats), "system_fingerprint": None,
    }


@dataclass
class ChatStream:
    """One streamed chat completion: turns library events into chunk bodies, keeping the ids it handed out."""

    cid: str
    created: int
    model: str
    memory: CallMemory
    index: int = 0  # the choice this stream carries (`n` > 1: one stream per choice)
    ids: list[str] = field(default_factory=list)
    has_args: dict[int, bool] = field(default_factory=dict)
    streamed_text: str = ""

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.cid, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "system_fingerprint": None,
                "choices": [{"index": self.index, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    def first(self, first_is_call: bool) -> dict[str, Any]:
        return self.chunk({"role": "assistant", "content": None if first_is_call else ""})

    def usage_chunk(self, stats: GenerationStats) -> dict[str, Any]:
        last = self.chunk({})
        last["choices"], last["usage"] = [], usage(stats)
        return last

    def chunks(self, ev: StreamEvent) -> list[dict[str, Any]]:
        """The chunks for one library event (none, one, or the closing ones)."""
        if ev.kind == "text":
            if not ev.text:
                return []
            self.streamed_text += ev.text
            return [self.chunk({"content": ev.text})]
        if ev.kind == "call_name":
            while len(self.ids) <= ev.index:
                self.ids.append(call_id())
            return [self._call_delta(ev.index, {"name": ev.name, "arguments": ""}, head=True)]
        if ev.kind == "argument":
            piece = ("{" if not self.has_args.get(ev.index) else ", ") + json.dumps(ev.key, ensure_ascii=False) \
                + ": " + json.dumps(ev.value, ensure_ascii=False)
            self.has_args[ev.index] = True
            return [self._call_delta(ev.index, {"arguments": piece})]
        if ev.kind == "call_end":
            return [self._call_delta(ev.index, {"arguments": "}" if self.has_args.get(ev.index) else "{}"})]
        return self._done(ev.result)

    def _call_delta(self, index: int, function: dict[str, Any], head: bool = False) -> dict[str, Any]:
        call: dict[str, Any] = {"index": index, "function": function}
        if head:
            call.update(id=self.ids[index], type="function")
        return self.chunk({"tool_calls": [call]})

    def _done(self, result: CallResult | None) -> list[dict[str, Any]]:
        assert result is not None  # "done" always carries the result
        out = []
        if result.calls and self.ids:
            # the ids streamed are ours; remember them too so a later turn re-renders the calls exactly
            self.memory.remember(self.ids, result.raw)
        content = content_of(result)
        if content and content != self.streamed_text:
            rest = content[len(self.streamed_text):] if content.startswith(self.streamed_text) else content
            out.append(self.chunk({"content": rest}))
        out.append(self.chunk({}, finish_reason(result)))
        return out
