"""Conversion memory and speed on a ~1.3 GB random Llama checkpoint (BF16, real Llama-3 tokenizer).

Builds the checkpoint under bench/tmp (numpy only: random BF16 bit patterns of sensible magnitude), then converts it
to F16 in a subprocess under `/usr/bin/time -v` and reports peak RSS against the budget "largest tensor + 512 MB"
(DESIGN.md §4: peak memory is about the largest tensor, not the model), and conversion throughput against `cp` of
the same bytes. Writes bench/results/convert.json.

    TOOLACE_HOME=.cache/toolace .venv/bin/python bench/convert_memory.py
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
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


def _timed(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (bytes) and /usr/bin/time's report of `cmd`."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return wall, rss_kb * 1024, proc.stderr


def main() -> None:
    ckpt = build(WORK / "ckpt")
    src = ckpt / "model.safetensors"
    size = src.stat().st_size
    largest = max(math.prod(s) for s in _shapes().values()) * 2
    out = WORK / "out.gguf"
    copy = WORK / "copy.bin"
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache for both runs
    cp_wall, _, _ = _timed(["cp", str(src), str(copy)])
    copy.unlink()
    # the converter fsyncs its output before the rename; the fair copy baseline does too
    cp_sync_wall, _, _ = _timed(["sh", "-c", 'cp "$0" "$1" && sync "$1"', str(src), str(copy)])
    copy.unlink()
    code = "import sys; from toolace.convert.convert import convert; convert(sys.argv[1], sys.argv[2], 'f16')"
    conv_wall, peak, report = _timed([sys.executable, "-c", code, str(ckpt), str(out)])
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", report).group(1)) for k in ("User", "System"))
    baseline_wall, baseline_rss, _ = _timed([sys.executable, "-c", "import toolace.convert.convert, gguf, numpy"])
    budget = largest + 512 * MB
    result = {
        "checkpoint_bytes": size, "largest_tensor_bytes": largest, "output_bytes": out.stat().st_size,
        "peak_rss_bytes": peak, "budget_bytes": budget, "within_budget": peak <= budget,
        "import_only_rss_bytes": baseline_rss,
        "convert_seconds": round(conv_wall, 2), "convert_cpu_seconds": round(cpu, 2),
        "cp_seconds": round(cp_wall, 2), "cp_fsync_seconds": round(cp_sync_wall, 2),
        "convert_mb_per_s": round(size / MB / conv_wall, 1), "cp_mb_per_s": round(size / MB / cp_wall, 1),
        "cp_fsync_mb_per_s": round(size / MB / cp_sync_wall, 1),
        "slowdown_vs_cp": round(conv_wall / cp_wall, 2), "slowdown_vs_cp_fsync": round(conv_wall / cp_sync_wall, 2),
        "cpu_count": os.cpu_count(),
        "outtype": "f16", "machine_load_1min": os.getloadavg()[0],
    }
    out.unlink()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not result["within_budget"]:
        raise SystemExit(f"peak RSS {peak / MB:.0f} MB is over the budget {budget / MB:.0f} MB")


if __name__ == "__main__":
    main()
