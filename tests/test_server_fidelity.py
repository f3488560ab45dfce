"""Protocol fidelity on the real server: random unique tool-call ids that later turns re-render exactly, the
`developer` role, `n` choices, the penalties, model names and aliases, abandoned requests cancelled at once (499),
greedy answers that do not depend on what the KV cache held, and OpenAI's error shape on unknown routes and
methods, so SDKs raise their own typed errors with our message."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.helpers.server import TWO_TOOLS, Server, error_exact, hang_up_mid_decode, healthy, queue_drained

MODEL_ID = "toolace-demo"


SERVER = {"load": {"kv_cache": False}, "model_id": MODEL_ID, "aliases": ["demo", "smollm2"]}


def _ask(server: Server, content: str = "What's the weather in Paris?", **kw: Any) -> Any:
    kw.setdefault("max_tokens", 32)
    kw.setdefault("temperature", 0)
    messages = kw.pop("messages", [{"role": "user", "content": content}])
    return server.client().chat.completions.create(model=kw.pop("model", "m"), messages=messages, **kw)


def test_later_turn_rerenders_exact_raw_call(server: Server) -> None:
    ta = server.ta
    question = {"role": "user", "content": "Weather in Paris and the time in Tokyo?"}
    r = _ask(server, messages=[question], tools=TWO_TOOLS, tool_choice="required", max_tokens=48)
    calls = r.choices[0].message.tool_calls
    raw = ta.memory.lookup([c.id for c in calls])
    assert raw is not None and raw.startswith("[")
    # the client sends the calls back re-serialised (spaces, key order): the prompt still holds the model's own text
    echoed = [{"id": c.id, "type": "function", "function": {
        "name": c.function.name, "arguments": json.dumps(dict(reversed(json.loads(c.function.arguments).items())),
                                                          indent=2)}} for c in calls]
    results = [{"role": "tool", "tool_call_id": c.id, "content": "ok"} for c in calls]
    follow = [question, {"role": "assistant", "content": None, "tool_calls": echoed}, *results]
    exact = [question, {"role": "assistant", "content": raw}, *results]
    norm = ta.toolset(TWO_TOOLS).tools
    assert ta.prompt_tokens(follow, norm) == ta.prompt_tokens(exact, norm)
    answer = _ask(server, messages=follow, tools=TWO_TOOLS, tool_choice="none", max_tokens=4)
    assert answer.usage.prompt_tokens == len(ta.prompt_tokens(exact, norm))


def test_developer_role_is_system(server: Server) -> None:
    as_dev = _ask(server, messages=[{"role": "developer", "content": "Answer in French."},
                                    {"role": "user", "content": "Hello!"}], max_tokens=12)
    as_sys = _ask(server, messages=[{"role": "system", "content": "Answer in French."},
                                    {"role": "user", "content": "Hello!"}], max_tokens=12)
    assert as_dev.usage.prompt_tokens == as_sys.usage.prompt_tokens
    assert as_dev.choices[0].message.content == as_sys.choices[0].message.content
    with_tools = _ask(server, messages=[{"role": "developer", "content": "Be brief."},
                                        {"role": "user", "content": "Weather in Oslo?"}], tools=TWO_TOOLS)
    assert with_tools.choices[0].finish_reason in ("tool_calls", "stop", "length")


def test_n_choices(server: Server) -> None:
    one = _ask(server, "Name a colour.", max_tokens=8)
    three = _ask(server, "Name a colour.", max_tokens=8, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert {c.message.content for c in three.choices} == {one.choices[0].message.content}  # greedy: equal
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    sampled = _ask(server, "Name a colour.", max_tokens=8, n=4, temperature=1.0, seed=5)
    assert len({c.message.content for c in sampled.choices}) > 1  # each choice its own seed
    chunks = list(_ask(server, "Name a colour.", max_tokens=8, n=2, stream=True))
    texts = {i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
             for i in (0, 1)}
    assert texts == {0: one.choices[0].message.content, 1: one.choices[0].message.content}
    assert sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason) == [0, 1]


@pytest.mark.parametrize(("frequency", "presence", "history", "expected"), [
    (0.0, 0.0, [0, 0, 0], 0),      # no penalty: the best logit wins
    (0.4, 0.0, [0, 0, 0], 1),      # 3 uses x 0.4 = 1.2 > the 1.0 lead: the runner-up wins
    (0.3, 0.0, [0, 0, 0], 0),      # near miss: 0.9 < 1.0
    (0.0, 1.5, [0], 1),            # presence: once is enough
    (0.0, 0.9, [0], 0),            # near miss
    (0.4, 0.0, [0, 0, 0, 1, 1, 1, 1], 0),  # the runner-up was used more: penalised more
])
def test_penalties_over_generated_tokens(frequency: float, presence: float, history: list[int],
                                         expected: int) -> None:
    """OpenAI's penalties: count x frequency_penalty + presence_penalty off each generated token's logit, on the
    full vocabulary and on a grammar's allowed ids alike."""
    import numpy as np

    from toolace.runtime.sampling import Sampler, SamplingParams

    logits = np.array([3.0, 2.0, 0.5, -1.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(frequency_penalty=frequency, presence_penalty=presence), history)
    assert sampler.sample(logits) == expected
    assert sampler.sample(logits, np.array([0, 1, 3])) == expected
    assert logits[0] == 3.0  # llama.cpp's buffer is never written


def test_penalties_accepted_by_the_server(server: Server) -> None:
    out = _ask(server, "Say hello.", max_tokens=8, frequency_penalty=1.0, presence_penalty=0.5)
    assert out.choices[0].message.content is not None


def test_model_names_and_aliases(server: Server) -> None:
    listed = [m.id for m in server.client().models.list().data]
    assert listed == [MODEL_ID, "demo", "smollm2"]
    for name in ("gpt-4o", "/data/models/some-folder", "demo"):
        assert _ask(server, "Hi.", model=name, max_tokens=2).model == MODEL_ID


def test_abandoned_non_stream_request_is_cancelled(server: Server) -> None:
    eos = sorted(server.ta.model.eog_ids)
    body = {"model": "m", "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "max_tokens": 3000, "temperature": 0, "logit_bias": {str(t): -100 for t in eos}}
    start = len(server.ta.prompt_tokens(body["messages"], None))
    record = hang_up_mid_decode(server, "/v1/chat/completions", body)
    assert record["progress_at_exit"] < start + 3000
    nxt = _ask(server, "Hi.", max_tokens=4)  # the next request runs at once: nothing holds the model
    assert nxt.choices[0].message.content is not None
    queue_drained(server)  # its own slot is released once its worker exits
    healthy(server)


def test_greedy_reproducible_whatever_the_cache_held(server: Server) -> None:
    q1 = {"role": "user", "content": "Write a short poem about the sea."}
    a1 = _ask(server, messages=[q1], max_tokens=40).choices[0].message.content
    target = [q1, {"role": "assistant", "content": a1}, {"role": "user", "content": "Now one about the wind."}]
    first = _ask(server, messages=target, max_tokens=48).choices[0].message.content
    earlier = [
        dict(messages=[q1], max_tokens=40),  # the cache then holds a1 as decoded, token by token
        dict(messages=[{"role": "user", "content": "What's the weather in Paris?"}], tools=TWO_TOOLS),
        dict(messages=target, max_tokens=8),
        dict(messages=[{"role": "user", "content": "Count to twenty. " * 20}], max_tokens=16),
        dict(messages=target[:2] + [{"role": "user", "content": "Now one about fire."}], max_tokens=24),
    ]
    outs = []
    for kw in earlier:
        _ask(server, **kw)
        outs.append(_ask(server, messages=target, max_tokens=48).choices[0].message.content)
    assert [o.encode() for o in outs] == [first.encode()] * 5


def test_unknown_route_and_method_in_openai_shape(server: Server) -> None:
    err = error_exact(httpx.get(f"{server.url}/v1/nope"), 404, "GET /v1/nope: no such route")
    assert err["code"] == "not_found"
    err = error_exact(httpx.delete(f"{server.url}/v1/chat/completions"), 405,
                      "DELETE /v1/chat/completions: method not allowed")
    assert err["code"] == "method_not_allowed"
    with pytest.raises(openai.NotFoundError) as e:  # the SDK's own typed error, carrying our message
        server.client().embeddings.create(model="demo", input="hi")
    assert e.value.status_code == 404 and "POST /v1/embeddings: no such route" in str(e.value)
    healthy(server)  # near miss: a known route on the same server still answers
