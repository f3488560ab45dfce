"""Sampling over a logits vector: greedy, or temperature with top-k / top-p / min-p, seeded. Parameters validated."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from toolace.errors import InputError
from toolace.limits import MAX_TEMPERATURE


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            ("temperature", self.temperature, 0.0, MAX_TEMPERATURE),
            ("top_p", self.top_p, 0.0, 1.0),
            ("min_p", self.min_p, 0.0, 1.0),
        ]
        for name, value, lo, hi in checks:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or not lo <= value <= hi:
                raise InputError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
        if self.top_p == 0.0:
            raise InputError("top_p must be greater than 0")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise InputError(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise InputError(f"seed must be an integer, got {self.seed!r}")


class Sampler:
    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    @property
    def greedy(self) -> bool:
        return self.params.temperature == 0.0

    def sample(self, logits: np.ndarray) -> int:
        if self.greedy:
            return int(np.argmax(logits))
        p = self.params
        idx = np.flatnonzero(np.isfinite(logits))
        if idx.size == 0:
            raise InputError("no token is allowed")  # cannot happen under a valid grammar; fail loudly
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
