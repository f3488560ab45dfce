"""The Llama family (Llama 2/3/3.1, SmolLM2, ToolACE-8B): hyper-parameters, the HF -> GGUF tensor plan, metadata.

What llama.cpp's Llama graph expects and HF checkpoints do not give directly:
- Q and K rows permuted: HF stores each head's rotary pairs as two halves ([x0..x(d/2-1) | x(d/2)..]), llama.cpp's
  RoPE (mode 0, "normal") rotates adjacent pairs, so rows are interleaved per head (n_head_kv heads for K).
- `rope_freqs`: Llama-3.1's long-context ("llama3") RoPE scaling is not a GGUF key; it travels as a per-dimension
  frequency factor tensor, computed here exactly as llama.cpp's own converter does.
- 1-D tensors (norms) stay F32 whatever the output type: they are tiny and precision-sensitive."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from toolace.errors import ModelFileError

from .checkpoint import Checkpoint

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
# Buffers some older checkpoints carry that llama.cpp recomputes itself; skipped, not converted.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass(frozen=True)
class LlamaParams:
    """The hyper-parameters a GGUF `llama.*` section needs, read and checked from config.json."""

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    head_dim_explicit: bool
    vocab_size: int
    n_ctx: int
    rms_eps: float
    rope_theta: float
    rope_type: str  # "default", "llama3" or "linear"
    rope_scaling: dict[str, Any]
    tied: bool


def _int(config: dict[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value > 2**31:
        raise ModelFileError(f"config.json: {key} = {value!r} is not a positive integer")
    return value


def _float(value: Any, key: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ModelFileError(f"config.json: {key} = {value!r} is not a positive number")
    return float(value)


def llama_params(config: dict[str, Any]) -> LlamaParams:
    """Check config.json describes a Llama model toolace can convert, and read its hyper-parameters."""
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise ModelFileError("config.json: no `architectures` list; cannot tell what model this is")
    if archs[0] not in SUPPORTED_ARCHITECTURES:
        raise ModelFileError(f"config.json: architecture {archs[0]} is not supported "
                             f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    n_embd, n_head = _int(config, "hidden_size"), _int(config, "num_attention_heads")
    n_head_kv = _int(config, "num_key_value_heads", n_head)
    head_dim_explicit = config.get("head_dim") is not None
    if head_dim_explicit:
        head_dim = _int(config, "head_dim")
    elif n_embd % n_head:
        raise ModelFileError(f"config.json: hidden_size {n_embd} is not a multiple of num_attention_heads {n_head}")
    else:
        head_dim = n_embd // n_head
    if n_head % n_head_kv or head_dim % 2:
        raise ModelFileError(f"config.json: {n_head} heads / {n_head_kv} KV heads / head_dim {head_dim} do not form "
                             "a grouped-query attention layout")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ModelFileError("config.json: attention_bias/mlp_bias are not supported for Llama conversion")
    # Llama-3.1 checkpoints put rope_theta and rope_scaling at top level; transformers >= 5 writes rope_parameters.
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise ModelFileError("config.json: rope_scaling is not an object")
    rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
    if rope_type not in ("default", "llama3", "linear"):
        raise ModelFileError(f"config.json: RoPE scaling type {rope_type!r} is not supported (default, llama3, linear)")
    theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
    return LlamaParams(
        n_layer=_int(config, "num_hidden_layers"), n_embd=n_embd, n_ff=_int(config, "intermediate_size"),
        n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim, head_dim_explicit=head_dim_explicit,
        vocab_size=_int(config, "vocab_size"), n_ctx=_int(config, "max_position_embeddings", 4096),
        rms_eps=_float(config.get("rms_norm_eps", 1e-6), "rms_norm_eps"), rope_theta=_float(theta, "rope_theta"),
        rope_type=rope_type, rope_scaling=rope, tied=bool(config.get("tie_word_embeddings", False)),
    )


def rope_freqs(p: LlamaParams) -> np.ndarray:
    """Llama-3.1's per-dimension RoPE frequency divisors ("llama3" scaling), as llama.cpp's converter computes them:
    long wavelengths are slowed by `factor`, short ones kept, and the band between interpolated smoothly."""
    s = p.rope_scaling
    factor = _float(s.get("factor", 8.0), "rope_scaling.factor")
    low = _float(s.get("low_freq_factor", 1.0), "rope_scaling.low_freq_factor")
    high = _float(s.get("high_freq_factor", 4.0), "rope_scaling.high_freq_factor")
    old_ctx = _float(s.get("original_max_position_embeddings", 8192), "rope_scaling.original_max_position_embeddings")
    if high <= low:
        raise ModelFileError("config.json: rope_scaling.high_freq_factor must exceed low_freq_factor")
    freqs = 1.0 / (p.rope_theta ** (np.arange(0, p.head_dim, 2, dtype=np.float32) / p.head_dim))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


@dataclass(frozen=True)
class TensorPlan:
    """One GGUF tensor: where it comes from, its shape (numpy order), its output type, and any transform."""

    gguf_name: str
    src: str | None  # HF tensor name, or None for a computed tensor
    shape: tuple[int, ...]
    out_type: gguf.GGMLQuantizationType
    permute_heads: int = 0  # >0: Q/K rotary row permutation with this many heads
    data: np.ndarray | None = None  # a computed tensor's values (F32)


def expected_tensors(p: LlamaParams) -> dict[str, tuple[int, ...]]:
    """Every HF tensor a Llama checkpoint with these hyper-parameters must hold, with its shape."""
    q, kv = p.n_head * p.head_dim, p.n_head_kv * p.head_dim
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (p.vocab_size, p.n_embd),
                                       "model.norm.weight": (p.n_embd,)}
    if not p.tied:
        out["lm_head.weight"] = (p.vocab_size, p.n_embd)
    for i in range(p.n_layer):
        pre = f"model.layers.{i}."
        out |= {
            pre + "input_layernorm.weight": (p.n_embd,),
            pre + "self_attn.q_proj.weight": (q, p.n_embd),
            pre + "self_attn.k_proj.weight": (kv, p.n_embd),
            pre + "self_attn.v_proj.weight": (kv, p.n_embd),
            pre + "self_attn.o_proj.weight": (p.n_embd, q),
            pre + "post_attention_layernorm.weight": (p.n_embd,),
            pre + "mlp.gate_proj.weight": (p.n_ff, p.n_embd),
            pre + "mlp.up_proj.weight": (p.n_ff, p.n_embd),
            pre + "mlp.down_proj.weight": (p.n_embd, p.n_ff),
        }
    return out


def plan_tensors(ckpt: Checkpoint, p: LlamaParams, weight_type: gguf.GGMLQuantizationType) -> list[TensorPlan]:
    """Match the checkpoint's tensors against what the config implies, and plan the GGUF tensors in order."""
    expected = expected_tensors(p)
    if p.tied and "lm_head.weight" in ckpt.tensors:  # some tied checkpoints still store the (identical) head
        expected["lm_head.weight"] = (p.vocab_size, p.n_embd)
    present = {n for n in ckpt.tensors if not n.endswith(IGNORED_SUFFIXES)}
    missing = [n for n in expected if n not in present]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelFileError(f"checkpoint: tensor {missing[0]} is missing{more}")
    extra = sorted(present - set(expected))
    if extra:
        raise ModelFileError(f"checkpoint: unexpected tensor {extra[0]} (not part of a Llama model with "
                             f"{p.n_layer} layers)")
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, p.n_layer)
    plans: list[TensorPlan] = []
    if p.rope_type == "llama3":
        freqs = rope_freqs(p)
        plans.append(TensorPlan(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", None, freqs.shape,
                                gguf.GGMLQuantizationType.F32, data=freqs))
    for name, shape in expected.items():
        ref = ckpt.tensors[name]
        if ref.shape != shape:
            raise ModelFileError(f"checkpoint: tensor {name} has shape {ref.shape}, config.json implies {shape}")
        gguf_name = tmap.get_name(name, try_suffixes=(".weight",))
        if gguf_name is None:  # cannot happen for the names above; kept so a gguf upgrade fails loudly
            raise ModelFileError(f"checkpoint: no GGUF name for tensor {name}")
        heads = p.n_head if name.endswith("q_proj.weight") else p.n_head_kv if name.endswith("k_proj.weight") else 0
        out_type = gguf.GGMLQuantizationType.F32 if len(shape) == 1 else weight_type
        plans.append(TensorPlan(gguf_name, name, shape, out_type, permute_heads=heads))
    return plans


def permute_rows(block: np.ndarray, heads: int) -> np.ndarray:
    """Reorder the rows of `heads` whole attention heads from HF's half-split rotary layout to llama.cpp's
    interleaved one: within each head, row i*2+j of the output is row j*(d/2)+i of the input."""
    rows = block.shape[0]
    return block.reshape(heads, 2, rows // heads // 2, *block.shape[1:]).swapaxes(1, 2).reshape(block.shape)


def write_hparams(writer: gguf.GGUFWriter, p: LlamaParams) -> None:
    """The `llama.*` keys, as llama.cpp's converter writes them for this family."""
    writer.add_block_count(p.n_layer)
    writer.add_context_length(p.n_ctx)
    writer.add_embedding_length(p.n_embd)
    writer.add_feed_forward_length(p.n_ff)
    writer.add_head_count(p.n_head)
    writer.add_head_count_kv(p.n_head_kv)
    writer.add_rope_freq_base(p.rope_theta)
    writer.add_layer_norm_rms_eps(p.rms_eps)
    if p.head_dim_explicit:
        writer.add_key_length(p.head_dim)
        writer.add_value_length(p.head_dim)
    writer.add_vocab_size(p.vocab_size)
    writer.add_rope_dimension_count(p.head_dim)
    if p.rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(_float(p.rope_scaling.get("factor"), "rope_scaling.factor"))
