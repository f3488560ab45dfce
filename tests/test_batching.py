"""How a step of the parallel slots is decoded (runtime/batch.py, docs/parallel.md, "Exact and fast batching"),
asserted from the batcher's own counters: while two requests prefill and two decode, exact batching decodes each
run length once for every sequence that has it, fast batching decodes the whole step at once; and fast slots still
answer validly, never mixing requests, sharing tool prompts between slots."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from toolace.api import ToolACE
from toolace.errors import InputError
from toolace.eval.bench_batching import fill
from toolace.runtime.batch import EXACT, FAST, Batcher, SlotModel

TIMEOUT = 120
PROMPT = list(range(200, 264))  # 64 tokens: one prefill chunk
COUNTERS = ("steps", "decodes", "decoded_tokens", "shared_decodes")


@pytest.fixture(scope="module")
def model(smollm2_gguf: Path) -> Iterator[Any]:
    ta = ToolACE.load(str(smollm2_gguf), n_ctx=512, kv_cache=False)
    yield ta.model


def _one_step(batcher: Batcher, work: list[list[int]]) -> dict[str, int]:
    """Slot i hands in work[i] while a (pretended) decode runs, so every submission is pending when the next step
    starts: that step carries exactly these. Returns the counters' growth."""
    before = {k: getattr(batcher, k) for k in COUNTERS}
    with batcher.cond:
        batcher.decoding = True  # nobody starts a step until every submission is in
        for s in batcher.slots[: len(work)]:
            s.busy = True
    try:
        with ThreadPoolExecutor(len(work)) as pool:
            futures = [pool.submit(SlotModel(batcher, batcher.slots[i]).eval, t) for i, t in enumerate(work)]
            deadline = time.monotonic() + TIMEOUT
            while len(batcher.pending) < len(work):
                assert time.monotonic() < deadline, "the submissions never arrived"
                time.sleep(0.001)
            with batcher.cond:
                batcher.decoding = False
                batcher.cond.notify_all()
            for f in futures:
                f.result(TIMEOUT)
    finally:
        with batcher.cond:
            for s in batcher.slots:
                s.busy = False
    return {k: getattr(batcher, k) - before[k] for k in COUNTERS}


def _prefilled(batcher: Batcher) -> None:
    """Slots 2 and 3 already hold a prompt: their next submissions are one sampled token each."""
    fill(batcher, PROMPT, slice(2, None))


# (mode, submissions of slots 0-3) -> counters' growth for the one step. Two requests prefill a 64-token chunk,
# two decode one token: exact decodes each length once (2 decodes of 2 sequences), fast the step at once.
STEPS = [
    (EXACT, [PROMPT, PROMPT, [7], [8]], {"steps": 1, "decodes": 2, "decoded_tokens": 130, "shared_decodes": 2}),
    (FAST, [PROMPT, PROMPT, [7], [8]], {"steps": 1, "decodes": 1, "decoded_tokens": 130, "shared_decodes": 1}),
    # near miss: prompt chunks of different lengths are two lengths in exact mode, still one decode in fast mode
    (EXACT, [PROMPT, PROMPT[:40], [7], [8]], {"steps": 1, "decodes": 3, "decoded_tokens": 106, "shared_decodes": 1}),
    (FAST, [PROMPT, PROMPT[:40], [7], [8]], {"steps": 1, "decodes": 1, "decoded_tokens": 106, "shared_decodes": 1}),
]


@pytest.mark.parametrize(("mode", "work", "grown"), STEPS)
def test_two_prefilling_and_two_decoding_share_a_step(model: Any, mode: str, work: list[list[int]],
                                                      grown: dict[str, int]) -> None:
    batcher = Batcher(model, 4, mode)
    try:
        _prefilled(batcher)
        assert _one_step(batcher, work) == grown
        assert batcher.max_sequences == 4
        assert batcher.max_sequences_per_decode == (4 if mode == FAST else 2)
        assert [len(s.tokens) for s in batcher.slots] == [len(work[0]), len(work[1]), 65, 65]
        assert batcher.state()["batching"] == mode
    finally:
        batcher.close()


@pytest.mark.parametrize(("mode", "error"), [("fast", None), ("exact", None), ("quick", "batching must be one of"),
                                             ("", "batching must be one of")])
def test_batching_modes(model: Any, mode: str, error: str | None) -> None:
    if error is None:
        Batcher(model, 2, mode).close()
    else:
        with pytest.raises(InputError, match=error):
            Batcher(model, 2, mode)


CASES: list[tuple[str, str, str]] = [
    ("What's the weather in Paris?", "get_weather", "city"),
    ("What time is it in Tokyo?", "get_time", "city"),
    ("Convert 12 dollars to euros.", "convert_currency", "amount"),
    ("Play some jazz.", "play_music", "genre"),
]


def _tools(name: str, param: str) -> list[dict[str, Any]]:
    parameters = {"type": "object", "properties": {param: {"type": "string"}}, "required": [param]}
    return [{"type": "function", "function": {"name": name, "description": f"{name.replace('_', ' ')}.",
                                              "parameters": parameters}}]


def test_fast_slots_answer_validly_and_share_whole_steps(smollm2_gguf: Path) -> None:
    ta = ToolACE.load(str(smollm2_gguf), n_ctx=1024, parallel=4, kv_cache=False, batching=FAST)
    try:
        with ThreadPoolExecutor(len(CASES) * 2) as pool:
            results = list(pool.map(lambda c: ta.call(c[0], _tools(c[1], c[2]), "required", max_tokens=40),
                                    CASES * 2))
        for (question, name, _), r in zip(CASES * 2, results, strict=True):
            assert r.valid and [c["name"] for c in r.calls][:1] == [name], (question, r.raw)
        state = ta.slot_state()
        assert state["batching"] == FAST
        assert state["decodes"] == state["steps"]  # one decode a step, whatever the lengths
        assert state["max_sequences_per_decode"] >= 2 and state["shared_decodes"] >= 1
        # each question's second asking found its tool prompt in a slot (copied within the one pool)
        again = ta.call(*CASES[0][:1], _tools(*CASES[0][1:]), "required", max_tokens=40)
        assert again.valid and again.stats.reused_tokens >= 64, again.stats
    finally:
        assert ta.batcher is not None
        ta.batcher.close()


@pytest.mark.slow  # a benchmark's step shapes, both modes (~16 s): make test-slow
def test_step_shapes_are_measured_in_both_modes(smollm2_gguf: Path) -> None:
    """`toolace bench serve`'s step shapes: each mode's step of four sequences against the four alone."""
    from toolace.eval.bench_batching import STEP_SHAPES, step_shapes

    ta = ToolACE.load(str(smollm2_gguf), n_ctx=512, kv_cache=False)
    got = step_shapes(ta, reps=1)
    assert list(got) == [EXACT, FAST] and all(list(v) == list(STEP_SHAPES) for v in got.values())
    assert all(x > 0 for v in got.values() for x in v.values())


@pytest.mark.parametrize(("args", "code", "message"), [
    (["serve", "--batching", "quick"], 2, "Invalid value for '--batching': 'quick' is not one of 'exact', 'fast'."),
    (["eval", "--batching", "Fast"], 2, "Invalid value for '--batching': 'Fast' is not one of 'exact', 'fast'."),
])
def test_a_bad_batching_flag_fails_before_loading(args: list[str], code: int, message: str) -> None:
    from click.testing import CliRunner

    from toolace.cli import main

    res = CliRunner().invoke(main, args)
    assert res.exit_code == code and message in res.output, res.output


def test_serve_batching_fast_reaches_the_slots(smollm2_gguf: Path) -> None:
    """`toolace serve --batching fast` (a real server process): /slots reports the mode it decodes with."""
    import json
    import subprocess
    import sys

    import httpx

    toolace = str(Path(sys.executable).parent / "toolace")
    proc = subprocess.Popen([toolace, "serve", "--model", str(smollm2_gguf), "--port", "0", "--n-ctx", "512",
                             "--parallel", "2", "--batching", "fast"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"no ready line (exit {proc.poll()})"
        slots = httpx.get(json.loads(line)["url"] + "/slots", timeout=TIMEOUT).json()
        assert (slots["batching"], slots["parallel"], slots["decodes"]) == (FAST, 2, 0)
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)
