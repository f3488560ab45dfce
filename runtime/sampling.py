"""Sampling over a logits vector: greedy, or temperature with top-k / top-p / min-p, seeded. Parameters validated."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from toolace.errors import GenerationError, InputError
from toolace.limits import MAX_LOGIT_BIAS, MAX_LOGIT_BIAS_ENTRIES, MAX_PENALTY, MAX_TEMPERATURE


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    seed: int | None = None
    logit_bias: Mapping[int, float] = field(default_factory=dict)  # token id → added to its logit
    # OpenAI's penalties over the tokens generated so far: count * frequency_penalty + presence_penalty is
    # subtracted from a token's logit once it has been generated
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    def __post_init__(self) -> None:
        checks = [
            ("temperature", self.temperature, 0.0, MAX_TEMPERATURE),
            ("top_p", self.top_p, 0.0, 1.0),
            ("min_p", self.min_p, 0.0, 1.0),
            ("frequency_penalty", self.frequency_penalty, -MAX_PENALTY, MAX_PENALTY),
            ("presence_penalty", self.presence_penalty, -MAX_PENALTY, MAX_PENALTY),
        ]
        for name, value, lo, hi in checks:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or not lo <= value <= hi:
                raise InputError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
        if self.top_p == 0.0:
            raise InputError("top_p must be greater than 0")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise InputError(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not 0 <= self.seed < 2**64):
            raise InputError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        self._check_logit_bias()

    def _check_logit_bias(self) -> None:
        """Token ids are checked against the vocabulary by `check_vocab` once the model is known."""
        bias = self.logit_bias
        if not isinstance(bias, Mapping):
            raise InputError(f"logit_bias must be a mapping of token id to bias, got {type(bias).__name__}")
        if len(bias) > MAX_LOGIT_BIAS_ENTRIES:
            raise InputError(f"logit_bias has {len(bias)} entries, at most {MAX_LOGIT_BIAS_ENTRIES}")
        for token, value in bias.items():
            if not isinstance(token, int) or isinstance(token, bool) or token < 0:
                raise InputError(f"logit_bias keys must be token ids (non-negative integers), got {token!r}")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or abs(value) > MAX_LOGIT_BIAS:
                raise InputError(f"logit_bias for token {token} must be a number in [-{MAX_LOGIT_BIAS:g}, "
                                 f"{MAX_LOGIT_BIAS:g}], got {value!r}")

    def check_vocab(self, n_vocab: int) -> None:
        bad = [t for t in self.logit_bias if t >= n_vocab]
        if bad:
            raise InputError(f"logit_bias token id {bad[0]} is outside the vocabulary (0..{n_vocab - 1})")


class Sampler:
    """`history`: the tokens generated so far (a list the decoder appends to), for the penalties."""

    def __init__(self, params: SamplingParams, history: Sequence[int] = ()) -> None:
        self.params, self.history = params, history
        self._penalised = bool(params.frequency_penalty or params.presence_penalty)
        self.rng = np.random.default_rng(params.seed)
        self._bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64, count=len(params.logit_bias))
        self._bias_values = np.fromiter(params.logit_bias.values(), dtype=np.float32, count=len(params.logit_bias))

    @property
    def greedy(self) -> bool:
        return self.params.temperature == 0.0

    def sample(self, logits: np.ndarray, ids: np.ndarray | None = None) -> int:
        """A token id from `logits`; given `ids` (sorted token ids), from those tokens only, the rest masked out."""
        vals = logits if ids is None else logits.take(ids)
        if ids is None and (self._bias_ids.size or (self._penalised and len(self.history))):
            vals = logits.copy()  # never write into llama.cpp's logits buffer (`take` copied already)
        if self._bias_ids.size:
            _add(vals, ids, self._bias_ids, self._bias_values)
        if self._penalised and len(self.history):
            seen, counts = np.unique(np.asarray(self.history, dtype=np.int64), return_counts=True)
            p = self.params
            _add(vals, ids, seen, -(counts * p.frequency_penalty + p.presence_penalty).astype(np.float32))
        i = int(np.argmax(vals)) if self.greedy else self._draw(vals)
        return i if ids is None else int(ids[i])

    def _draw(self, logits: np.ndarray) -> int:
        """Temperature sampling with top-k, min-p and top-p over the finite logits; returns an index of `logits`."""
        p = self.params
        idx = np.flatnonzero(np.isfinite(logits))
        if idx.size == 0:
            raise GenerationError("no token is allowed")  # cannot happen under a valid grammar; fail loudly
        vals = logits[idx].astype(np.float64) / p.temperature
        if p.top_k and idx.size > p.top_k:
            keep = np.argpartition(-vals, p.top_k - 1)[: p.top_k]
            idx, vals = idx[keep], vals[keep]
        probs = np.exp(vals - vals.max())
        probs /= probs.sum()
        if p.min_p > 0.0:
            mask = probs >= p.min_p * probs.max()
            idx, probs = idx[mask], probs[mask] / probs[mask].sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs)
            cum = np.cumsum(probs[order])
            cut = int(np.searchsorted(cum, p.top_p)) + 1
            keep = order[:cut]
            idx, probs = idx[keep], probs[keep] / probs[keep].sum()
        return int(idx[self.rng.choice(idx.size, p=probs)])


def _add(vals: np.ndarray, ids: np.ndarray | None, add_ids: np.ndarray, add_values: np.ndarray) -> None:
    """vals[token] += value for each (token, value); `ids` given: vals holds those sorted token ids only."""
    if ids is None:
        vals[add_ids] += add_values
        return
    pos = np.minimum(np.searchsorted(ids, add_ids), ids.size - 1)
    hit = ids[pos] == add_ids
    vals[pos[hit]] += add_values[hit]
