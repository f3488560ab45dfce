"""The call/chat/stream surface shared by the local engine (toolace.api.ToolACE) and a remote OpenAI-compatible
server (toolace.remote.RemoteToolACE): what a generation returns and the events a stream yields. Its own module so
the remote client needs nothing of the local engine's API (and the two never import each other)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from toolace.errors import InputError
from toolace.grammars.toolset import ToolSet
from toolace.runtime.generate import GenerationStats


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
