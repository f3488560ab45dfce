"""Small hand-made checkpoints for converter tests: a safetensors writer that can also write broken files, a
mini Llama config, and the tiny fixture re-sharded with an index. No torch needed."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np

from toolace.convert.checkpoint import open_checkpoint

MINI_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 16,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
}
_NP = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def mini_shapes(cfg: dict[str, Any] = MINI_CONFIG) -> dict[str, tuple[int, ...]]:
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,),
                                          "lm_head.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                   p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                   p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                   p + "mlp.down_proj.weight": (h, f)}
    return shapes


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]],
                      header_patch: dict[str, Any] | None = None, raw_header: bytes | None = None) -> Path:
    """Write a safetensors file from (dtype, shape, raw bytes) entries; `header_patch` overrides header entries
    after offsets are computed, `raw_header` replaces the header bytes outright (for malformed-file tests)."""
    header: dict[str, Any] = {}
    data = bytearray()
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    header.update(header_patch or {})
    blob = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(data))
    return path


def mini_tensors(dtype: str = "F32", seed: int = 0) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in mini_shapes().items():
        values = rng.standard_normal(math.prod(shape)).astype(np.float32)
        raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes() if dtype == "BF16" else \
            values.astype(_NP[dtype]).tobytes()
        out[name] = (dtype, shape, raw)
    return out


def mini_checkpoint(root: Path, config: dict[str, Any] | None = None, dtype: str = "F32",
                    tensors: dict[str, tuple[str, tuple[int, ...], bytes]] | None = None) -> Path:
    """A 1-layer Llama checkpoint folder (no tokenizer: checks on config and tensors come before the tokenizer)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config if config is not None else MINI_CONFIG))
    write_safetensors(root / "model.safetensors", tensors if tensors is not None else mini_tensors(dtype))
    return root


def reshard(src: Path, dst: Path, n_shards: int = 2) -> Path:
    """Copy checkpoint `src` into `dst` split over `n_shards` safetensors files with a weight-map index."""
    ckpt = open_checkpoint(src)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, dst / f.name)
    names = sorted(ckpt.tensors)
    weight_map = {}
    for k in range(n_shards):
        fname = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        part = names[k::n_shards]
        tensors = {}
        for n in part:
            ref = ckpt.tensors[n]
            rows = ref.shape[0] if ref.shape else 1
            tensors[n] = (ref.dtype, ref.shape, ckpt.read_rows(n, 0, rows).tobytes())
            weight_map[n] = fname
        write_safetensors(dst / fname, tensors)
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst
