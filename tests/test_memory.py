"""The memory estimate (runtime/memory.py) against what llama.cpp really takes: each load runs in a fresh process
that reads its own resident set size before and after, for the demo model (SmolLM2, 49k vocabulary, 30 layers)
and the tiny Llama-3.1 fixture (128k vocabulary, 2 layers) at two context sizes. And the refusal: a context too
large for the (faked) available RAM is one clear error, raised before llama.cpp maps or allocates anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolace import probes
from toolace.cli import main
from toolace.errors import ResourceError
from toolace.runtime.memory import check_fits, estimate_memory, kv_cache_bytes, shape_of_file

MIB = 2**20
TOLERANCE = 0.15  # the bound: estimate within 15% of the measured resident memory

MEASURE = """
import json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
from toolace import probes
from toolace.runtime.model import Model
probes.available_memory_bytes = lambda: int(sys.argv[4])
path, n_ctx, fill, kv_type = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "fill", sys.argv[5]
before = rss()
try:
    model = Model(path, n_ctx=n_ctx, n_threads=2, kv_type=kv_type)
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}", "delta": rss() - before}))
    sys.exit(0)
loaded = rss() - before
if fill:  # a prompt that fills the context: the decode step's working memory is touched too
    model.prefill([1000 + i % 5000 for i in range(model.n_ctx - 1)])
print(json.dumps({"loaded": loaded, "filled": rss() - before}))
"""


def _measure(path: Path, n_ctx: int, fill: bool, available: int = 2**40, kv_type: str = "f16") -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(n_ctx), "fill" if fill else "load",
                           str(available), kv_type], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("which", ["smollm2", "tiny"])
@pytest.mark.parametrize(("n_ctx", "fill"), [(512, True), (4096, False)])
def test_estimate_within_15_percent_of_rss(which: str, n_ctx: int, fill: bool, smollm2_gguf: Path,
                                           tiny_llama_gguf: Path) -> None:
    path = smollm2_gguf if which == "smollm2" else tiny_llama_gguf
    est = estimate_memory(shape_of_file(path), n_ctx)
    got = _measure(path, n_ctx, fill)
    measured = got["filled"] if fill else got["loaded"]
    print(f"\n{which} n_ctx {n_ctx}: estimate {est.total / MIB:.1f} MiB (weights {est.weights / MIB:.1f}, KV "
          f"{est.kv_cache / MIB:.1f}, compute {est.compute / MIB:.1f}, tokenizer {est.tokenizer / MIB:.1f}); "
          f"RSS after load {got['loaded'] / MIB:.1f} MiB, after filling {got['filled'] / MIB:.1f} MiB")
    assert abs(est.total - measured) <= TOLERANCE * measured


def test_quantized_kv_cache_estimate_and_footprint(smollm2_gguf: Path) -> None:
    """--kv-type q8_0 really allocates the smaller cache (flash attention on): the estimate holds, and the load is
    smaller than the F16 one by about the difference of the two caches."""
    shape = shape_of_file(smollm2_gguf)
    est = estimate_memory(shape, 4096, "q8_0")
    q8, f16 = _measure(smollm2_gguf, 4096, False, kv_type="q8_0"), _measure(smollm2_gguf, 4096, False)
    print(f"\nsmollm2 n_ctx 4096 q8_0: estimate {est.total / MIB:.1f} MiB, RSS after load {q8['loaded'] / MIB:.1f} MiB "
          f"(f16: {f16['loaded'] / MIB:.1f} MiB)")
    assert abs(est.total - q8["loaded"]) <= TOLERANCE * q8["loaded"]
    saved = kv_cache_bytes(shape, 4096) - kv_cache_bytes(shape, 4096, "q8_0")  # 42.2 MiB
    assert abs((f16["loaded"] - q8["loaded"]) - saved) <= 0.25 * saved


def test_kv_cache_sizes_match_llama_cpp() -> None:
    """llama.cpp's own report for SmolLM2 at 2048 cells (30 layers, 3 KV heads of 64): K+V f16 45.00 MiB, q8_0
    23.91 MiB, q4_0 12.66 MiB; a context that is not a multiple of 256 cells is rounded up as llama.cpp does."""
    from toolace.runtime.memory import ModelShape

    smol = ModelShape(weights=0, n_layer=30, n_embd=576, n_head=9, n_head_kv=3, head_k=64, head_v=64, n_ff=1536,
                      n_vocab=49152, n_ctx_train=8192)
    assert [round(kv_cache_bytes(smol, 2048, t) / MIB, 2) for t in ("f16", "q8_0", "q4_0")] == [45.0, 23.91, 12.66]
    assert kv_cache_bytes(smol, 2000) == kv_cache_bytes(smol, 2048)


def test_too_large_context_refused_before_llama_cpp_allocates(smollm2_gguf: Path) -> None:
    est = estimate_memory(shape_of_file(smollm2_gguf), 131072)
    available = 1024 * MIB
    got = _measure(smollm2_gguf, 131072, False, available)
    assert got["error"].startswith("ResourceError: SmolLM2-135M-Instruct.Q4_1.gguf at --n-ctx 131072 needs about "
                                   f"{est.total / 2**30:.2f} GiB")
    assert got["delta"] < 20 * MIB  # the 92 MiB of weights were never mapped, the KV cache never allocated
    near = _measure(smollm2_gguf, 512, False, available)  # near miss: a context that fits loads
    assert near["loaded"] > 90 * MIB


def test_gpu_memory_checked_when_layers_are_offloaded(smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a GPU that ggml sees (faked: this build has none), offloaded weights, KV cache and llama.cpp's whole
    compute reservation must fit its free memory; RAM then only holds what stays on the CPU."""
    monkeypatch.setattr(probes, "free_gpu_bytes", lambda: 256 * MIB)
    monkeypatch.setattr(probes, "available_memory_bytes", lambda: 300 * MIB)
    with pytest.raises(ResourceError, match=r"^SmolLM2-135M-Instruct\.Q4_1\.gguf at --n-ctx 8192 needs about .* of GPU "
                                            r"memory with 100% of its layers offloaded, the GPU has 256\.0 MiB free; "
                                            r"try a smaller --n-ctx, --kv-type q8_0, or fewer --n-gpu-layers$"):
        check_fits(smollm2_gguf, 8192, gpu_layers=-1)
    assert check_fits(smollm2_gguf, 1024, gpu_layers=-1).n_ctx == 1024  # near miss: fits the GPU, RAM holds the rest
    with pytest.raises(ResourceError, match=r"needs about .* but this machine has 44\.0 MiB available"):
        check_fits(smollm2_gguf, 8192, gpu_layers=0)  # nothing offloaded: all of it must fit the (small) RAM
    monkeypatch.setattr(probes, "free_gpu_bytes", lambda: None)  # a CPU build: --n-gpu-layers changes nothing
    with pytest.raises(ResourceError, match=r"but this machine has 44\.0 MiB available"):
        check_fits(smollm2_gguf, 8192, gpu_layers=-1)


def test_parallel_slots_with_a_quantized_cache_answer(smollm2_gguf: Path, weather_tools: list[dict]) -> None:
    from toolace.api import ToolACE

    ta = ToolACE.load(str(smollm2_gguf), n_ctx=1024, parallel=2, kv_type="q8_0", kv_cache=False)
    assert ta.model.flash_attn and ta.model.memory.kv_type == "q8_0" and ta.model.memory.slots == 2
    result = ta.call("What's the weather like in Paris?", weather_tools, "required", max_tokens=32)
    assert result.valid and result.calls[0]["name"] == "get_weather"


def test_refusal_message_and_cli(smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(probes, "available_memory_bytes", lambda: 1024 * MIB)
    with pytest.raises(ResourceError) as err:
        check_fits(smollm2_gguf, 131072)
    message = str(err.value)
    assert message.startswith("SmolLM2-135M-Instruct.Q4_1.gguf at --n-ctx 131072 needs about ")
    assert "but this machine has 768.0 MiB available (after a 256.0 MiB margin); try --n-ctx " in message
    assert "a quant with fewer bits (toolace pull REPO:QUANT); --kv-type q8_0 (needs " in message
    assert check_fits(smollm2_gguf, 2048).n_ctx == 2048  # near miss: fits
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"name": "f", "description": "d", "parameters": {"type": "object",
                                                                                 "properties": {}}}]))
    result = CliRunner().invoke(main, ["call", "hi", "--tools", str(tools), "--model", str(smollm2_gguf),
                                       "--n-ctx", "131072"])
    assert result.exit_code == 1
    assert result.output == f"Error: {message}\n"
