"""Grammar engines for decoding, both rejection-first: sample from the raw logits, check that one token, and
compute the full mask only when it is rejected.

- `llguidance`: llguidance's matcher over the model's vocabulary (GBNF converted once); also gives fast-forward.
- `llama`: llama.cpp's own GBNF sampler through the low-level API (the portable baseline).
Both fail closed: a grammar either engine cannot load is an error before any token is generated."""

from __future__ import annotations

import ctypes
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import llama_cpp
import numpy as np

from toolace.errors import GenerationError, SchemaError

from ..grammars.check import to_llguidance
from ..grammars.leftrec import check_llama_gbnf
from .model import Model, usable_cores
from .sampling import Sampler

ENGINES = ("llguidance", "llama")
# Masks are computed ahead (during the forward pass) once this share of recent tokens was rejected: with a model
# that mostly agrees with the grammar the work would be wasted CPU taken from llama.cpp's threads.
PREFETCH_REJECTION_RATE = 0.25
REJECTION_RATE_WEIGHT = 0.25  # weight of the newest token in that moving rejection rate (~the last 4-8 tokens)
# Two helper threads: a mask is ~0.1 ms of work and one generation has at most one in flight; the second serves
# a second model in the same process.
_MASK_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="toolace-mask")
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


class _Mask:
    """One grammar state's allowed tokens: the bitmask (for O(1) checks) and the logit penalty (0 or -3e38)."""

    __slots__ = ("bits", "penalty", "dead")

    def __init__(self, bits: np.ndarray, penalty: np.ndarray, dead: bool) -> None:
        self.bits, self.penalty, self.dead = bits, penalty, dead

    def allows(self, token: int) -> bool:
        return 0 <= token < self.penalty.size and bool(self.bits[token >> 3] >> (token & 7) & 1)


def spare_core(model: Model) -> bool:
    """Is a core free while the model computes (GPU offload, or fewer llama.cpp threads than usable cores)? Only
    then does a helper thread overlap the forward pass; otherwise it takes CPU (and the GIL) from decoding."""
    return model.n_gpu_layers != 0 or usable_cores() > model.n_threads


def _mask_of(matcher: Any, penalty: np.ndarray) -> _Mask:
    """The matcher's current mask; `penalty` (one float32 per token) is filled in and becomes the mask's."""
    bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
    allowed = np.unpackbits(bits, count=penalty.size, bitorder="little")
    # arithmetic, not boolean indexing (~5x faster on 128k); exp(-3e38 + x) is exactly 0: never sampled
    np.subtract(allowed, np.float32(1), out=penalty, dtype=np.float32)
    np.multiply(penalty, DISALLOWED, out=penalty)
    return _Mask(bits, penalty, not bits.any())


def _sample_masked(sampler: Sampler, logits: np.ndarray, mask: _Mask, out: np.ndarray) -> int:
    """Re-sample among the mask's tokens: logits plus its penalty, into the caller's buffer."""
    return sampler.sample(np.add(logits[: out.size], mask.penalty, out=out))


class LLGuidanceConstraint(_Timed):
    """Rejection-first over llguidance. While rejections are frequent (random weights, a model fighting the
    grammar) and a core is spare, the next state's mask is computed on a helper thread during the model's forward
    pass, so a rejection costs one vector add and the re-sample instead of a mask computation on the critical
    path."""

    def __init__(self, model: Model, gbnf: str) -> None:
        super().__init__()
        self.model = model
        self.matcher = _matcher(model, gbnf)
        self.n_vocab = model.n_vocab
        self._penalty = np.empty(self.n_vocab, dtype=np.float32)
        self._masked_buf = np.empty(self.n_vocab, dtype=np.float32)
        self._mask: _Mask | None = None  # the current state's mask, once computed
        self._next: Future[_Mask] | None = None  # the helper thread computing it; the matcher is its until then
        self._rejection_rate = 0.0
        self._prefetch = spare_core(model)
        self.background_ms: list[float] = []  # helper-thread mask time, off the critical path

    def _compute_mask(self) -> _Mask:
        t0 = time.perf_counter()
        mask = _mask_of(self.matcher, self._penalty)
        self.background_ms.append((time.perf_counter() - t0) * 1000)
        return mask

    def _settle(self) -> None:
        """Wait for the helper thread: the matcher is not safe to touch while it computes."""
        if self._next is not None:
            future, self._next = self._next, None
            self._mask = future.result()

    def choose(self, logits: np.ndarray, sampler: Sampler) -> int:
        token = sampler.sample(logits)
        t0 = time.perf_counter()
        self._settle()
        ok = self._mask.allows(token) if self._mask is not None else self.matcher.validate_tokens([token]) == 1
        if not ok:
            self.rejections += 1
            if self._mask is None:
                self._mask = self._compute_mask()
                self.background_ms.pop()  # computed here, on the critical path: not background time
            if self._mask.dead:
                raise GenerationError(f"grammar allows no token: {self.matcher.get_error() or 'dead end'}")
            token = _sample_masked(sampler, logits, self._mask, self._masked_buf)
        self._rejection_rate += REJECTION_RATE_WEIGHT * ((not ok) - self._rejection_rate)
        self._pending += time.perf_counter() - t0
        return token

    def _advanced(self) -> None:
        """The state moved on: drop its mask, and start the next one if rejections are frequent."""
        self._mask = None
        if self._prefetch and self._rejection_rate >= PREFETCH_REJECTION_RATE and not self.matcher.is_stopped():
            self._next = _MASK_POOL.submit(self._compute_mask)

    def accept(self, token: int) -> None:
        t0 = time.perf_counter()
        self._settle()
        if not self.matcher.consume_token(token):
            raise GenerationError(f"grammar refused token {token}: {self.matcher.get_error()}")
        self._advanced()  # starting the helper counts too: it is on the critical path
        self._close_step(time.perf_counter() - t0)

    def forced_tokens(self) -> list[int]:
        self._settle()
        return list(self.matcher.compute_ff_tokens())

    def accept_forced(self, tokens: list[int]) -> None:
        self._settle()
        if not self.matcher.consume_tokens(tokens):
            raise GenerationError(f"grammar refused forced tokens: {self.matcher.get_error()}")
        self._advanced()


class LlamaGrammarConstraint(_Timed):
    """llama.cpp's sampler decides what is allowed; an llguidance matcher rides along only for forced text (the
    tokens to fast-forward, and their canonical split), so the token sequence the model sees is the same for both
    engines."""

    def __init__(self, model: Model, gbnf: str) -> None:
        super().__init__()
        self.model = model
        self.forcer = _matcher(model, gbnf)
        check_llama_gbnf(gbnf)  # left recursion through a nullable rule makes llama.cpp allocate until it dies
        self.smpl = llama_cpp.llama_sampler_init_grammar(model.vocab, gbnf.encode("utf-8"), b"root")
        if not self.smpl:
            raise SchemaError("llama.cpp's GBNF parser rejected the grammar")
        self.n_vocab = model.n_vocab
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_arr = llama_cpp.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        self._all = np.zeros(self.n_vocab, dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)],
                                                           align=True))
        self._all["id"] = np.arange(self.n_vocab, dtype=np.intc)
        self._penalty = np.empty(self.n_vocab, dtype=np.float32)
        self._masked_buf = np.empty(self.n_vocab, dtype=np.float32)
        self._all_arr = llama_cpp.llama_token_data_array(
            data=self._all.ctypes.data_as(llama_cpp.llama_token_data_p), size=self.n_vocab, selected=-1, sorted=False)

    def __del__(self) -> None:
        if getattr(self, "smpl", None):
            llama_cpp.llama_sampler_free(self.smpl)
            self.smpl = None

    def choose(self, logits: np.ndarray, sampler: Sampler) -> int:
        token = sampler.sample(logits)
        t0 = time.perf_counter()
        if self.forcer.compute_ff_bytes():
            # Text the grammar forces is tokenized canonically, as llguidance does (llama.cpp's sampler would take
            # any split of it, e.g. "_tr" + "iangle"): both engines then give the same tokens.
            mask = _mask_of(self.forcer, self._penalty)
            if not mask.allows(token):
                self.rejections += 1
                token = _sample_masked(sampler, logits, mask, self._masked_buf)
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
