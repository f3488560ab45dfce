"""The public Python API. Parameters equal the CLI flags.

    from toolace import ToolACE
    ta = ToolACE.load("demo")
    result = ta.call("What's the weather in Paris?", tools=[...], tool_choice="auto")
    result.calls  # [{"name": ..., "arguments": {...}}], every one parsed and schema-checked
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolace.errors import InputError
from toolace.grammars.json_schema import ResponseFormat, response_grammar
from toolace.grammars.parser import CallParseError, StreamParser, looks_like_calls, parse_calls
from toolace.grammars.schema import Tool
from toolace.grammars.toolset import ToolSet, build_toolset
from toolace.limits import DEFAULT_MAX_TOKENS, DEFAULT_N_CTX
from toolace.runtime.batch import EXACT, Batcher, SlotModel, check_batching, check_parallel
from toolace.runtime.cache import PromptCache, check_cache_max_bytes
from toolace.runtime.constraints import DEFAULT_ENGINE, ENGINES, make_constraint
from toolace.runtime.generate import CallGrammar, GenerationStats, generate
from toolace.runtime.history import CallMemory, call_id, default_tool_role, to_template_messages
from toolace.runtime.kv_types import DEFAULT_KV_TYPE
from toolace.runtime.model import Model
from toolace.runtime.prompt import tool_messages
from toolace.runtime.refs import resolve_model
from toolace.runtime.sampling import SamplingParams
from toolace.runtime.speculative import DEFAULT_SPECULATIVE
from toolace.surface import CallResult, ChatSurface, StreamEvent

if TYPE_CHECKING:
    from toolace.remote import RemoteToolACE

__all__ = ["CallResult", "ChatSurface", "StreamEvent", "ToolACE"]  # the surface types are re-exported here


class ToolACE(ChatSurface):
    """A loaded model plus everything needed to make guaranteed-valid calls with it.

    Thread-safe. With `parallel=1` `lock` serialises use of the one llama.cpp context; with `parallel=N` the model
    decodes in N slots of one context (runtime/batch.py): concurrent calls from several threads share each decode
    step, and a call waits only for a free slot. The tool-set cache and the call memory have locks of their own."""

    def __init__(self, model: Model, engine: str = DEFAULT_ENGINE, tool_role: str | None = None,
                 kv_cache: bool = True, parallel: int = 1, cache_max_bytes: int | None = None,
                 speculative: bool = DEFAULT_SPECULATIVE, batching: str = EXACT) -> None:
        if engine not in ENGINES:
            raise InputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        self.model, self.engine = model, engine
        self.template = model.chat_template()
        source = model.metadata.get("tokenizer.chat_template") or ""
        self.tool_role = tool_role or default_tool_role(source)
        self.memory = CallMemory()
        self.cache = PromptCache(model, max_bytes=cache_max_bytes) if kv_cache else None
        self.lock = threading.Lock()
        self.batcher = Batcher(model, parallel, batching) if parallel > 1 or not model.own_context else None
        self.speculative = speculative  # the default of stream's `speculative` (`--no-speculative`)

    @classmethod
    def load(cls, model: str | Path = "demo", n_ctx: int = DEFAULT_N_CTX, n_gpu_layers: int | str = "auto",
             n_threads: int | None = None, engine: str = DEFAULT_ENGINE, tool_role: str | None = None,
             kv_cache: bool = True, parallel: int = 1, cache_max_bytes: int | None = None,
             kv_type: str = DEFAULT_KV_TYPE, speculative: bool = DEFAULT_SPECULATIVE,
             batching: str = EXACT) -> ToolACE:
        """Load a model reference (path, 'demo', or a pulled name). kv_cache persists tool-prompt KV to disk, in
        at most cache_max_bytes (None: DEFAULT_CACHE_TOKENS of this model's KV state; docs/design.md, "Caches").
        parallel: sequences decoded together (slots of n_ctx tokens each; docs/parallel.md). kv_type: f16, q8_0
        or q4_0 K/V cache (the quantized ones turn flash attention on). The model's memory at this context is
        checked against the machine's before llama.cpp allocates it (ResourceError; docs/models.md, "Memory").
        speculative: the default of each call's `speculative` (docs/speculative.md). batching: "exact" (a greedy
        answer in a slot equals the same request alone) or "fast" (one KV pool, one decode a step; docs/parallel.md)."""
        check_parallel(parallel), check_batching(batching)
        if cache_max_bytes is not None:
            check_cache_max_bytes(cache_max_bytes)  # before the model loads: a bad flag fails fast
        return cls(Model(resolve_model(model), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_threads=n_threads,
                         own_context=parallel == 1, kv_type=kv_type, kv_slots=parallel),
                   engine=engine, tool_role=tool_role, kv_cache=kv_cache, parallel=parallel,
                   cache_max_bytes=cache_max_bytes, speculative=speculative, batching=batching)

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
               response_format: ResponseFormat | None = None, stop_loops: bool = True,
               speculative: bool | None = None,
               cancel: threading.Event | None = None) -> Iterator[StreamEvent]:
        """Generate the next assistant turn, yielding text, each call's name, each closed argument, then done.
        A ToolSet given as `tools` carries its own tool_choice and parallel setting. `response_format`
        (grammars.json_schema.compile_response_format): a text answer is JSON valid under its schema. `cancel`:
        once set, the generation stops after the current token, without a done event. `stop_loops`: a text answer
        that repeats a line or sentence ends there, truncated (docs/budget.md, "Looping answers"). `speculative`:
        drafts (the grammar's forced tokens, text copied from the conversation) verified several per decode, the
        same tokens chosen (docs/speculative.md); None: the instance's default."""
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
                guarded = CallGrammar(gbnf, guarded.tool_names if guarded else (), True, json=True)
            for chunk in generate(model, prompt, constraint=constraint, sampling=sampling,
                                  max_tokens=max_tokens, stop=stop, fast_forward=fast_forward, stats=stats,
                                  call_grammar=guarded, stop_loops=stop_loops,
                                  speculative=self.speculative if speculative is None else speculative):
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

    def complete(self, prompt: str, max_tokens: int = DEFAULT_MAX_TOKENS, stop: Sequence[str] = (),
                 cancel: threading.Event | None = None, **sampling: Any) -> tuple[str, GenerationStats]:
        """Raw completion of a prompt string (template markers parsed as special tokens), no grammar. `cancel`:
        once set, generation stops after the current token and the text so far is returned."""
        params = SamplingParams(**sampling)
        stats = GenerationStats()
        tokens = self.model.tokenize(prompt, special=True)
        parts: list[str] = []
        with self.decoder() as model:
            for chunk in generate(model, tokens, constraint=None, sampling=params, max_tokens=max_tokens, stop=stop,
                                  stats=stats):
                if cancel is not None and cancel.is_set():
                    break  # the client left: free the model (or slot) now, not after max_tokens
                parts.append(chunk.text)
        return "".join(parts), stats
