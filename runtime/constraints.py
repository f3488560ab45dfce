"""Grammar engines for decoding, both rejection-first: sample from the raw logits, check that one token, and
compute the full mask only when it is rejected.

- `llguidance`: llguidance's matcher over the model's vocabulary (GBNF converted once); also gives fast-forward.
- `llama`: llama.cpp's own GBNF sampler through the low-level API (the portable baseline).
Both fail closed: a grammar either engine cannot load is an error before any token is generated."""

from __future__ import annotations

import ctypes
import time
from typing import Any, Protocol

import llama_cpp
import numpy as np

from toolace.errors import GenerationError, SchemaError

from ..grammars.check import to_llguidance
from .model import Model
from .sampling import Sampler

ENGINES = ("llguidance", "llama")
DISALLOWED = np.float32(3e38)  # added negatively to masked-out logits; near float32's max, still finite
DEFAULT_ENGINE = "llguidance"  # faster mask (see `toolace bench`); both give identical greedy output


class Constraint(Protocol):
    def choose(self, logits: np.ndarray, sampler: Sampler) -> int: ...
    def accept(self, token: int) -> None: ...
    def forced_tokens(self) -> list[int]: ...
    def accept_forced(self, tokens: list[int]) -> None: ...
    rejections: int
    step_ms: list[float]


def _matcher(model: Model, gbnf: str) -> Any:
    import llguidance

    matcher = llguidance.LLMatcher(model.lltokenizer(), to_llguidance(gbnf), log_level=0)
    if matcher.is_error():
        raise SchemaError(f"llguidance rejected the grammar: {matcher.get_error()}")
    return matcher


class _Timed:
    """Per-token grammar cost: time in checks, masks and re-sampling after rejection, plus accepting the token.
    The plain sample from the raw logits is not counted (unconstrained decoding does it too)."""

    def __init__(self) -> None:
        self.step_ms: list[float] = []
        self._pending = 0.0
        self.rejections = 0

    def _close_step(self, seconds: float) -> None:
        self.step_ms.append((self._pending + seconds) * 1000)
        self._pending = 0.0


class LLGuidanceConstraint(_Timed):
    def __init__(self, model: Model, gbnf: str) -> None:
        super().__init__()
        self.model = model
        self.matcher = _matcher(model, gbnf)
        self.n_vocab = model.n_vocab
        self._penalty = np.empty(self.n_vocab, dtype=np.float32)
        self._masked_buf = np.empty(self.n_vocab, dtype=np.float32)

    def choose(self, logits: np.ndarray, sampler: Sampler) -> int:
        token = sampler.sample(logits)
        t0 = time.perf_counter()
        if self.matcher.validate_tokens([token]) != 1:
            self.rejections += 1
            token = sampler.sample(self._masked(logits))
        self._pending += time.perf_counter() - t0
        return token

    def _masked(self, logits: np.ndarray) -> np.ndarray:
        """Logits with disallowed tokens pushed to -3e38 (arithmetic, not boolean indexing: ~5x faster on a
        128k vocabulary; exp() of such a logit is exactly 0, so they are never sampled)."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, count=self.n_vocab, bitorder="little")
        if not allowed.any():
            raise GenerationError(f"grammar allows no token: {self.matcher.get_error() or 'dead end'}")
        np.subtract(allowed, np.float32(1), out=self._penalty, dtype=np.float32)
        np.multiply(self._penalty, DISALLOWED, out=self._penalty)
        return np.add(logits[: self.n_vocab], self._penalty, out=self._masked_buf)

    def accept(self, token: int) -> None:
        t0 = time.perf_counter()
        if not self.matcher.consume_token(token):
            raise GenerationError(f"grammar refused token {token}: {self.matcher.get_error()}")
        self._close_step(time.perf_counter() - t0)

    def forced_tokens(self) -> list[int]:
        return list(self.matcher.compute_ff_tokens())

    def accept_forced(self, tokens: list[int]) -> None:
        if not self.matcher.consume_tokens(tokens):
            raise GenerationError(f"grammar refused forced tokens: {self.matcher.get_error()}")


class LlamaGrammarConstraint(_Timed):
    """llama.cpp's sampler decides what is allowed; an llguidance matcher rides along only to find forced tokens,
    so fast-forward (and hence the token sequence the model sees) is the same for both engines."""

    def __init__(self, model: Model, gbnf: str) -> None:
        super().__init__()
        self.model = model
        self.forcer = _matcher(model, gbnf)
        self.smpl = llama_cpp.llama_sampler_init_grammar(model.vocab, gbnf.encode("utf-8"), b"root")
        if not self.smpl:
            raise SchemaError("llama.cpp's GBNF parser rejected the grammar")
        self.n_vocab = model.n_vocab
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_arr = llama_cpp.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        self._all = np.zeros(self.n_vocab, dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)],
                                                           align=True))
        self._all["id"] = np.arange(self.n_vocab, dtype=np.intc)
        self._all_arr = llama_cpp.llama_token_data_array(
            data=self._all.ctypes.data_as(llama_cpp.llama_token_data_p), size=self.n_vocab, selected=-1, sorted=False)

    def __del__(self) -> None:
        if getattr(self, "smpl", None):
            llama_cpp.llama_sampler_free(self.smpl)
            self.smpl = None

    def choose(self, logits: np.ndarray, sampler: Sampler) -> int:
        token = sampler.sample(logits)
        t0 = time.perf_counter()
        token = self._check(token, logits, sampler)
        self._pending += time.perf_counter() - t0
        return token

    def _check(self, token: int, logits: np.ndarray, sampler: Sampler) -> int:
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
        self._one_arr.size = 1
        llama_cpp.llama_sampler_apply(self.smpl, ctypes.byref(self._one_arr))
        if np.isfinite(self._one[0].logit):
            return token
        self.rejections += 1
        self._all["logit"] = logits[: self.n_vocab]
        self._all_arr.size, self._all_arr.sorted, self._all_arr.selected = self.n_vocab, False, -1
        llama_cpp.llama_sampler_apply(self.smpl, ctypes.byref(self._all_arr))
        masked = self._all["logit"].copy()
        if not np.isfinite(masked).any():
            raise GenerationError("grammar allows no token (dead end)")
        return sampler.sample(masked)

    def accept(self, token: int) -> None:
        t0 = time.perf_counter()
        llama_cpp.llama_sampler_accept(self.smpl, token)
        self._close_step(time.perf_counter() - t0)  # the forcer below serves fast-forward, not the mask
        self.forcer.consume_token(token)

    def forced_tokens(self) -> list[int]:
        return list(self.forcer.compute_ff_tokens())

    def accept_forced(self, tokens: list[int]) -> None:
        for t in tokens:
            self.accept(t)


def make_constraint(engine: str, model: Model, gbnf: str) -> Constraint:
    if engine == "llguidance":
        return LLGuidanceConstraint(model, gbnf)
    if engine == "llama":
        return LlamaGrammarConstraint(model, gbnf)
    raise SchemaError(f"unknown grammar engine {engine!r}; choose one of {', '.join(ENGINES)}")
