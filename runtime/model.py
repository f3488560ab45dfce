"""A llama.cpp model and its one context: loading, tokens, prefix-reusing evaluation, logits, KV state files.

Built on llama-cpp-python's `Llama` for loading and batching; decoding is ours (runtime/generate.py)."""

from __future__ import annotations

import codecs
import ctypes
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from toolace.errors import ContextLengthError, GenerationError, InputError, ModelFileError
from toolace.limits import DEFAULT_N_CTX, MAX_N_CTX

from .chunks import PREFILL_CHUNK as PREFILL_CHUNK  # re-exported: the rule's users import it with Model
from .chunks import eval_in_chunks, reusable_prefix, whole_chunks
from .kv_types import DEFAULT_KV_TYPE, KV_TYPES
from .memory import LLAMA_CPP_BATCH, check_fits, check_kv_type
from .prompt import LLAMA3_TEMPLATE, ChatTemplate, Segment

MIN_CONTEXT = 64  # tokens in the unused context of a model whose decoding runs in parallel slots


def check_prompt(tokens: Sequence[int], n_ctx: int) -> None:
    if len(tokens) >= n_ctx:
        raise ContextLengthError(f"prompt is {len(tokens)} tokens, the context holds {n_ctx}")
    if not tokens:
        raise GenerationError("empty prompt")


def check_eval(held: int, tokens: Sequence[int], n_ctx: int, n_vocab: int) -> None:
    """Before llama.cpp sees them: the tokens fit after the `held` ones, and every id is in the vocabulary (it reads
    out of bounds otherwise)."""
    if held + len(tokens) > n_ctx:
        raise ContextLengthError(f"context full: {held} + {len(tokens)} tokens > n_ctx {n_ctx}")
    bad = [t for t in tokens if not 0 <= t < n_vocab]
    if bad:
        raise GenerationError(f"token id {bad[0]} outside the vocabulary (0..{n_vocab - 1})")


def usable_cores() -> int:
    """This process's CPU affinity (taskset, container cpusets), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads() -> int:
    """All usable cores on small machines; half (the physical cores, usually) on larger ones."""
    n = usable_cores()
    return n if n <= 4 else n // 2


def resolve_gpu_layers(n_gpu_layers: int | str) -> int:
    """'auto' → every layer when llama.cpp was built with GPU offload (CUDA/Metal), else CPU only."""
    if n_gpu_layers == "auto":
        return -1 if llama_cpp.llama_supports_gpu_offload() else 0
    try:
        return int(n_gpu_layers)
    except ValueError:
        raise InputError(f"n_gpu_layers must be 'auto' or an integer, got {n_gpu_layers!r}") from None


class Model:
    """One GGUF loaded into llama.cpp with one context. Not thread-safe: callers serialise use.

    `own_context=False` (parallel slots, runtime/batch.py): the weights, vocabulary and text functions only; the
    Batcher makes the context, and this object's own is a minimal one that decodes nothing."""

    STATE_KIND = "context"  # the disk cache keys state files by kind (a whole context's state here)

    @property
    def flash_attn(self) -> bool:
        """On with a quantized K/V cache only (llama.cpp needs it there); otherwise llama-cpp-python's default, off,
        whose results the tests and the parallel slots match."""
        return self.kv_type != DEFAULT_KV_TYPE

    def __init__(self, path: str | Path, n_ctx: int = DEFAULT_N_CTX, n_gpu_layers: int | str = "auto",
                 n_threads: int | None = None, n_batch: int = LLAMA_CPP_BATCH, own_context: bool = True,
                 kv_type: str = DEFAULT_KV_TYPE, kv_slots: int = 1) -> None:
        """`kv_type`: the K/V cache type (runtime/memory.py KV_TYPES; the quantized ones switch flash attention on).
        `kv_slots`: sequences of n_ctx tokens the model will hold (parallel slots), for the memory check."""
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"model file not found: {self.path}")
        if not 16 <= n_ctx <= MAX_N_CTX:
            raise InputError(f"n_ctx must be between 16 and {MAX_N_CTX}, got {n_ctx}")
        self.kv_type = check_kv_type(kv_type)
        self.n_gpu_layers = resolve_gpu_layers(n_gpu_layers)
        # Every part's header is checked before llama.cpp parses it (it has overflowed on crafted files), and the
        # model's memory at this context is checked before it allocates any (an OOM kill says nothing).
        self.memory = check_fits(self.path, n_ctx, kv_type, kv_slots, self.n_gpu_layers)
        # Prompt threads too: llama-cpp-python's default (every core) thrashes a busy small machine.
        threads = n_threads or default_threads()
        self.n_threads = threads
        ggml_kv = KV_TYPES[kv_type][0]
        try:
            self.llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=n_ctx if own_context else MIN_CONTEXT,
                                       n_gpu_layers=self.n_gpu_layers, type_k=ggml_kv, type_v=ggml_kv,
                                       flash_attn=self.flash_attn, n_threads=threads, n_threads_batch=threads,
                                       n_batch=n_batch, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise ModelFileError(f"llama.cpp could not load {self.path}: {e}") from None
        self.ctx = self.llm._ctx.ctx
        self.vocab = self.llm._model.vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_ctx = self.llm.n_ctx() if own_context else n_ctx
        self.own_context = own_context
        self.metadata: dict[str, Any] = dict(self.llm.metadata)
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self.eog_ids = frozenset(t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t))
        self.bos_id = int(llama_cpp.llama_vocab_bos(self.vocab))
        self._tokens: list[int] = []  # what the KV cache holds, in order
        self._chunked = 0  # leading tokens of _tokens evaluated as whole PREFILL_CHUNK chunks: the reusable ones
        self._lltokenizer: Any = None
        self._pieces: dict[tuple[int, bool], bytes] = {}

    # --- text <-> tokens ------------------------------------------------------------------------------------------
    def token_text(self, token: int, special: bool = True) -> bytes:
        if not 0 <= token < self.n_vocab:  # llama.cpp reads out of bounds on bad ids
            raise GenerationError(f"token id {token} outside the vocabulary (0..{self.n_vocab - 1})")
        key = (token, special)
        piece = self._pieces.get(key)
        if piece is None:
            # Our own call: llama-cpp-python's wrapper returns the whole 32-byte buffer, NULs included.
            size = 64
            while True:
                buf = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, size, 0, special)
                if n >= 0:
                    break
                size = -n
            piece = self._pieces[key] = buf.raw[:n]
        return piece

    def tokenize(self, text: str, special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special) if text else []

    def tokenize_segments(self, segments: Sequence[Segment]) -> list[int]:
        """Template text with control tokens parsed; content as plain text; BOS added if the template did not."""
        tokens: list[int] = []
        for seg in segments:
            tokens += self.tokenize(seg.text, special=seg.special)
        add_bos = str(self.metadata.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"
        if add_bos and self.bos_id >= 0 and (not tokens or tokens[0] != self.bos_id):
            tokens.insert(0, self.bos_id)
        return tokens

    def detokenizer(self) -> Detokenizer:
        return Detokenizer(self)

    def chat_template(self) -> ChatTemplate:
        source = self.metadata.get("tokenizer.chat_template") or LLAMA3_TEMPLATE
        bos = self.token_text(self.bos_id).decode("utf-8", "replace") if self.bos_id >= 0 else ""
        eos_id = int(llama_cpp.llama_vocab_eos(self.vocab))
        eos = self.token_text(eos_id).decode("utf-8", "replace") if eos_id >= 0 else ""
        return ChatTemplate(source, bos_token=bos, eos_token=eos)

    def lltokenizer(self) -> Any:
        """llguidance's view of this vocabulary (built once; ~1 s for 128k tokens)."""
        if self._lltokenizer is None:
            import llguidance.llamacpp

            with warnings.catch_warnings():  # it calls a llama.cpp alias that warns once per token (128k times)
                warnings.simplefilter("ignore", DeprecationWarning)
                self._lltokenizer = llguidance.llamacpp.lltokenizer_from_vocab(self.vocab,
                                                                               eos_token=sorted(self.eog_ids))
        return self._lltokenizer

    # --- evaluation -----------------------------------------------------------------------------------------------
    @property
    def tokens(self) -> list[int]:
        return list(self._tokens)

    def prefill(self, tokens: Sequence[int]) -> int:
        """Make the KV cache hold exactly `tokens`, reusing the longest common prefix of whole chunks (see
        PREFILL_CHUNK); returns tokens reused."""
        check_prompt(tokens, self.n_ctx)
        common = reusable_prefix(self._tokens, self._chunked, tokens)
        self.truncate(common)
        self._chunked = eval_in_chunks(self.eval, tokens, common)
        return common

    def truncate(self, n: int) -> None:
        """Keep only the first n tokens in the KV cache."""
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.ctx), -1, n, -1)
        del self._tokens[n:]
        self.llm.n_tokens = n
        self._chunked = min(self._chunked, whole_chunks(n))

    def eval(self, tokens: Sequence[int]) -> None:
        if not self.own_context:
            raise GenerationError("this model decodes through parallel slots (runtime/batch.py), not its own context")
        check_eval(len(self._tokens), tokens, self.n_ctx, self.n_vocab)
        self.llm.n_tokens = len(self._tokens)
        self.llm.eval(list(tokens))
        self._tokens += list(tokens)

    def eval_rows(self, tokens: Sequence[int], want: Sequence[bool]) -> list[np.ndarray | None]:
        """Evaluate `tokens` in one decode with logits after each token whose `want` is true (views into llama.cpp's
        buffer, valid until the next eval; None where not wanted): the verification of a speculative draft
        (runtime/speculative.py). A row without logits skips the output layer, a fifth of a small model's row."""
        if not self.own_context:
            raise GenerationError("this model decodes through parallel slots (runtime/batch.py), not its own context")
        check_eval(len(self._tokens), tokens, self.n_ctx, self.n_vocab)
        if not 0 < len(tokens) <= self.llm.n_batch or len(want) != len(tokens):
            raise GenerationError(f"{len(tokens)} tokens ({len(want)} rows asked) do not fit one decode of "
                                  f"{self.llm.n_batch}")
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.ctx), -1, len(self._tokens), -1)
        batch = self.llm._batch
        batch.set_batch(batch=list(tokens), n_past=len(self._tokens), logits_all=True)
        for i, w in enumerate(want):
            batch.batch.logits[i] = bool(w)
        rc = llama_cpp.llama_decode(self.ctx, self.llm._batch.batch)
        if rc != 0:
            raise GenerationError(f"llama_decode failed with status {rc} ({len(tokens)} tokens)")
        self._tokens += list(tokens)
        self.llm.n_tokens = len(self._tokens)
        return [np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
                if w else None for i, w in enumerate(want)]

    def logits(self) -> np.ndarray:
        """Logits after the last evaluated token (a view into llama.cpp's buffer: copy before the next eval)."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def reset(self) -> None:
        self.truncate(0)

    # --- KV state files (for the disk prompt cache) ---------------------------------------------------------------
    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token takes: K and V of each KV head, every layer, in the cache type's blocks.
        Llama-3.1-8B in F16: 32 x (2 x 8 x 128) x 2 = 128 KiB; a state file is about this times its tokens."""
        model = self.llm._model.model
        heads = max(1, int(llama_cpp.llama_model_n_head(model)))
        head_dim = int(llama_cpp.llama_model_n_embd(model)) // heads
        layers, kv_heads = int(llama_cpp.llama_model_n_layer(model)), int(llama_cpp.llama_model_n_head_kv(model))
        _, block_bytes, block = KV_TYPES[self.kv_type]
        return layers * (2 * kv_heads * head_dim // block) * block_bytes

    def save_state(self, path: Path) -> None:
        arr = (llama_cpp.llama_token * len(self._tokens))(*self._tokens)
        if not llama_cpp.llama_state_save_file(self.ctx, str(path).encode(), arr, len(self._tokens)):
            raise GenerationError(f"llama.cpp could not save state to {path}")

    def load_state(self, path: Path) -> bool:
        cap = self.n_ctx
        arr = (llama_cpp.llama_token * cap)()
        count = ctypes.c_size_t(0)
        self._tokens = []
        self.llm.n_tokens = 0
        if not llama_cpp.llama_state_load_file(self.ctx, str(path).encode(), arr, cap, ctypes.byref(count)):
            self.truncate(0)
            return False
        self._tokens = list(arr[: count.value])
        self.llm.n_tokens = count.value
        self._chunked = whole_chunks(count.value)  # saved from a chunked prefill (PromptCache)
        return True


class Detokenizer:
    """Incremental token → text with correct handling of UTF-8 split across tokens."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token: int) -> str:
        return self._decoder.decode(self.model.token_text(token, special=False))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
