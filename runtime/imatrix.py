"""Importance-matrix statistics measured inside llama.cpp, through its graph eval callback (`cb_eval`).

What llama.cpp's tools/imatrix does, in Python: for every matrix multiplication whose first operand is one of the
model's weights, the scheduler asks (ask=True) whether we want the node; we say yes, and after it is computed
(ask=False) we read the second operand, the F32 activations entering the weight, and add their squares per input
column, with the number of token rows. Only `blk.*` weights are kept, and batches narrower than
IMATRIX_MIN_BATCH_TOKENS are skipped, both as llama.cpp does by default.

llama-cpp-python hands the callback a bare `struct ggml_tensor *`, so the struct is declared here for the ggml
the pinned wheel ships (llama-cpp-python 0.3.36: ggml 0.25.3, commit 0c1e570; GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS
64, GGML_MAX_SRC 10, GGML_MAX_NAME 64). Every node the callback sees is checked against ggml's own accessors (its
size against ggml_tensor_overhead, its name against ggml_get_name, its element count against ggml_nelements, for
the node and its operands), so a different layout is one clear GenerationError, never garbage statistics."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from toolace.errors import GenerationError
from toolace.limits import IMATRIX_BATCH_TOKENS, IMATRIX_MIN_BATCH_TOKENS

from ..convert.gguf_check import check_gguf
from ..convert.imatrix_file import ImatrixEntry
from .model import Model

GGML_MAX_DIMS, GGML_MAX_OP_PARAMS, GGML_MAX_SRC, GGML_MAX_NAME = 4, 64, 10, 64
GGML_OBJECT_SIZE = 32  # sizeof(struct ggml_object): offs, size, next, type + 4 bytes padding
GGML_TYPE_F32 = 0
MATMUL_OPS = ("MUL_MAT",)  # ggml_op_name of the nodes measured (MUL_MAT_ID, MoE experts, is not measured yet)
WEIGHT_PREFIX = "blk."  # llama.cpp's imatrix default: repeating-layer weights only (not output.weight)


class GGMLTensor(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def _ggml() -> Any:
    """ggml's C functions the callback needs (from the libggml llama-cpp-python ships), with their signatures."""
    from llama_cpp._ggml import libggml

    p = ctypes.c_void_p
    sigs: dict[str, tuple[Any, list[Any]]] = {
        "ggml_get_name": (ctypes.c_char_p, [p]), "ggml_op_name": (ctypes.c_char_p, [ctypes.c_int]),
        "ggml_nelements": (ctypes.c_int64, [p]), "ggml_nbytes": (ctypes.c_size_t, [p]),
        "ggml_tensor_overhead": (ctypes.c_size_t, []),
        "ggml_backend_tensor_get": (None, [p, p, ctypes.c_size_t, ctypes.c_size_t]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(libggml, name)
        fn.restype, fn.argtypes = restype, argtypes
    return libggml


def _filter_name(name: str) -> str:
    """llama.cpp's filter_tensor_name: CUDA0#blk.0.attn_k.weight#0 -> blk.0.attn_k.weight."""
    if "#" not in name:
        return name
    return name.split("#")[1]


class Collector:
    """The eval callback and its running sums: {weight name: per-column sum of squares}, {weight name: rows}."""

    def __init__(self, weight_names: Iterable[str]) -> None:
        self.lib = _ggml()
        self.weights = {n for n in weight_names if n.startswith(WEIGHT_PREFIX)}
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.error: BaseException | None = None
        self._op_names: dict[int, str] = {}
        expected = self.lib.ggml_tensor_overhead() - GGML_OBJECT_SIZE
        if ctypes.sizeof(GGMLTensor) != expected:
            raise GenerationError(f"this llama.cpp's struct ggml_tensor is {expected} bytes, toolace's declaration "
                                  f"{ctypes.sizeof(GGMLTensor)}: the ggml ABI changed, the imatrix cannot be read")
        import llama_cpp

        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_node)

    def _tensor(self, ptr: int) -> GGMLTensor:
        t = GGMLTensor.from_address(ptr)
        name = (self.lib.ggml_get_name(ptr) or b"").decode("utf-8", "replace")
        if t.name.decode("utf-8", "replace") != name or self.lib.ggml_nelements(ptr) != int(np.prod(t.ne[:])):
            raise GenerationError(f"struct ggml_tensor layout mismatch at node {name!r} (name or shape fields read "
                                  "wrong): the ggml ABI changed, the imatrix cannot be read")
        return t

    def _op(self, op: int) -> str:
        if op not in self._op_names:
            self._op_names[op] = (self.lib.ggml_op_name(op) or b"").decode()
        return self._op_names[op]

    def _on_node(self, ptr: int, ask: bool, _user: int) -> bool:
        if self.error is not None:
            return False
        try:
            return self._ask(ptr) if ask else self._collect(ptr)
        except BaseException as e:  # an exception must not cross into C: kept, raised after llama_decode
            self.error = e
            return False

    def _ask(self, ptr: int) -> bool:
        t = self._tensor(ptr)
        if self._op(t.op) not in MATMUL_OPS or not t.src[0] or not t.src[1]:
            return False
        w, x = self._tensor(t.src[0]), self._tensor(t.src[1])
        return (_filter_name(w.name.decode("utf-8", "replace")) in self.weights and w.ne[2] * w.ne[3] == 1
                and x.type == GGML_TYPE_F32 and x.ne[1] >= IMATRIX_MIN_BATCH_TOKENS)

    def _collect(self, ptr: int) -> bool:
        t = self._tensor(ptr)
        w, x_ptr = self._tensor(t.src[0]), t.src[1]
        x = self._tensor(x_ptr)
        raw = np.empty(self.lib.ggml_nbytes(x_ptr), dtype=np.uint8)
        self.lib.ggml_backend_tensor_get(x_ptr, raw.ctypes.data, 0, raw.size)  # host or device memory alike
        shape = tuple(int(n) for n in reversed(x.ne[:]))
        strides = tuple(int(n) for n in reversed(x.nb[:]))
        rows = np.lib.stride_tricks.as_strided(raw.view(np.float32), shape=shape, strides=strides)
        rows64 = rows.reshape(-1, shape[-1]).astype(np.float64)
        if not np.isfinite(rows64).all():
            raise GenerationError(f"non-finite activations entering {w.name.decode()}: the model's output is broken")
        name = _filter_name(w.name.decode("utf-8", "replace"))
        sq = (rows64 * rows64).sum(axis=0)
        self.sums[name] = self.sums[name] + sq if name in self.sums else sq
        self.counts[name] = self.counts.get(name, 0) + rows64.shape[0]
        return True

    def entries(self) -> dict[str, ImatrixEntry]:
        return {n: ImatrixEntry(self.sums[n], self.counts[n]) for n in sorted(self.sums)}


def _context(model: Model, collector: Collector, n_ctx: int) -> Any:
    import llama_cpp

    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = IMATRIX_BATCH_TOKENS
    params.n_threads = params.n_threads_batch = model.n_threads
    params.cb_eval = collector.callback
    params.cb_eval_user_data = None
    params.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model.llm._model.model, params)
    if not ctx:
        raise GenerationError(f"llama.cpp could not make a {n_ctx}-token context for {model.path.name}")
    return ctx


def _decode_all(ctx: Any, collector: Collector, tokens: Sequence[int]) -> None:
    """Decode one transcript from position 0 in batches, every token producing logits (see IMATRIX_BATCH_TOKENS)."""
    import llama_cpp

    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    batch = llama_cpp.llama_batch_init(IMATRIX_BATCH_TOKENS, 0, 1)
    try:
        for start in range(0, len(tokens), IMATRIX_BATCH_TOKENS):
            part = tokens[start:start + IMATRIX_BATCH_TOKENS]
            batch.n_tokens = len(part)
            for i, tok in enumerate(part):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, start + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, True
            rc = llama_cpp.llama_decode(ctx, batch)
            if collector.error is not None:
                raise collector.error
            if rc != 0:
                raise GenerationError(f"llama.cpp could not decode a calibration batch (llama_decode returned {rc})")
    finally:
        llama_cpp.llama_batch_free(batch)


def measure_imatrix(model: Model, transcripts: Iterable[Sequence[int]], n_ctx: int) -> dict[str, ImatrixEntry]:
    """Importance statistics of `model`'s blk.* matmul weights over token `transcripts` (each at most n_ctx long,
    decoded from an empty cache). Raises GenerationError when nothing could be measured."""
    import llama_cpp

    collector = Collector(t.name for t in check_gguf(model.path).tensors)
    ctx = _context(model, collector, n_ctx)
    try:
        for tokens in transcripts:
            _decode_all(ctx, collector, tokens)
    finally:
        llama_cpp.llama_free(ctx)
    if not collector.sums:
        raise GenerationError(f"no matrix multiplication of {model.path.name}'s blk.* weights was measured "
                              f"(transcripts shorter than {IMATRIX_MIN_BATCH_TOKENS} tokens?)")
    return collector.entries()
