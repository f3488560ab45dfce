"""`toolace imatrix`: an importance matrix calibrated on function calling, in the model's own prompt.

Each calibration transcript is one BFCL question rendered exactly as toolace prompts the model (ToolACE's system
prompt with the question's tools, the user turn), then the ground-truth calls as the assistant's turn (in the
canonical call syntax, as conversation history is re-rendered), then one tool-result turn per call. The statistics
are measured inside llama.cpp (runtime/imatrix.py) and written in llama.cpp's imatrix format (convert/imatrix_file.py),
which `toolace quantize --imatrix` and llama.cpp's `llama-quantize` both read.

The transcripts are the first `limit` questions with a concrete ground truth, taken round-robin over the
categories from the start of each file (eval/evaluate.py call_transcripts): a held-aside set must come from
elsewhere (the end of the files)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from toolace.errors import InputError
from toolace.limits import IMATRIX_CONTEXT_TOKENS, IMATRIX_DEFAULT_LIMIT, MAX_IMATRIX_TRANSCRIPTS
from toolace.paths import atomic_output

from ..convert.gguf_check import check_gguf
from ..convert.imatrix_file import imatrix_format, write_imatrix
from ..runtime.history import default_tool_role, to_template_messages
from ..runtime.imatrix import measure_imatrix
from ..runtime.model import Model
from ..runtime.prompt import tool_messages
from ..runtime.refs import resolve_model
from .bfcl import Question, category_names, default_data_dir, load_questions
from .defaults import DEFAULT_CATEGORIES
from .evaluate import call_transcripts

TOOL_RESULT = {"status": "ok"}  # BFCL has no tool results: each call's result turn says it succeeded
DATASET_NAME = "toolace-bfcl-calls"  # the `imatrix.datasets` entry: what the statistics were measured on


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_IMATRIX_TRANSCRIPTS:
        raise InputError(f"--limit must be a whole number of transcripts from 1 to {MAX_IMATRIX_TRANSCRIPTS}, "
                         f"got {limit!r}")
    return limit


def transcript_messages(q: Question, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The question's conversation, the ground-truth calls as the assistant's tool_calls, and their results."""
    ids = [f"call_{i}" for i in range(len(calls))]
    assistant = {"role": "assistant", "content": None, "tool_calls": [
        {"id": i, "type": "function", "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
        for i, c in zip(ids, calls, strict=True)]}
    results = [{"role": "tool", "tool_call_id": i, "content": json.dumps(TOOL_RESULT)} for i in ids]
    return [*q.messages, assistant, *results]


def calibration_set(data: str | os.PathLike[str] | None, limit: int) -> list[tuple[Question, list[dict[str, Any]]]]:
    """Up to `limit` (question, ground-truth calls) pairs from the BFCL folder `data` (default: the eval's)."""
    folder = str(data) if data is not None else default_data_dir()
    categories = category_names(folder, DEFAULT_CATEGORIES)  # the eval's message: where the data is, how to get it
    questions = list(load_questions(folder, categories))
    picked = call_transcripts(questions, limit)
    if not picked:
        raise InputError(f"no BFCL question in {folder} has a ground-truth call to calibrate on")
    return picked


def token_transcripts(model: Model, picked: list[tuple[Question, list[dict[str, Any]]]]) -> Iterator[list[int]]:
    """Each transcript rendered by the model's chat template as toolace renders prompts, cut at the context."""
    from toolace.grammars.toolset import build_toolset

    template = model.chat_template()
    tool_role = default_tool_role(model.metadata.get("tokenizer.chat_template") or "")
    for q, calls in picked:
        tools = build_toolset(q.functions).tools
        msgs = to_template_messages(tool_messages(transcript_messages(q, calls), tools), tool_role)
        tokens = model.tokenize_segments(template.render(msgs, add_generation_prompt=False))
        yield tokens[:IMATRIX_CONTEXT_TOKENS]


def check_output(model: Path, outfile: str | os.PathLike[str]) -> Path:
    dst = Path(outfile)
    if dst.exists() and dst.resolve() == model.resolve():
        raise InputError(f"{dst}: output would overwrite the model")
    return dst


def measure_to(m: Model, transcripts: Iterable[list[int]], dst: Path, dataset: str) -> int:
    """Measure `m` on token `transcripts` and write the imatrix to `dst` (atomically); returns the tokens measured."""
    counted = [0]

    def counting() -> Iterator[list[int]]:
        for tokens in transcripts:
            counted[0] += len(tokens)
            yield tokens

    entries = measure_imatrix(m, counting(), IMATRIX_CONTEXT_TOKENS)
    with atomic_output(dst) as tmp:
        write_imatrix(tmp, entries, imatrix_format(dst), datasets=[dataset], chunk_size=IMATRIX_CONTEXT_TOKENS)
    return counted[0]


def load_for_imatrix(model: str | os.PathLike[str]) -> Model:
    path = resolve_model(model)
    check_gguf(path)
    return Model(path, n_ctx=IMATRIX_CONTEXT_TOKENS, own_context=False)


def imatrix(model: str | os.PathLike[str], outfile: str | os.PathLike[str], data: str | os.PathLike[str] | None = None,
            limit: int = IMATRIX_DEFAULT_LIMIT) -> Path:
    """Measure `model`'s importance matrix on `limit` function-calling transcripts and write it to `outfile`
    (llama.cpp's GGUF imatrix layout, or its legacy layout for a name ending in .dat). Nothing is written on error."""
    check_limit(limit)
    picked = calibration_set(data, limit)  # bad data fails before the model loads
    path = resolve_model(model)
    dst = check_output(path, outfile)
    m = load_for_imatrix(path)
    measure_to(m, token_transcripts(m, picked), dst, DATASET_NAME)
    return dst
