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

from toolace.errors import GenerationError, InputError, SchemaError
from toolace.limits import MASK_IDS_CACHE_ENTRIES

from ..grammars.check import to_llguidance
from ..grammars.leftrec import check_llama_gbnf
from .model import Model
from .sampling import Sampler

ENGINES = ("llguidance", "llama")
# Once this share of recent tokens was rejected, the mask is computed without checking the sampled token first.
# Checking costs a validate (~20 us) plus a mask on rejection; masking first costs a mask (~30-50 us at 128k, cold
# caches) every token: it pays only when most tokens are rejected (random weights, a model fighting the grammar).
MASK_FIRST_REJECTION_RATE = 0.6
REJECTION_RATE_WEIGHT = 0.25  # weight of the newest token in that moving rejection rate (~the last 4-8 tokens)
DEFAULT_ENGINE = "llguidance"  # faster mask (see `toolace bench`); both give identical greedy output


class Constraint(Protocol):
    def choose(self, logits: np.ndarray, sampler: Sampler) -> int: ...
    def accept(self, token: int) -> None: ...
    def forced_tokens(self) -> list[int]: ...
    def accept_forced(self, tokens: list[int]) -> None: ...
    def discard(self) -> None: ...
    def rollback(self, n: int) -> None: ...
    def allowed_prefix(self, tokens: list[int]) -> int: ...
    rejections: int
    step_ms: list[float]


def _allowed_prefix(matcher: Any, tokens: list[int]) -> int:
    """How many leading `tokens` the matcher would accept, leaving its state as it was (a speculative draft is
    checked, never accepted: runtime/speculative.py)."""
    n = int(matcher.try_consume_tokens(tokens))
    if n and not matcher.rollback(n):
        raise GenerationError(f"grammar rollback failed: {matcher.get_error()}")
    return n


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


class _Masks:
    """The allowed tokens of a matcher's current state, in one reused buffer of llguidance's bitmask (bit t % 32 of
    word t // 32): a check is one word read. A re-sample needs token ids, kept per distinct mask, since a model
    fighting the grammar revisits the same states (digits, string interiors); they are the allowed ids, or the
    refused ones when the mask is mostly open."""

    def __init__(self, matcher: Any, n_vocab: int) -> None:
        self.matcher, self.n_vocab = matcher, n_vocab
        self.words = np.zeros((n_vocab + 31) // 32, dtype=np.int32)
        self._ptr, self._nbytes = self.words.ctypes.data, self.words.nbytes  # fixed: looked up once, not per token
        self._bits = memoryview(self.words).cast("B").cast("I")
        self._ids: dict[bytes, tuple[np.ndarray, bool]] = {}  # mask bytes -> (ids, ids are the refused side)
        self._last: tuple[bytes, tuple[np.ndarray, bool]] = (b"", (np.empty(0, dtype=np.intp), False))

    def fill(self) -> None:
        """Compute the mask of the matcher's current state."""
        self.matcher.unsafe_compute_mask_ptr(self._ptr, self._nbytes)

    def allows(self, token: int) -> bool:
        return 0 <= token < self.n_vocab and bool(self._bits[token >> 5] >> (token & 31) & 1)

    def resolve(self) -> tuple[np.ndarray, bool]:
        """The current mask's token ids (allowed, or refused when the mask is mostly open), cached per mask."""
        key = self.words.tobytes()
        if key == self._last[0]:  # the same mask as last time (digits, a string): a compare, no hashing
            return self._last[1]
        hit = self._ids.get(key)
        if hit is None:
            nz = np.flatnonzero(self.words)
            if nz.size <= self.words.size // 2:  # few words set: the allowed side (the fewest numpy calls)
                hit = (_bits_at(self.words, nz), False)
            else:
                inverse = ~self.words
                ids = _bits_at(inverse, np.flatnonzero(inverse))
                hit = (ids[ids < self.n_vocab], True)  # the last word's bits past the vocabulary are set here
            if len(self._ids) >= MASK_IDS_CACHE_ENTRIES:
                del self._ids[next(iter(self._ids))]  # oldest first
            self._ids[key] = hit
        self._last = (key, hit)
        return hit

    def sample(self, sampler: Sampler, logits: np.ndarray, out: np.ndarray) -> int:
        """Re-sample among the allowed tokens; `out` (n_vocab float32) is scratch for a mostly-open mask."""
        ids, refused = self.resolve()
        if not refused:
            if ids.size == 0:
                raise GenerationError(f"grammar allows no token: {self.matcher.get_error() or 'dead end'}")
            return sampler.sample(logits, ids)
        np.copyto(out, logits[: self.n_vocab])
        out[ids] = -np.inf
        return sampler.sample(out)


def _bits_at(words: np.ndarray, nz: np.ndarray) -> np.ndarray:
    """Indices of the set bits of int32 words, ascending, given the indices `nz` of the non-zero words (byte order
    little-endian, as on x86-64 and arm64)."""
    rows, cols = np.nonzero(np.unpackbits(words.view(np.uint8).reshape(-1, 4)[nz], axis=1, bitorder="little"))
    return nz[rows] * 32 + cols


class LLGuidanceConstraint(_Timed):
    """Rejection-first over llguidance while the model mostly agrees with the grammar: check the sampled token,
    mask only on rejection. While rejections are frequent (random weights, a model fighting the grammar) the check
    is skipped and the mask computed at once."""

    def __init__(self, model: Model, gbnf: str) -> None:
        super().__init__()
        self.model = model
        self.matcher = _matcher(model, gbnf)
        self.n_vocab = model.n_vocab
        self.masks = _Masks(self.matcher, self.n_vocab)
        self._scratch = np.empty(self.n_vocab, dtype=np.float32)
        self._filled = False  # the buffer holds the current state's mask
        self._consumed: int | None = None  # the token `choose` already consumed while checking it
        self._rejection_rate = 0.0

    def _fill(self) -> None:
        if not self._filled:
            self.masks.fill()
            self._filled = True

    def choose(self, logits: np.ndarray, sampler: Sampler) -> int:
        token = sampler.sample(logits)
        t0 = time.perf_counter()
        if self._rejection_rate >= MASK_FIRST_REJECTION_RATE:
            self._fill()
        if self._filled:
            ok = self.masks.allows(token)
        else:  # checked by consuming it: `accept` of this same token (it always follows) then has nothing to do
            ok = self.matcher.try_consume_tokens([token]) == 1
            self._consumed = token if ok else None
        if not ok:
            self.rejections += 1
            self._fill()
            token = self.masks.sample(sampler, logits, self._scratch)
        self._rejection_rate += REJECTION_RATE_WEIGHT * ((not ok) - self._rejection_rate)
        self._pending += time.perf_counter() - t0
        return token

    def accept(self, token: int) -> None:
        t0 = time.perf_counter()
        consumed, self._consumed = self._consumed, None
        if consumed is not None:
            if consumed != token:
                raise GenerationError(f"token {token} accepted after {consumed} was chosen and consumed")
        elif not self.matcher.consume_token(token):
            raise GenerationError(f"grammar refused token {token}: {self.matcher.get_error()}")
        self._filled = False
        self._close_step(time.perf_counter() - t0)

    def forced_tokens(self) -> list[int]:
        return list(self.matcher.compute_ff_tokens())

    def accept_forced(self, tokens: list[int]) -> None:
        if not self.matcher.consume_tokens(tokens):
            raise GenerationError(f"grammar refused forced tokens: {self.matcher.get_error()}")
        self._filled = False

    def discard(self) -> None:
        """Forget the token `choose` returned: the budget guard emits another one instead."""
        if self._consumed is not None:
            self.matcher.rollback(1)
            self._consumed = None
        self._filled = False

    def allowed_prefix(self, tokens: list[int]) -> int:
        if self._consumed is not None:
            raise GenerationError("a draft was checked while a chosen token was held")
        return _allowed_prefix(self.matcher, tokens)

    def rollback(self, n: int) -> None:
        """Undo the last n accepted tokens (a runaway value cut back)."""
        self.discard()
        if n and not self.matcher.rollback(n):
            raise GenerationError(f"grammar rollback failed: {self.matcher.get_error()}")


class LlamaGrammarConstraint(_Timed):
    """llama.cpp's sampler decides what is allowed; an llguidance matcher rides along only for forced text (the
    tokens to fast-forward, and their canonical split), so the token sequence the model sees is the same for both
    engines."""

    def __init__(self, model: Model, gbnf: str) -> None:
        super().__init__()
        self.model = model
        self.forcer = _matcher(model, gbnf)
        check_llama_gbnf(gbnf)  # left recursion through a nullable rule makes llama.cpp allocate until it dies
        self.gbnf = gbnf
        self.smpl = llama_cpp.llama_sampler_init_grammar(model.vocab, gbnf.encode("utf-8"), b"root")
        if not self.smpl:
            raise SchemaError("llama.cpp's GBNF parser rejected the grammar")
        self.history: list[int] = []  # accepted tokens: llama.cpp's grammar sampler cannot roll back, it is rebuilt
        self.n_vocab = model.n_vocab
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_arr = llama_cpp.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        self._all = np.zeros(self.n_vocab, dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)],
                                                           align=True))
        self._all["id"] = np.arange(self.n_vocab, dtype=np.intc)
        self._scratch = np.empty(self.n_vocab, dtype=np.float32)
        self._forced_masks = _Masks(self.forcer, self.n_vocab)
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
            self._forced_masks.fill()
            if not self._forced_masks.allows(token):
                self.rejections += 1
                token = self._forced_masks.sample(sampler, logits, self._scratch)
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
        self.history.append(token)

    def discard(self) -> None:
        """Nothing to undo: `choose` consumes nothing here."""

    def allowed_prefix(self, tokens: list[int]) -> int:
        """Checked on the llguidance matcher that rides along: a draft llama.cpp's sampler would refuse where
        llguidance allows it is verified and then not taken (the loop's choice decides), never taken wrongly."""
        return _allowed_prefix(self.forcer, tokens)

    def rollback(self, n: int) -> None:
        """Undo the last n accepted tokens: a fresh llama.cpp grammar sampler replays the rest."""
        if not n:
            return
        keep = self.history[: len(self.history) - n]
        smpl = llama_cpp.llama_sampler_init_grammar(self.model.vocab, self.gbnf.encode("utf-8"), b"root")
        if not smpl:
            raise GenerationError("llama.cpp could not rebuild the grammar sampler")
        llama_cpp.llama_sampler_free(self.smpl)
        self.smpl = smpl
        for t in keep:
            llama_cpp.llama_sampler_accept(self.smpl, t)
        self.forcer.rollback(n)
        self.history = keep

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
    raise InputError(f"unknown grammar engine {engine!r}; choose one of {', '.join(ENGINES)}")
