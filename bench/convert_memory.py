"""Conversion memory and speed on a ~1.3 GB random Llama checkpoint (BF16, real Llama-3 tokenizer).

Builds the checkpoint under bench/tmp (numpy only: random BF16 bit patterns of sensible magnitude), then runs
`toolace bench convert` on it: peak RSS against the budget "largest tensor + 512 MB", convert and quantize
throughput against copying the same bytes. Writes bench/results/convert.json.

    TOOLACE_HOME=.cache/toolace .venv/bin/python bench/convert_memory.py
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers.checkpoints import write_safetensors  # noqa: E402
from tests.helpers.tiny_llama import build_tiny_llama  # noqa: E402
from toolace.fixtures import LLAMA3_TOKENIZER, fixture_path  # noqa: E402

WORK = REPO / "bench" / "tmp" / "convert-memory"
RESULTS = REPO / "bench" / "results" / "convert.json"
HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, VOCAB = 2048, 5632, 2, 16, 4, 128256
MB = 2**20


def _shapes() -> dict[str, tuple[int, ...]]:
    hd = HIDDEN // HEADS
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,),
                                          "lm_head.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (HIDDEN,), p + "post_attention_layernorm.weight": (HIDDEN,),
                   p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                   p + "self_attn.k_proj.weight": (KV_HEADS * hd, HIDDEN),
                   p + "self_attn.v_proj.weight": (KV_HEADS * hd, HIDDEN),
                   p + "mlp.gate_proj.weight": (FFN, HIDDEN), p + "mlp.up_proj.weight": (FFN, HIDDEN),
                   p + "mlp.down_proj.weight": (HIDDEN, FFN)}
    return shapes


def build(root: Path) -> Path:
    """The checkpoint: config like Llama-3.1's, tokenizer files from the tiny fixture, one BF16 safetensors file."""
    if (root / "model.safetensors").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    tiny = build_tiny_llama(root, fixture_path(LLAMA3_TOKENIZER))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tiny / name, root / name)
    cfg = json.loads((tiny / "config.json").read_text())
    cfg |= {"hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS}
    (root / "config.json").write_text(json.dumps(cfg, indent=2))
    rng = np.random.default_rng(0)
    tensors = {}
    for name, shape in _shapes().items():
        n = math.prod(shape)
        # BF16 bits of N(0, 0.02): exponent and mantissa from a float32 draw, truncated
        values = rng.standard_normal(n, dtype=np.float32) * 0.02
        tensors[name] = ("BF16", shape, (values.view(np.uint32) >> 16).astype("<u2").tobytes())
        del values
    write_safetensors(root / "model.safetensors", tensors)
    return root


def main() -> None:
    from toolace.eval.bench_convert import bench_convert, summary

    report = bench_convert(str(build(WORK / "ckpt")), json_out=str(RESULTS), workdir=str(WORK))
    print(summary(report))
    if not report["within_budget"]:
        raise SystemExit("conversion peak RSS is over its budget")


if __name__ == "__main__":
    main()
