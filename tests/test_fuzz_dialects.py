"""Fuzzing the four wire dialects' request adapters (docs/dialects.md): any JSON body gives a request or one 4xx
error in the dialect's terms, never another exception. `make stress` (TOOLACE_STRESS=1) runs >= 10,000 inputs per
dialect; `make test` replays a fixed 300."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_fuzz import FUZZ
from toolace.limits import DEFAULT_MAX_TOKENS
from toolace.serve import anthropic_api, ollama_api
from toolace.serve.errors import ApiError, api_error
from toolace.serve.request_model import EngineRequest
from toolace.serve.requests import chat_request
from toolace.serve.responses_api import ResponseStore, responses_request

FIELDS = ["model", "messages", "tools", "tool_choice", "parallel_tool_calls", "response_format", "max_tokens",
          "max_completion_tokens", "stop", "temperature", "top_p", "top_k", "seed", "stream", "n", "logit_bias",
          "input", "instructions", "text", "max_output_tokens", "previous_response_id", "store", "options", "format",
          "prompt", "system", "raw", "images", "stop_sequences", "thinking", "metadata", "type", "role", "content",
          "name", "function", "arguments", "parameters", "input_schema", "tool_use_id", "id", "num_predict",
          "num_ctx", "mirostat", "tool_calls", "json_schema", "schema", "properties", "disable_parallel_tool_use"]
leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                 st.sampled_from(["auto", "any", "tool", "none", "required", "user", "assistant", "tool_use",
                                  "tool_result", "text", "function", "json", "json_object", "json_schema",
                                  "object", "string", "get_weather", "system", "developer", ""]),
                 st.text(max_size=6))
values = st.recursive(leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=3), kids, max_size=4)),
    max_leaves=20)
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=8)

N_CTX = 2048
ADAPTERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "chat": chat_request,
    "responses": lambda b: responses_request(b, ResponseStore()),
    "ollama_chat": lambda b: ollama_api.chat_request(b, N_CTX),
    "ollama_generate": lambda b: ollama_api.generate_request(b, N_CTX),
    "anthropic": anthropic_api.messages_request,
    "anthropic_count": anthropic_api.count_request,
}


@pytest.mark.parametrize("dialect", sorted(ADAPTERS))
def test_fuzz_dialect_adapter(dialect: str) -> None:
    adapter = ADAPTERS[dialect]

    @FUZZ
    @given(bodies)
    def run(body: dict[str, Any]) -> None:
        try:
            out = adapter(body)
        except Exception as e:  # noqa: BLE001 - what matters is which status it maps to
            err = api_error(e)
            assert 400 <= err.status < 500, f"{type(e).__name__}: {e} -> {err.status}"
            return
        assert out is None or isinstance(out, (EngineRequest, tuple))

    run()


def test_near_misses_pass() -> None:
    """One well-formed body per dialect, so the fuzz above is not passing by refusing everything."""
    msgs = [{"role": "user", "content": "hi"}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert isinstance(chat_request({"messages": msgs, "tools": tools, "tool_choice": "required"}), EngineRequest)
    assert isinstance(ADAPTERS["responses"]({"input": "hi", "max_output_tokens": 4}), EngineRequest)
    assert isinstance(ADAPTERS["ollama_chat"]({"messages": msgs, "options": {"num_predict": 4}}), EngineRequest)
    assert isinstance(ADAPTERS["ollama_generate"]({"prompt": "hi"}), EngineRequest)
    unbounded = ADAPTERS["ollama_chat"]({"messages": msgs, "options": {"num_predict": -1}})  # Ollama's "no limit"
    assert unbounded.options["max_tokens"] == DEFAULT_MAX_TOKENS
    assert isinstance(anthropic_api.messages_request({"messages": msgs, "max_tokens": 4,
                                                      "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                                                      "tool_choice": {"type": "any"}}), EngineRequest)
    with pytest.raises(ApiError):
        anthropic_api.messages_request({"messages": msgs})  # max_tokens is required
