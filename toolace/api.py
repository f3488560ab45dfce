"""The public Python API. Parameters equal the CLI flags.

    from toolace import ToolACE
    ta = ToolACE.load("demo")
    result = ta.call("What's the weather in Paris?", tools=[...], tool_choice="auto")
    result.calls  # [{"name": ..., "arguments": {...}}], every one parsed and schema-checked
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolace.errors import InputError
from toolace.grammars.json_schema import ResponseFormat, response_grammar
from toolace.grammars.parser import CallParseError, StreamParser, looks_like_calls, parse_calls
from toolace.grammars.schema import Tool
from toolace.grammars.toolset import ToolSet, build_toolset
from toolace.limits import DEFAULT_MAX_STEPS, DEFAULT_MAX_TOKENS, DEFAULT_N_CTX
from toolace.runtime.batch import Batcher, SlotModel, check_parallel
from toolace.runtime.cache import PromptCache
from toolace.runtime.constraints import DEFAULT_ENGINE, ENGINES, make_constraint
from toolace.runtime.generate import CallGrammar, GenerationStats, generate
from toolace.runtime.history import CallMemory, call_id, default_tool_role, to_template_messages
from toolace.runtime.model import Model
from toolace.runtime.prompt import tool_messages
from toolace.runtime.refs import resolve_model
from toolace.runtime.sampling import SamplingParams

if TYPE_CHECKING:
    from toolace.agent.loop import RunResult
    from toolace.remote import RemoteToolACE


@dataclass
class CallResult:
    """What one generation produced: parsed calls (or text), the raw output, and how it ended."""

    calls: list[dict[str, Any]]
    text: str | None
    raw: str
    finish_reason: str  # stop | length
    errors: list[str] = field(default_factory=list)  # schema violations found after decoding (post-checks)
    call_ids: list[str] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats, repr=False)
    warnings: list[str] = field(default_factory=list)  # tools left out of the grammar (no obvious reading), and why

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def truncated(self) -> bool:
        """A value was cut short to close the call list within max_tokens, or a runaway value was cut back
        (docs/budget.md): the calls are complete and schema-valid, but an agent may choose not to run them."""
        return self.stats.truncated

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "text": self.text, "raw": self.raw, "finish_reason": self.finish_reason,
                "valid": self.valid, "errors": self.errors, "truncated": self.truncated,
                "usage": {"prompt_tokens": self.stats.prompt_tokens,
                          "completion_tokens": self.stats.completion_tokens}}


@dataclass(frozen=True)
class StreamEvent:
    """kind: text | call_name | argument | call_end | done (result set)."""

    kind: str
    text: str = ""
    index: int = 0
    name: str = ""
    key: str = ""
    value: Any = None
    result: CallResult | None = None


class ChatSurface(ABC):
    """`call` and `chat` on top of a `stream`: one surface for the local engine (ToolACE) and a remote
    OpenAI-compatible server (toolace.remote.RemoteToolACE)."""

    @abstractmethod
    def stream(self, messages: Sequence[dict[str, Any]], tools: ToolSet | Sequence[Any] | None = None,
               tool_choice: Any = "auto", **options: Any) -> Iterator[StreamEvent]:
        """The next assistant turn as events, ending with "done"; each subclass decodes its own way."""

    def call(self, question: str, tools: ToolSet | Sequence[Any], tool_choice: Any = "auto",
             **options: Any) -> CallResult:
        """One question → calls or text. `tools`: a ToolSet (its tool_choice wins) or tool dicts in any dialect."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("question must be a non-empty string")
        return self.chat([{"role": "user", "content": question}], tools, tool_choice, **options)

    def chat(self, messages: Sequence[dict[str, Any]], tools: ToolSet | Sequence[Any] | None = None,
             tool_choice: Any = "auto", **options: Any) -> CallResult:
        """A conversation (OpenAI message form, tool results included) → the next assistant turn."""
        result = None
        for event in self.stream(messages, tools, tool_choice, **options):
            if event.kind == "done":
                result = event.result
        assert result is not None  # stream always ends with done
        return result


class ToolACE(ChatSurface):
    """A loaded model plus everything needed to make guaranteed-valid calls with it.

    Thread-safe. With `parallel=1` `lock` serialises use of the one llama.cpp context; with `parallel=N` the model
    decodes in N slots of one context (runtime/batch.py): concurrent calls from several threads share each decode
    step, and a call waits only for a free slot. The tool-set cache and the call memory have locks of their own."""

    def __init__(self, model: Model, engine: str = DEFAULT_ENGINE, tool_role: str | None = None,
                 kv_cache: bool = True, parallel: int = 1) -> None:
        if engine not in ENGINES:
            raise InputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        self.model, self.engine = model, engine
        self.template = model.chat_template()
        source = model.metadata.get("tokenizer.chat_template") or ""
        self.tool_role = tool_role or default_tool_role(source)
        self.memory = CallMemory()
        self.cache = PromptCache(model) if kv_cache else None
        self.lock = threading.Lock()
        self.batcher = Batcher(model, parallel) if parallel > 1 or not model.own_context else None

    @classmethod
    def load(cls, model: str | Path = "demo", n_ctx: int = DEFAULT_N_CTX, n_gpu_layers: int | str = "auto",
             n_threads: int | None = None, engine: str = DEFAULT_ENGINE, tool_role: str | None = None,
             kv_cache: bool = True, parallel: int = 1) -> ToolACE:
        """Load a model reference (path, 'demo', or a pulled name). kv_cache persists tool-prompt KV to disk.
        parallel: sequences decoded together (slots of n_ctx tokens each; docs/parallel.md)."""
        check_parallel(parallel)
        return cls(Model(resolve_model(model), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_threads=n_threads,
                         own_context=parallel == 1),
                   engine=engine, tool_role=tool_role, kv_cache=kv_cache, parallel=parallel)

    @classmethod
    def connect(cls, base_url: str, api_key: str | None = None, model: str | None = None) -> RemoteToolACE:
        """A remote OpenAI-compatible server (vLLM with `toolace export vllm`, or `toolace serve`) with the same
        call/chat/stream surface; `model` defaults to the first model the server lists (docs/scale-out.md)."""
        from toolace.remote import RemoteToolACE

        return RemoteToolACE(base_url, api_key=api_key, model=model)

    @contextmanager
    def decoder(self) -> Iterator[Model | SlotModel]:
        """Exclusive use of a sequence to decode on: the model itself under `lock`, or a free parallel slot."""
        if self.batcher is None:
            with self.lock:
                yield self.model
        else:
            with self.batcher.slot() as slot:
                yield slot

    def decode_progress(self) -> int:
        """Grows with decoding: tokens in the one context, or shared decode steps of the slots."""
        return len(self.model.tokens) if self.batcher is None else self.batcher.steps

    def slot_state(self) -> dict[str, Any]:
        """Occupancy of the parallel slots and the batching counters (the server's /slots)."""
        if self.batcher is None:
            return {"parallel": 1, "n_ctx_per_slot": self.model.n_ctx, "busy": self.lock.locked()}
        return self.batcher.state()

    # --- building blocks -------------------------------------------------------------------------------------------
    @staticmethod
    def toolset(tools: Any, tool_choice: Any = "auto", parallel_tool_calls: bool = True) -> ToolSet:
        """Normalise and compile tools once (cached by content); pass the result to `call`/`chat`/`stream`."""
        return build_toolset(tools, tool_choice, parallel_tool_calls)

    def prompt_tokens(self, messages: Sequence[dict[str, Any]], tools: Sequence[Tool] | None) -> list[int]:
        return self._prompt(messages, tools)[0]

    def _prompt(self, messages: Sequence[dict[str, Any]], tools: Sequence[Tool] | None) -> tuple[list[int], int]:
        """Prompt tokens and the length of the stable prefix (through the system message and the template text
        after it), which the disk cache keys on."""
        msgs = to_template_messages(tool_messages(list(messages), tools), self.tool_role, self.memory)
        segments = self.template.render(msgs, add_generation_prompt=True)
        tokens = self.model.tokenize_segments(segments)
        first_content = next((i for i, s in enumerate(segments) if not s.special), None)
        if not tools or first_content is None:
            return tokens, 0
        prefix = self.model.tokenize_segments(segments[: first_content + 2])
        n = len(prefix) if tokens[: len(prefix)] == prefix else 0  # BPE may merge across the boundary: no cache
        return tokens, n

    # --- calls -----------------------------------------------------------------------------------------------------
    def stream(self, messages: Sequence[dict[str, Any]], tools: ToolSet | Sequence[Any] | None = None,
               tool_choice: Any = "auto", *,
               parallel_tool_calls: bool = True, max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0,
               top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0, seed: int | None = None,
               logit_bias: Mapping[int, float] | None = None, stop: Sequence[str] = (),
               fast_forward: bool = True, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
               response_format: ResponseFormat | None = None,
               cancel: threading.Event | None = None) -> Iterator[StreamEvent]:
        """Generate the next assistant turn, yielding text, each call's name, each closed argument, then done.
        A ToolSet given as `tools` carries its own tool_choice and parallel setting. `response_format`
        (grammars.json_schema.compile_response_format): a text answer is JSON valid under its schema. `cancel`:
        once set, the generation stops after the current token, without a done event."""
        sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed,
                                  logit_bias=logit_bias or {}, frequency_penalty=frequency_penalty,
                                  presence_penalty=presence_penalty)
        toolset = build_toolset(tools, tool_choice, parallel_tool_calls) if tools else None
        norm = toolset.tools if toolset else None
        gbnf = toolset.grammar.gbnf if toolset else None
        if response_format is not None:
            messages, gbnf = response_format.messages(list(messages)), response_grammar(toolset, response_format)
        prompt, prefix_n = self._prompt(messages, norm)
        constraint = make_constraint(self.engine, self.model, gbnf) if gbnf else None
        with self.decoder() as model:
            if self.cache is not None and prefix_n:
                self.cache.restore(prompt[:prefix_n], model)
            stats = GenerationStats()
            parser = StreamParser(norm or [])
            raw = ""
            guarded = CallGrammar(toolset.grammar.gbnf, tuple(t.name for t in toolset.tools), toolset.calls_only) \
                if toolset and toolset.tool_choice != "none" else None
            if response_format is not None and gbnf:  # a JSON answer (or a call) must close within the budget too
                guarded = CallGrammar(gbnf, guarded.tool_names if guarded else (), True)
            for chunk in generate(model, prompt, constraint=constraint, sampling=sampling,
                                  max_tokens=max_tokens, stop=stop, fast_forward=fast_forward, stats=stats,
                                  call_grammar=guarded):
                if cancel is not None and cancel.is_set():
                    return  # the client left: stop before the next token (lock or slot released on the way out)
                if chunk.retract:  # a runaway value cut back: only text inside one open value, never streamed
                    raw = raw[: len(raw) - chunk.retract]
                    parser.retract(chunk.retract)
                raw += chunk.text
                if norm and looks_like_calls(raw):
                    for ev in parser.feed(chunk.text):
                        yield StreamEvent(f"call_{ev.kind}" if ev.kind != "argument" else "argument",
                                          index=ev.index, name=ev.name, key=ev.key, value=ev.value)
                else:
                    parser.feed(chunk.text)
                    yield StreamEvent("text", text=chunk.text)
            if self.cache is not None and prefix_n:
                self.cache.store(prompt[:prefix_n], model)
        result = self._finish(raw, toolset, stats, response_format)
        result.warnings = list(toolset.grammar.warnings) if toolset else []
        yield StreamEvent("done", result=result)

    def _finish(self, raw: str, toolset: ToolSet | None, stats: GenerationStats,
                response_format: ResponseFormat | None = None) -> CallResult:
        """Parse and validate the output; `toolset` is None when no tools were given (plain text)."""
        if toolset is None or not looks_like_calls(raw):
            errors = []
            if toolset is not None and toolset.calls_only:
                errors.append(f"no call produced (finish_reason {stats.finish_reason})")
            elif response_format is not None:
                errors += response_format.errors(raw)
            return CallResult([], raw, raw, stats.finish_reason, errors, stats=stats)
        try:
            calls = parse_calls(raw, toolset.tools)
        except CallParseError as e:
            why = "output cut by max_tokens before the call list closed" if stats.finish_reason == "length" else str(e)
            return CallResult([], None, raw, stats.finish_reason, [why], stats=stats)
        errors = toolset.validator.errors(calls)
        ids = [call_id() for _ in calls]
        self.memory.remember(ids, raw)
        return CallResult([c.as_dict() for c in calls], None, raw, stats.finish_reason, errors, ids, stats)

    def run(self, question_or_messages: str | Sequence[dict[str, Any]], tools: Sequence[Any],
            tool_choice: Any = "auto", max_steps: int = DEFAULT_MAX_STEPS, approve: Any = None,
            **options: Any) -> RunResult:
        """The assistant loop: ask, run the calls the model makes (Python functions, MCP servers, tool dicts with
        code), feed the results back, until it answers. See toolace.agent.loop.run for every option."""
        from toolace.agent.loop import run

        return run(self, question_or_messages, tools, tool_choice, max_steps, approve, **options)

    def complete(self, prompt: str, max_tokens: int = DEFAULT_MAX_TOKENS, stop: Sequence[str] = (),
                 **sampling: Any) -> tuple[str, GenerationStats]:
        """Raw completion of a prompt string (template markers parsed as special tokens), no grammar."""
        params = SamplingParams(**sampling)
        stats = GenerationStats()
        tokens = self.model.tokenize(prompt, special=True)
        with self.decoder() as model:
            text = "".join(c.text for c in generate(model, tokens, constraint=None, sampling=params,
                                                    max_tokens=max_tokens, stop=stop, stats=stats))
        return text, stats
