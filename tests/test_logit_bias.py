"""logit_bias: checked before any C call or indexing (ids against the vocabulary, values against ±100), applied to
the raw and the masked logits alike, and never able to take the output out of the grammar's language."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import openai
import pytest

from toolace.api import ToolACE
from toolace.errors import InputError
from toolace.grammars.check import check_text
from toolace.runtime.sampling import Sampler, SamplingParams

WEATHER = [{"name": "get_weather", "description": "Current weather for a city.", "parameters": {
    "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}]


@pytest.mark.parametrize(("bias", "message"), [
    ({-1: 1.0}, "logit_bias keys must be token ids (non-negative integers), got -1"),
    ({True: 1.0}, "logit_bias keys must be token ids (non-negative integers), got True"),
    ({"5": 1.0}, "logit_bias keys must be token ids (non-negative integers), got '5'"),
    ({5: 100.5}, "logit_bias for token 5 must be a number in [-100, 100], got 100.5"),
    ({5: -101}, "logit_bias for token 5 must be a number in [-100, 100], got -101"),
    ({5: math.nan}, "logit_bias for token 5 must be a number in [-100, 100], got nan"),
    ({5: "1"}, "logit_bias for token 5 must be a number in [-100, 100], got '1'"),
    ({i: 1.0 for i in range(1025)}, "logit_bias has 1025 entries, at most 1024"),
    ([(5, 1.0)], "logit_bias must be a mapping of token id to bias, got list"),
])
def test_bad_logit_bias_refused(bias: object, message: str) -> None:
    with pytest.raises(InputError) as e:
        SamplingParams(logit_bias=bias)  # type: ignore[arg-type]
    assert str(e.value) == message


@pytest.mark.parametrize("bias", [{0: 1.0}, {5: 100}, {5: -100.0}, {i: 0.5 for i in range(1024)}, {}])
def test_near_miss_logit_bias_accepted(bias: dict[int, float]) -> None:
    SamplingParams(logit_bias=bias)


def test_bias_moves_greedy_and_sampled_choices_without_touching_the_input() -> None:
    logits = np.array([0.0, 3.0, 1.0, 2.0], dtype=np.float32)
    before = logits.copy()
    assert Sampler(SamplingParams(logit_bias={1: -100})).sample(logits) == 3
    assert Sampler(SamplingParams(logit_bias={0: 100})).sample(logits) == 0
    picks = {Sampler(SamplingParams(temperature=1.0, seed=s, logit_bias={2: 100})).sample(logits) for s in range(20)}
    assert picks == {2}
    assert np.array_equal(logits, before)


@pytest.fixture(scope="module")
def ta(smollm2_gguf: Path) -> ToolACE:
    return ToolACE.load(str(smollm2_gguf), n_ctx=2048, kv_cache=False)


def test_bias_beyond_the_vocabulary_refused_before_decoding(ta: ToolACE) -> None:
    n = ta.model.n_vocab
    with pytest.raises(InputError, match=rf"^logit_bias token id {n} is outside the vocabulary \(0\.\.{n - 1}\)$"):
        ta.call("Weather in Paris?", WEATHER, "required", logit_bias={n: 5.0}, max_tokens=8)
    assert ta.call("Weather in Paris?", WEATHER, "required", logit_bias={n - 1: 5.0}, max_tokens=24).valid


def test_bias_cannot_break_the_grammar(ta: ToolACE) -> None:
    """+100 on tokens the grammar forbids and -100 on the ones it needs: the output is still a valid call."""
    forbidden = ta.model.tokenize(" Sorry, I cannot", special=False)
    needed = ta.model.tokenize("[get_weather(location='", special=False)
    bias = {t: 100.0 for t in forbidden} | {t: -100.0 for t in needed}
    r = ta.call("Weather in Paris?", WEATHER, "required", logit_bias=bias, max_tokens=32)
    assert r.raw.startswith("[get_weather(location=")  # the needed tokens were forced through anyway
    if r.finish_reason == "length":  # the biased model rambles inside the string: every byte is still in language
        verdict = check_text(ta.toolset(WEATHER, "required").grammar.gbnf, r.raw)
        assert verdict.ok or verdict.offset == len(r.raw), verdict.where(r.raw)
    else:
        assert r.valid and [c["name"] for c in r.calls] == ["get_weather"], r


def test_bias_steers_free_text(ta: ToolACE) -> None:
    plain = ta.call("Say hello.", None, "auto", max_tokens=4)
    first = ta.model.tokenize(plain.raw, special=False)[0]
    steered = ta.call("Say hello.", None, "auto", max_tokens=4, logit_bias={first: -100})
    assert ta.model.tokenize(steered.raw, special=False)[0] != first


def test_server_checks_logit_bias(ta: ToolACE) -> None:
    from tests.helpers.server import start_server as _start
    from tests.helpers.server import stop_server as _stop

    server = _start(ta)
    try:
        client = server.client()
        msgs = [{"role": "user", "content": "Weather in Paris?"}]
        tools = [{"type": "function", "function": WEATHER[0]}]
        for bias, message in [({"abc": 1}, "logit_bias keys must be token ids (decimal integers), got 'abc'"),
                              ({"-3": 1}, "logit_bias keys must be token ids (decimal integers), got '-3'"),
                              ({"5": 300}, "logit_bias for token 5 must be a number in [-100, 100], got 300"),
                              ({str(ta.model.n_vocab): 1}, f"logit_bias token id {ta.model.n_vocab} is outside")]:
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="m", messages=msgs, tools=tools, tool_choice="required",
                                               max_tokens=8, logit_bias=bias)
            assert message in str(e.value)
        ok = client.chat.completions.create(model="m", messages=msgs, tools=tools, tool_choice="required",
                                            max_tokens=24, logit_bias={"5": -100, str(ta.model.n_vocab - 1): 1})
        assert ok.choices[0].message.tool_calls[0].function.name == "get_weather"
    finally:
        _stop(server)
