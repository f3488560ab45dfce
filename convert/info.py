"""`toolace info FILE`: what a GGUF file is, from its checked header alone (no tensor data is read)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import gguf

from .gguf_check import GGUFArray, check_gguf

# llama_ftype -> the name llama.cpp's quantizer uses for it (general.file_type's values).
FILE_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS",
    20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
    39: "NVFP4", 40: "Q1_0",
}
_GGML_TYPE_NAMES = {int(t): t.name for t in gguf.GGMLQuantizationType}


def info(file: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary of a GGUF file: architecture, size, quantization, context length, tokenizer, tensors, parameters."""
    h = check_gguf(file)
    kv = h.kv
    arch = kv.get("general.architecture")

    def arch_key(name: str) -> Any:
        return kv.get(f"{arch}.{name}") if isinstance(arch, str) else None

    tokens = kv.get("tokenizer.ggml.tokens")
    file_type = kv.get("general.file_type")
    type_counts = Counter(_GGML_TYPE_NAMES.get(t.type, str(t.type)) for t in h.tensors)
    return {
        "path": str(h.path),
        "name": kv.get("general.name"),
        "architecture": arch,
        "gguf_version": h.version,
        "file_size": h.file_size,
        "file_type": FILE_TYPE_NAMES.get(file_type, str(file_type)) if file_type is not None else None,
        "context_length": arch_key("context_length"),
        "embedding_length": arch_key("embedding_length"),
        "block_count": arch_key("block_count"),
        "head_count": arch_key("attention.head_count"),
        "head_count_kv": arch_key("attention.head_count_kv"),
        "rope_freq_base": arch_key("rope.freq_base"),
        "tokenizer_model": kv.get("tokenizer.ggml.model"),
        "tokenizer_pre": kv.get("tokenizer.ggml.pre"),
        "vocab_size": tokens.count if isinstance(tokens, GGUFArray) else arch_key("vocab_size"),
        "bos_token_id": kv.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": kv.get("tokenizer.ggml.eos_token_id"),
        "chat_template": isinstance(kv.get("tokenizer.chat_template"), str),
        "tensor_count": len(h.tensors),
        "parameter_count": sum(t.n_elements for t in h.tensors),
        "tensor_types": dict(type_counts.most_common()),
        "license": kv.get("general.license"),
    }


def format_info(summary: dict[str, Any]) -> str:
    """Human-readable lines for `toolace info` without --json."""
    lines = []
    for key, value in summary.items():
        if key == "file_size":
            value = f"{value:,} bytes ({value / 2**30:.2f} GiB)"
        elif key == "parameter_count":
            value = f"{value:,}"
        elif key == "tensor_types":
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        lines.append(f"{key:>17}: {value}")
    return "\n".join(lines)
