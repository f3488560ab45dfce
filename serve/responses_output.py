"""/v1/responses output: library results → the Response object (output items `message` and `function_call`), and
one stream's events (response.created ... response.completed), numbered in order. No I/O here."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from toolace.api import CallResult, StreamEvent
from toolace.runtime.generate import GenerationStats
from toolace.runtime.history import CallMemory, call_id

from .request_model import EngineRequest
from .responses import arguments_json, content_of, extension


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def usage(stats: GenerationStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    p, c = stats.prompt_tokens, stats.completion_tokens
    return {"input_tokens": p, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": c, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": p + c}


def message_item(text: str, item_id: str, status: str = "completed") -> dict[str, Any]:
    content = [] if status == "in_progress" else [text_part(text)]
    return {"type": "message", "id": item_id, "role": "assistant", "status": status, "content": content}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(item_id: str, cid: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": cid, "name": name, "arguments": arguments,
            "status": status}


def output_items(result: CallResult) -> list[dict[str, Any]]:
    if result.calls:
        return [call_item(new_id("fc"), cid, c["name"], arguments_json(c["arguments"]))
                for cid, c in zip(result.call_ids, result.calls, strict=False)]
    return [message_item(content_of(result) or "", new_id("msg"))]


def conversation(req: EngineRequest, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What `previous_response_id` continues from: the request's conversation, then this response's output."""
    calls = [{"id": it["call_id"], "type": "function", "function": {"name": it["name"], "arguments": it["arguments"]}}
             for it in output if it["type"] == "function_call"]
    if calls:
        return [*req.keep["history"], {"role": "assistant", "content": None, "tool_calls": calls}]
    text = "".join(p["text"] for it in output if it["type"] == "message" for p in it["content"])
    return [*req.keep["history"], {"role": "assistant", "content": text}]


@dataclass
class ResponseShape:
    """The fixed parts of one Response object."""

    rid: str
    created: int
    model: str
    req: EngineRequest

    def body(self, output: list[dict[str, Any]], status: str, result: CallResult | None = None) -> dict[str, Any]:
        incomplete = result is not None and result.finish_reason == "length" and not result.calls
        if incomplete:
            status = "incomplete"
        return {
            "id": self.rid, "object": "response", "created_at": self.created, "model": self.model,
            "status": status, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "output": output, "usage": usage(result.stats if result else None), "store": self.req.keep["store"],
            "truncation": "disabled", "reasoning": None, "background": False,
            "completed_at": int(time.time()) if status != "in_progress" else None,
            **self.req.echo,
            "toolace": extension(result) if result is not None else None,
        }


@dataclass
class ResponsesStream:
    """One streamed response: library events → Responses API events, each with its sequence number."""

    shape: ResponseShape
    memory: CallMemory
    seq: int = 0
    output: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""
    args: dict[int, str] = field(default_factory=dict)  # streamed arguments per call index
    slots: dict[int, int] = field(default_factory=dict)  # call index → output index

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        ev = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return ev

    def start(self) -> list[dict[str, Any]]:
        body = self.shape.body([], "in_progress")
        return [self.event("response.created", response=body), self.event("response.in_progress", response=body)]

    def events(self, ev: StreamEvent) -> list[dict[str, Any]]:
        if ev.kind == "text":
            return self._text(ev.text) if ev.text else []
        if ev.kind == "call_name":
            return self._call_start(ev.index, ev.name)
        if ev.kind == "argument":
            piece = ("{" if ev.index in self.args and not self.args[ev.index] else ", ") + \
                json.dumps(ev.key, ensure_ascii=False) + ": " + json.dumps(ev.value, ensure_ascii=False)
            return self._call_delta(ev.index, piece)
        if ev.kind == "call_end":
            return self._call_end(ev.index)
        assert ev.result is not None  # "done" always carries the result
        return self._done(ev.result)

    def _text(self, delta: str) -> list[dict[str, Any]]:
        out = []
        if not self.output or self.output[-1]["type"] != "message":
            item = message_item("", new_id("msg"), "in_progress")
            self.output.append(item)
            n = len(self.output) - 1
            out += [self.event("response.output_item.added", output_index=n, item=item),
                    self.event("response.content_part.added", output_index=n, item_id=item["id"], content_index=0,
                               part=text_part(""))]
        self.text += delta
        return out + [self.event("response.output_text.delta", output_index=len(self.output) - 1,
                                 item_id=self.output[-1]["id"], content_index=0, delta=delta, logprobs=[])]

    def _call_start(self, index: int, name: str) -> list[dict[str, Any]]:
        item = call_item(new_id("fc"), call_id(), name, "", "in_progress")
        self.output.append(item)
        self.slots[index], self.args[index] = len(self.output) - 1, ""
        return [self.event("response.output_item.added", output_index=self.slots[index], item=dict(item))]

    def _call_delta(self, index: int, piece: str) -> list[dict[str, Any]]:
        self.args[index] += piece
        n = self.slots[index]
        return [self.event("response.function_call_arguments.delta", output_index=n, item_id=self.output[n]["id"],
                           delta=piece)]

    def _call_end(self, index: int) -> list[dict[str, Any]]:
        out = self._call_delta(index, "}" if self.args[index] else "{}")
        n = self.slots[index]
        item = self.output[n]
        item.update(arguments=self.args[index], status="completed")
        return out + [self.event("response.function_call_arguments.done", output_index=n, item_id=item["id"],
                                 arguments=item["arguments"]),
                      self.event("response.output_item.done", output_index=n, item=dict(item))]

    def _done(self, result: CallResult) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        calls = [it for it in self.output if it["type"] == "function_call"]
        if result.calls and calls:
            # the ids streamed are ours; remember them so a later turn re-renders the calls exactly
            self.memory.remember([it["call_id"] for it in calls], result.raw)
        else:
            content = content_of(result) or ""
            if content != self.text:  # what the stream did not carry (e.g. an unparsable call list, as text)
                self.output = [it for it in self.output if it["type"] == "message"]
                out += self._text(content[len(self.text):] if content.startswith(self.text) else content)
            if not self.output:
                out += self._text("")
            n = len(self.output) - 1
            item = self.output[n]
            item.update(status="completed", content=[text_part(content)])
            out += [self.event("response.output_text.done", output_index=n, item_id=item["id"], content_index=0,
                               text=content, logprobs=[]),
                    self.event("response.content_part.done", output_index=n, item_id=item["id"], content_index=0,
                               part=text_part(content)),
                    self.event("response.output_item.done", output_index=n, item=dict(item))]
        return out + [self.event("response.completed", response=self.shape.body(self.output, "completed", result))]
