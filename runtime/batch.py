"""Parallel slots: one llama.cpp context holding several sequences (a KV stream each), decoded together
(docs/parallel.md).

Each request runs the ordinary decoding loop (runtime/generate.py) in its own thread on a `SlotModel`: the `Model`
surface for one sequence. Its `eval` hands tokens to the shared `Batcher` and waits; one step decodes the pending
tokens of every active sequence, prompt chunks and next tokens alike (continuous batching: a request joins and leaves
between steps): one `llama_decode` per length with a KV stream per slot (exact), one in all with a pool (fast).
A step starts once every active sequence has submitted, or STEP_GATHER_SECONDS after the first did: a sequence
late for a step is not waited for again until it submits."""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from toolace.errors import GenerationError, InputError, ModelFileError
from toolace.limits import (
    BATCHING_MODES,
    MAX_FAST_FORWARD_TOKENS,
    MAX_PARALLEL,
    SPEC_MAX_DRAFT_TOKENS,
    STEP_GATHER_SECONDS,
)

from .chunks import PREFILL_CHUNK, eval_in_chunks, reusable_prefix, whole_chunks
from .kv_types import KV_TYPES
from .model import Model, check_eval, check_prompt

EXACT, FAST = BATCHING_MODES


@dataclass
class _Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)  # what the KV cache holds for this sequence, in order
    chunked: int = 0  # leading tokens evaluated as whole PREFILL_CHUNK chunks (reusable by any slot)
    busy: bool = False
    late: bool = False  # missed a step's gathering: not waited for until it submits again
    logits: np.ndarray | None = None
    rows: list[np.ndarray | None] | None = None  # logits after the tokens of its last step it asked for (a draft)
    steps: int = 0  # decode steps this slot took part in (this request)
    shared_steps: int = 0  # ... of which with at least one other sequence in the same llama_decode
    joined_at_step: int = 0  # the batcher's step count when this request's first tokens were decoded


@dataclass
class _Pending:
    slot: _Slot
    tokens: list[int]
    want: list[bool] | None = None  # logits after each token where true, not only the last (a draft's verification)
    done: bool = False
    error: BaseException | None = None


class Batcher:
    """The shared context and its slots. Slot bookkeeping and KV edits happen under `cond`, never during a
    decode; the decode itself runs outside the lock in whichever waiting thread starts the step."""

    def __init__(self, model: Model, slots: int, batching: str = EXACT) -> None:
        check_parallel(slots)
        check_batching(batching)
        self.model, self.n_slots, self.batching = model, slots, batching
        self.n_ctx = model.n_ctx  # per slot: each slot has a KV stream of n_ctx cells (docs/parallel.md)
        # A step carries at most one prompt chunk, or one fast-forward run and a speculative draft, per sequence.
        self.share = max(PREFILL_CHUNK, MAX_FAST_FORWARD_TOKENS + SPEC_MAX_DRAFT_TOKENS)
        self.batch_tokens = slots * self.share
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.n_ctx * slots
        params.n_batch = params.n_ubatch = self.batch_tokens
        params.n_seq_max = slots
        # Exact: one KV stream per sequence, not a unified pool: a sequence's attention then runs over its own cells
        # only, laid out as in a context of its own, so a greedy answer does not depend on what other slots hold (the
        # server's reproducibility); a shared prefix is copied between streams (llama_memory_seq_cp). Fast: one pool,
        # so a step of any lengths is one ubatch, and a sequence's cells lie where history put them.
        params.kv_unified = batching == FAST
        # Attention as a context of its own computes it (Model: llama-cpp-python's default, no flash attention), so
        # a slot's greedy answer equals the one-request engine's; llama.cpp's auto flash attention changed 12% of calls.
        # A quantized K/V cache (--kv-type) needs flash attention: then the slots use it as Model does.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if model.flash_attn \
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.type_k = params.type_v = KV_TYPES[model.kv_type][0]
        params.n_threads = params.n_threads_batch = model.n_threads
        ctx = llama_cpp.llama_init_from_model(model.llm._model.model, params)
        if not ctx:
            raise ModelFileError(f"llama.cpp could not create a {slots}-slot context of {params.n_ctx} tokens")
        self.ctx = ctx
        self.mem = llama_cpp.llama_get_memory(ctx)
        self.batch = llama_cpp.llama_batch_init(self.batch_tokens, 0, 1)
        self.slots = [_Slot(i) for i in range(slots)]
        self.cond = threading.Condition()
        self.decoding = False
        self.pending: list[_Pending] = []
        self.steps = 0  # batching steps (each one or more llama_decode calls)
        self.max_sequences = 0  # most sequences seen in one step
        self.decodes = 0  # llama_decode calls
        self.decoded_tokens = 0  # tokens they carried
        self.shared_decodes = 0  # ... of them carrying tokens of two or more sequences
        self.max_sequences_per_decode = 0
        self.decode_seconds = 0.0  # in llama_decode (the rest of a step's wall time is the sequences' own work)
        model.lltokenizer()  # built once here, not raced for by the first requests

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # --- slots ------------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def slot(self) -> Iterator[SlotModel]:
        """A free slot for one generation (waits for one), released on exit however the generation ended."""
        with self.cond:
            while all(s.busy for s in self.slots):
                self.cond.wait()
            # An idle slot, preferring the one holding the most tokens (its prefix is the likeliest to be reused),
            # then the lowest id (consecutive busy ids decode in one ubatch, see _step).
            s = max((s for s in self.slots if not s.busy), key=lambda s: (s.chunked, -s.seq))
            s.busy, s.late, s.steps, s.shared_steps, s.joined_at_step = True, False, 0, 0, 0
        try:
            yield SlotModel(self, s)
        finally:
            with self.cond:
                s.busy = False
                self.pending = [p for p in self.pending if p.slot is not s]
                self.cond.notify_all()

    def state(self) -> dict[str, Any]:
        """What the server reports at /slots: each slot's occupancy and the batching counters."""
        with self.cond:
            return {"parallel": self.n_slots, "batching": self.batching, "n_ctx_per_slot": self.n_ctx,
                    "steps": self.steps, "decodes": self.decodes, "decoded_tokens": self.decoded_tokens,
                    "shared_decodes": self.shared_decodes, "decode_seconds": round(self.decode_seconds, 3),
                    "max_sequences_per_step": self.max_sequences,
                    "max_sequences_per_decode": self.max_sequences_per_decode,
                    "slots": [{"id": s.seq, "busy": s.busy, "n_tokens": len(s.tokens), "steps": s.steps,
                               "shared_steps": s.shared_steps, "joined_at_step": s.joined_at_step}
                              for s in self.slots]}

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """Hold the lock while no decode runs: for KV edits (llama.cpp's memory is not thread-safe)."""
        with self.cond:
            while self.decoding:
                self.cond.wait()
            yield

    # --- KV edits -------------------------------------------------------------------------------------------------
    def truncate(self, s: _Slot, n: int) -> None:
        with self._quiet():
            self._truncate(s, n)

    def _truncate(self, s: _Slot, n: int) -> None:
        llama_cpp.llama_memory_seq_rm(self.mem, s.seq, n, -1)
        del s.tokens[n:]
        s.chunked = min(s.chunked, whole_chunks(n))

    def reuse(self, s: _Slot, tokens: Sequence[int]) -> int:
        """Keep (or copy from another slot) the longest whole-chunk prefix of `tokens` already in the KV cache:
        a tool-list system prompt is evaluated once and copied to every slot that uses it."""
        with self._quiet():
            best, src = reusable_prefix(s.tokens, s.chunked, tokens), s
            for other in self.slots:
                n = reusable_prefix(other.tokens, other.chunked, tokens)
                if n > best:
                    best, src = n, other
            if src is s:
                self._truncate(s, best)
                return best
            # Between KV streams llama.cpp copies whole buffers only: copy the other slot's, then cut it to the prefix.
            # In one pool the copy adds to the slot's own cells instead: those go first.
            self._truncate(s, 0)
            llama_cpp.llama_memory_seq_cp(self.mem, src.seq, s.seq, -1, -1)
            s.tokens, s.chunked = list(src.tokens), src.chunked
            self._truncate(s, best)
            return best

    def chunked(self, s: _Slot, n: int) -> None:
        with self.cond:
            s.chunked = n

    def save(self, s: _Slot, path: Path) -> bool:
        with self._quiet():
            arr = (llama_cpp.llama_token * len(s.tokens))(*s.tokens)
            return bool(llama_cpp.llama_state_seq_save_file(self.ctx, str(path).encode(), s.seq, arr,
                                                            len(s.tokens)))

    def load(self, s: _Slot, path: Path) -> bool:
        with self._quiet():
            self._truncate(s, 0)
            arr = (llama_cpp.llama_token * self.n_ctx)()
            count = ctypes.c_size_t(0)
            if not llama_cpp.llama_state_seq_load_file(self.ctx, str(path).encode(), s.seq, arr, self.n_ctx,
                                                       ctypes.byref(count)):
                self._truncate(s, 0)
                return False
            s.tokens = list(arr[: count.value])
            s.chunked = whole_chunks(count.value)
            return True

    # --- decoding -------------------------------------------------------------------------------------------------
    def eval(self, s: _Slot, tokens: Sequence[int], want: Sequence[bool] | None = None) -> None:
        """Evaluate `tokens` after the slot's sequence in the next shared step; returns once its logits are in
        (`want`: also after each token where true, in `s.rows`, None elsewhere)."""
        check_eval(len(s.tokens), tokens, self.n_ctx, self.model.n_vocab)
        if want is not None and (not 0 < len(tokens) <= self.share or len(want) != len(tokens)):
            raise GenerationError(f"{len(tokens)} tokens with logits at each do not fit one step's share")
        if len(tokens) > self.share:  # stays within its share of a step's batch
            self.eval(s, tokens[: self.share])
            self.eval(s, tokens[self.share:])
            return
        with self.cond:
            p = _Pending(s, list(tokens), None if want is None else list(want))
            self.pending.append(p)
            s.late = False
            deadline = time.monotonic() + STEP_GATHER_SECONDS
            while not p.done:
                now = time.monotonic()
                if not self.decoding and (self._all_in() or now >= deadline):
                    self._step()
                    deadline = time.monotonic() + STEP_GATHER_SECONDS
                    continue
                self.cond.wait(timeout=max(0.0, deadline - now) if not self.decoding else None)
            if p.error is not None:
                raise p.error

    def _all_in(self) -> bool:
        waiting = {id(p.slot) for p in self.pending}
        return all(id(s) in waiting for s in self.slots if s.busy and not s.late)

    def _step(self) -> None:
        """One llama_decode of everything pending (called with the lock held; the decode runs without it)."""
        # In sequence order: llama.cpp splits a batch over per-sequence KV streams into one ubatch only while the
        # sequence ids run consecutively (llama_batch_allocr::split_equal).
        take, self.pending = sorted(self.pending, key=lambda p: p.slot.seq), []
        waiting = {id(p.slot) for p in take}
        for s in self.slots:
            if s.busy and id(s) not in waiting:
                s.late = True
        self.decoding = True
        self.cond.release()
        error: BaseException | None = None
        decodes: list[tuple[int, int]] = []
        t0 = time.perf_counter()
        try:
            decodes = self._decode(take)
        except BaseException as e:  # noqa: BLE001 - every sequence in the step gets it
            error = e
        finally:
            self.cond.acquire()
            self.decode_seconds += time.perf_counter() - t0
            self.decoding = False
            self.steps += 1
            self.max_sequences = max(self.max_sequences, len(take))
            for tokens, sequences in decodes:
                self.decodes, self.decoded_tokens = self.decodes + 1, self.decoded_tokens + tokens
                self.shared_decodes += sequences > 1
                self.max_sequences_per_decode = max(self.max_sequences_per_decode, sequences)
            for p in take:
                p.done, p.error = True, error
                if error is None:
                    p.slot.tokens += p.tokens
                    p.slot.steps += 1
                    p.slot.shared_steps += len(take) > 1
                    p.slot.joined_at_step = p.slot.joined_at_step or self.steps
            self.cond.notify_all()

    def _decode(self, take: list[_Pending]) -> list[tuple[int, int]]:
        """Exact: one llama_decode per run length: over per-sequence KV streams llama.cpp splits a batch into
        ubatches with the same token count for every sequence. Fast: one llama_decode (one ubatch) for the step.
        Returns each decode's (tokens, sequences), for the counters."""
        if self.batching == FAST:
            return [self._decode_group(take)]
        groups: dict[int, list[_Pending]] = {}
        for p in take:
            groups.setdefault(len(p.tokens), []).append(p)
        return [self._decode_group(group) for group in groups.values()]

    def _decode_group(self, take: list[_Pending]) -> tuple[int, int]:
        b = self.batch
        n = 0
        for p in take:
            start = len(p.slot.tokens)
            for i, t in enumerate(p.tokens):
                b.token[n], b.pos[n], b.n_seq_id[n] = t, start + i, 1
                b.seq_id[n][0] = p.slot.seq
                b.logits[n] = i == len(p.tokens) - 1 or (p.want is not None and p.want[i])
                n += 1
        b.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise GenerationError(f"llama_decode failed with status {rc} ({n} tokens, {len(take)} sequences)")
        row = -1
        for p in take:
            if p.want is not None:
                p.slot.rows = [np.array(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, row + 1 + i),
                                                              shape=(self.model.n_vocab,)))
                               if w else None for i, w in enumerate(p.want)]
            row += len(p.tokens)
            ptr = llama_cpp.llama_get_logits_ith(self.ctx, row)
            view = np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))
            if p.slot.logits is None:
                p.slot.logits = np.empty(self.model.n_vocab, dtype=np.float32)
            np.copyto(p.slot.logits, view)
        return n, len(take)


class SlotModel:
    """One slot of a Batcher with the surface the decoding loop, budget guard, grammar engines and prompt cache use;
    text and vocabulary calls go to the shared Model."""

    STATE_KIND = "sequence"  # the disk cache keys state files by kind: a sequence's state is not a context's

    def __init__(self, batcher: Batcher, slot: _Slot) -> None:
        self.batcher, self.slot, self.base = batcher, slot, batcher.model
        self.n_ctx = batcher.n_ctx

    def __getattr__(self, name: str) -> Any:  # path, n_vocab, eog_ids, tokenize, detokenizer, lltokenizer, ...
        return getattr(self.base, name)

    @property
    def tokens(self) -> list[int]:
        return list(self.slot.tokens)

    def prefill(self, tokens: Sequence[int]) -> int:
        check_prompt(tokens, self.n_ctx)
        common = self.batcher.reuse(self.slot, tokens)
        self.batcher.chunked(self.slot, eval_in_chunks(self.eval, tokens, common))
        return common

    def truncate(self, n: int) -> None:
        self.batcher.truncate(self.slot, n)

    def eval(self, tokens: Sequence[int]) -> None:
        self.batcher.eval(self.slot, tokens)

    def eval_rows(self, tokens: Sequence[int], want: Sequence[bool]) -> list[np.ndarray | None]:
        """As Model.eval_rows, in the slot's next shared step (copies, kept until the slot's next step)."""
        self.batcher.eval(self.slot, tokens, want)
        assert self.slot.rows is not None
        return list(self.slot.rows)

    def logits(self) -> np.ndarray:
        if self.slot.logits is None:
            raise GenerationError("no logits yet: nothing was evaluated in this slot")
        return self.slot.logits

    def reset(self) -> None:
        self.truncate(0)

    def save_state(self, path: Path) -> None:
        if not self.batcher.save(self.slot, path):
            raise GenerationError(f"llama.cpp could not save slot {self.slot.seq}'s state to {path}")

    def load_state(self, path: Path) -> bool:
        return self.batcher.load(self.slot, path)


def check_batching(batching: str) -> str:
    if batching not in BATCHING_MODES:
        raise InputError(f"batching must be one of {', '.join(BATCHING_MODES)}, got {batching!r}")
    return batching


def check_parallel(parallel: int) -> int:
    if not isinstance(parallel, int) or isinstance(parallel, bool) or not 1 <= parallel <= MAX_PARALLEL:
        raise InputError(f"parallel must be an integer in [1, {MAX_PARALLEL}], got {parallel!r}")
    return parallel
