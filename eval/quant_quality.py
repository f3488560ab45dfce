"""How far a quantized model is from its reference, on function calling: token-level KL divergence and top-1
agreement on call transcripts (teacher-forced), and call-level agreement, accuracy flips and validity on BFCL
questions. Shared by `toolace eval --compare` (two models loaded together) and `toolace bench quants` (the
reference measured once, then each quant against it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolace.api import ToolACE
from toolace.errors import InputError
from toolace.grammars.gbnf import render_calls

from .bfcl import Question


@dataclass(frozen=True)
class Transcript:
    """A call transcript in tokens: the prompt toolace renders for the question, then the ground-truth calls."""
    id: str
    prompt: list[int]
    calls: list[int]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max()
    return x - math.log(float(np.exp(x).sum()))


def transcripts(ta: ToolACE, picked: list[tuple[Question, list[dict[str, Any]]]]) -> list[Transcript]:
    out = []
    for q, calls in picked:
        tools = ToolACE.toolset(q.functions).tools
        out.append(Transcript(q.id, ta.prompt_tokens(q.messages, tools),
                              ta.model.tokenize(render_calls(calls), special=False)))
    return out


def check_same_tokens(a: list[Transcript], b: list[Transcript], name_a: str, name_b: str) -> None:
    """Two quantizations of one model tokenize every transcript alike; anything else is another model."""
    if a != b:
        raise InputError(f"{name_a} and {name_b} tokenize the same prompt differently: not two quantizations of "
                         "one model")


def next_token_logprobs(ta: ToolACE, t: Transcript) -> np.ndarray:
    """Log-probabilities of the next token before each call token (prompt prefilled, then teacher forcing),
    one row per call token, as float32 (the reference's rows are kept for every quant)."""
    m = ta.model
    with ta.lock:
        m.prefill(t.prompt)
        rows = [log_softmax(m.logits())]
        for tok in t.calls[:-1]:
            m.eval([tok])
            rows.append(log_softmax(m.logits()))
    return np.asarray(rows, dtype=np.float32)


def kl_rows(ref: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position: KL(ref || other) in nats, and whether the two argmaxes agree."""
    a, b = ref.astype(np.float64), other.astype(np.float64)
    return np.sum(np.exp(a) * (a - b), axis=1), a.argmax(axis=1) == b.argmax(axis=1)


def token_figures(kls: list[np.ndarray], top1: list[np.ndarray]) -> dict[str, Any]:
    k = np.concatenate(kls) if kls else np.zeros(0)
    t = np.concatenate(top1) if top1 else np.zeros(0, dtype=bool)
    if not k.size:
        return {"positions": 0, "kl_mean": None, "kl_p99": None, "kl_max": None, "top1_agreement": None}
    return {"positions": int(k.size), "kl_mean": float(k.mean()), "kl_p99": float(np.percentile(k, 99)),
            "kl_max": float(k.max()), "top1_agreement": float(t.mean())}


def require_same_vocab(a: ToolACE, b: ToolACE, name_a: str, name_b: str) -> None:
    if a.model.n_vocab != b.model.n_vocab:
        raise InputError(f"{name_a} and {name_b} have different vocabularies ({a.model.n_vocab} vs "
                         f"{b.model.n_vocab}): not two quantizations of one model")


def call_figures(ref_rows: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Call agreement (identical parsed calls), accuracy and flips (questions whose AST verdict changed either way,
    which an unchanged accuracy can hide) against the reference's rows on the same questions."""
    pairs = list(zip(ref_rows, rows, strict=True))
    n = len(pairs)
    return {"questions": n,
            "call_agreement": sum(a["calls"] == b["calls"] for a, b in pairs) / n if n else None,
            "accuracy": sum(b["correct"] for _, b in pairs) / n if n else None,
            "flips": sum(a["correct"] != b["correct"] for a, b in pairs)}
