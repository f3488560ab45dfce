"""How much memory a model needs at a context size, worked out from its GGUF header before llama.cpp loads it, and
the refusal when the machine does not have it (docs/models.md, "Memory").

    weights      the tensor bytes of every part (llama.cpp maps the file; every page is read while loading)
    KV cache     layers x context x (K + V width) at the cache type's bytes per value, for every slot
    compute      what one decode step touches: a PREFILL_CHUNK-token batch against a full context (attention
                 scores in F32 without flash attention, the mask, the activations) plus the logits rows of a
                 speculative draft's verification per slot (SPEC_MAX_DRAFT_TOKENS + 1)
    tokenizer    the vocabulary's tables (llama.cpp's and toolace's), per token

llama.cpp reserves its compute buffer for a 512-token batch with 512 logits rows, but toolace never decodes more
than PREFILL_CHUNK tokens per sequence in one step and reads at most a draft's logits rows, and on the CPU untouched
pages of that reservation cost no RAM; so the estimate counts what is touched. On a GPU the reservation is real
memory: the VRAM check counts it at llama.cpp's batch size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolace import probes
from toolace.errors import InputError, ModelFileError, ResourceError
from toolace.limits import MEMORY_MARGIN_BYTES, SPEC_MAX_DRAFT_TOKENS

from ..convert.gguf_check import GGUFArray, GGUFHeader, check_gguf
from ..convert.gguf_files import local_parts
from .chunks import PREFILL_CHUNK
from .kv_types import DEFAULT_KV_TYPE, KV_TYPES

GIB = 2**30
KV_CELL_ALIGN = 256  # llama.cpp rounds the context up to a multiple of this many cells
LLAMA_CPP_BATCH = 512  # llama.cpp's batch (and compute reservation) size; Model keeps llama-cpp-python's default
# Calibration, measured (not a limit): what loading a model costs beyond its weights, KV cache and compute buffers,
# which grows with the vocabulary: llama.cpp's tables (token texts, id maps, BPE merge ranks) and toolace's own
# header check and token sets. 525-570 bytes per token in a fresh process on Linux x86-64, for SmolLM2's 49,152 and
# Llama-3's 128,256 tokens (tests/test_memory.py prints the figures).
TOKENIZER_BYTES_PER_TOKEN = 550
ACTIVATION_ROWS = 5  # F32 rows of the hidden width live at once in a layer (x, norm, residual, gate, up), measured


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a GGUF header."""

    weights: int  # bytes of tensor data, all parts
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_k: int  # K width per head
    head_v: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int


def _int(kv: dict[str, Any], key: str, default: int | None = None) -> int:
    value = kv.get(key, default)
    if isinstance(value, GGUFArray) and value.values:  # per-layer arrays (some architectures): the largest
        value = max(value.values)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelFileError(f"GGUF metadata {key} is {value!r}, not a positive integer; cannot size the model")
    return value


def model_shape(headers: Sequence[GGUFHeader]) -> ModelShape:
    """The shape of a model from the checked headers of all its parts (the first holds the metadata)."""
    kv = headers[0].kv
    arch = kv.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(f"{headers[0].path.name}: no general.architecture; cannot size the model")
    n_embd, n_head = _int(kv, f"{arch}.embedding_length"), _int(kv, f"{arch}.attention.head_count")
    tokens = kv.get("tokenizer.ggml.tokens")
    return ModelShape(
        weights=sum(t.nbytes for h in headers for t in h.tensors),
        n_layer=_int(kv, f"{arch}.block_count"), n_embd=n_embd, n_head=n_head,
        n_head_kv=_int(kv, f"{arch}.attention.head_count_kv", n_head),
        head_k=_int(kv, f"{arch}.attention.key_length", n_embd // n_head),
        head_v=_int(kv, f"{arch}.attention.value_length", n_embd // n_head),
        n_ff=_int(kv, f"{arch}.feed_forward_length", 4 * n_embd),
        n_vocab=tokens.count if isinstance(tokens, GGUFArray) else _int(kv, f"{arch}.vocab_size"),
        n_ctx_train=_int(kv, f"{arch}.context_length", 1))


def shape_of_file(path: str | Path) -> ModelShape:
    """Check a GGUF (every part of a split one) and return its shape."""
    return model_shape([check_gguf(p) for p in local_parts(Path(path))])


def check_kv_type(kv_type: str) -> str:
    if kv_type not in KV_TYPES:
        raise InputError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
    return kv_type


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs at one context size, by part."""

    n_ctx: int
    kv_type: str
    slots: int
    weights: int
    kv_cache: int
    compute: int
    tokenizer: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.tokenizer

    def as_dict(self) -> dict[str, Any]:
        return {"n_ctx": self.n_ctx, "kv_type": self.kv_type, "slots": self.slots, "weights": self.weights,
                "kv_cache": self.kv_cache, "compute": self.compute, "tokenizer": self.tokenizer, "total": self.total}

    def summary(self) -> str:
        return (f"{gib(self.total)} (weights {gib(self.weights)} + KV cache {gib(self.kv_cache)} {self.kv_type} + "
                f"compute {gib(self.compute)} + tokenizer {gib(self.tokenizer)})")


def gib(n: int) -> str:
    """Binary units, as memory is counted: GiB from 1 GiB up, MiB below."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def _cells(n_ctx: int) -> int:
    return -(-n_ctx // KV_CELL_ALIGN) * KV_CELL_ALIGN


def kv_cache_bytes(shape: ModelShape, n_ctx: int, kv_type: str = DEFAULT_KV_TYPE, slots: int = 1) -> int:
    _, block_bytes, block = KV_TYPES[check_kv_type(kv_type)]
    width = shape.n_head_kv * (shape.head_k + shape.head_v)
    return shape.n_layer * _cells(n_ctx) * slots * (width // block) * block_bytes


def compute_bytes(shape: ModelShape, n_ctx: int, kv_type: str, step_tokens: int, logits_rows: int) -> int:
    """F32 working memory of one decode step of `step_tokens` tokens against `n_ctx` cells per sequence."""
    flash = kv_type != DEFAULT_KV_TYPE  # the quantized caches run with flash attention (KV_TYPES)
    cells = _cells(n_ctx)
    scores = 0 if flash else shape.n_head * cells * step_tokens * 4  # K.Q, softmaxed in place
    mask = cells * step_tokens * (2 if flash else 4)
    activations = step_tokens * (ACTIVATION_ROWS * shape.n_embd + 2 * shape.n_ff) * 4
    return scores + mask + activations + logits_rows * shape.n_vocab * 4


def estimate_memory(shape: ModelShape, n_ctx: int, kv_type: str = DEFAULT_KV_TYPE, slots: int = 1,
                    step_tokens: int | None = None) -> MemoryEstimate:
    """RAM for `shape` at `n_ctx` tokens per sequence and `slots` sequences (parallel slots share one context)."""
    step = step_tokens if step_tokens is not None else PREFILL_CHUNK * slots
    return MemoryEstimate(n_ctx, kv_type, slots, shape.weights, kv_cache_bytes(shape, n_ctx, kv_type, slots),
                          compute_bytes(shape, n_ctx, kv_type, step, slots * (SPEC_MAX_DRAFT_TOKENS + 1)),
                          shape.n_vocab * TOKENIZER_BYTES_PER_TOKEN)


def _largest_fitting_ctx(shape: ModelShape, kv_type: str, slots: int, room: int) -> int:
    """The largest context (a multiple of KV_CELL_ALIGN) whose estimate fits `room` bytes, 0 if none does."""
    lo, hi = 0, max(shape.n_ctx_train, KV_CELL_ALIGN) // KV_CELL_ALIGN
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate_memory(shape, mid * KV_CELL_ALIGN, kv_type, slots).total <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo * KV_CELL_ALIGN


def check_ram(shape: ModelShape, n_ctx: int, kv_type: str, slots: int, what: str, on_gpu: float = 0.0) -> None:
    """Refuse, before llama.cpp allocates anything, a load whose estimate does not fit the available RAM. `on_gpu`:
    the share of weights and KV cache offloaded (they then live in VRAM, checked by check_vram)."""
    est = estimate_memory(shape, n_ctx, kv_type, slots)
    host = est.total - int(on_gpu * (est.weights + est.kv_cache))
    room = probes.available_memory_bytes() - MEMORY_MARGIN_BYTES
    if host <= room:
        return
    fixes = []
    fits = _largest_fitting_ctx(shape, kv_type, slots, room)
    if fits >= KV_CELL_ALIGN:
        fixes.append(f"--n-ctx {fits} or less")
    fixes.append("a quant with fewer bits (toolace pull REPO:QUANT)")
    if kv_type == DEFAULT_KV_TYPE:
        fixes.append(f"--kv-type q8_0 (needs {gib(estimate_memory(shape, n_ctx, 'q8_0', slots).total)})")
    if slots > 1:
        fixes.append(f"fewer --parallel slots ({slots} hold {slots} x {n_ctx} tokens)")
    raise ResourceError(f"{what} at --n-ctx {n_ctx} needs about {est.summary()}, but this machine has "
                        f"{gib(max(room, 0))} available (after a {gib(MEMORY_MARGIN_BYTES)} margin); "
                        f"try {'; '.join(fixes)}")


def check_vram(shape: ModelShape, n_ctx: int, kv_type: str, slots: int, what: str, share: float) -> None:
    """With layers offloaded: their weights and KV cache plus llama.cpp's whole compute reservation (allocated for
    real on a GPU) must fit the GPU's free memory. Nothing to check when ggml sees no GPU."""
    free = probes.free_gpu_bytes()
    if free is None or share <= 0:
        return
    est = estimate_memory(shape, n_ctx, kv_type, slots)
    reserved = compute_bytes(shape, n_ctx, kv_type, LLAMA_CPP_BATCH * slots, LLAMA_CPP_BATCH)
    need = int(share * (est.weights + est.kv_cache)) + reserved
    if need > free:
        raise ResourceError(f"{what} at --n-ctx {n_ctx} needs about {gib(need)} of GPU memory with "
                            f"{share:.0%} of its layers offloaded, the GPU has {gib(free)} free; try a smaller "
                            "--n-ctx, --kv-type q8_0, or fewer --n-gpu-layers")


def check_fits(path: str | Path, n_ctx: int, kv_type: str = DEFAULT_KV_TYPE, slots: int = 1,
               gpu_layers: int = 0) -> MemoryEstimate:
    """Estimate `path` at `n_ctx` and refuse it when it does not fit RAM (or VRAM, for offloaded layers)."""
    shape = shape_of_file(path)
    layers = shape.n_layer if gpu_layers < 0 else min(gpu_layers, shape.n_layer)
    # Offloaded layers live in VRAM only when ggml sees a GPU (a CPU build ignores --n-gpu-layers).
    share = layers / shape.n_layer if layers and probes.free_gpu_bytes() is not None else 0.0
    what = Path(path).name
    check_vram(shape, n_ctx, kv_type, slots, what, share)
    check_ram(shape, n_ctx, kv_type, slots, what, share)
    return estimate_memory(shape, n_ctx, kv_type, slots)
